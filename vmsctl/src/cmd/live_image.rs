// SPDX-License-Identifier: GPL-2.0

//! `vmsctl live-image`: make a live image of a running VM, start clones of
//! it, save it to a file and load it back, list and delete live images.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use crate::args::{format_size, ImageName, PAGE_SIZE};
use crate::dev::Vms;
use crate::vmm::control::{self, Request};
use crate::vmm::imagefile;
use crate::vmm::state::MachineState;
use crate::vmm::workingset::{Mode, Source, WorkingSet};

const LONG_ABOUT: &str = "\
Live images: a running VM's memory and its whole vCPU and device state,
from which new VMs (clones) start in milliseconds and resume where the VM
was when the image was made.

  vmsctl run --name web --kernel bzImage --initrd initrd.gz --detach
  vmsctl live-image create web web-ready      # pauses web briefly
  vmsctl live-image start web-ready --count 8 # web-ready-1 .. web-ready-8
  vmsctl exec web-ready-3 -- hostname         # each has its own identity
  vmsctl stats

Making a live image copies no memory: the kernel module turns the VM's
current pages into the image (layered on the image the VM came from) and
the VM continues, paying a copy only for each page it writes afterwards.
Clones share every page of the image they do not write. The machine state
(registers, LAPIC, MSRs, PIC/IOAPIC/PIT, kvmclock, serial ports) is kept in
$VMS_RUN_DIR/images/<image>.state (default run dir /run/vmsctl).

`save` writes a live image to one file; `load` registers such a file as an
image whose pages are streamed from the file on demand, e.g. on another
host that shares the storage. While the loaded image exists, the file
cannot be written (ETXTBSY); `save` writes a new file and renames it into
place, so saving over a loaded file leaves the loaded image as it was.";

/// Arguments of `vmsctl live-image`.
#[derive(Debug, Args)]
#[command(about = "Make live images of running VMs and start clones of them", long_about = LONG_ABOUT)]
pub struct LiveImageArgs {
    #[command(subcommand)]
    command: LiveCommand,
}

#[derive(Debug, Subcommand)]
enum LiveCommand {
    /// Make live image IMAGE of running VM VM (pauses it briefly).
    Create {
        /// The running VM.
        vm: String,
        /// The new image's name.
        image: ImageName,
    },
    /// Start clones of IMAGE, each in its own process, detached.
    Start {
        /// The live image.
        image: ImageName,
        /// How many clones.
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// Clone names are PREFIX-1 .. PREFIX-N (default: the image name).
        #[arg(long)]
        name_prefix: Option<String>,
        /// First clone number (identity); later ones count up. With a
        /// network, clone N gets MAC 06:76:6d plus N's low 24 bits and
        /// host 16+N of the subnet: ids must be unique on a bridge.
        #[arg(long, default_value_t = 1)]
        first_id: u32,
        /// Put the clones' taps on this bridge instead of the one the
        /// live image's VM was on.
        #[arg(long, value_name = "BRIDGE")]
        bridge: Option<String>,
        /// Prefetch the image's working set (see run --prefetch): MODE map
        /// (the default) or cache. The default is to prefetch when the
        /// image has a working set (live-image record).
        #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "map")]
        prefetch: Option<Mode>,
        /// Do not prefetch, even if the image has a working set.
        #[arg(long, conflicts_with = "prefetch")]
        no_prefetch: bool,
        /// Limit each clone's private memory in RAM (see run --mem-limit).
        #[arg(long, value_name = "SIZE", value_parser = crate::args::parse_size_arg)]
        mem_limit: Option<u64>,
        /// Give each clone a swap file in DIR (see run --swap-dir).
        #[arg(long, value_name = "DIR")]
        swap_dir: Option<PathBuf>,
    },
    /// Record running clone VM's working set (the pages it has used since
    /// it started) and store it with the live image it was started from:
    /// later clones of that image prefetch it (see run --prefetch). A
    /// clone that started with the set mapped in (prefetch mode map) is
    /// refused: every page of the old set counts as used in it.
    Record {
        /// A running clone, which has done what later clones will do
        /// (e.g. served a first request).
        vm: String,
    },
    /// Save live image IMAGE (memory, state, working set) to FILE.
    Save {
        image: ImageName,
        file: PathBuf,
    },
    /// Register the live image saved in FILE; pages stream from FILE.
    Load {
        file: PathBuf,
        /// Name to register it under (default: the name it was saved with).
        #[arg(long)]
        name: Option<ImageName>,
    },
    /// List live images.
    List {
        /// Print JSON instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Delete live image IMAGE (refused while clones or live images use it).
    Delete { image: ImageName },
}

/// Where the machine state of live image `name` is kept.
pub fn state_path(name: &str) -> PathBuf {
    control::run_dir().join("images").join(format!("{name}.state"))
}

/// Where live image `name` keeps its disk layer when the VM it was made
/// of was a clone (whose own overlay would go when it stops).
pub fn disk_layer_path(name: &str) -> PathBuf {
    control::run_dir().join("images").join(format!("{name}.disk.qcow2"))
}

/// Removes a disk layer that live-image create kept in the run directory,
/// unless a VM holds it (a clone's overlay on it keeps a shared lock) or
/// another live image's state names it (one loaded from a saved file
/// under another name).
pub fn remove_unused_layer(layer: &std::path::Path) {
    let Ok(f) = std::fs::File::open(layer) else { return };
    // SAFETY: flock on a descriptor we own.
    if unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&f), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
        eprintln!("vmsctl: keeping disk layer {}: a VM uses it", layer.display());
        return;
    }
    let dir = control::run_dir().join("images");
    let named = std::fs::read_dir(&dir).into_iter().flatten().flatten().any(|e| {
        e.path().extension().is_some_and(|x| x == "state" || x == "json")
            && std::fs::read(e.path())
                .ok()
                .and_then(|b| MachineState::from_bytes(&b).ok())
                .and_then(|s| s.disk)
                .is_some_and(|d| d.path == layer || d.backing.iter().any(|l| l.path == layer))
    });
    if named {
        eprintln!("vmsctl: keeping disk layer {}: another live image uses it", layer.display());
        return;
    }
    if std::fs::remove_file(layer).is_ok() {
        println!("deleted its disk layer {}", layer.display());
    }
}

