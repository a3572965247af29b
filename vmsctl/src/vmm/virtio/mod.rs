// SPDX-License-Identifier: GPL-2.0

//! virtio devices on the virtio-mmio transport (virtio 1.2, section 4.2,
//! the "modern" register layout, version 2, only).
//!
//! What is whose:
//! - the virtqueues (split rings: descriptor table, available and used
//!   rings, their walking and bounds checks) are rust-vmm's
//!   `virtio-queue`, the register and feature numbers `virtio-bindings`;
//! - the MMIO transport ([`mmio`]) is written here: rust-vmm's
//!   `virtio-device` crate has one, but it is not published on crates.io
//!   (it depends on `virtio-bindings` by path, without a version), and
//!   Firecracker's and Cloud Hypervisor's are parts of their VMMs. It is
//!   the register file of section 4.2.2 and a few hundred lines;
//! - the devices ([`rng`], [`blk`], [`net`]) are written here too, on
//!   those queues, and the host end of the network ([`tap`]).
//!
//! A device serves its queues when the driver notifies one
//! ([`VirtioDevice::process_queue`]), in the thread that handled the
//! notification, and raises its interrupt through an [`IrqLine`] (an
//! irqfd) when the ring says the driver wants one. virtio-rng is served
//! in the vCPU thread whose MMIO write notified it (a getrandom(2) call);
//! virtio-blk in an I/O thread of its own, which KVM wakes through an
//! ioeventfd on the notify register, so a vCPU never waits for the disk;
//! virtio-net in one of its own, woken by its two queues' ioeventfds and
//! by frames arriving on its tap.

pub mod blk;
pub mod disk;
pub mod mmio;
pub mod net;
pub mod rng;
pub mod tap;

use anyhow::Result;
use virtio_queue::Queue;
use vm_memory::GuestMemoryMmap;

pub use mmio::MmioState;

/// A virtio device behind a transport: its identity, features and
/// configuration space, and what it does with its queues.
pub trait VirtioDevice: Send {
    /// The device type (`virtio_bindings::virtio_ids`).
    fn device_type(&self) -> u32;

    /// The most descriptors each queue may have; the length is the number
    /// of queues.
    fn queue_max_sizes(&self) -> &[u16];

    /// The device-specific feature bits it offers. The transport adds
    /// `VIRTIO_F_VERSION_1`.
    fn features(&self) -> u64;

    /// Read `data.len()` bytes of the configuration space at `offset`.
    /// Bytes past its end read as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]);

    /// A driver's write to the configuration space; ignored by devices
    /// whose configuration is read-only.
    fn write_config(&mut self, _offset: u64, _data: &[u8]) {}

    /// Take the requests the driver made available on queue `index` and
    /// complete what can be completed now. Returns whether anything was
    /// added to the used ring (the transport then decides, from the ring,
    /// whether to interrupt the driver).
    fn process_queue(&mut self, index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool>;

    /// The driver reset the device: drop whatever the device keeps of the
    /// driver's requests.
    fn reset(&mut self) {}
}
