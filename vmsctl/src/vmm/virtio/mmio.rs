// SPDX-License-Identifier: GPL-2.0

//! The virtio-mmio transport: the register file of virtio 1.2, section
//! 4.2.2 (version 2; no legacy registers), in front of one
//! [`VirtioDevice`].
//!
//! The driver's side of the handshake (section 3.1.1): reset (status 0),
//! ACKNOWLEDGE, DRIVER, read the device's features 32 bits at a time,
//! write the ones it accepts, FEATURES_OK (kept only if the accepted set
//! is a subset of the offered one and includes VERSION_1), set up each
//! queue (select, size, ring addresses, ready), DRIVER_OK. From then on a
//! write of a queue's index to QueueNotify makes the device serve that
//! queue; the interrupt status says why the interrupt came (bit 0: used
//! buffers), and the driver acknowledges it.
//!
//! Register accesses are 32 bits wide; others are ignored (reads give
//! zeros), as are writes to read-only registers and queue set-up of a
//! queue that does not exist. The configuration space, from offset 0x100,
//! takes accesses of any width.

use std::sync::atomic::{fence, AtomicU32, Ordering};
use std::sync::Arc;

use anyhow::{bail, ensure, Context, Result};
use serde::{Deserialize, Serialize};
use virtio_bindings::virtio_config::{
    VIRTIO_CONFIG_S_ACKNOWLEDGE, VIRTIO_CONFIG_S_DRIVER, VIRTIO_CONFIG_S_DRIVER_OK,
    VIRTIO_CONFIG_S_FAILED, VIRTIO_CONFIG_S_FEATURES_OK, VIRTIO_CONFIG_S_NEEDS_RESET,
    VIRTIO_F_VERSION_1,
};
use virtio_bindings::virtio_mmio::*;
use virtio_queue::{Queue, QueueState, QueueT};
use vm_memory::GuestMemoryMmap;
use vm_superio::Trigger;

use super::VirtioDevice;
use crate::vmm::serial::IrqLine;

/// "virt", little endian: the value of the MagicValue register.
pub const MAGIC: u32 = 0x7472_6976;
/// The register layout this transport implements (1 was legacy).
pub const VERSION: u32 = 2;
/// The VendorID register: no PCI vendor, as Firecracker's and crosvm's.
pub const VENDOR_ID: u32 = 0;
/// The size of one device's register window.
pub const WINDOW: u64 = 0x1000;

/// The status bits a driver may set, in the order it sets them.
const STATUS_BITS: u32 = VIRTIO_CONFIG_S_ACKNOWLEDGE
    | VIRTIO_CONFIG_S_DRIVER
    | VIRTIO_CONFIG_S_FEATURES_OK
    | VIRTIO_CONFIG_S_DRIVER_OK
    | VIRTIO_CONFIG_S_FAILED
    | VIRTIO_CONFIG_S_NEEDS_RESET;

/// A queue as it is saved in a live image: the fields of
/// `virtio_queue::QueueState`, which has no serde support of its own
/// (its `virtio-queue-ser` companion is not released for virtio-queue
/// 0.18).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
}

impl From<QueueState> for QueueSnapshot {
    fn from(q: QueueState) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(q: QueueSnapshot) -> Self {
        Self {
            max_size: q.max_size,
            next_avail: q.next_avail,
            next_used: q.next_used,
            event_idx_enabled: q.event_idx_enabled,
            size: q.size,
            ready: q.ready,
            desc_table: q.desc_table,
            avail_ring: q.avail_ring,
            used_ring: q.used_ring,
        }
    }
}

/// The transport's state as a live image keeps it: everything the driver
/// wrote, and the queues' positions.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MmioState {
    pub device_type: u32,
    pub status: u32,
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub driver_features: u64,
    pub queue_sel: u32,
    pub interrupt_status: u32,
    pub queues: Vec<QueueSnapshot>,
}

