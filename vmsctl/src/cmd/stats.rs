// SPDX-License-Identifier: GPL-2.0

//! `vmsctl stats`: the module's version and every image's counters.

use std::io::{self, Write};

use clap::Args;
use serde::Serialize;
use thiserror::Error;

use crate::cmd::image::list::{collect, ListError};
use crate::cmd::image::{write_table, ImageReport};
use crate::dev::{DevError, Vms};

const LONG_ABOUT: &str = "\
Show the loaded module's version, every image with its counters (the same
table as `vmsctl image list`, see its --help for the columns), and every
running VM with the counters of its memory (a vms clone):

  PRIVATE   pages the VM has its own copy of (written since it started or
            since its last live image); all others are shared with the image
  SHARED    faults answered with an image page (shared, not copied)
  ZERO      faults answered with the shared zero page
  STREAMED  image pages this VM caused to be read from the image's file
  COW       private copies made on first write
  SWAPPED   for a VM with --mem-limit or --swap-dir, its private pages in
            its swap file now (--json: \"footprint\", with the limit, the
            pages in memory, evicted (\"shrunk\": of those, under host
            memory pressure) and read back in all, failed writes, and
            \"throttled\": guest and VMM faults that waited for the
            swap file's writes, the VM at its limit)
  DISK      the disk file the VM writes, as allocated on the host (for a
            clone, its own copy-on-write overlay: what it wrote)
  PREFETCH  for a clone that prefetched its live image's working set
            (live-image record, run --prefetch): the mode, the set's
            pages, and the pages it used outside the set since (misses);
            --json also gives the pages mapped, the time, and in mode
            cache the hits (pages of the set it used)

With --json, one object: {\"module\": {\"version\", \"abi\"}, \"images\":
[...], \"vms\": [...]} (a VM's entry is what `vmsctl list --json` shows).

Clones made by hand (`vmsctl clone`) appear only in their image's CLONES
count: a clone belongs to the process that holds its file descriptor.";

/// Arguments of `vmsctl stats`.
#[derive(Debug, Args)]
#[command(about = "Show the module version and all images' counters", long_about = LONG_ABOUT)]
pub struct StatsArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// What can make `vmsctl stats` fail.
#[derive(Debug, Error)]
pub enum StatsError {
    /// `/dev/vms` could not be opened or speaks another ABI.
    #[error(transparent)]
    Dev(#[from] DevError),
    /// The images could not be listed.
    #[error(transparent)]
    List(#[from] ListError),
    /// Writing the report failed.
    #[error("writing the output")]
    Output(#[from] io::Error),
    /// Encoding the JSON report failed.
    #[error("encoding the report as JSON")]
    Json(#[from] serde_json::Error),
}

/// The report, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    module: Module,
    images: Vec<ImageReport>,
    vms: Vec<serde_json::Value>,
}

/// The loaded module.
#[derive(Debug, Serialize)]
struct Module {
    version: String,
    abi: u32,
}

/// Runs `vmsctl stats`.
pub fn run(args: &StatsArgs) -> Result<(), StatsError> {
    let (vms, version) = Vms::open_checked()?;
    let module = Module {
        version: String::from_utf8_lossy(version.module_version_bytes().unwrap_or_default())
            .into_owned(),
        abi: version.abi_version,
    };
    let images = collect(&vms)?;
    let running = crate::cmd::vm::statuses();

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &Report { module, images, vms: running })?;
        writeln!(out)?;
    } else {
        writeln!(out, "module {} (abi {})", module.version, module.abi)?;
        write_table(&mut out, &images)?;
        write_vms(&mut out, &running)?;
    }
    out.flush()?;
    Ok(())
}

/// The running VMs and their memory counters, or nothing if none runs.
fn write_vms(out: &mut impl Write, vms: &[serde_json::Value]) -> io::Result<()> {
    if vms.is_empty() {
        return Ok(());
    }
    writeln!(out)?;
    writeln!(
        out,
        "{:<20} {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  PREFETCH",
        "VM", "IMAGE", "PRIVATE", "SHARED", "ZERO", "STREAMED", "COW", "SWAPPED", "DISK"
    )?;
    for v in vms {
        let c = &v["clone"];
        let n = |k: &str| c[k].as_u64().map_or("-".to_owned(), |n| n.to_string());
        // The disk file the VM writes, as allocated (a clone's overlay:
        // only what it wrote), in KiB.
        let disk = v["disk"]["allocated"].as_u64().map_or("-".to_owned(), |b| format!("{}K", b / 1024));
        // The working set prefetched at its start: mode, pages, and the
        // pages it used outside the set since.
        let p = &v["prefetch"];
        let prefetch = match p["mode"].as_str() {
            Some(mode) => format!(
                "{mode}: {} pages, {} missed",
                p["pages"].as_u64().unwrap_or(0),
                p["misses"].as_u64().map_or("?".to_owned(), |m| m.to_string())
            ),
            None => "-".to_owned(),
        };
        writeln!(
            out,
            "{:<20} {:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {}",
            v["name"].as_str().unwrap_or(""),
            v["image"].as_str().unwrap_or("-"),
            n("private_pages"),
            n("shared_maps"),
            n("zero_maps"),
            n("streamed"),
            n("cow_copies"),
            v["footprint"]["swapped"].as_u64().map_or("-".to_owned(), |n| n.to_string()),
            disk,
            prefetch,
        )?;
    }
    Ok(())
}
