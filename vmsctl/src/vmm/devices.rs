// SPDX-License-Identifier: GPL-2.0

//! The devices the VMM emulates: on I/O ports COM1 (console), COM2
//! (agent channel) and the part of the i8042 keyboard controller that
//! resets the machine; in MMIO, a virtio-rng device, a virtio-blk
//! device and a virtio-net device (virtio-mmio, [`super::virtio`]). The
//! PIC, PIT, IOAPIC and LAPICs are KVM's.
//!
//! The disk is served by an I/O thread of its own: KVM signals an
//! ioeventfd when the driver writes the queue's index to the
//! QueueNotify register (no exit to the VMM), and the thread serves the
//! queue under the transport's lock. A pause for a live image takes
//! every transport's lock ([`Devices::quiesce`]) and holds it while the
//! memory is taken, so no request is half done in the image, nor done
//! between the device's state and the memory's.
//!
//! The network device has an I/O thread too, woken by its two queues'
//! ioeventfds (the driver added receive buffers, or frames to send) and by
//! frames arriving on its tap. A frame that finds no receive buffer waits
//! in the device, and the tap is not read again until the driver adds
//! buffers: the tap's own queue holds the rest, and drops what overflows
//! it, as a NIC drops frames it has no buffers for. The pause for a live
//! image drops the one frame waiting in the device, if any: a network
//! loses frames, and TCP sends them again.
//!
//! Any other port reads as all ones and ignores writes, like an ISA port
//! with nothing behind it; so does any other MMIO address.

use std::io::Write;
use std::ops::Range;
use std::path::Path;
use std::os::fd::AsRawFd;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread::JoinHandle;

use anyhow::{bail, ensure, Context, Result};
use kvm_ioctls::{IoEventAddress, VmFd};
use virtio_bindings::virtio_ids::{VIRTIO_ID_BLOCK, VIRTIO_ID_NET, VIRTIO_ID_RNG};
use virtio_bindings::virtio_mmio::{
    VIRTIO_MMIO_INTERRUPT_ACK, VIRTIO_MMIO_INTERRUPT_STATUS, VIRTIO_MMIO_QUEUE_NOTIFY, VIRTIO_MMIO_STATUS,
};
use vm_memory::GuestMemoryMmap;
use vmm_sys_util::eventfd::{EventFd, EFD_NONBLOCK};

use super::state::UartState;
use super::virtio::blk::{Blk, DiskConfig};
use super::virtio::mmio::{InterruptStatus, MmioState, MmioTransport, WINDOW};
use super::virtio::net::{Net, NetCounters, RX, TX};
use super::virtio::rng::Rng;

use super::agent::{AgentOutput, AgentWriter};
use super::layout::{
    COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, GED_IRQ, I8042_COMMAND_PORT, I8042_DATA_PORT, UART_PORTS,
    VIRTIO_BLK_BASE, VIRTIO_BLK_IRQ, VIRTIO_NET_BASE, VIRTIO_NET_IRQ, VIRTIO_RNG_BASE, VIRTIO_RNG_IRQ,
};
use super::serial::{Console, IrqLine, Uart};
use super::status::{Status, Stop};

/// The i8042 command that pulses the CPU reset line.
const I8042_RESET: u8 = 0xfe;
/// What the i8042 status register reads: "output buffer full" and never
/// anything to read. Linux's i8042 driver then finds no controller at
/// once (its flush gives up after 16 reads) instead of timing out on
/// commands, while its reboot code, which waits for "input buffer full"
/// to clear, writes the reset command without delay.
const I8042_STATUS: u8 = 0x01;

/// The emulated devices.
pub struct Devices {
    console: Mutex<Uart<Console>>,
    agent: Mutex<Uart<AgentWriter>>,
    rng: Option<Mutex<MmioTransport<Rng>>>,
    blk: Option<Arc<Mutex<MmioTransport<Blk>>>>,
    /// The disk's InterruptStatus register, served without its lock.
    blk_isr: Option<InterruptStatus>,
    net: Option<Arc<Mutex<MmioTransport<Net>>>>,
    net_isr: Option<InterruptStatus>,
    /// Wakes the network's I/O thread to look at the device's state again.
    net_wake: EventFd,
    /// Guest memory, where the virtio devices find their rings.
    mem: GuestMemoryMmap,
    status: Arc<Status>,
    /// The devices' interrupt eventfds and their IRQs, for `connect`.
    irqs: Vec<(EventFd, u32)>,
    /// The disk's and the network's I/O threads, once
    /// [`start_io`](Self::start_io) started them.
    io: Mutex<Vec<IoThread>>,
    /// The I/O threads `connect` prepared, for `start_io` to start.
    pending_io: Mutex<Vec<(&'static str, IoServe)>>,
    /// With ACPI: the generic event device's interrupt (`acpi.rs`).
    ged: Option<IrqLine>,
    /// Where COM2's output goes (for a reset's new UART).
    agent_output: Arc<AgentOutput>,
    /// The queues' ioeventfds `connect` registered, to kick them again
    /// after a reset.
    kicks: Mutex<Vec<EventFd>>,
}

/// What an I/O thread runs: it returns once the eventfd it is given is
/// signalled (when the devices drop).
type IoServe = Box<dyn FnOnce(EventFd) + Send + 'static>;

/// Which virtio devices a VM gets.
pub enum Virtio<'a> {
    /// A booting VM: with or without virtio-rng, with or without a disk,
    /// with or without a network device.
    Fresh { rng: bool, disk: Option<DiskConfig>, net: Option<Net> },
    /// A VM resuming from a snapshot: the devices it had, as they were,
    /// the live image's disk, if it had one, and where the clone's own
    /// copy-on-write overlay of it goes (a writable one); the clone's own
    /// network device (its tap and MAC), if the VM had one.
    Restore { states: &'a [MmioState], disk: Option<&'a DiskConfig>, overlay: &'a Path, net: Option<Net> },
}

/// The devices' locks, held: nothing in them moves until it drops.
pub struct Quiet<'a> {
    rng: Option<MutexGuard<'a, MmioTransport<Rng>>>,
    blk: Option<MutexGuard<'a, MmioTransport<Blk>>>,
    net: Option<MutexGuard<'a, MmioTransport<Net>>>,
}