/// The InterruptStatus register, shared with whoever serves the window
/// without the transport's lock: a driver's interrupt handler reads it
/// and acknowledges it, and must not wait for a request in progress
/// (the disk's I/O thread holds the transport's lock while it reads and
/// writes the file).
#[derive(Clone, Default)]
pub struct InterruptStatus(Arc<AtomicU32>);

impl InterruptStatus {
    /// A read of the register.
    pub fn get(&self) -> u32 {
        self.0.load(Ordering::SeqCst)
    }

    /// The driver's write of `v` to InterruptACK.
    pub fn ack(&self, v: u32) {
        self.0.fetch_and(!v, Ordering::SeqCst);
    }

    fn raise(&self, bits: u32) {
        self.0.fetch_or(bits, Ordering::SeqCst);
    }

    fn set(&self, v: u32) {
        self.0.store(v, Ordering::SeqCst);
    }
}

/// One virtio device's register window.
pub struct MmioTransport<D: VirtioDevice> {
    device: D,
    irq: IrqLine,
    queues: Vec<Queue>,
    status: u32,
    device_features_sel: u32,
    driver_features_sel: u32,
    driver_features: u64,
    queue_sel: u32,
    interrupt_status: InterruptStatus,
    /// The device failed (a ring it could not use): reported once.
    failed: bool,
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// `device` in its reset state, interrupting through `irq`.
    pub fn new(device: D, irq: IrqLine) -> Result<Self> {
        let queues = device
            .queue_max_sizes()
            .iter()
            .map(|&max| Queue::new(max).map_err(|e| anyhow::anyhow!("a queue of {max} descriptors: {e:?}")))
            .collect::<Result<Vec<_>>>()?;
        Ok(Self {
            device,
            irq,
            queues,
            status: 0,
            device_features_sel: 0,
            driver_features_sel: 0,
            driver_features: 0,
            queue_sel: 0,
            interrupt_status: InterruptStatus::default(),
            failed: false,
        })
    }

    /// `device` as a live image left it. Raises the interrupt again if
    /// the driver had not acknowledged it.
    pub fn from_state(device: D, irq: IrqLine, state: &MmioState) -> Result<Self> {
        let mut t = Self::new(device, irq)?;
        t.restore(state)?;
        Ok(t)
    }

    /// Puts the transport back in `state` (a live image's), keeping its
    /// device, interrupt line and InterruptStatus register (which the
    /// VMM serves without the lock): a restored clone's, or a reset
    /// VM's with its device locked and its vCPUs paused. Raises the
    /// interrupt again if the driver had not acknowledged it. Checks
    /// everything before changing anything: on an error the transport is
    /// as it was.
    pub fn restore(&mut self, state: &MmioState) -> Result<()> {
        let queues = self.check_state(state)?;
        self.queues = queues;
        self.status = state.status & STATUS_BITS;
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.driver_features = state.driver_features;
        self.queue_sel = state.queue_sel;
        self.failed = false;
        self.interrupt_status.set(state.interrupt_status);
        if state.interrupt_status != 0 {
            self.irq.trigger().context("raising a restored virtio interrupt")?;
        }
        Ok(())
    }

    /// Fails unless `state` fits this transport's device (its type and
    /// queues); returns the queues it describes. Changes nothing: a
    /// reset checks every device before it touches any.
    pub fn check_state(&self, state: &MmioState) -> Result<Vec<Queue>> {
        ensure!(
            state.device_type == self.device.device_type(),
            "the saved virtio device is of type {}, this one of type {}",
            state.device_type,
            self.device.device_type()
        );
        let max = self.device.queue_max_sizes();
        ensure!(
            state.queues.len() == max.len(),
            "the saved virtio device (type {}) has {} queues, this one {}",
            state.device_type,
            state.queues.len(),
            max.len()
        );
        let mut queues = Vec::with_capacity(max.len());
        for (i, (q, &m)) in state.queues.iter().zip(max).enumerate() {
            ensure!(q.max_size == m, "queue {i}: saved with {} descriptors at most, now {m}", q.max_size);
            let queue = Queue::try_from(QueueState::from(*q))
                .map_err(|e| anyhow::anyhow!("queue {i} of the saved virtio device: {e:?}"))?;
            queues.push(queue);
        }
        Ok(queues)
    }