/// The machine state of live image `name`.
pub fn load_state(name: &str) -> Result<MachineState> {
    let bytes = state_bytes(name)?;
    MachineState::from_bytes(&bytes).with_context(|| format!("live image {name:?}"))
}

/// The machine state file of live image `name`, as stored (what its
/// working set is keyed to).
pub fn state_bytes(name: &str) -> Result<Vec<u8>> {
    let mut path = state_path(name);
    if !path.exists() && path.with_extension("json").exists() {
        // Made by a vmsctl from before 2026-12-04.
        path = path.with_extension("json");
    }
    std::fs::read(&path).with_context(|| {
        format!("live image {name:?}: no machine state at {} (not a live image?)", path.display())
    })
}

/// Runs `vmsctl live-image`.
pub fn run(args: &LiveImageArgs) -> Result<()> {
    match &args.command {
        LiveCommand::Create { vm, image } => create(vm, image),
        LiveCommand::Start { image, count, name_prefix, first_id, bridge, prefetch, no_prefetch, mem_limit, swap_dir } => {
            // What each clone's `vmsctl run` gets besides its name.
            let mut extra = Vec::new();
            match (prefetch, no_prefetch) {
                (_, true) => extra.push("--no-prefetch".to_owned()),
                (Some(m), false) => {
                    extra.push(format!("--prefetch={}", if *m == Mode::Map { "map" } else { "cache" }))
                }
                (None, false) => (),
            }
            if let Some(limit) = mem_limit {
                extra.extend(["--mem-limit".to_owned(), limit.to_string()]);
            }
            if let Some(dir) = swap_dir {
                extra.extend(["--swap-dir".to_owned(), dir.display().to_string()]);
            }
            start(image, *count, name_prefix.as_deref(), *first_id, bridge.as_deref(), &extra)
        }
        LiveCommand::Record { vm } => record(vm),
        LiveCommand::Save { image, file } => save(image, file),
        LiveCommand::Load { file, name } => load(file, name.as_ref()),
        LiveCommand::List { json } => list(*json),
        LiveCommand::Delete { image } => delete(image),
    }
}

