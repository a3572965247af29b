// SPDX-License-Identifier: GPL-2.0

//! One module per subcommand: its clap arguments, its typed error and its
//! `run`. `main.rs` dispatches.
//!
//! Errors name the object and the cause, e.g.
//! `image "base": deleting: used by 2 clones (EBUSY)`: the object and the
//! operation come from the subcommand's error, the cause from [`Cause`].

pub mod clone;
pub mod image;
pub mod live_image;
pub mod qemu;
pub mod run;
pub mod stats;
pub mod version;
pub mod vm;

use thiserror::Error;

use crate::dev::{DevError, Errno};

/// Why the module refused an operation: the errno in words for that
/// operation, or the device error as it is.
#[derive(Debug, Error)]
pub enum Cause {
    /// An errno that `vms.h` lists for the operation, explained.
    #[error("{text} ({errno})")]
    Refused {
        /// What the errno means here.
        text: String,
        /// The errno.
        errno: Errno,
    },
    /// Anything else.
    #[error(transparent)]
    Dev(DevError),
}

impl Cause {
    /// Explains `e` with `explain`, this operation's words for its errnos,
    /// falling back to the words that fit every vms ioctl.
    pub fn new(e: DevError, explain: impl Fn(Errno) -> Option<String>) -> Self {
        match e.errno() {
            Some(errno) => match explain(errno).or_else(|| common(errno)) {
                Some(text) => Cause::Refused { text, errno },
                None => Cause::Dev(e),
            },
            None => Cause::Dev(e),
        }
    }
}

/// The meaning of errnos any vms ioctl can return.
fn common(errno: Errno) -> Option<String> {
    Some(
        match errno.0 {
            libc::ENOTTY => "the module does not know this request; is it older than vmsctl?",
            libc::EPERM => "not permitted: needs CAP_SYS_ADMIN",
            libc::ENOMEM => "the kernel is out of memory",
            libc::EFAULT => "the module could not access the ioctl argument: a vmsctl bug",
            _ => return None,
        }
        .to_owned(),
    )
}

/// Explains the errnos of ioctls that name an image (`vms.h`: `ENOENT`
/// for an unknown image, `EINVAL` for a malformed request).
fn explain_named(errno: Errno) -> Option<String> {
    match errno.0 {
        libc::ENOENT => Some("no such image".to_owned()),
        libc::EINVAL => Some("the module rejected the request".to_owned()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ioctl_error(errno: i32) -> DevError {
        DevError::Ioctl {
            name: "VMS_IMAGE_INFO",
            errno: Errno(errno),
        }
    }

    #[test]
    fn causes_explain_known_errnos() {
        let c = Cause::new(ioctl_error(libc::ENOENT), explain_named);
        assert_eq!(c.to_string(), "no such image (ENOENT)");
        let c = Cause::new(ioctl_error(libc::EPERM), explain_named);
        assert_eq!(c.to_string(), "not permitted: needs CAP_SYS_ADMIN (EPERM)");
    }

    #[test]
    fn causes_fall_back_to_the_c_library() {
        let c = Cause::new(ioctl_error(libc::EIO), explain_named);
        assert_eq!(c.to_string(), "VMS_IMAGE_INFO: input/output error (EIO)");
        let c = Cause::new(ioctl_error(4095), explain_named);
        assert!(c.to_string().ends_with("(errno 4095)"), "{c}");
    }
}