    /// What a live image keeps of it.
    pub fn state(&self) -> MmioState {
        MmioState {
            device_type: self.device.device_type(),
            status: self.status,
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            driver_features: self.driver_features,
            queue_sel: self.queue_sel,
            interrupt_status: self.interrupt_status.get(),
            queues: self.queues.iter().map(|q| q.state().into()).collect(),
        }
    }

    /// The InterruptStatus register, to serve without the lock.
    pub fn interrupt_status(&self) -> InterruptStatus {
        self.interrupt_status.clone()
    }

    /// The device behind the transport.
    pub fn device(&self) -> &D {
        &self.device
    }

    /// The device, to change its backing (the VM paused, the transport
    /// locked): never its features or configuration layout.
    pub fn device_mut(&mut self) -> &mut D {
        &mut self.device
    }

    /// Every feature bit offered: the device's and VERSION_1.
    fn offered(&self) -> u64 {
        self.device.features() | (1 << VIRTIO_F_VERSION_1)
    }

    pub fn driver_ok(&self) -> bool {
        self.status & VIRTIO_CONFIG_S_DRIVER_OK != 0
    }

    /// Whether a notification of queue `index` would be served now: the
    /// driver is ready, the queue is, and the device needs no reset.
    pub fn can_serve(&self, index: usize) -> bool {
        self.driver_ok()
            && self.status & VIRTIO_CONFIG_S_NEEDS_RESET == 0
            && self.queues.get(index).is_some_and(|q| q.ready())
    }

    fn selected(&mut self) -> Option<&mut Queue> {
        self.queues.get_mut(self.queue_sel as usize)
    }

    /// A read of `data.len()` bytes at `offset` in the window.
    pub fn read(&self, offset: u64, data: &mut [u8]) {
        if offset >= VIRTIO_MMIO_CONFIG as u64 {
            self.device.read_config(offset - VIRTIO_MMIO_CONFIG as u64, data);
            return;
        }
        data.fill(0);
        if data.len() != 4 {
            return;
        }
        let sel = self.queues.get(self.queue_sel as usize);
        let v = match offset as u32 {
            VIRTIO_MMIO_MAGIC_VALUE => MAGIC,
            VIRTIO_MMIO_VERSION => VERSION,
            VIRTIO_MMIO_DEVICE_ID => self.device.device_type(),
            VIRTIO_MMIO_VENDOR_ID => VENDOR_ID,
            VIRTIO_MMIO_DEVICE_FEATURES => match self.device_features_sel {
                0 => self.offered() as u32,
                1 => (self.offered() >> 32) as u32,
                _ => 0,
            },
            VIRTIO_MMIO_QUEUE_NUM_MAX => sel.map_or(0, |q| q.max_size().into()),
            VIRTIO_MMIO_QUEUE_READY => sel.map_or(0, |q| q.ready().into()),
            VIRTIO_MMIO_INTERRUPT_STATUS => self.interrupt_status.get(),
            VIRTIO_MMIO_STATUS => self.status,
            // The configuration space never changes under the driver.
            VIRTIO_MMIO_CONFIG_GENERATION => 0,
            _ => 0,
        };
        data.copy_from_slice(&v.to_le_bytes());
    }

