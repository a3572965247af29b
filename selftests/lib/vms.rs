// SPDX-License-Identifier: GPL-2.0

//! `/dev/vms` helpers: open the device and issue its ioctls.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;

use vms_uapi::{VmsVersion, VMS_GET_VERSION};

use crate::ksft::{self, check};

/// The vms device.
pub const VMS_DEV: &str = "/dev/vms";

/// Opens [`VMS_DEV`] read-write, returning the raw result.
pub fn __vms_open() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(VMS_DEV)
}

/// Opens [`VMS_DEV`]; skips the test if the module is not loaded (no
/// device node, or a node without a driver) or the device is not
/// accessible.
#[track_caller]
pub fn vms_open() -> File {
    match __vms_open() {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO)
            ) =>
        {
            ksft::skip(format_args!(
                "{VMS_DEV}: {} (is vms.ko loaded?)",
                ksft::strerror(e.raw_os_error().unwrap_or(0))
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => ksft::skip(format_args!(
            "{VMS_DEV}: {} (run as root)",
            ksft::strerror(libc::EACCES)
        )),
        Err(e) => check(Err(e), "open /dev/vms"),
    }
}

/// Issues ioctl `request` on `dev` with argument `arg`, returning the raw
/// result (the ioctl's non-negative return value, or its errno).
///
/// # Safety
///
/// If `request` makes the kernel read or write through `arg`, then `arg`
/// must be valid for those accesses, or an address the process does not
/// map (the kernel then fails with `EFAULT`, which is what a test of bad
/// pointers wants). It must not point at memory that Rust code relies on
/// being left unchanged.
pub unsafe fn __vms_ioctl(dev: &File, request: u32, arg: u64) -> io::Result<i32> {
    // SAFETY: `dev` is an open fd; the caller guarantees `arg` is fine
    // for `request` (see `# Safety`).
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), libc::Ioctl::from(request), arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `VMS_GET_VERSION` with the argument `v` as given (so a test can set
/// `flags` or `reserved`), returning the raw result.
pub fn __vms_get_version(dev: &File, v: &mut VmsVersion) -> io::Result<()> {
    let arg = v as *mut VmsVersion as u64;
    // SAFETY: `arg` points at a `VmsVersion`, the argument type of
    // VMS_GET_VERSION, which is valid for every bit pattern the kernel
    // may write.
    unsafe { __vms_ioctl(dev, VMS_GET_VERSION, arg) }.map(|_| ())
}

/// `VMS_GET_VERSION` with a zeroed argument, asserting that it worked.
#[track_caller]
pub fn vms_get_version(dev: &File) -> VmsVersion {
    let mut v = VmsVersion::zeroed();
    check(__vms_get_version(dev, &mut v), "VMS_GET_VERSION");
    v
}