fn create(vm: &str, image: &ImageName) -> Result<()> {
    let t0 = Instant::now();
    let data = control::call(
        vm,
        &Request::Snapshot { image: image.to_string() },
        Duration::from_secs(120),
    )?;
    let paused = data["paused_us"].as_u64().unwrap_or(0);
    println!(
        "live image {image} made from VM {vm}: VM paused {:.2} ms ({} pages taken without copying), {:.0} ms in all",
        paused as f64 / 1000.0,
        data["pages"].as_u64().unwrap_or(0),
        t0.elapsed().as_secs_f64() * 1000.0
    );
    Ok(())
}

fn start(
    image: &ImageName,
    count: u32,
    prefix: Option<&str>,
    first_id: u32,
    bridge: Option<&str>,
    extra: &[String],
) -> Result<()> {
    load_state(&image.to_string())?;
    let prefix = prefix.map(str::to_owned).unwrap_or_else(|| image.to_string());
    let exe = std::env::current_exe().context("finding the vmsctl executable")?;
    let t0 = Instant::now();
    let mut children = Vec::new();
    for i in 0..count {
        let id = first_id + i;
        let name = format!("{prefix}-{id}");
        let child = Command::new(&exe)
            .args(["run", "--detach", "--image", &image.to_string(), "--name", &name])
            .args(["--id", &id.to_string()])
            .args(bridge.map(|b| ["--bridge", b]).into_iter().flatten())
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .with_context(|| format!("clone {name}: starting {}", exe.display()))?;
        children.push((name, child));
    }
    let mut failed = 0;
    for (name, child) in children {
        let out = child.wait_with_output().with_context(|| format!("clone {name}"))?;
        if !out.status.success() {
            eprintln!("clone {name}: failed to start ({})", out.status);
            failed += 1;
            continue;
        }
        std::io::stdout().write_all(&out.stdout)?;
    }
    println!(
        "started {} of {count} clones of {image} in {:.0} ms",
        count - failed,
        t0.elapsed().as_secs_f64() * 1000.0
    );
    if failed > 0 {
        bail!("{failed} of {count} clones of {image} failed to start");
    }
    Ok(())
}

fn record(vm: &str) -> Result<()> {
    let data = control::call(vm, &Request::RecordWorkingSet, Duration::from_secs(60))?;
    let image = data["image"].as_str().unwrap_or("?");
    let pages = data["pages"].as_u64().unwrap_or(0);
    println!(
        "recorded the working set of {vm}: {pages} pages ({}) in {} runs, stored with live image {image}",
        format_size(pages * PAGE_SIZE),
        data["runs"].as_u64().unwrap_or(0)
    );
    Ok(())
}

/// The state a live image file carries: vmsctl's machine state, or for a
/// live image of a QEMU guest (`vmsctl qemu live-image create`) QEMU's
/// device state, its migration stream as QEMU saved it (which starts
/// with QEMU's own magic, [`QEMU_MAGIC`]).
fn saved_state(name: &str) -> Result<Vec<u8>> {
    let qemu = crate::cmd::qemu::device_state_path(name);
    match load_state(name) {
        Ok(state) => state.to_bytes(),
        Err(_) if qemu.exists() => std::fs::read(&qemu).with_context(|| format!("reading {}", qemu.display())),
        Err(e) => Err(e),
    }
}

/// The first bytes of QEMU's migration stream ("QEVM").
const QEMU_MAGIC: &[u8] = b"QEVM";