    /// A write of `data` at `offset` in the window. Serves a notified
    /// queue before it returns.
    pub fn write(&mut self, offset: u64, data: &[u8], mem: &GuestMemoryMmap) -> Result<()> {
        if offset >= VIRTIO_MMIO_CONFIG as u64 {
            if self.status & VIRTIO_CONFIG_S_DRIVER != 0 {
                self.device.write_config(offset - VIRTIO_MMIO_CONFIG as u64, data);
            }
            return Ok(());
        }
        let Ok(bytes) = <[u8; 4]>::try_from(data) else {
            return Ok(());
        };
        let v = u32::from_le_bytes(bytes);
        // Queue set-up only between FEATURES_OK and DRIVER_OK, as the
        // specification has drivers do it.
        let setup = self.status & VIRTIO_CONFIG_S_FEATURES_OK != 0 && !self.driver_ok();
        match offset as u32 {
            VIRTIO_MMIO_DEVICE_FEATURES_SEL => self.device_features_sel = v,
            VIRTIO_MMIO_DRIVER_FEATURES_SEL => self.driver_features_sel = v,
            // Features are fixed once the driver set FEATURES_OK.
            VIRTIO_MMIO_DRIVER_FEATURES if self.status & VIRTIO_CONFIG_S_FEATURES_OK == 0 => {
                match self.driver_features_sel {
                    0 => self.driver_features = (self.driver_features & !0xffff_ffff) | u64::from(v),
                    1 => self.driver_features = (self.driver_features & 0xffff_ffff) | (u64::from(v) << 32),
                    _ => {}
                }
            }
            VIRTIO_MMIO_QUEUE_SEL => self.queue_sel = v,
            VIRTIO_MMIO_QUEUE_NUM if setup => {
                if let Some(q) = self.selected() {
                    q.set_size(v as u16);
                }
            }
            VIRTIO_MMIO_QUEUE_READY if setup => {
                if let Some(q) = self.selected() {
                    q.set_ready(v == 1);
                }
            }
            VIRTIO_MMIO_QUEUE_DESC_LOW if setup => self.with_selected(|q| q.set_desc_table_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_DESC_HIGH if setup => self.with_selected(|q| q.set_desc_table_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_AVAIL_LOW if setup => self.with_selected(|q| q.set_avail_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_AVAIL_HIGH if setup => self.with_selected(|q| q.set_avail_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_USED_LOW if setup => self.with_selected(|q| q.set_used_ring_address(Some(v), None)),
            VIRTIO_MMIO_QUEUE_USED_HIGH if setup => self.with_selected(|q| q.set_used_ring_address(None, Some(v))),
            VIRTIO_MMIO_QUEUE_NOTIFY => return self.notify(v as usize, mem),
            VIRTIO_MMIO_INTERRUPT_ACK => self.interrupt_status.ack(v),
            VIRTIO_MMIO_STATUS => self.set_status(v, mem),
            _ => {}
        }
        Ok(())
    }

    fn with_selected(&mut self, f: impl FnOnce(&mut Queue)) {
        if let Some(q) = self.selected() {
            f(q);
        }
    }

    fn set_status(&mut self, v: u32, mem: &GuestMemoryMmap) {
        if v == 0 {
            self.reset();
            return;
        }
        let mut v = v & STATUS_BITS;
        let newly = v & !self.status;
        if newly & VIRTIO_CONFIG_S_FEATURES_OK != 0 {
            let ok = self.driver_features & !self.offered() == 0
                && self.driver_features & (1 << VIRTIO_F_VERSION_1) != 0;
            if !ok {
                // The driver reads the status back and gives up.
                v &= !VIRTIO_CONFIG_S_FEATURES_OK;
            }
        }
        if newly & VIRTIO_CONFIG_S_DRIVER_OK != 0 {
            // Every ready queue must lie in guest memory; a device whose
            // driver set up a bad ring asks for a reset instead of
            // reading wild addresses.
            let bad = self.queues.iter().any(|q| q.ready() && !q.is_valid(mem));
            if bad || v & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
                v = (v & !VIRTIO_CONFIG_S_DRIVER_OK) | VIRTIO_CONFIG_S_NEEDS_RESET;
            }
        }
        self.status = v;
    }

    fn reset(&mut self) {
        self.device.reset();
        for q in &mut self.queues {
            q.reset();
        }
        self.status = 0;
        self.device_features_sel = 0;
        self.driver_features_sel = 0;
        self.driver_features = 0;
        self.queue_sel = 0;
        self.interrupt_status.set(0);
        self.failed = false;
    }

    /// Serves every queue, as if the driver had notified each: after a
    /// restore, for requests the driver made available before the live
    /// image was taken (it will not notify them again).
    pub fn kick(&mut self, mem: &GuestMemoryMmap) -> Result<()> {
        for index in 0..self.queues.len() {
            self.notify(index, mem)?;
        }
        Ok(())
    }

    /// The driver notified queue `index`: let the device serve it, and
    /// interrupt the driver if the ring asks for it. A write of the
    /// index to QueueNotify does this; so does a device's I/O thread
    /// woken by an ioeventfd on that register.
    pub fn notify(&mut self, index: usize, mem: &GuestMemoryMmap) -> Result<()> {
        if !self.driver_ok() {
            return Ok(());
        }
        let Some(queue) = self.queues.get_mut(index) else {
            return Ok(());
        };
        if !queue.ready() || self.status & VIRTIO_CONFIG_S_NEEDS_RESET != 0 {
            return Ok(());
        }
        let used = match self.device.process_queue(index, queue, mem) {
            Ok(used) => used,
            // A ring the device cannot use (a head index out of range, a
            // used ring it cannot write): the driver's fault, so the
            // device stops and asks for a reset (virtio 1.2, 2.1.1)
            // instead of stopping the VM.
            Err(e) => {
                if !self.failed {
                    self.failed = true;
                    eprintln!(
                        "vmsctl: virtio device (type {}) queue {index}: {e:#}; it needs a reset now",
                        self.device.device_type()
                    );
                }
                self.status |= VIRTIO_CONFIG_S_NEEDS_RESET;
                self.interrupt_status.raise(VIRTIO_MMIO_INT_CONFIG);
                self.irq.trigger().context("raising the virtio interrupt")?;
                return Ok(());
            }
        };
        if !used {
            return Ok(());
        }
        // The used ring's writes before the interrupt's.
        fence(Ordering::SeqCst);
        let wanted = queue
            .needs_notification(mem)
            .map_err(|e| anyhow::anyhow!("virtio queue {index}: {e:?}"))?;
        if wanted {
            self.interrupt_status.raise(VIRTIO_MMIO_INT_VRING);
            if let Err(e) = self.irq.trigger() {
                bail!("raising the virtio interrupt: {e}");
            }
        }
        Ok(())
    }
}

/// The kernel command-line argument that makes a Linux guest with
/// `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES` find a device whose window is at
/// guest-physical `base` and whose interrupt is GSI `irq`.
pub fn cmdline_arg(base: u64, irq: u32) -> String {
    format!("virtio_mmio.device={}K@{base:#x}:{irq}", WINDOW >> 10)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::virtio::rng::{Rng, QUEUE_SIZE};
    use virtio_bindings::virtio_ids::VIRTIO_ID_RNG;
    use virtio_bindings::virtio_ring::VRING_DESC_F_WRITE;
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const RING: GuestAddress = GuestAddress(0x1_0000);
    const BUFS: u64 = 0x8_0000;
    const LEN: u16 = 16;

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn r32<D: VirtioDevice>(t: &MmioTransport<D>, off: u32) -> u32 {
        let mut b = [0u8; 4];
        t.read(off.into(), &mut b);
        u32::from_le_bytes(b)
    }

    fn w32<D: VirtioDevice>(t: &mut MmioTransport<D>, off: u32, v: u32, mem: &GuestMemoryMmap) {
        t.write(off.into(), &v.to_le_bytes(), mem).unwrap();
    }

    fn rng() -> (MmioTransport<Rng>, IrqLine) {
        let irq = IrqLine::new().unwrap();
        let mine = IrqLine::from_eventfd(irq.eventfd().try_clone().unwrap());
        (MmioTransport::new(Rng::new(), irq).unwrap(), mine)
    }

    /// What Linux's virtio_mmio driver does, up to DRIVER_OK, with the
    /// rings of `q`; `features` is what it accepts.
    fn handshake<D: VirtioDevice>(t: &mut MmioTransport<D>, q: &MockSplitQueue<GuestMemoryMmap>, features: u64, mem: &GuestMemoryMmap) -> u32 {
        w32(t, VIRTIO_MMIO_STATUS, 0, mem);
        w32(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE, mem);
        w32(t, VIRTIO_MMIO_STATUS, VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER, mem);
        w32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 1, mem);
        let hi = r32(t, VIRTIO_MMIO_DEVICE_FEATURES);
        w32(t, VIRTIO_MMIO_DEVICE_FEATURES_SEL, 0, mem);
        let lo = r32(t, VIRTIO_MMIO_DEVICE_FEATURES);
        assert_eq!((u64::from(hi) << 32) | u64::from(lo), 1 << VIRTIO_F_VERSION_1);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1, mem);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES, (features >> 32) as u32, mem);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 0, mem);
        w32(t, VIRTIO_MMIO_DRIVER_FEATURES, features as u32, mem);
        let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER | VIRTIO_CONFIG_S_FEATURES_OK;
        w32(t, VIRTIO_MMIO_STATUS, s, mem);
        if r32(t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_FEATURES_OK == 0 {
            return r32(t, VIRTIO_MMIO_STATUS);
        }
        w32(t, VIRTIO_MMIO_QUEUE_SEL, 0, mem);
        assert_eq!(r32(t, VIRTIO_MMIO_QUEUE_NUM_MAX), u32::from(QUEUE_SIZE));
        assert_eq!(r32(t, VIRTIO_MMIO_QUEUE_READY), 0);
        w32(t, VIRTIO_MMIO_QUEUE_NUM, LEN.into(), mem);
        for (lo, addr) in [
            (VIRTIO_MMIO_QUEUE_DESC_LOW, q.desc_table_addr()),
            (VIRTIO_MMIO_QUEUE_AVAIL_LOW, q.avail_addr()),
            (VIRTIO_MMIO_QUEUE_USED_LOW, q.used_addr()),
        ] {
            w32(t, lo, addr.0 as u32, mem);
            w32(t, lo + 4, (addr.0 >> 32) as u32, mem);
        }
        w32(t, VIRTIO_MMIO_QUEUE_READY, 1, mem);
        w32(t, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_DRIVER_OK, mem);
        r32(t, VIRTIO_MMIO_STATUS)
    }

