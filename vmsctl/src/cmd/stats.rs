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
Show the loaded module's version and every image with its counters: the
same table as `vmsctl image list` (see its --help for the columns), after
a `module <version> (abi <N>)` line.

With --json, one object: {\"module\": {\"version\", \"abi\"}, \"images\": [...]}.

Clones appear only as the CLONES count of their image: a clone belongs to
the process that holds its file descriptor (see `vmsctl clone --help`).";

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

    let mut out = io::stdout().lock();
    if args.json {
        serde_json::to_writer(&mut out, &Report { module, images })?;
        writeln!(out)?;
    } else {
        writeln!(out, "module {} (abi {})", module.version, module.abi)?;
        write_table(&mut out, &images)?;
    }
    out.flush()?;
    Ok(())
}
