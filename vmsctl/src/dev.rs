// SPDX-License-Identifier: GPL-2.0

//! `/dev/vms`: opening it and every ioctl vmsctl issues, in one place.
//!
//! The ioctl numbers and argument structs come from `vms-uapi` (the mirror
//! of `uapi/vms.h`); this file is the only one that calls `ioctl(2)`.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use thiserror::Error;
use vms_uapi::{VmsVersion, VMS_GET_VERSION};

/// Where the vms module's device node lives.
pub const VMS_DEV: &str = "/dev/vms";

/// What can go wrong talking to `/dev/vms`.
#[derive(Debug, Error)]
pub enum DevError {
    /// The device could not be opened.
    #[error("cannot open {}", path.display())]
    Open {
        /// The device path.
        path: PathBuf,
        /// Why `open(2)` failed.
        source: io::Error,
    },
    /// An ioctl failed.
    #[error("{name} failed")]
    Ioctl {
        /// The ioctl's name, as in vms.h.
        name: &'static str,
        /// The errno.
        source: io::Error,
    },
    /// The module answered with something the ABI does not allow.
    #[error("{name}: module broke the ABI: {what}")]
    Abi {
        /// The ioctl's name, as in vms.h.
        name: &'static str,
        /// What is wrong with the answer.
        what: &'static str,
    },
}

impl DevError {
    /// Whether this error means the module is not loaded: no device node,
    /// or a node with no driver behind it.
    pub fn is_not_loaded(&self) -> bool {
        matches!(
            self,
            DevError::Open { source, .. }
                if matches!(source.raw_os_error(), Some(libc::ENOENT | libc::ENODEV | libc::ENXIO))
        )
    }
}

/// The result of a `/dev/vms` operation.
pub type Result<T> = std::result::Result<T, DevError>;

/// An open `/dev/vms`.
pub struct Vms {
    file: File,
}

/// An argument struct of a `/dev/vms` ioctl.
///
/// # Safety
///
/// The type is `#[repr(C)]` plain data, mirrors a struct of `vms.h`, and
/// every bit pattern is a valid value (the kernel may write any).
unsafe trait IoctlArg {}

// SAFETY: `VmsVersion` is `#[repr(C)]` of integers and integer arrays.
unsafe impl IoctlArg for VmsVersion {}

impl Vms {
    /// Opens [`VMS_DEV`].
    pub fn open() -> Result<Self> {
        Self::open_path(Path::new(VMS_DEV))
    }

    /// Opens the vms device at `path`.
    pub fn open_path(path: &Path) -> Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(|file| Self { file })
            .map_err(|source| DevError::Open {
                path: path.to_owned(),
                source,
            })
    }

    /// Issues ioctl `request` with `arg` as its argument, read and/or
    /// written by the kernel.
    ///
    /// Panics if the argument size encoded in `request` is not the size
    /// of `T`: that is a bug in the table of ioctls, not a runtime error.
    fn ioctl<T: IoctlArg>(&self, name: &'static str, request: u32, arg: &mut T) -> Result<i32> {
        let size = (request >> vms_uapi::_IOC_SIZESHIFT) & ((1 << vms_uapi::_IOC_SIZEBITS) - 1);
        assert_eq!(size as usize, size_of::<T>(), "{name}: argument size");
        // SAFETY: `arg` is an exclusive reference to a `T` whose size is
        // the one `request` encodes, so the kernel reads and writes only
        // within it; `T: IoctlArg` makes whatever it writes a valid `T`.
        let r = unsafe {
            libc::ioctl(
                self.file.as_raw_fd(),
                libc::Ioctl::from(request),
                arg as *mut T,
            )
        };
        if r < 0 {
            Err(DevError::Ioctl {
                name,
                source: io::Error::last_os_error(),
            })
        } else {
            Ok(r)
        }
    }

    /// `VMS_GET_VERSION`: the ABI and module versions of the loaded module.
    pub fn get_version(&self) -> Result<VmsVersion> {
        const NAME: &str = "VMS_GET_VERSION";
        let mut v = VmsVersion::zeroed();
        self.ioctl(NAME, VMS_GET_VERSION, &mut v)?;
        if v.module_version_bytes().is_none() {
            return Err(DevError::Abi {
                name: NAME,
                what: "module_version is not NUL-terminated",
            });
        }
        Ok(v)
    }
}
