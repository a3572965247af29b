// SPDX-License-Identifier: GPL-2.0

//! The one place where vms talks to C.
//!
//! Each C object vms uses is wrapped here once, in a safe type; the rest of
//! the module uses only those types. Every `unsafe` block states why it is
//! sound. Results become errnos only at the `extern "C"` edges below.

use crate::{abi, dev};
use core::ptr::addr_of_mut;
use kernel::bindings;
use kernel::error::{from_result, to_result};
use kernel::ffi::{c_long, c_uint, c_ulong};
use kernel::init::pin_init_from_closure;
use kernel::prelude::*;
use kernel::types::{AsBytes, FromBytes, Opaque};

// SAFETY: `VmsVersion` is `repr(C)` plain old data made of integers and
// byte arrays with explicit padding: every bit pattern is valid.
unsafe impl FromBytes for abi::VmsVersion {}
// SAFETY: as above; it has no implicit padding (asserted in `abi`), so no
// uninitialised byte is ever copied to userspace.
unsafe impl AsBytes for abi::VmsVersion {}

/// `unlocked_ioctl` of `/dev/vms`.
extern "C" fn vms_ioctl(_file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
    from_result(|| Ok(dev::ioctl(cmd, arg as usize)? as c_long))
}

/// A `file_operations` table that can live in a `static`.
struct FileOps(bindings::file_operations);

// SAFETY: the table is never written after it is built; the C side only
// reads it, from any thread.
unsafe impl Sync for FileOps {}

/// The file operations of `/dev/vms`. `owner` pins the module while a file
/// is open, so rmmod waits for the last close.
static VMS_FOPS: FileOps = FileOps(bindings::file_operations {
    // Only the address of the module's own `struct module` is taken.
    owner: addr_of_mut!(bindings::__this_module),
    unlocked_ioctl: Some(vms_ioctl),
    #[cfg(CONFIG_COMPAT)]
    compat_ioctl: Some(bindings::compat_ptr_ioctl),
    // SAFETY: all-zero is a valid `file_operations`: null pointers and
    // `None` callbacks.
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
});

/// A registered misc character device, `/dev/<name>`, mode 0600.
///
/// # Invariants
///
/// `inner` is registered with `misc_register()` from construction until
/// drop, and is pinned: the misc core links it into its list.
#[pin_data(PinnedDrop)]
pub(crate) struct MiscDevice {
    #[pin]
    inner: Opaque<bindings::miscdevice>,
}

// SAFETY: after registration the misc core only reads `inner` under its own
// lock, and `MiscDevice` offers no access to it: it can move between and be
// shared by threads.
unsafe impl Send for MiscDevice {}
// SAFETY: as for `Send`.
unsafe impl Sync for MiscDevice {}

impl MiscDevice {
    /// Register `/dev/<name>` with the vms file operations.
    pub(crate) fn register(name: &'static CStr) -> impl PinInit<Self, Error> {
        let init = move |slot: *mut Self| {
            // SAFETY: `slot` is valid for writes (pin-init contract);
            // `Opaque::raw_get` only computes the field's address.
            let misc = unsafe { Opaque::raw_get(addr_of_mut!((*slot).inner)) };
            // SAFETY: `misc` is valid for writes. All-zero is a valid
            // `miscdevice` for the fields not set here.
            unsafe {
                misc.write(bindings::miscdevice {
                    minor: bindings::MISC_DYNAMIC_MINOR as _,
                    name: name.as_char_ptr(),
                    fops: &VMS_FOPS.0,
                    mode: 0o600,
                    ..core::mem::MaybeUninit::zeroed().assume_init()
                })
            };
            // INVARIANT: registered on success; on failure pin-init drops
            // nothing and `PinnedDrop` does not run.
            // SAFETY: `misc` is initialised and pinned in its final place.
            to_result(unsafe { bindings::misc_register(misc) })
        };
        // SAFETY: `init` initialises the only field of `Self` or fails
        // without leaving anything to clean up.
        unsafe { pin_init_from_closure(init) }
    }
}

#[pinned_drop]
impl PinnedDrop for MiscDevice {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `inner` is registered (type invariant).
        unsafe { bindings::misc_deregister(self.inner.get()) };
    }
}