    /// Make `n` requests of `len` bytes available, from descriptor `first`
    /// and buffer `first` on, with `flags`.
    fn offer(q: &MockSplitQueue<GuestMemoryMmap>, mem: &GuestMemoryMmap, first: u16, n: u16, len: u32, flags: u16) {
        for i in first..first + n {
            let addr = BUFS + u64::from(i) * 0x1000;
            mem.write_slice(&vec![0u8; len as usize], GuestAddress(addr)).unwrap();
            let d = Descriptor::new(addr, len, flags, 0);
            q.desc_table().store(i % LEN, RawDescriptor::from(d)).unwrap();
            q.avail().ring().ref_at(usize::from(i % LEN)).unwrap().store(i % LEN);
        }
        q.avail().idx().store(first + n);
    }

    fn buffer(mem: &GuestMemoryMmap, i: u16, len: usize) -> Vec<u8> {
        let mut v = vec![0u8; len];
        mem.read_slice(&mut v, GuestAddress(BUFS + u64::from(i) * 0x1000)).unwrap();
        v
    }

    #[test]
    fn cmdline_names_the_window() {
        assert_eq!(cmdline_arg(0xd000_0000, 5), "virtio_mmio.device=4K@0xd0000000:5");
    }

    #[test]
    fn identifies_itself() {
        let (t, _) = rng();
        assert_eq!(r32(&t, VIRTIO_MMIO_MAGIC_VALUE), MAGIC);
        assert_eq!(r32(&t, VIRTIO_MMIO_VERSION), 2);
        assert_eq!(r32(&t, VIRTIO_MMIO_DEVICE_ID), VIRTIO_ID_RNG);
        // Narrow register reads give zeros, not a piece of a register.
        let mut b = [0xffu8; 2];
        t.read(VIRTIO_MMIO_MAGIC_VALUE.into(), &mut b);
        assert_eq!(b, [0, 0]);
    }