impl Quiet<'_> {
    /// The disk for a live image: a read-only one as it is; a writable
    /// one frozen (see [`Blk::freeze`]), the VM going on in a new overlay
    /// at `freeze.0` (its old file moved to `freeze.1` first, if given).
    pub fn disk_for_image(&mut self, freeze: Option<(&Path, Option<&Path>)>) -> Result<Option<DiskConfig>> {
        let Some(blk) = self.blk.as_mut() else { return Ok(None) };
        let dev = blk.device_mut();
        if dev.config().read_only {
            return Ok(Some(dev.config().clone()));
        }
        let Some((new_top, move_to)) = freeze else {
            bail!("the VM's disk is writable: a live image freezes it, and needs a path for the VM's new overlay");
        };
        dev.freeze(new_top, move_to).map(Some)
    }

    /// Fails unless `states` (a live image's) are of exactly the virtio
    /// devices this VM has: what a reset checks before it changes
    /// anything.
    pub fn check_states(&self, states: &[MmioState]) -> Result<()> {
        let have = [(VIRTIO_ID_RNG, self.rng.is_some()), (VIRTIO_ID_BLOCK, self.blk.is_some()), (VIRTIO_ID_NET, self.net.is_some())];
        for (id, present) in have {
            let saved = states.iter().filter(|s| s.device_type == id).count();
            ensure!(
                saved == usize::from(present),
                "the live image has {saved} virtio devices of type {id}, this VM {}",
                usize::from(present)
            );
        }
        ensure!(states.len() <= have.len(), "the live image has virtio devices this VMM does not know");
        for s in states {
            match s.device_type {
                VIRTIO_ID_RNG => self.rng.as_ref().map(|t| t.check_state(s).map(drop)),
                VIRTIO_ID_BLOCK => self.blk.as_ref().map(|t| t.check_state(s).map(drop)),
                VIRTIO_ID_NET => self.net.as_ref().map(|t| t.check_state(s).map(drop)),
                _ => None,
            }
            .transpose()
            .with_context(|| format!("the live image's virtio device of type {}", s.device_type))?;
        }
        Ok(())
    }

    /// The disk back at the live image's disk `image` (a reset; see
    /// [`Blk::reset_to`]). On an error nothing changed.
    pub fn reset_disk(&mut self, image: Option<&DiskConfig>) -> Result<()> {
        match (self.blk.as_mut(), image) {
            (None, None) => Ok(()),
            (Some(blk), Some(image)) => blk.device_mut().reset_to(image),
            (Some(_), None) => bail!("the VM has a disk, its live image none"),
            (None, Some(_)) => bail!("the live image has a disk, the VM none"),
        }
    }

    /// Every virtio transport back in the live image's state (a reset,
    /// after [`check_states`](Self::check_states)); the network device
    /// off its link until the guest has its identity again.
    pub fn restore_virtio(&mut self, states: &[MmioState]) -> Result<()> {
        for s in states {
            match s.device_type {
                VIRTIO_ID_RNG => self.rng.as_mut().context("no virtio-rng")?.restore(s).context("virtio-rng")?,
                VIRTIO_ID_BLOCK => self.blk.as_mut().context("no virtio-blk")?.restore(s).context("virtio-blk")?,
                VIRTIO_ID_NET => {
                    let net = self.net.as_mut().context("no virtio-net")?;
                    net.device_mut().reset();
                    net.restore(s).context("virtio-net")?;
                }
                t => bail!("a virtio device of type {t}"),
            }
        }
        Ok(())
    }

    /// The virtio devices' states, in window order, for a snapshot.
    pub fn virtio_states(&self) -> Vec<MmioState> {
        let rng = self.rng.as_ref().map(|t| t.state());
        let blk = self.blk.as_ref().map(|t| t.state());
        let net = self.net.as_ref().map(|t| t.state());
        rng.into_iter().chain(blk).chain(net).collect()
    }
}

