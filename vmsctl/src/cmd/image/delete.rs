// SPDX-License-Identifier: GPL-2.0

//! `vmsctl image delete`: remove an image from the module.

use std::io::{self, Write};

use clap::Args;
use thiserror::Error;

use crate::args::{plural, ImageName};
use crate::cmd::{explain_named, Cause};
use crate::dev::{DevError, Errno, Vms};

const LONG_ABOUT: &str = "\
Delete image NAME: the module drops its cache and closes its file.

An image that clones use cannot be deleted (EBUSY): a clone lives as long
as its file descriptor (or a mapping of it) is open, so stop the VMs, or
the `vmsctl clone create --hold` processes, that hold them first.
Needs CAP_SYS_ADMIN.";

/// Arguments of `vmsctl image delete`.
#[derive(Debug, Args)]
#[command(about = "Delete an image that no clone uses", long_about = LONG_ABOUT)]
pub struct DeleteArgs {
    /// The image.
    name: ImageName,
}

/// What can make `vmsctl image delete` fail.
#[derive(Debug, Error)]
pub enum DeleteError {
    /// `/dev/vms` could not be opened or speaks another ABI.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The module refused to delete the image.
    #[error("image \"{name}\": deleting")]
    Delete {
        /// The image.
        name: ImageName,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// Writing the report failed.
    #[error("writing the output")]
    Output(#[from] io::Error),
}

/// Runs `vmsctl image delete`.
pub fn run(args: &DeleteArgs) -> Result<(), DeleteError> {
    let (vms, _) = Vms::open_checked()?;
    let name = args.name.to_abi();
    vms.image_delete(&name).map_err(|e| {
        let explain = |errno: Errno| {
            if errno.0 != libc::EBUSY {
                return explain_named(errno);
            }
            // Say how many clones hold it, if the module still tells.
            Some(match vms.image_info(&name) {
                Ok(s) => format!("used by {}", plural(s.clones, "clone", "clones")),
                Err(_) => "used by clones".to_owned(),
            })
        };
        DeleteError::Delete {
            name: args.name.clone(),
            cause: Cause::new(e, explain),
        }
    })?;
    let mut out = io::stdout().lock();
    writeln!(out, "image {} deleted", args.name)?;
    out.flush()?;
    Ok(())
}
