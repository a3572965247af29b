// SPDX-License-Identifier: GPL-2.0

//! `vmsctl list`, `stop` and `exec`: the running VMs, through their
//! control sockets.

use std::time::Duration;

use anyhow::{bail, Result};
use clap::Args;

use crate::vmm::control::{self, Request};

/// Arguments of `vmsctl list`.
#[derive(Debug, Args)]
#[command(about = "List running VMs (started by `vmsctl run` or `live-image start`)")]
pub struct ListArgs {
    /// Print a JSON array instead of a table.
    #[arg(long)]
    json: bool,
    /// Print only the names, one per line.
    #[arg(long, conflicts_with = "json")]
    names: bool,
}

/// Arguments of `vmsctl stop`.
#[derive(Debug, Args)]
#[command(about = "Power a running VM off and end its process")]
pub struct StopArgs {
    /// The VM.
    vm: String,
}

/// Arguments of `vmsctl exec`.
#[derive(Debug, Args)]
#[command(
    about = "Run a shell command in a running guest (through the vms guest agent)",
    long_about = "Run a shell command in a running guest and print its output; exit with its \
status. The command goes to the guest's agent over the VM's second serial port \
(COM2), which the test initramfs of scripts/build-guest runs; a guest without \
the agent times out."
)]
pub struct ExecArgs {
    /// The VM.
    vm: String,
    /// Seconds to wait for the command.
    #[arg(long, default_value_t = 30)]
    timeout: u64,
    /// The command (one shell command line; quote it or put it after --).
    #[arg(required = true, trailing_var_arg = true)]
    cmd: Vec<String>,
}

/// The status of every VM that answers; stale sockets are skipped.
pub fn statuses() -> Vec<serde_json::Value> {
    control::list_names()
        .into_iter()
        .filter_map(|name| control::call(&name, &Request::Status, Duration::from_secs(5)).ok())
        .collect()
}

/// Runs `vmsctl list`.
pub fn list(args: &ListArgs) -> Result<()> {
    let vms = statuses();
    if args.json {
        println!("{}", serde_json::Value::Array(vms));
        return Ok(());
    }
    if args.names {
        for v in &vms {
            println!("{}", v["name"].as_str().unwrap_or(""));
        }
        return Ok(());
    }
    if vms.is_empty() {
        println!("no VMs running");
        return Ok(());
    }
    println!(
        "{:<20} {:>7} {:>5} {:>6} {:<20} {:>9} {:>9} {:>9}",
        "NAME", "PID", "VCPUS", "MEM", "IMAGE", "PRIVATE", "UPTIME", "START"
    );
    for v in &vms {
        let start = match v["start_us"].as_f64() {
            Some(us) => format!("{:.1}ms", us / 1000.0),
            None => "boot".to_owned(),
        };
        println!(
            "{:<20} {:>7} {:>5} {:>6} {:<20} {:>9} {:>8}s {:>9}",
            v["name"].as_str().unwrap_or(""),
            v["pid"].as_u64().unwrap_or(0),
            v["vcpus"].as_u64().unwrap_or(0),
            crate::args::format_size(v["mem_size"].as_u64().unwrap_or(0)),
            v["image"].as_str().unwrap_or("-"),
            v["clone"]["private_pages"].as_u64().map_or("-".to_owned(), |p| p.to_string()),
            v["uptime_s"].as_u64().unwrap_or(0),
            start,
        );
    }
    Ok(())
}

/// Runs `vmsctl stop`.
pub fn stop(args: &StopArgs) -> Result<()> {
    let status = control::call(&args.vm, &Request::Status, Duration::from_secs(10))?;
    let pid = status["pid"].as_i64().unwrap_or(0) as libc::pid_t;
    control::call(&args.vm, &Request::Stop, Duration::from_secs(30))?;
    // Done when the process is gone (its memory and clone with it).
    for _ in 0..3000 {
        // SAFETY: kill with signal 0 only checks that the process exists.
        if pid <= 0 || unsafe { libc::kill(pid, 0) } != 0 {
            println!("stopped {}", args.vm);
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    bail!("VM {:?} (pid {pid}) acknowledged the stop but has not exited within 30 s", args.vm)
}

/// Runs `vmsctl exec`; returns the guest command's exit status.
pub fn exec(args: &ExecArgs) -> Result<i32> {
    let cmd = args.cmd.join(" ");
    let data = control::call(
        &args.vm,
        &Request::Exec { cmd, timeout_ms: args.timeout * 1000 },
        Duration::from_secs(args.timeout + 5),
    )?;
    print!("{}", data["output"].as_str().unwrap_or(""));
    Ok(data["status"].as_i64().unwrap_or(1) as i32)
}
