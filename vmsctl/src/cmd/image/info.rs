// SPDX-License-Identifier: GPL-2.0

//! `vmsctl image info`: one image's counters.

use std::io::{self, Write};

use clap::Args;
use thiserror::Error;

use super::ImageReport;
use crate::args::ImageName;
use crate::cmd::{explain_named, Cause};
use crate::dev::{DevError, Vms};

const LONG_ABOUT: &str = "\
Show image NAME and its counters (VMS_IMAGE_INFO), one per line, named as
in struct vms_image_stats of vms.h:

  size          bytes of guest memory in the image
  clones        clones that use the image now
  cached_pages  pages read from the file and held in the image's cache
  file_pages    of those, the file's own page-cache pages, which clones map
                instead of a copy (no memory beyond the page cache)
  vmm_copies    copies of such pages held for VMMs' mappings of clones
                (a VMM never maps a page-cache page itself)
  dropped       pages the cache gave back under host memory pressure (an
                image made from a file, with no live image on it: pages no
                clone mapped then; a later fault streams them again)
  unmapped      pages the cache took back from clones that mapped them,
                under the same pressure (unmapped from their stage 2, and
                dropped unless mapped again before reclaim came back)
  zero_pages    pages found all-zero, served by the shared zero page
  streamed      pages read from the file (cached or zero) since creation
  read_errors   failed reads of the file
  generation    0 for an image made from a file or empty; for a live image
                (vmsctl live-image create), its parent's + 1
  children      live images layered on this image (it cannot be deleted
                while it has any)
  parent        the image a live image is layered on";

/// Arguments of `vmsctl image info`.
#[derive(Debug, Args)]
#[command(about = "Show an image's counters", long_about = LONG_ABOUT)]
pub struct InfoArgs {
    /// The image.
    name: ImageName,
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// What can make `vmsctl image info` fail.
#[derive(Debug, Error)]
pub enum InfoError {
    /// `/dev/vms` could not be opened or speaks another ABI.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The module did not report the image.
    #[error("image \"{name}\": reading its counters")]
    Info {
        /// The image.
        name: ImageName,
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

/// Runs `vmsctl image info`.
pub fn run(args: &InfoArgs) -> Result<(), InfoError> {
    let (vms, _) = Vms::open_checked()?;
    let stats = vms
        .image_info(&args.name.to_abi())
        .map_err(|e| InfoError::Info {
            name: args.name.clone(),
            cause: Cause::new(e, explain_named),
        })?;
    let report = ImageReport::new(args.name.to_string(), &stats);

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
    } else {
        report.write_info(&mut out)?;
    }
    out.flush()?;
    Ok(())
}