/// A thread that serves the disk's queue when KVM signals its ioeventfd.
struct IoThread {
    stop: EventFd,
    handle: Option<JoinHandle<()>>,
}

impl Drop for IoThread {
    fn drop(&mut self) {
        let _ = self.stop.write(1);
        if let Some(h) = self.handle.take() {
            let _ = h.join();
        }
    }
}

/// Waits until one of `fds` is ready (a negative fd is ignored), again
/// after a signal.
fn poll(fds: &mut [libc::pollfd]) -> std::io::Result<()> {
    loop {
        // SAFETY: `fds` is a slice of initialized pollfds that outlives
        // the call.
        if unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, -1) } >= 0 {
            return Ok(());
        }
        let e = std::io::Error::last_os_error();
        if e.kind() != std::io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// The disk's I/O thread: waits for `kick` (the driver notified the
/// queue) or `stop`, and serves the queue.
fn serve_disk(
    blk: Arc<Mutex<MmioTransport<Blk>>>,
    kick: EventFd,
    stop: EventFd,
    mem: GuestMemoryMmap,
    status: Arc<Status>,
) {
    loop {
        let mut fds = [
            libc::pollfd { fd: kick.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        if let Err(e) = poll(&mut fds) {
            status.stop(Stop::Failed(anyhow::Error::new(e).context("virtio-blk: poll")));
            return;
        }
        if fds[1].revents != 0 {
            return;
        }
        if fds[0].revents != 0 {
            // Non-blocking: a kick another wake-up already consumed.
            let _ = kick.read();
            if let Err(e) = lock(&blk).notify(0, &mem) {
                status.stop(Stop::Failed(e.context("virtio-blk")));
                return;
            }
        }
    }
}

/// The network's I/O thread: waits for a kick of either queue, a frame
/// on the tap (while the device can take one), `wake` (the driver's
/// status changed, or the device went back on its link) or `stop`, and
/// serves the queues.
fn serve_net(
    net: Arc<Mutex<MmioTransport<Net>>>,
    kicks: [EventFd; 2],
    wake: EventFd,
    stop: EventFd,
    mem: GuestMemoryMmap,
    status: Arc<Status>,
) {
    let link = lock(&net).device().link_fd().as_raw_fd();
    loop {
        // The tap is read only when a frame from it can go somewhere now:
        // otherwise its readiness would spin this loop. The state is read
        // afresh each time: anything that changes it (a kick, a status
        // write, the device put back on its link) wakes the thread.
        let link_ready = {
            let t = lock(&net);
            t.device().link_ready() && t.can_serve(RX)
        };
        let mut fds = [
            libc::pollfd { fd: kicks[RX].as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: kicks[TX].as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: stop.as_raw_fd(), events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: if link_ready { link } else { -1 }, events: libc::POLLIN, revents: 0 },
            libc::pollfd { fd: wake.as_raw_fd(), events: libc::POLLIN, revents: 0 },
        ];
        if let Err(e) = poll(&mut fds) {
            status.stop(Stop::Failed(anyhow::Error::new(e).context("virtio-net: poll")));
            return;
        }
        if fds[2].revents != 0 {
            return;
        }
        if fds[4].revents != 0 {
            let _ = wake.read();
        }
        let mut t = lock(&net);
        let mut result = Ok(());
        if fds[TX].revents != 0 {
            let _ = kicks[TX].read();
            result = t.notify(TX, &mem);
        }
        if fds[RX].revents != 0 || fds[3].revents != 0 || fds[4].revents != 0 {
            // New receive buffers, frames on the tap, or a device that
            // may take them now.
            let _ = kicks[RX].read();
            result = result.and_then(|()| t.notify(RX, &mem));
        }
        if let Err(e) = result {
            status.stop(Stop::Failed(e.context("virtio-net")));
            return;
        }
    }
}

/// The ports of a UART at `base`.
fn uart_ports(base: u16) -> Range<u16> {
    base..base + UART_PORTS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Device models stay usable after a panic in another vCPU thread:
    // the VM is being torn down then anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Devices {
    /// Creates the devices: their interrupts are eventfds, which
    /// [`connect`](Self::connect) makes irqfds on their ISA IRQs
    /// of a VM with an in-kernel irqchip; COM2's output goes to
    /// `agent_output`.
    ///
    /// With `uarts`, COM1 and COM2 continue from a snapshot's states.
    ///
    /// The virtio devices are `virtio`'s, on guest memory `mem`.
    ///
    /// A device restored with an interrupt pending raises it at once
    /// (vm-superio's UART does so in `Serial::from_state`); its eventfd
    /// keeps it until it is connected.
    pub fn new(
        status: Arc<Status>,
        agent_output: Arc<AgentOutput>,
        uarts: Option<&[UartState]>,
        mem: GuestMemoryMmap,
        virtio: Virtio,
        acpi: bool,
    ) -> Result<Self> {
        let mut irqs = Vec::new();
        let mut irq_line = |irq: u32| -> Result<IrqLine> {
            let line = IrqLine::new()?;
            irqs.push((line.eventfd().try_clone().context("an IRQ's eventfd")?, irq));
            Ok(line)
        };
        let console_out = Console::new(status.clone());
        let agent_out = AgentWriter(agent_output.clone());
        let (console, agent) = match uarts {
            None => (
                Uart::new(irq_line(COM1_IRQ)?, console_out),
                Uart::new(irq_line(COM2_IRQ)?, agent_out),
            ),
            Some([com1, com2]) => (
                Uart::from_state(irq_line(COM1_IRQ)?, console_out, &com1.into(), &com1.pending)?,
                Uart::from_state(irq_line(COM2_IRQ)?, agent_out, &com2.into(), &com2.pending)?,
            ),
            Some(other) => anyhow::bail!("the snapshot has {} UARTs, this VMM 2", other.len()),
        };
        let (mut rng, mut blk, mut net) = (None, None, None);
        match virtio {
            Virtio::Fresh { rng: with_rng, disk, net: with_net } => {
                if with_rng {
                    rng = Some(MmioTransport::new(Rng::new(), irq_line(VIRTIO_RNG_IRQ)?)?);
                }
                if let Some(disk) = disk {
                    blk = Some(MmioTransport::new(Blk::open(&disk)?, irq_line(VIRTIO_BLK_IRQ)?)?);
                }
                if let Some(dev) = with_net {
                    net = Some(MmioTransport::new(dev, irq_line(VIRTIO_NET_IRQ)?)?);
                }
            }
            Virtio::Restore { states, disk, overlay, net: mut new_net } => {
                for s in states {
                    match s.device_type {
                        VIRTIO_ID_RNG if rng.is_none() => {
                            let t = MmioTransport::from_state(Rng::new(), irq_line(VIRTIO_RNG_IRQ)?, s)
                                .context("restoring the virtio-rng device")?;
                            rng = Some(t);
                        }
                        VIRTIO_ID_BLOCK if blk.is_none() => {
                            let Some(disk) = disk else {
                                bail!("the snapshot has a virtio-blk device but names no disk");
                            };
                            let dev = Blk::open_clone(disk, overlay).context("the live image's disk")?;
                            let t = MmioTransport::from_state(dev, irq_line(VIRTIO_BLK_IRQ)?, s)
                                .context("restoring the virtio-blk device")?;
                            blk = Some(t);
                        }
                        VIRTIO_ID_NET if net.is_none() => {
                            let Some(dev) = new_net.take() else {
                                bail!("the live image's VM had a network device: the clone needs one (--bridge or --tap)");
                            };
                            let t = MmioTransport::from_state(dev, irq_line(VIRTIO_NET_IRQ)?, s)
                                .context("restoring the virtio-net device")?;
                            net = Some(t);
                        }
                        t => bail!("the snapshot has a virtio device of type {t} this VMM does not have (or two)"),
                    }
                }
            }
        }
        let ged = if acpi { Some(irq_line(GED_IRQ)?) } else { None };
        Ok(Self {
            console: Mutex::new(console),
            agent: Mutex::new(agent),
            rng: rng.map(Mutex::new),
            blk_isr: blk.as_ref().map(|b| b.interrupt_status()),
            blk: blk.map(|b| Arc::new(Mutex::new(b))),
            net_isr: net.as_ref().map(|n| n.interrupt_status()),
            net_wake: EventFd::new(EFD_NONBLOCK).context("an eventfd")?,
            net: net.map(|n| Arc::new(Mutex::new(n))),
            mem,
            status,
            irqs,
            io: Mutex::new(Vec::new()),
            pending_io: Mutex::new(Vec::new()),
            ged,
            agent_output,
            kicks: Mutex::new(Vec::new()),
        })
    }

    /// The virtio-mmio windows, `(base, irq)`, for the ACPI tables.
    pub fn virtio_windows(&self) -> Vec<(u64, u32)> {
        let rng = self.rng.as_ref().map(|_| (VIRTIO_RNG_BASE, VIRTIO_RNG_IRQ));
        let blk = self.blk.as_ref().map(|_| (VIRTIO_BLK_BASE, VIRTIO_BLK_IRQ));
        let net = self.net.as_ref().map(|_| (VIRTIO_NET_BASE, VIRTIO_NET_IRQ));
        rng.into_iter().chain(blk).chain(net).collect()
    }

    /// Raises the ACPI generic event device's interrupt: the guest runs
    /// its `_EVT`, which tells the VM generation ID device that the ID
    /// changed. Call it after [`connect`](Self::connect).
    pub fn raise_ged(&self) -> Result<()> {
        match &self.ged {
            Some(line) => line.eventfd().write(1).context("raising the ACPI GED interrupt"),
            None => bail!("the VM has no ACPI"),
        }
    }

    /// Connects the devices' interrupts to VM `vm`: an irqfd for each on
    /// its ISA IRQ (= GSI in KVM's default routing, to both the PIC and
    /// the IOAPIC). Call it once, after a restored VM's irqchip and vCPUs
    /// are restored and before any vCPU runs. KVM injects an eventfd
    /// that is already signalled when it is connected; connected earlier,
    /// a restored device's interrupt would be injected from a kernel
    /// worker into interrupt controllers that `KVM_SET_IRQCHIP` and
    /// `KVM_SET_LAPIC` then overwrite, or are overwriting.
    ///
    /// Then registers an ioeventfd on each queue's QueueNotify register
    /// and signals it once: a restored driver may have made requests
    /// available that the device had not yet taken when the live image
    /// was made. The I/O threads that serve the queues start in
    /// [`start_io`](Self::start_io), which may come after the vCPUs: a
    /// notification waits in its eventfd until then.
    pub fn connect(&self, vm: &VmFd) -> Result<()> {
        for (fd, irq) in &self.irqs {
            vm.register_irqfd(fd, *irq)
                .with_context(|| format!("KVM_IRQFD for IRQ {irq}"))?;
        }
        if let Some(rng) = &self.rng {
            lock(rng).kick(&self.mem).context("virtio-rng")?;
        }
        if let Some(blk) = &self.blk {
            let kick = EventFd::new(EFD_NONBLOCK).context("the disk's ioeventfd")?;
            let notify = IoEventAddress::Mmio(VIRTIO_BLK_BASE + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
            // Linux's driver writes the queue's index (0), 32 bits wide.
            vm.register_ioevent(&kick, &notify, 0u32)
                .context("KVM_IOEVENTFD for the disk's QueueNotify")?;
            kick.write(1).context("kicking the disk's queue")?;
            lock(&self.kicks).push(kick.try_clone().context("an eventfd")?);
            let (blk, mem, status) = (blk.clone(), self.mem.clone(), self.status.clone());
            lock(&self.pending_io).push(("virtio-blk", Box::new(move |stop| serve_disk(blk, kick, stop, mem, status))));
        }
        if let Some(net) = &self.net {
            let mut kicks = Vec::new();
            for (index, what) in [(RX, "receive"), (TX, "transmit")] {
                let kick = EventFd::new(EFD_NONBLOCK).context("the network's ioeventfd")?;
                let notify = IoEventAddress::Mmio(VIRTIO_NET_BASE + u64::from(VIRTIO_MMIO_QUEUE_NOTIFY));
                vm.register_ioevent(&kick, &notify, index as u32)
                    .with_context(|| format!("KVM_IOEVENTFD for the network's {what} queue"))?;
                kick.write(1).context("kicking the network's queues")?;
                lock(&self.kicks).push(kick.try_clone().context("an eventfd")?);
                kicks.push(kick);
            }
            let kicks: [EventFd; 2] = kicks.try_into().map_err(|_| anyhow::anyhow!("two queues"))?;
            let (net, mem, status) = (net.clone(), self.mem.clone(), self.status.clone());
            let wake = self.net_wake.try_clone().context("an eventfd")?;
            lock(&self.pending_io).push(("virtio-net", Box::new(move |stop| serve_net(net, kicks, wake, stop, mem, status))));
        }
        Ok(())
    }

    /// Starts the I/O threads [`connect`](Self::connect) prepared. A VM
    /// starts them right after its vCPU threads, so that its guest's first
    /// instruction does not wait for them (on a host of one CPU, they
    /// would run first).
    pub fn start_io(&self) -> Result<()> {
        let pending = std::mem::take(&mut *lock(&self.pending_io));
        for (name, serve) in pending {
            self.spawn_io(name, serve)?;
        }
        Ok(())
    }

    /// Starts I/O thread `name` running `serve`, which returns once the
    /// eventfd it is given is signalled: when the devices drop.
    fn spawn_io(&self, name: &str, serve: IoServe) -> Result<()> {
        let stop = EventFd::new(EFD_NONBLOCK).context("an eventfd")?;
        let thread_stop = stop.try_clone().context("an eventfd")?;
        let handle = std::thread::Builder::new()
            .name(name.into())
            .spawn(move || serve(thread_stop))
            .with_context(|| format!("starting I/O thread {name}"))?;
        lock(&self.io).push(IoThread { stop, handle: Some(handle) });
        Ok(())
    }


    /// A guest `in` from `port`: fills `data`.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if uart_ports(COM1_PORT).contains(&port) {
            let mut uart = lock(&self.console);
            data.iter_mut()
                .for_each(|b| *b = uart.read((port - COM1_PORT) as u8));
        } else if uart_ports(COM2_PORT).contains(&port) {
            let mut uart = lock(&self.agent);
            data.iter_mut()
                .for_each(|b| *b = uart.read((port - COM2_PORT) as u8));
        } else if port == I8042_COMMAND_PORT {
            data.fill(I8042_STATUS);
        } else if port == I8042_DATA_PORT {
            data.fill(0);
        } else {
            data.fill(0xff);
        }
    }

    /// A guest `out` of `data` to `port`.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Result<()> {
        if uart_ports(COM1_PORT).contains(&port) {
            let mut uart = lock(&self.console);
            for &b in data {
                uart.write((port - COM1_PORT) as u8, b)
                    .context("COM1 (console)")?;
            }
        } else if uart_ports(COM2_PORT).contains(&port) {
            let mut uart = lock(&self.agent);
            for &b in data {
                uart.write((port - COM2_PORT) as u8, b)
                    .context("COM2 (agent channel)")?;
            }
        } else if port == I8042_COMMAND_PORT && data.first() == Some(&I8042_RESET) {
            self.status.stop(Stop::Reset);
        }
        Ok(())
    }

    /// A guest read of `data.len()` bytes at guest-physical `addr`
    /// outside RAM.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        let rng_window = VIRTIO_RNG_BASE..VIRTIO_RNG_BASE + WINDOW;
        let blk_window = VIRTIO_BLK_BASE..VIRTIO_BLK_BASE + WINDOW;
        let net_window = VIRTIO_NET_BASE..VIRTIO_NET_BASE + WINDOW;
        if let Some(net) = self.net.as_ref().filter(|_| net_window.contains(&addr)) {
            let offset = addr - VIRTIO_NET_BASE;
            match &self.net_isr {
                Some(isr) if offset == u64::from(VIRTIO_MMIO_INTERRUPT_STATUS) && data.len() == 4 => {
                    data.copy_from_slice(&isr.get().to_le_bytes())
                }
                _ => lock(net).read(offset, data),
            }
            return;
        }
        match (&self.rng, &self.blk) {
            (Some(rng), _) if rng_window.contains(&addr) => lock(rng).read(addr - VIRTIO_RNG_BASE, data),
            (_, Some(blk)) if blk_window.contains(&addr) => {
                let offset = addr - VIRTIO_BLK_BASE;
                match &self.blk_isr {
                    // The interrupt handler's read: no wait for the disk.
                    Some(isr) if offset == u64::from(VIRTIO_MMIO_INTERRUPT_STATUS) && data.len() == 4 => {
                        data.copy_from_slice(&isr.get().to_le_bytes())
                    }
                    _ => lock(blk).read(offset, data),
                }
            }
            _ => data.fill(0xff),
        }
    }

    /// A guest write of `data` at guest-physical `addr` outside RAM.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<()> {
        let rng_window = VIRTIO_RNG_BASE..VIRTIO_RNG_BASE + WINDOW;
        let blk_window = VIRTIO_BLK_BASE..VIRTIO_BLK_BASE + WINDOW;
        let net_window = VIRTIO_NET_BASE..VIRTIO_NET_BASE + WINDOW;
        if let Some(net) = self.net.as_ref().filter(|_| net_window.contains(&addr)) {
            let offset = addr - VIRTIO_NET_BASE;
            return match (&self.net_isr, <[u8; 4]>::try_from(data)) {
                (Some(isr), Ok(v)) if offset == u64::from(VIRTIO_MMIO_INTERRUPT_ACK) => {
                    isr.ack(u32::from_le_bytes(v));
                    Ok(())
                }
                _ => {
                    lock(net).write(offset, data, &self.mem).context("virtio-net")?;
                    // A new status (DRIVER_OK, a reset): the I/O thread
                    // decides again whether to read the tap.
                    if offset == u64::from(VIRTIO_MMIO_STATUS) {
                        let _ = self.net_wake.write(1);
                    }
                    Ok(())
                }
            };
        }
        match (&self.rng, &self.blk) {
            (Some(rng), _) if rng_window.contains(&addr) => lock(rng)
                .write(addr - VIRTIO_RNG_BASE, data, &self.mem)
                .context("virtio-rng"),
            // The interrupt handler's acknowledgement, without waiting
            // for the disk; other registers under the lock. (A notify
            // the ioeventfd did not match, of another width or queue, is
            // ignored there as the transport ignores it.)
            (_, Some(blk)) if blk_window.contains(&addr) => {
                let offset = addr - VIRTIO_BLK_BASE;
                match (&self.blk_isr, <[u8; 4]>::try_from(data)) {
                    (Some(isr), Ok(v)) if offset == u64::from(VIRTIO_MMIO_INTERRUPT_ACK) => {
                        isr.ack(u32::from_le_bytes(v));
                        Ok(())
                    }
                    _ => lock(blk).write(offset, data, &self.mem).context("virtio-blk"),
                }
            }
            _ => Ok(()),
        }
    }

    /// The disk the VM uses now, if it has one (waits for a request the
    /// I/O thread is serving).
    pub fn disk(&self) -> Option<DiskConfig> {
        self.blk.as_ref().map(|b| lock(b).device().config().clone())
    }

    /// Takes every virtio device's lock, for a snapshot: with the vCPUs
    /// paused and the disk's I/O thread kept out, no device moves until
    /// the returned guard drops, and none is in the middle of a request
    /// (each serves a request whole under its lock).
    pub fn quiesce(&self) -> Quiet<'_> {
        Quiet {
            rng: self.rng.as_ref().map(lock),
            blk: self.blk.as_ref().map(|b| lock(b)),
            net: self.net.as_ref().map(|n| lock(n)),
        }
    }

    /// Puts the network device, if any, on its link or takes it off (a
    /// clone is off until its guest has its own MAC and address).
    pub fn set_net_muted(&self, muted: bool) {
        if let Some(net) = &self.net {
            lock(net).device_mut().set_muted(muted);
            let _ = self.net_wake.write(1);
        }
    }

    /// The network device's frame counters, if the VM has one.
    pub fn net_counters(&self) -> Option<NetCounters> {
        self.net.as_ref().map(|n| lock(n).device().counters())
    }

    /// How many bytes of input on COM2 the guest has not read yet.
    pub fn agent_input_unread(&self) -> usize {
        lock(&self.agent).input_unread()
    }

    /// Queues input for the guest on COM2 (the agent channel).
    pub fn queue_agent_input(&self, bytes: &[u8]) {
        lock(&self.agent).queue_input(bytes);
    }

    /// Puts the UARTs back in a live image's states (a reset, the vCPUs
    /// paused and the interrupt controllers restored already): new
    /// models on the same irqfds, which raise an interrupt that was
    /// pending in the image.
    pub fn restore_uarts(&self, uarts: &[UartState]) -> Result<()> {
        check_uarts(uarts)?;
        let [com1, com2] = uarts else { unreachable!("checked") };
        let line = |irq: u32| -> Result<IrqLine> {
            let (fd, _) = self.irqs.iter().find(|(_, i)| *i == irq).context("a UART without its IRQ")?;
            Ok(IrqLine::from_eventfd(fd.try_clone().context("an IRQ's eventfd")?))
        };
        let console = Uart::from_state(line(COM1_IRQ)?, Console::new(self.status.clone()), &com1.into(), &com1.pending)?;
        let agent = Uart::from_state(
            line(COM2_IRQ)?,
            AgentWriter(self.agent_output.clone()),
            &com2.into(),
            &com2.pending,
        )?;
        *lock(&self.console) = console;
        *lock(&self.agent) = agent;
        Ok(())
    }

    /// Kicks every queue, as `connect` does: after a reset, the restored
    /// driver may have requests waiting. The disk's and the network's
    /// through their I/O threads; virtio-rng's here.
    pub fn kick_queues(&self) -> Result<()> {
        for kick in lock(&self.kicks).iter() {
            let _ = kick.write(1);
        }
        if let Some(rng) = &self.rng {
            lock(rng).kick(&self.mem).context("virtio-rng")?;
        }
        Ok(())
    }

    /// The UARTs' states (COM1, COM2) with the input queued behind their
    /// FIFOs, for a snapshot.
    pub fn uart_states(&self) -> Vec<UartState> {
        vec![uart_state(&self.console), uart_state(&self.agent)]
    }
}