    #[test]
    fn rng_fills_what_the_driver_offers() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, irq) = rng();
        let status = handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        assert_ne!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0, "status {status:#x}");
        offer(&q, &mem, 0, 3, 64, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        assert_eq!(q.used().idx().load(), 3);
        let mut seen = Vec::new();
        for i in 0..3u16 {
            let e = q.used().ring().ref_at(i.into()).unwrap().load();
            assert_eq!((e.id(), e.len()), (u32::from(i), 64));
            let b = buffer(&mem, i, 64);
            assert!(b.iter().any(|&x| x != 0), "buffer {i} is all zeros");
            assert!(!seen.contains(&b), "buffer {i} repeats an earlier one");
            seen.push(b);
        }
        assert_eq!(t.device().bytes(), 192);
        // The interrupt: raised, said why, acknowledged.
        assert!(irq.eventfd().read().unwrap() >= 1);
        assert_eq!(r32(&t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        w32(&mut t, VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INT_VRING, &mem);
        assert_eq!(r32(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
    }

    #[test]
    fn read_only_buffers_complete_empty() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, _irq) = rng();
        handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        offer(&q, &mem, 0, 1, 64, 0);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        assert_eq!(q.used().idx().load(), 1);
        assert_eq!(q.used().ring().ref_at(0).unwrap().load().len(), 0);
        assert_eq!(buffer(&mem, 0, 64), vec![0u8; 64]);
    }

    #[test]
    fn features_without_version_1_are_refused() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, _irq) = rng();
        let status = handshake(&mut t, &q, 0, &mem);
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
        // Nor features the device never offered.
        let status = handshake(&mut t, &q, (1 << VIRTIO_F_VERSION_1) | 1, &mem);
        assert_eq!(status & VIRTIO_CONFIG_S_FEATURES_OK, 0);
    }

    #[test]
    fn rings_outside_memory_need_a_reset() {
        // The driver's rings lie past the end of the guest's memory (the
        // mock needs memory to write them in; the guest has less).
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let guest = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RING.0 as usize)]).unwrap();
        let mem = guest;
        let (mut t, _irq) = rng();
        let status = handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        assert_eq!(status & VIRTIO_CONFIG_S_DRIVER_OK, 0, "status {status:#x}");
        assert_ne!(status & VIRTIO_CONFIG_S_NEEDS_RESET, 0, "status {status:#x}");
        // A notification then does nothing; a reset starts over.
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        w32(&mut t, VIRTIO_MMIO_STATUS, 0, &mem);
        assert_eq!(r32(&t, VIRTIO_MMIO_STATUS), 0);
    }

    #[test]
    fn notifying_a_queue_that_does_not_exist_is_ignored() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, _irq) = rng();
        handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        offer(&q, &mem, 0, 1, 64, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 7, &mem);
        assert_eq!(q.used().idx().load(), 0);
    }

    /// A request the driver made available but the device had not taken
    /// when the live image was made: the restored device serves it when
    /// kicked at start (the driver will not notify it again), once.
    #[test]
    fn a_pending_request_is_served_after_the_restore() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, _irq) = rng();
        handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        offer(&q, &mem, 0, 1, 32, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        // The next one is made available; the snapshot comes before the
        // device sees the notification.
        offer(&q, &mem, 1, 1, 32, VRING_DESC_F_WRITE as u16);
        let state = t.state();
        drop(t);
        let mut t = MmioTransport::from_state(Rng::new(), IrqLine::new().unwrap(), &state).unwrap();
        assert_eq!(q.used().idx().load(), 1);
        t.kick(&mem).unwrap();
        assert_eq!(q.used().idx().load(), 2);
        assert_eq!(t.device().bytes(), 32);
        t.kick(&mem).unwrap();
        assert_eq!(q.used().idx().load(), 2, "nothing is done twice");
    }

    /// A ring the device cannot use (a head index past the queue) makes
    /// the device ask for a reset; the VMM goes on.
    #[test]
    fn a_broken_ring_needs_a_reset() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, irq) = rng();
        handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        q.avail().ring().ref_at(0).unwrap().store(LEN + 3);
        q.avail().idx().store(1);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        assert_ne!(r32(&t, VIRTIO_MMIO_STATUS) & VIRTIO_CONFIG_S_NEEDS_RESET, 0);
        assert_eq!(r32(&t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_CONFIG);
        assert!(irq.eventfd().read().unwrap() >= 1);
        // Until the reset, notifications are ignored; then it works again.
        offer(&q, &mem, 1, 1, 32, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        assert_eq!(q.used().idx().load(), 0);
        let q = MockSplitQueue::create(&mem, RING, LEN);
        handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        offer(&q, &mem, 0, 1, 32, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        assert_eq!(q.used().idx().load(), 1);
    }

    #[test]
    fn state_carries_the_queue_positions() {
        let mem = memory();
        let q = MockSplitQueue::create(&mem, RING, LEN);
        let (mut t, _irq) = rng();
        handshake(&mut t, &q, 1 << VIRTIO_F_VERSION_1, &mem);
        offer(&q, &mem, 0, 2, 32, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        // Saved with the interrupt not yet acknowledged, through JSON as
        // a live image stores it.
        let json = serde_json::to_string(&t.state()).unwrap();
        let state: MmioState = serde_json::from_str(&json).unwrap();
        drop(t);
        let irq = IrqLine::new().unwrap();
        let mine = IrqLine::from_eventfd(irq.eventfd().try_clone().unwrap());
        let mut t = MmioTransport::from_state(Rng::new(), irq, &state).unwrap();
        assert!(mine.eventfd().read().unwrap() >= 1, "the pending interrupt is raised again");
        assert_eq!(r32(&t, VIRTIO_MMIO_INTERRUPT_STATUS), VIRTIO_MMIO_INT_VRING);
        offer(&q, &mem, 2, 2, 32, VRING_DESC_F_WRITE as u16);
        w32(&mut t, VIRTIO_MMIO_QUEUE_NOTIFY, 0, &mem);
        // Requests 2 and 3 done, 0 and 1 not done twice.
        assert_eq!(q.used().idx().load(), 4);
        assert_eq!(t.device().bytes(), 64);
        // The interrupt register is served without the lock too.
        let isr = t.interrupt_status();
        assert_eq!(isr.get(), VIRTIO_MMIO_INT_VRING);
        isr.ack(VIRTIO_MMIO_INT_VRING);
        assert_eq!(r32(&t, VIRTIO_MMIO_INTERRUPT_STATUS), 0);
        // A state of another device type, or other queues, is refused.
        let mut other = state.clone();
        other.device_type = 2;
        assert!(MmioTransport::from_state(Rng::new(), IrqLine::new().unwrap(), &other).is_err());
        let mut other = state;
        other.queues.push(QueueSnapshot::default());
        assert!(MmioTransport::from_state(Rng::new(), IrqLine::new().unwrap(), &other).is_err());
    }
}
