// SPDX-License-Identifier: GPL-2.0

//! `vmsctl qemu`: live images and clones of guests that an unmodified
//! QEMU runs on a named clone (issue 17, deliverable 3).
//!
//! The guest's RAM is a named clone (`/dev/vms-clone/NAME`, QEMU's
//! `memory-backend-file,share=on`). A live image of it is the clone's
//! memory, taken by `VMS_IMAGE_SNAPSHOT` without a copy, plus QEMU's
//! device state, saved by QEMU's own migration to a file with the
//! `x-ignore-shared` capability, which leaves out RAM in shared files.
//! A clone of the image is a new named clone and a QEMU started with the
//! same arguments and `-incoming`, which loads the device state and
//! finds the memory in place. Research behind it:
//! docs/plans/2026-12-04-qemu-ignore-shared.md.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};
use clap::{Args, Subcommand};
use serde_json::json;

use crate::args::ImageName;
use crate::dev::{CloneFd, Vms};
use crate::vmm::agent::exec_on_stream;
use crate::vmm::control;
use crate::vmm::qmp::Qmp;

const LONG_ABOUT: &str = "\
Live images and clones of guests run by an unmodified QEMU on a named vms
clone (`vmsctl clone create IMAGE --name NAME`, then QEMU with
-object memory-backend-file,id=ram,mem-path=/dev/vms-clone/NAME,share=on,size=SIZE
-machine memory-backend=ram).

`qemu live-image create` pauses the guest through QEMU's QMP socket, saves
QEMU's device state with QEMU's migration (capability x-ignore-shared: the
RAM of a shared file is not copied), makes live image IMAGE of the clone's
memory (VMS_IMAGE_SNAPSHOT, no copy), and lets the guest go on.

`qemu start` starts clones of it: for each, a named clone of IMAGE and a
QEMU run with your arguments, in which {clone} stands for the clone's path
and {name} for the clone's name, plus `-incoming defer` and a QMP socket of
vmsctl's. Give the same machine, devices, memory size and memory backend id
as the guest the image was made of. Each QEMU loads the device state, finds
the memory in the clone, and resumes where the guest was.

  vmsctl clone create base --name web
  qemu-system-x86_64 -accel kvm -m 256M -qmp unix:/tmp/web.qmp,server=on,wait=off \\
    -object memory-backend-file,id=ram,mem-path=/dev/vms-clone/web,share=on,size=256M \\
    -machine pc,memory-backend=ram ... &
  vmsctl qemu live-image create --qmp /tmp/web.qmp web web-ready
  vmsctl qemu start web-ready --count 4 -- -accel kvm -m 256M \\
    -object memory-backend-file,id=ram,mem-path={clone},share=on,size=256M \\
    -machine pc,memory-backend=ram ...