fn save(image: &ImageName, path: &Path) -> Result<()> {
    let name = image.to_string();
    let state = saved_state(&name)?;
    let (vms, _) = Vms::open_checked()?;
    let info = vms.image_info(&image.to_abi()).with_context(|| format!("image {name:?}"))?;
    let clone = vms.clone_create(&image.to_abi()).with_context(|| format!("image {name:?}: cloning"))?;
    let map = clone.map(info.size).with_context(|| format!("image {name:?}: mapping"))?;
    let t0 = Instant::now();
    eprintln!("saving live image {name} ({}) to {}", format_size(info.size), path.display());
    // The working set goes along if it fits the image (it is keyed to
    // the machine state, which the file carries unchanged).
    let wset = match WorkingSet::load(&name) {
        Ok(Some(w)) => match w.mismatch(&name, &state_bytes(&name).unwrap_or_default(), info.size) {
            None => Some(w.to_bytes()?),
            Some(why) => {
                eprintln!("vmsctl: not saving the working set stored for {name}: {why}");
                None
            }
        },
        Ok(None) => None,
        Err(e) => {
            eprintln!("vmsctl: not saving the working set stored for {name}: {e:#}");
            None
        }
    };
    let header = imagefile::save(
        path,
        &name,
        &state,
        wset.as_deref(),
        info.size,
        |n, buf| map.read_into((n * PAGE_SIZE) as usize, buf),
        |done, total| eprint!("\r  {:3}% ({done}/{total} pages)", done * 100 / total),
    )
    .with_context(|| format!("saving live image {name:?} to {}", path.display()))?;
    eprintln!();
    println!(
        "saved live image {name} to {}: {} data pages, {} zero pages left as holes, {}{:.1} s",
        path.display(),
        header.data_pages,
        info.size / PAGE_SIZE - header.data_pages,
        if header.wset_len > 0 { "its working set, " } else { "" },
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

fn load(path: &Path, name: Option<&ImageName>) -> Result<()> {
    let file = File::open(path).with_context(|| format!("opening {}", path.display()))?;
    let (header, state) = imagefile::read(&file, path)?;
    // A QEMU guest's device state goes where `vmsctl qemu start` looks
    // for it; QEMU checks it when a clone loads it.
    let qemu = state.starts_with(QEMU_MAGIC);
    if !qemu {
        MachineState::from_bytes(&state).with_context(|| format!("{}", path.display()))?;
    }
    let name = match name {
        Some(n) => n.clone(),
        None => header.name.parse().with_context(|| format!("{}: saved name", path.display()))?,
    };
    let state_file = match qemu {
        true => crate::cmd::qemu::device_state_path(&name.to_string()),
        false => state_path(&name.to_string()),
    };
    let (vms, _) = Vms::open_checked()?;
    std::fs::create_dir_all(state_file.parent().expect("has a parent"))?;
    vms.image_create(&name.to_abi(), std::os::fd::AsFd::as_fd(&file), header.mem_size, header.mem_offset)
        .with_context(|| format!("image {name}: registering {}", path.display()))?;
    if let Err(e) = imagefile::write_atomic(&state_file, &state) {
        let _ = vms.image_delete(&name.to_abi());
        return Err(e);
    }
    // Where its pages come from, for a clone's prefetch to read ahead;
    // and the working set saved with it, under the name it has now.
    let n = name.to_string();
    let _ = std::fs::remove_file(WorkingSet::path(&n));
    if let Err(e) = Source::store(&n, path, &file, header.mem_offset) {
        eprintln!("vmsctl: clones of {n} will not read ahead: {e:#}");
    }
    let mut wset_pages = None;
    if !qemu {
        match imagefile::read_wset(&file, path, &header).and_then(|w| w.map(|w| WorkingSet::from_bytes(&w)).transpose()) {
            Ok(Some(mut w)) => match w.mismatch(&n, &state, header.mem_size) {
                None => {
                    w.image = n.clone();
                    wset_pages = Some(w.pages);
                    w.store(&n)?;
                }
                Some(why) => eprintln!("vmsctl: ignoring the working set in {}: {why}", path.display()),
            },
            Ok(None) => {}
            Err(e) => eprintln!("vmsctl: ignoring the working set in {}: {e:#}", path.display()),
        }
    }
    println!(
        "loaded {}live image {name} from {} ({}, {} data pages; pages stream from the file on demand{})",
        if qemu { "QEMU " } else { "" },
        path.display(),
        format_size(header.mem_size),
        header.data_pages,
        match wset_pages {
            Some(p) => format!("; clones prefetch its working set of {p} pages"),
            None => String::new(),
        }
    );
    Ok(())
}

fn list(json: bool) -> Result<()> {
    let (vms, _) = Vms::open_checked()?;
    let mut rows = Vec::new();
    let mut i = 0;
    while let Some(name) = vms.image_list(i)? {
        i += 1;
        let n = String::from_utf8_lossy(vms_uapi::name_bytes(&name).unwrap_or_default()).into_owned();
        // A live image of a QEMU guest has QEMU's device state instead.
        let vcpus = match load_state(&n) {
            Ok(state) => serde_json::json!(state.vcpus.len()),
            Err(_) if crate::cmd::qemu::device_state_path(&n).exists() => serde_json::json!("qemu"),
            Err(_) => continue,
        };
        let s = vms.image_info(&name)?;
        rows.push(serde_json::json!({
            "name": n,
            "size": s.size,
            "vcpus": vcpus,
            "clones": s.clones,
            "pages": s.cached_pages,
            "generation": s.generation,
            "children": s.children,
            "parent": String::from_utf8_lossy(vms_uapi::name_bytes(&s.parent).unwrap_or_default()),
            "working_set_pages": WorkingSet::load(&n).ok().flatten().map(|w| w.pages),
        }));
    }
    if json {
        println!("{}", serde_json::Value::Array(rows));
        return Ok(());
    }
    if rows.is_empty() {
        println!("no live images");
        return Ok(());
    }
    println!(
        "{:<24} {:>6} {:>5} {:>6} {:>8} {:>4} {:>8}  PARENT",
        "NAME", "SIZE", "VCPUS", "CLONES", "PAGES", "GEN", "WSET"
    );
    for r in rows {
        println!(
            "{:<24} {:>6} {:>5} {:>6} {:>8} {:>4} {:>8}  {}",
            r["name"].as_str().unwrap_or(""),
            format_size(r["size"].as_u64().unwrap_or(0)),
            match &r["vcpus"] {
                serde_json::Value::String(s) => s.clone(),
                v => v.as_u64().unwrap_or(0).to_string(),
            },
            r["clones"].as_u64().unwrap_or(0),
            r["pages"].as_u64().unwrap_or(0),
            r["generation"].as_u64().unwrap_or(0),
            r["working_set_pages"].as_u64().map_or("-".to_owned(), |p| p.to_string()),
            r["parent"].as_str().unwrap_or("")
        );
    }
    Ok(())
}

fn delete(image: &ImageName) -> Result<()> {
    let name = image.to_string();
    let (vms, _) = Vms::open_checked()?;
    let layer = load_state(&name).ok().and_then(|s| s.disk).map(|d| d.path);
    let parent = vms
        .image_info(&image.to_abi())
        .ok()
        .and_then(|s| vms_uapi::name_bytes(&s.parent).map(|b| String::from_utf8_lossy(b).into_owned()));
    match vms.image_delete(&image.to_abi()) {
        Ok(()) => {}
        Err(e) if e.errno().map(|e| e.0) == Some(libc::EBUSY) => {
            let s = vms.image_info(&image.to_abi()).ok();
            bail!(
                "live image {name}: in use by {} clones (including the VM it was made from, which runs on it) and {} live images; stop them first",
                s.map_or(0, |s| s.clones),
                s.map_or(0, |s| s.children)
            );
        }
        Err(e) => return Err(e).with_context(|| format!("live image {name}: deleting")),
    }
    let _ = std::fs::remove_file(state_path(&name));
    let _ = std::fs::remove_file(state_path(&name).with_extension("json"));
    // QEMU's device state, for a live image of a QEMU guest (`vmsctl qemu`).
    let _ = std::fs::remove_file(crate::cmd::qemu::device_state_path(&name));
    let _ = std::fs::remove_file(WorkingSet::path(&name));
    let _ = std::fs::remove_file(Source::path(&name));
    // Its disk layer, if it kept one in the run directory and nothing
    // uses it any more.
    if let Some(layer) = layer.filter(|p| *p == disk_layer_path(&name)) {
        remove_unused_layer(&layer);
    }
    println!("deleted live image {name}");
    // The empty image a VM booted on (boot.NAME) goes with the last live
    // image made of it, once that VM is gone too.
    if let Some(parent) = parent.filter(|p| p.starts_with("boot.")) {
        if let Ok(p) = parent.parse::<ImageName>() {
            if vms.image_delete(&p.to_abi()).is_ok() {
                println!("deleted image {parent} (the memory the VM booted on; nothing uses it any more)");
            }
        }
    }
    Ok(())
}