/// Fails unless `uarts` (a live image's) are the two this VMM has, each
/// with no more input in its FIFO than a FIFO holds.
pub fn check_uarts(uarts: &[UartState]) -> Result<()> {
    ensure!(uarts.len() == 2, "the live image has {} UARTs, this VMM 2", uarts.len());
    for (i, u) in uarts.iter().enumerate() {
        let s: vm_superio::serial::SerialState = u.into();
        ensure!(s.in_buffer.len() <= 64, "the live image's UART {i} holds {} bytes in a 64-byte FIFO", s.in_buffer.len());
    }
    Ok(())
}

fn uart_state<W: Write>(uart: &Mutex<Uart<W>>) -> UartState {
    let uart = lock(uart);
    let mut s = UartState::from(&uart.state());
    s.pending = uart.pending_input();
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_PIC_MASTER};
    use kvm_ioctls::Kvm;
    use std::time::{Duration, Instant};
    use vm_memory::GuestAddress;

    /// COM1 as a snapshot may leave it: its transmit-empty interrupt
    /// enabled and pending, which vm-superio raises on restore.
    fn uarts_with_com1_pending() -> [UartState; 2] {
        let mut com1 = UartState::from(&vm_superio::serial::SerialState::default());
        com1.interrupt_enable = 0x02;
        com1.interrupt_identification = 0x02;
        [com1, UartState::from(&vm_superio::serial::SerialState::default())]
    }

    fn restored_devices(uarts: &[UartState]) -> Devices {
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        Devices::new(
            Arc::new(Status::new()),
            Arc::new(AgentOutput::default()),
            Some(uarts),
            mem,
            Virtio::Restore { states: &[], disk: None, overlay: Path::new(""), net: None },
            false,
        )
        .unwrap()
    }

    /// CPU time the thread `h` used so far.
    fn thread_cpu(h: &JoinHandle<()>) -> Duration {
        use std::os::unix::thread::JoinHandleExt;
        let mut clock = 0;
        let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
        // SAFETY: the thread is alive (joined only later); both
        // out-parameters are valid for the calls.
        unsafe {
            assert_eq!(libc::pthread_getcpuclockid(h.as_pthread_t(), &mut clock), 0);
            assert_eq!(libc::clock_gettime(clock, &mut ts), 0);
        }
        Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
    }

    /// The network's I/O thread does not spin on a tap with frames that
    /// nothing can take: a driver not ready, a device that needs a reset,
    /// a muted device. (A review found it spinning with a reset pending.)
    #[test]
    fn the_network_thread_idles_when_frames_cannot_go_anywhere() {
        use std::os::unix::net::UnixDatagram;
        struct Dgram(UnixDatagram);
        impl std::io::Read for Dgram {
            fn read(&mut self, b: &mut [u8]) -> std::io::Result<usize> {
                self.0.recv(b)
            }
        }
        impl std::io::Write for Dgram {
            fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
                self.0.send(b)
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        impl std::os::fd::AsFd for Dgram {
            fn as_fd(&self) -> std::os::fd::BorrowedFd<'_> {
                self.0.as_fd()
            }
        }
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        use virtio_bindings::virtio_config::*;
        use virtio_bindings::virtio_mmio::*;
        // (driver sets DRIVER_OK without making the receive queue ready,
        // device muted)
        for (driver_ok, muted) in [(false, false), (true, false), (false, true)] {
            let (a, peer) = UnixDatagram::pair().unwrap();
            a.set_nonblocking(true).unwrap();
            let mut dev = Net::new(Box::new(Dgram(a)), [6, 0, 0, 0, 0, 1]);
            dev.set_muted(muted);
            let mut tr = MmioTransport::new(dev, IrqLine::new().unwrap()).unwrap();
            if driver_ok {
                let w = |tr: &mut MmioTransport<Net>, off: u32, v: u32| {
                    tr.write(off.into(), &v.to_le_bytes(), &mem).unwrap()
                };
                let s = VIRTIO_CONFIG_S_ACKNOWLEDGE | VIRTIO_CONFIG_S_DRIVER;
                w(&mut tr, VIRTIO_MMIO_STATUS, s);
                w(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES_SEL, 1);
                w(&mut tr, VIRTIO_MMIO_DRIVER_FEATURES, 1); // VERSION_1
                w(&mut tr, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK);
                w(&mut tr, VIRTIO_MMIO_STATUS, s | VIRTIO_CONFIG_S_FEATURES_OK | VIRTIO_CONFIG_S_DRIVER_OK);
                assert!(tr.driver_ok());
            }
            let t = Arc::new(Mutex::new(tr));
            let ev = || EventFd::new(EFD_NONBLOCK).unwrap();
            let (kicks, wake, stop) = ([ev(), ev()], ev(), ev());
            let stop2 = stop.try_clone().unwrap();
            let (t2, m2) = (t.clone(), mem.clone());
            let h = std::thread::spawn(move || serve_net(t2, kicks, wake, stop2, m2, Arc::new(Status::new())));
            for _ in 0..20 {
                peer.send(&[0xab; 60]).unwrap();
            }
            std::thread::sleep(Duration::from_millis(100));
            let before = thread_cpu(&h);
            std::thread::sleep(Duration::from_millis(500));
            let used = thread_cpu(&h) - before;
            stop.write(1).unwrap();
            h.join().unwrap();
            assert!(
                used < Duration::from_millis(50),
                "driver ok {driver_ok}, muted {muted}: the thread used {used:?} of 500 ms"
            );
        }
    }

    /// Whether the master PIC has IRQ `irq` requested, waiting up to
    /// `wait` for an irqfd's worker to inject it.
    fn pic_irr(vm: &VmFd, irq: u32, wait: Duration) -> bool {
        let start = Instant::now();
        loop {
            let mut c = kvm_irqchip { chip_id: KVM_IRQCHIP_PIC_MASTER, ..Default::default() };
            vm.get_irqchip(&mut c).unwrap();
            // SAFETY: chip_id says the union holds the PIC's state.
            let irr = unsafe { c.chip.pic.irr };
            if irr & (1 << irq) != 0 {
                return true;
            }
            if start.elapsed() >= wait {
                return false;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    /// A restored device's pending interrupt reaches the guest's restored
    /// interrupt controller: connected after `KVM_SET_IRQCHIP`, not
    /// before, where the restore overwrites what the irqfd injected.
    #[test]
    fn a_restored_interrupt_outlives_the_irqchip_restore() {
        let Ok(kvm) = Kvm::new() else {
            eprintln!("SKIP: no /dev/kvm");
            return;
        };
        let uarts = uarts_with_com1_pending();
        for connect_first in [true, false] {
            let vm = kvm.create_vm().unwrap();
            vm.create_irq_chip().unwrap();
            // The snapshot's PIC: nothing requested.
            let mut pic = kvm_irqchip { chip_id: KVM_IRQCHIP_PIC_MASTER, ..Default::default() };
            vm.get_irqchip(&mut pic).unwrap();
            let devices = restored_devices(&uarts);
            if connect_first {
                // The order before: the edge is injected at once...
                devices.connect(&vm).unwrap();
                assert!(pic_irr(&vm, COM1_IRQ, Duration::from_secs(5)));
                // ... and the restore wipes it out.
                vm.set_irqchip(&pic).unwrap();
                assert!(!pic_irr(&vm, COM1_IRQ, Duration::ZERO), "the restore keeps the edge");
            } else {
                vm.set_irqchip(&pic).unwrap();
                devices.connect(&vm).unwrap();
                assert!(
                    pic_irr(&vm, COM1_IRQ, Duration::from_secs(5)),
                    "the pending UART interrupt was injected once connected"
                );
            }
        }
    }
}
