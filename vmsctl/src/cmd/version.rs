// SPDX-License-Identifier: GPL-2.0

//! `vmsctl version`: the versions of vmsctl, of the ABI it was built
//! against, and of the loaded module.

use std::io::{self, Write};

use clap::Args;
use serde::Serialize;
use thiserror::Error;
use vms_uapi::VMS_ABI_VERSION;

use crate::dev::{DevError, Vms, VMS_DEV};

const LONG_ABOUT: &str = "\
Show the versions of vmsctl, of the /dev/vms ABI it was built against, and
of the loaded vms module (from the VMS_GET_VERSION ioctl).

Prints three lines:

  vmsctl <version>           this program
  abi <N>                    VMS_ABI_VERSION compiled into vmsctl
  module <version> (abi <N>) the loaded module and the ABI it speaks

If the module is not loaded (no /dev/vms), the last line is
`module: not loaded (/dev/vms: <error>)` and the exit status is still 0:
a missing module is a state to report, not a failure. If /dev/vms exists
but cannot be opened (e.g. permission denied), the line is
`module: unavailable (/dev/vms: <error>)`, exit status 0 too. If the module
answers wrongly, vmsctl fails with status 1. If vmsctl and the module speak
different ABI versions, a warning goes to stderr.";

/// Arguments of `vmsctl version`.
#[derive(Debug, Args)]
#[command(
    about = "Show the versions of vmsctl, its ABI and the loaded module",
    long_about = LONG_ABOUT
)]
pub struct VersionArgs {
    /// Print one JSON object instead of lines.
    #[arg(long)]
    json: bool,
}

/// What can make `vmsctl version` fail.
#[derive(Debug, Error)]
pub enum VersionError {
    /// `/dev/vms` opened but did not answer `VMS_GET_VERSION` properly.
    #[error("{VMS_DEV}: asking the module's version")]
    Dev(#[from] DevError),
    /// Writing the report failed.
    #[error("writing the report")]
    Output(#[from] io::Error),
    /// Encoding the JSON report failed.
    #[error("encoding the report as JSON")]
    Json(#[from] serde_json::Error),
}

/// The report, as `--json` prints it.
#[derive(Debug, Serialize)]
struct Report {
    vmsctl: &'static str,
    abi: u32,
    module: Module,
}

/// The state of the module, as far as `/dev/vms` tells.
#[derive(Debug, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
enum Module {
    /// `VMS_GET_VERSION` answered.
    Loaded { version: String, abi: u32 },
    /// No `/dev/vms`, or no driver behind it.
    NotLoaded { error: String },
    /// `/dev/vms` is there but could not be opened.
    Unavailable { error: String },
}

impl Module {
    /// Asks `/dev/vms`. Only a module that opens but answers wrongly is an
    /// error; a device that does not open is a state.
    fn query() -> Result<Self, DevError> {
        let vms = match Vms::open() {
            Ok(vms) => vms,
            Err(e) => {
                let not_loaded = e.is_not_loaded();
                let error = match e {
                    DevError::Open { path, errno } => {
                        format!("{}: {} ({errno})", path.display(), errno.text())
                    }
                    other => other.to_string(),
                };
                return Ok(if not_loaded {
                    Module::NotLoaded { error }
                } else {
                    Module::Unavailable { error }
                });
            }
        };
        let v = vms.get_version()?;
        let name = v.module_version_bytes().unwrap_or_default();
        Ok(Module::Loaded {
            version: String::from_utf8_lossy(name).into_owned(),
            abi: v.abi_version,
        })
    }
}

/// Runs `vmsctl version`.
pub fn run(args: &VersionArgs) -> Result<(), VersionError> {
    let vmsctl = env!("CARGO_PKG_VERSION");
    let mut out = io::stdout().lock();

    let module = if args.json {
        let module = Module::query()?;
        let report = Report {
            vmsctl,
            abi: VMS_ABI_VERSION,
            module,
        };
        serde_json::to_writer(&mut out, &report)?;
        writeln!(out)?;
        report.module
    } else {
        // Our own versions first: they are worth seeing even if the
        // module then answers wrongly.
        writeln!(out, "vmsctl {vmsctl}")?;
        writeln!(out, "abi {VMS_ABI_VERSION}")?;
        out.flush()?;
        let module = Module::query()?;
        match &module {
            Module::Loaded { version, abi } => writeln!(out, "module {version} (abi {abi})")?,
            Module::NotLoaded { error } => writeln!(out, "module: not loaded ({error})")?,
            Module::Unavailable { error } => writeln!(out, "module: unavailable ({error})")?,
        }
        module
    };
    out.flush()?;

    if let Module::Loaded { abi, .. } = module {
        if abi != VMS_ABI_VERSION {
            eprintln!(
                "vmsctl: warning: {VMS_DEV} speaks abi {abi} but vmsctl abi \
                 {VMS_ABI_VERSION}: load the module built with this vmsctl"
            );
        }
    }
    Ok(())
}
