// SPDX-License-Identifier: GPL-2.0

//! `vmsctl list`, `stop`, `exec` and `reset`: the running VMs, through
//! their control sockets.

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

/// Arguments of `vmsctl reset`.
#[derive(Debug, Args)]
#[command(
    about = "Put a running VM back at its live image, in place",
    long_about = "Put a running VM back at its live image, in place: the memory it wrote since \
(its clone's private pages, dropped in the kernel, and the blocks of its swap file if it has \
one), its vCPUs, its devices and its disk go back \
to what the live image holds, and the VM goes on from there with a fresh identity. The live \
image is the last one made of the VM (`live-image create`), else the one it was started from \
(`live-image start`, `run --image`). A warm VM is then ready for the next request far sooner \
than a new clone would be.

What the guest sees: the instant the image was made, as a new clone does. Its writes since are \
gone, its disk's too; its CRNG is reseeded from the host and its clock set to the host's \
(vms-resume, through the agent); a clone keeps its name, MAC and address (vms-identity). A \
command running through `vmsctl exec` fails with \"the VM was reset\".

  vmsctl live-image start web-ready --count 4
  vmsctl exec web-ready-1 -- 'serve-one-request'
  vmsctl reset web-ready-1        # as it was in web-ready, in milliseconds

A VM booted with --no-vms, or booted and never made a live image of, has nothing to go back to \
and is left as it is."
)]
pub struct ResetArgs {
    /// The VM.
    vm: String,
    /// Seconds to wait for the guest agent to take the new identity.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// Print the timings as JSON.
    #[arg(long)]
    json: bool,
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

/// Runs `vmsctl reset`.
pub fn reset(args: &ResetArgs) -> Result<()> {
    let data = control::call(
        &args.vm,
        &Request::Reset { timeout_ms: args.timeout * 1000 },
        Duration::from_secs(args.timeout + 35),
    )?;
    if args.json {
        println!("{data}");
        return Ok(());
    }
    let ms = |k: &str| data[k].as_f64().unwrap_or(0.0) / 1000.0;
    println!(
        "reset {} to live image {}: paused {:.1} ms ({} private pages dropped), identity {:.1} ms, {:.1} ms in all",
        args.vm,
        data["image"].as_str().unwrap_or("?"),
        ms("paused_us"),
        data["private_pages_dropped"].as_u64().unwrap_or(0),
        ms("identity_us"),
        ms("total_us"),
    );
    Ok(())
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
