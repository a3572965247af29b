// SPDX-License-Identifier: GPL-2.0

//! vmsctl: the command-line tool of vms.

mod cmd;
mod dev;

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};

/// The top-level help: what vms is. Wrapped by hand at 76 columns (clap
/// wraps only with its `wrap_help` feature).
const LONG_ABOUT: &str = "\
Control vms, virtual memory streaming for KVM.

vms lets a KVM virtual machine start from a memory image before the image is
in memory. The vms kernel module (vms.ko, device /dev/vms) hooks KVM's
stage-2 page faults: the first time the guest touches a page, the module
supplies it from the image. A VM thus resumes in the time it takes to map
the pages it actually uses, and many clones of one image share every page
that none of them has written (a written page is copied for that clone
only).

vmsctl talks to /dev/vms. Start with `vmsctl version` to check that the
module is loaded and speaks the ABI vmsctl was built for.";

/// The top-level command line.
#[derive(Debug, Parser)]
#[command(
    name = "vmsctl",
    version,
    about = "Control vms, virtual memory streaming for KVM",
    long_about = LONG_ABOUT
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

/// The subcommands; each lives in its own module under `cmd/`.
#[derive(Debug, Subcommand)]
enum Command {
    Version(cmd::version::VersionArgs),
}

fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Version(args) => cmd::version::run(args).context("version"),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(&cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmsctl: {e:#}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn version_takes_json() {
        let cli = Cli::try_parse_from(["vmsctl", "version", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Version(_)));
    }
}
