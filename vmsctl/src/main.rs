// SPDX-License-Identifier: GPL-2.0

//! vmsctl: the command-line tool of vms.

mod args;
mod cmd;
mod dev;
mod sys;
mod vmm;

use std::process::ExitCode;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// The top-level help: what vms is. Wrapped by hand at 76 columns (clap
/// wraps only with its `wrap_help` feature).
const LONG_ABOUT: &str = "\
Control vms, virtual memory streaming for KVM.

vms lets a KVM virtual machine start from a memory image before the image is
in memory. The vms kernel module (vms.ko, device /dev/vms) hooks KVM's
stage-2 page faults: the first time the guest touches a page, the module
supplies it from the image. A VM thus resumes in the time it takes to map
the pages it actually uses.

Two kinds of objects:

  image  a guest memory dump in a file, registered in the module under a
         name (`vmsctl image create`). Immutable. The module reads each
         page from the file once, when a clone first needs it, and keeps it
         in the image's cache. Images stay until deleted.

  clone  one VM's memory, made from an image. It shares the image's pages
         until it writes one; the first write gives it a private copy of
         that page. A clone is a file descriptor: the VMM maps it and
         attaches it to its VM, and the clone is gone when the descriptor
         is closed. So one image serves many VMs, which share every page
         none of them has written.

vmsctl is also a small VMM whose guests' memory is a clone, and makes
live images of running VMs (see `vmsctl run --help`, `vmsctl live-image
--help`):

  vmsctl run --name web --kernel bzImage --initrd initrd.gz --detach
  vmsctl live-image create web web-ready    # pauses web for a few ms
  vmsctl live-image start web-ready --count 8
  vmsctl list; vmsctl exec web-ready-3 -- hostname; vmsctl stats

Start with `vmsctl version` to check that the module is loaded and speaks
the ABI vmsctl was built for, then:

  vmsctl image create base --file guest.mem
  vmsctl clone create base --read 100 --write 10
  vmsctl stats";

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
    Image(cmd::image::ImageArgs),
    Clone(cmd::clone::CloneArgs),
    Stats(cmd::stats::StatsArgs),
    // Boxed: its many options make it far larger than the others.
    Run(Box<cmd::run::RunArgs>),
    #[command(name = "live-image")]
    LiveImage(cmd::live_image::LiveImageArgs),
    List(cmd::vm::ListArgs),
    Stop(cmd::vm::StopArgs),
    Exec(cmd::vm::ExecArgs),
    Reset(cmd::vm::ResetArgs),
    Qemu(cmd::qemu::QemuArgs),
}

/// Runs the subcommand. Its typed error already names the object and the
/// cause (`image "base": deleting: used by 2 clones (EBUSY)`), so nothing
/// is added here; anyhow only prints the chain.
fn run(cli: &Cli) -> Result<()> {
    match &cli.command {
        Command::Version(args) => cmd::version::run(args)?,
        Command::Image(args) => cmd::image::run(args)?,
        Command::Clone(args) => cmd::clone::run(args)?,
        Command::Stats(args) => cmd::stats::run(args)?,
        Command::Run(args) => cmd::run::run(args)?,
        Command::LiveImage(args) => cmd::live_image::run(args)?,
        Command::List(args) => cmd::vm::list(args)?,
        Command::Stop(args) => cmd::vm::stop(args)?,
        Command::Reset(args) => cmd::vm::reset(args)?,
        Command::Qemu(args) => cmd::qemu::run(args)?,
        Command::Exec(args) => {
            let status = cmd::vm::exec(args)?;
            if status != 0 {
                std::process::exit(status.clamp(1, 255));
            }
        }
    }
    Ok(())
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

    fn parse(args: &[&str]) -> Result<Cli, clap::Error> {
        Cli::try_parse_from(std::iter::once("vmsctl").chain(args.iter().copied()))
    }

    #[test]
    fn version_takes_json() {
        let cli = parse(&["version", "--json"]).unwrap();
        assert!(matches!(cli.command, Command::Version(_)));
    }

    #[test]
    fn subcommands_parse() {
        for args in [
            &["image", "create", "base", "--file", "/tmp/x"][..],
            &[
                "image", "create", "base", "--file", "x", "--size", "1G", "--offset", "4K",
            ],
            &["image", "info", "base", "--json"],
            &["image", "list"],
            &["image", "delete", "base"],
            &[
                "clone", "create", "base", "--read", "3", "--write", "1", "--hold",
            ],
            &["stats", "--json"],
            &["reset", "web-3"],
            &["qemu", "live-image", "create", "--qmp", "/tmp/q", "web", "web-ready"],
            &["qemu", "start", "web-ready", "--count", "2", "--", "-m", "256M", "mem-path={clone}"],
            &["reset", "web-3", "--json", "--timeout", "60"],
            &[
                "run", "--name", "t", "--kernel", "bz", "--initrd", "rd", "--mem", "1G", "--cpus",
                "2",
            ],
        ] {
            parse(args).unwrap_or_else(|e| panic!("{args:?}: {e}"));
        }
    }

    #[test]
    fn bad_values_are_usage_errors() {
        for args in [
            &["image", "create", "a b", "--file", "x"][..],
            &["image", "create", "base"],
            &["image", "create", "base", "--file", "x", "--size", "1T"],
            &["image", "info", &"x".repeat(32)],
            &["clone", "create", "base", "--read", "-1"],
            &["run", "--name", "t", "--kernel", "bz", "--initrd", "rd", "--mem", "4G"],
            &["run", "--name", "t", "--kernel", "bz", "--initrd", "rd", "--cpus", "0"],
            &["run", "--name", "a/b", "--kernel", "bz", "--initrd", "rd"],
        ] {
            let e = parse(args).expect_err(&format!("{args:?} parsed"));
            assert_ne!(e.kind(), clap::error::ErrorKind::DisplayHelp);
        }
    }
}
