// SPDX-License-Identifier: GPL-2.0

//! `vmsctl image list`: every image and its counters.

use std::collections::BTreeSet;
use std::io::{self, Write};

use clap::Args;
use thiserror::Error;
use vms_uapi::name_bytes;

use super::{write_table, ImageReport};
use crate::cmd::Cause;
use crate::dev::{DevError, Errno, Vms};

const LONG_ABOUT: &str = "\
List the images in the module, in name order, with their counters: a table
with one row per image, or a JSON array with --json.

Columns (see `vmsctl image info --help`; counts are pages of 4096 bytes):

  NAME         the image's name
  SIZE         bytes of guest memory, with a K, M or G suffix
  CLONES       clones that use the image now
  CACHED       pages held in the image's cache
  ZERO         all-zero pages, served by the shared zero page
  STREAMED     pages read from the file since creation
  READ-ERRORS  failed reads of the file

The list is read one image at a time (VMS_IMAGE_LIST, then VMS_IMAGE_INFO);
images created or deleted meanwhile may be missing from it.";

/// Arguments of `vmsctl image list`.
#[derive(Debug, Args)]
#[command(about = "List images and their counters", long_about = LONG_ABOUT)]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
}

/// What can make `vmsctl image list` fail.
#[derive(Debug, Error)]
pub enum ListError {
    /// `/dev/vms` could not be opened or speaks another ABI.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The module did not name the `index`-th image.
    #[error("listing images: image {index}")]
    List {
        /// Which image.
        index: u32,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// The module did not report a listed image.
    #[error("image \"{name}\": reading its counters")]
    Info {
        /// The image, as the module named it.
        name: String,
        /// Why.
        #[source]
        cause: Cause,
    },
    /// Writing the report failed.
    #[error("writing the output")]
    Output(#[from] io::Error),
    /// Encoding the JSON report failed.
    #[error("encoding the report as JSON")]
    Json(#[from] serde_json::Error),
}

/// Explains the errnos of `VMS_IMAGE_LIST`; `ENOENT` ends the list.
fn explain_list(errno: Errno) -> Option<String> {
    (errno.0 == libc::EINVAL).then(|| "the module rejected the request".to_owned())
}

/// Every image in the module, in name order, with its counters.
///
/// Walks `VMS_IMAGE_LIST` from index 0 to `ENOENT`, then asks
/// `VMS_IMAGE_INFO` for each name. An image deleted in between is left
/// out, and a name seen twice (an image created meanwhile shifted the
/// indices) is listed once.
pub fn collect(vms: &Vms) -> Result<Vec<ImageReport>, ListError> {
    let mut seen = BTreeSet::new();
    let mut names = Vec::new();
    for index in 0..=u32::MAX {
        let name = match vms.image_list(index) {
            Ok(Some(name)) => name,
            Ok(None) => break,
            Err(e) => {
                return Err(ListError::List {
                    index,
                    cause: Cause::new(e, explain_list),
                })
            }
        };
        if seen.insert(name) {
            names.push(name);
        }
    }

    let mut images = Vec::with_capacity(names.len());
    for name in &names {
        let text = String::from_utf8_lossy(name_bytes(name).unwrap_or_default()).into_owned();
        match vms.image_info(name) {
            Ok(stats) => images.push(ImageReport::new(text, &stats)),
            Err(e) if e.errno() == Some(Errno(libc::ENOENT)) => {}
            Err(e) => {
                return Err(ListError::Info {
                    name: text,
                    cause: Cause::new(e, |_| None),
                })
            }
        }
    }
    Ok(images)
}

/// Runs `vmsctl image list`.
pub fn run(args: &ListArgs) -> Result<(), ListError> {
    let (vms, _) = Vms::open_checked()?;
    let images = collect(&vms)?;
    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &images)?;
        writeln!(out)?;
    } else {
        write_table(&mut out, &images)?;
    }
    out.flush()?;
    Ok(())
}