Identity: with --agent PATH ({name} in it), vmsctl speaks to the vms guest
agent on that unix socket (a COM2 of `-serial unix:PATH,server=on,wait=off`)
and runs vms-identity, as for its own clones: a reseeded CRNG, the host's
clock, the clone's name. A NIC's MAC is in the device state a clone loads
(QEMU's mac= option does not change it): with --mac, the agent also gives
the guest's eth0 a MAC of the clone's own, which the guest tells QEMU
(virtio-net's MAC-set command; `query-rx-filter` shows it).

A live image of a QEMU guest saves to a file and loads from it as
vmsctl's own do (`vmsctl live-image save IMAGE FILE`, `load FILE`): the
file carries QEMU's device state, and a host that loads it from shared
storage starts clones whose pages stream from that file.

The clones run on after vmsctl exits; stop one by ending its QEMU (its pid
is printed), then `vmsctl clone delete NAME`; `vmsctl live-image delete
IMAGE` deletes the image and its device state once no clone uses it.
The guest must be running; x-ignore-shared is set only for the save and
the load, and put back as it was.";

/// Arguments of `vmsctl qemu`.
#[derive(Debug, Args)]
#[command(about = "Live images and clones of guests an unmodified QEMU runs on a named clone", long_about = LONG_ABOUT)]
pub struct QemuArgs {
    #[command(subcommand)]
    command: QemuCommand,
}

#[derive(Debug, Subcommand)]
enum QemuCommand {
    #[command(name = "live-image")]
    LiveImage {
        #[command(subcommand)]
        command: LiveCommand,
    },
    /// Start clones of live image IMAGE, each in its own QEMU.
    Start {
        /// The live image (made by `qemu live-image create`).
        image: ImageName,
        /// How many clones.
        #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=64))]
        count: u32,
        /// The clones' names are PREFIX-1, PREFIX-2, ... (default: the image's name).
        #[arg(long)]
        name_prefix: Option<String>,
        /// A unix socket of the guest agent, {name} the clone's name; the
        /// clone gets its identity through it.
        #[arg(long, value_name = "PATH")]
        agent: Option<String>,
        /// Give each clone's NIC its own MAC through the agent (needs
        /// --agent): `auto` gives clone N 06:76:6d:00:00:N, as vmsctl's
        /// own clones get; a MAC gives it to the first clone, and the
        /// next clones the following ones. QEMU's `mac=` option cannot:
        /// the device state a clone loads carries the image's MAC.
        #[arg(long, value_name = "auto|MAC")]
        mac: Option<String>,
        /// The QEMU binary.
        #[arg(long, default_value = "qemu-system-x86_64")]
        qemu: String,
        /// QEMU's arguments ({clone}: the clone's path; {name}: its name).
        #[arg(required = true, last = true)]
        args: Vec<String>,
    },
    /// Run a shell command in a QEMU guest through the vms guest agent on
    /// a unix socket (`-serial unix:PATH,server=on,wait=off` as COM2).
    Exec {
        /// The agent's socket.
        #[arg(long, value_name = "PATH")]
        agent: PathBuf,
        /// Seconds to wait for the command.
        #[arg(long, default_value_t = 30)]
        timeout: u64,
        /// The command (one shell command line; quote it or put it after --).
        #[arg(required = true, trailing_var_arg = true)]
        cmd: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
enum LiveCommand {
    /// Make live image IMAGE of the QEMU guest whose RAM is named clone CLONE.
    Create {
        /// QEMU's QMP socket (`-qmp unix:PATH,server=on,wait=off`).
        #[arg(long, value_name = "SOCKET")]
        qmp: PathBuf,
        /// The named clone that is the guest's RAM.
        clone: ImageName,
        /// The new image's name.
        image: ImageName,
    },
}

/// Runs `vmsctl qemu`.
pub fn run(args: &QemuArgs) -> Result<()> {
    match &args.command {
        QemuCommand::Exec { agent, timeout, cmd } => {
            let mut stream = std::os::unix::net::UnixStream::connect(agent)
                .with_context(|| format!("the guest agent's socket {}", agent.display()))?;
            let reply = exec_on_stream(&mut stream, &cmd.join(" "), Duration::from_secs(*timeout))?;
            std::io::stdout().write_all(&reply.output)?;
            if reply.status != 0 {
                std::process::exit(reply.status.clamp(1, 255));
            }
            Ok(())
        }
        QemuCommand::LiveImage { command: LiveCommand::Create { qmp, clone, image } } => create(qmp, clone, image),
        QemuCommand::Start { image, count, name_prefix, agent, mac, qemu, args } => {
            ensure!(
                *count == 1 || agent.as_ref().is_none_or(|a| a.contains("{name}")),
                "--agent {}: with --count above 1 each clone needs its own socket: put {{name}} in the path",
                agent.as_deref().unwrap_or("")
            );
            ensure!(mac.is_none() || agent.is_some(), "--mac: the guest sets the MAC itself, through the agent: give --agent");
            let macs = clone_macs(mac.as_deref(), *count)?;
            let prefix = name_prefix.clone().unwrap_or_else(|| image.to_string());
            for i in 1..=*count {
                let name = format!("{prefix}-{i}");
                let mac = macs.as_ref().map(|m| m[i as usize - 1].as_str());
                start_one(image, &name, i, agent.as_deref(), mac, qemu, args)
                    .with_context(|| format!("QEMU clone {name}"))?;
            }
            Ok(())
        }
    }
}

/// The MACs of `count` clones for `--mac` (`auto`, or the first one's).
fn clone_macs(mac: Option<&str>, count: u32) -> Result<Option<Vec<String>>> {
    use crate::vmm::virtio::net::{format_mac, mac_for, parse_mac};
    let Some(mac) = mac else { return Ok(None) };
    if mac == "auto" {
        return Ok(Some((1..=count).map(|i| format_mac(mac_for(i))).collect()));
    }
    let first = parse_mac(mac).with_context(|| format!("--mac {mac}"))?;
    let low = u32::from_be_bytes([0, first[3], first[4], first[5]]);
    ensure!(
        low + (count - 1) <= 0xff_ffff,
        "--mac {mac}: {count} clones would run past {}:ff:ff:ff",
        mac.get(..8).unwrap_or(mac)
    );
    Ok(Some(
        (0..count)
            .map(|i| {
                let b = (low + i).to_be_bytes();
                format_mac([first[0], first[1], first[2], b[1], b[2], b[3]])
            })
            .collect(),
    ))
}

/// Where live image `image` keeps QEMU's device state.
pub fn device_state_path(image: &str) -> PathBuf {
    control::run_dir().join("images").join(format!("{image}.qemu"))
}

fn create(qmp_path: &Path, clone_name: &ImageName, image: &ImageName) -> Result<()> {
    let what = format!("QEMU live image {image} of clone {clone_name}");
    let state = device_state_path(&image.to_string());
    ensure!(!state.exists(), "{what}: {} exists", state.display());
    std::fs::create_dir_all(state.parent().expect("has a parent"))?;
    let (vms, _) = Vms::open_checked()?;
    ensure!(vms.image_info(&image.to_abi()).is_err(), "{what}: an image named {image} exists");
    let clone = CloneFd::open_named(&clone_name.to_string()).with_context(|| format!("{what}: opening /dev/vms-clone/{clone_name}"))?;
    let mut qmp = Qmp::connect(qmp_path, Duration::from_secs(5)).with_context(|| what.clone())?;
    let was = qmp.status()?;
    // A paused guest would be left in QEMU's "postmigrate" state, which
    // refuses the next migration until a `cont`.
    ensure!(was == "running", "{what}: the guest is {was}; it must be running");
    // Written aside and renamed once the image exists: a failure or a
    // kill leaves no device state that a clone could take for the image's.
    let tmp = state.with_extension(format!("qemu.tmp-{}", std::process::id()));
    let t0 = Instant::now();
    qmp.execute("stop", json!({}))?;
    // Device state first, while nothing in the kernel has changed: if
    // it fails, the guest goes on as it was.
    let saved = qmp.with_capability("x-ignore-shared", |qmp| {
        qmp.execute("migrate", json!({ "uri": format!("file:{}", tmp.display()) }))?;
        qmp.wait_migration(Duration::from_secs(120))
    });
    let made = saved.and_then(|()| {
        vms.image_snapshot(&image.to_abi(), &clone)
            .with_context(|| format!("making live image {image} (VMS_IMAGE_SNAPSHOT)"))
    });
    let made = made.and_then(|()| {
        std::fs::rename(&tmp, &state).with_context(|| format!("{}: renaming to {}", tmp.display(), state.display()))
    });
    let paused = t0.elapsed();
    let resumed = qmp.execute("cont", json!({})).map(drop);
    if let Err(e) = made {
        let _ = std::fs::remove_file(&tmp);
        let _ = resumed;
        return Err(e.context(what));
    }
    resumed.with_context(|| format!("{what}: resuming the guest"))?;
    let bytes = std::fs::metadata(&state).map(|m| m.len()).unwrap_or(0);
    let pages = vms.image_info(&image.to_abi()).map(|s| s.cached_pages).unwrap_or(0);
    println!(
        "live image {image} made of QEMU guest on clone {clone_name}: guest paused {:.1} ms ({pages} pages taken \
         without copying, device state {} KiB)",
        paused.as_secs_f64() * 1000.0,
        bytes / 1024
    );
    Ok(())
}

/// `args` with {clone} and {name} filled in.
fn fill(args: &[String], clone: &str, name: &str) -> Vec<String> {
    args.iter().map(|a| a.replace("{clone}", clone).replace("{name}", name)).collect()
}

fn start_one(
    image: &ImageName,
    name: &str,
    id: u32,
    agent: Option<&str>,
    mac: Option<&str>,
    qemu: &str,
    args: &[String],
) -> Result<()> {
    let t0 = Instant::now();
    let state = device_state_path(&image.to_string());
    ensure!(
        state.exists(),
        "live image {image} has no QEMU device state ({}): make it with `vmsctl qemu live-image create`",
        state.display()
    );
    ensure!(
        args.iter().any(|a| a.contains("{clone}")),
        "QEMU's arguments must name the clone's path as {{clone}} (mem-path={{clone}})"
    );
    let clone_name: ImageName = name.parse().map_err(|e| anyhow::anyhow!("clone name {name:?}: {e}"))?;
    let (vms, _) = Vms::open_checked()?;
    let clone = vms.clone_create(&image.to_abi()).with_context(|| format!("cloning live image {image}"))?;
    vms.clone_name(&clone_name.to_abi(), &clone).with_context(|| format!("naming the clone {name}"))?;
    crate::dev::guard_named_dir();
    drop(clone);
    // Until the clone runs, an error removes its name (and so the clone).
    let mut unname = Unname { vms: &vms, name: Some(clone_name.clone()) };
    let path = format!("/dev/vms-clone/{name}");
    let dir = control::run_dir().join("qemu");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let qmp_path = dir.join(format!("{name}.qmp"));
    let _ = std::fs::remove_file(&qmp_path);
    let log_path = dir.join(format!("{name}.log"));
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let mut cmd = Command::new(qemu);
    cmd.args(fill(args, &path, name))
        .arg("-incoming")
        .arg("defer")
        .arg("-qmp")
        .arg(format!("unix:{},server=on,wait=off", qmp_path.display()))
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // Its own process group: the clone outlives vmsctl and its terminal.
    std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
    let mut child = cmd.spawn().with_context(|| format!("starting {qemu}"))?;
    let pid = child.id();
    let result = (|| -> Result<()> {
        // QEMU makes its QMP socket at once, or exits (bad arguments).
        let deadline = Instant::now() + Duration::from_secs(60);
        while !qmp_path.exists() {
            if let Some(status) = child.try_wait()? {
                bail!("QEMU exited ({status}) before it listened on QMP");
            }
            ensure!(Instant::now() < deadline, "QEMU made no QMP socket within 60 s");
            std::thread::sleep(Duration::from_millis(20));
        }
        let mut qmp = Qmp::connect(&qmp_path, Duration::from_secs(10))?;
        qmp.with_capability("x-ignore-shared", |qmp| {
            qmp.execute("migrate-incoming", json!({ "uri": format!("file:{}", state.display()) }))?;
            qmp.wait_migration(Duration::from_secs(120))
        })?;
        qmp.execute("cont", json!({}))?;
        Ok(())
    })();
    if let Err(e) = result {
        let _ = child.kill();
        let _ = child.wait();
        let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
        let tail: Vec<&str> = tail.lines().rev().take(8).collect();
        return Err(e.context(format!(
            "QEMU (pid {pid}) could not resume the image; last lines of {}:\n{}",
            log_path.display(),
            tail.into_iter().rev().collect::<Vec<_>>().join("\n")
        )));
    }
    let resumed = t0.elapsed();
    let mut line = format!(
        "{name}: resumed from live image {image} in {:.1} ms (QEMU pid {pid}, memory {path}, log {})",
        resumed.as_secs_f64() * 1000.0,
        log_path.display()
    );
    if let Some(pattern) = agent {
        let sock = pattern.replace("{name}", name);
        let t1 = Instant::now();
        let given =
            give_identity(&sock, id, name, mac).with_context(|| format!("{name}: its identity through the agent at {sock}"));
        if let Err(e) = given {
            // As for vmsctl's own clones: no identity, no clone.
            let _ = child.kill();
            let _ = child.wait();
            return Err(e);
        }
        line += &format!("; identity {:.1} ms", t1.elapsed().as_secs_f64() * 1000.0);
        if let Some(mac) = mac {
            line += &format!(", MAC {mac}");
        }
    }
    println!("{line}");
    let _ = std::io::stdout().flush();
    // QEMU runs on without us, on its clone.
    unname.name = None;
    std::mem::forget(child);
    Ok(())
}

/// Removes a clone's name when dropped, unless its `name` was taken.
struct Unname<'a> {
    vms: &'a Vms,
    name: Option<ImageName>,
}

impl Drop for Unname<'_> {
    fn drop(&mut self) {
        if let Some(n) = &self.name {
            let _ = self.vms.clone_unname(&n.to_abi());
        }
    }
}

/// vms-identity through the agent on unix socket `sock`; with `mac`, the
/// guest's eth0 takes that MAC (and keeps whatever address it has).
fn give_identity(sock: &str, id: u32, name: &str, mac: Option<&str>) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut stream = loop {
        match std::os::unix::net::UnixStream::connect(sock) {
            Ok(s) => break s,
            Err(_) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(e).context("connecting"),
        }
    };
    let net = mac.map(|mac| crate::vmm::virtio::net::NetConfig {
        bridge: None,
        tap: None,
        mac: mac.to_owned(),
        address: None,
        gateway: None,
    });
    crate::cmd::run::hand_identity(
        |c| exec_on_stream(&mut stream, c, Duration::from_secs(120)),
        Some(id),
        name,
        net.as_ref(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn clone_macs_count_up() {
        assert_eq!(clone_macs(None, 3).unwrap(), None);
        assert_eq!(
            clone_macs(Some("auto"), 2).unwrap().unwrap(),
            ["06:76:6d:00:00:01", "06:76:6d:00:00:02"]
        );
        assert_eq!(
            clone_macs(Some("52:54:00:12:34:ff"), 2).unwrap().unwrap(),
            ["52:54:00:12:34:ff", "52:54:00:12:35:00"]
        );
        assert!(clone_macs(Some("52:54:00:ff:ff:ff"), 2).is_err());
        assert!(clone_macs(Some("nonsense"), 1).is_err());
    }

    #[test]
    fn placeholders_are_filled() {
        let args: Vec<String> = ["-object", "memory-backend-file,id=ram,mem-path={clone},share=on", "-name", "{name}"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(
            fill(&args, "/dev/vms-clone/w-1", "w-1"),
            ["-object", "memory-backend-file,id=ram,mem-path=/dev/vms-clone/w-1,share=on", "-name", "w-1"]
        );
    }
}
