// SPDX-License-Identifier: GPL-2.0

//! vms: virtual memory streaming for KVM.
//!
//! Layout: [`ffi`] is the only file that touches `kernel::bindings` or says
//! `unsafe`; it wraps each C object once. [`dev`] is `/dev/vms`, the image
//! registry and its ioctls; [`image`] the streamed, shared image pages;
//! [`clone`] a VM's memory and its two fault paths (stage 2 and the VMM's
//! mapping); [`table`] the sparse per-page table both use. [`abi`] is the
//! Rust mirror of `uapi/vms.h`, shared with userspace. See
//! docs/ARCHITECTURE.md.

use kernel::c_str;
use kernel::prelude::*;

// The ABI mirror is shared with userspace, which uses all of it.
#[path = "../uapi/src/abi.rs"]
#[allow(dead_code, unreachable_pub)]
mod abi;
mod clone;
mod dev;
mod ffi;
mod image;
mod table;

module! {
    type: Vms,
    name: "vms",
    author: "vms developers",
    description: "Virtual memory streaming for KVM",
    license: "GPL",
}

/// The module: owns the `/dev/vms` registration and the debug knobs
/// (`/sys/kernel/debug/vms`) for its lifetime.
struct Vms {
    /// KVM asks it about new memslots; `None` if another module claims
    /// (or in `drop`, which stops the claims first).
    claimer: Option<ffi::ClaimerRegistration>,
    /// `None` only in `drop`, which drains it before the registry goes.
    queue: Option<ffi::WorkQueue>,
    /// `None` only in `drop`, which ends it before the quarantine drains.
    dev: Option<Pin<KBox<ffi::MiscDevice>>>,
    /// The shrinker that takes memory back from clones; `None` only in
    /// `drop`, which stops it after the last clone is gone.
    reclaim: Option<ffi::ReclaimRegistration>,
    _debug: ffi::DebugFs,
}

impl kernel::Module for Vms {
    fn init(_module: &'static ThisModule) -> Result<Self> {
        ffi::seed_named_minors();
        let queue = ffi::WorkQueue::create()?;
        let reclaim = ffi::Reclaim::start()?;
        let dev = KBox::try_pin_init(
            ffi::MiscDevice::register(c_str!("vms"), dev::Registry::new()?),
            GFP_KERNEL,
        )?;
        // The shrinker's worker drops pages of images' caches.
        ffi::registry_publish(&dev);
        // Knobs for tests; the module works without them.
        let debug = ffi::DebugFs::create();
        // Memslots that map a clone are served from it without the VMM
        // asking (patches/0010); without the claimer they still work,
        // through the VMM's mapping.
        let claimer = ffi::ClaimerRegistration::register()
            .inspect_err(|e| {
                pr_warn!("memslots will not be claimed: another module claims them (error {})\n", e.to_errno())
            })
            .ok();
        pr_info!("vms {} loaded (abi {})\n", dev::MODULE_VERSION, abi::VMS_ABI_VERSION);
        Ok(Vms { claimer, queue: Some(queue), dev: Some(dev), reclaim: Some(reclaim), _debug: debug })
    }
}

impl Drop for Vms {
    fn drop(&mut self) {
        // No new claims; then the queued work, which may hold the last
        // references to clones; then the registry (once the shrinker's
        // worker no longer uses it): the last clones it
        // holds free their pages into the quarantine, which then drains
        // once the shrinker, which no clone needs any more, has stopped.
        drop(self.claimer.take());
        drop(self.queue.take());
        ffi::registry_withdraw();
        drop(self.dev.take());
        drop(self.reclaim.take());
        ffi::drain_quarantine();
        pr_info!("vms unloaded\n");
    }
}
