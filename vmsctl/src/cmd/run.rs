// SPDX-License-Identifier: GPL-2.0

//! `vmsctl run`: boot a Linux guest in the foreground, its console on
//! stdout, until it powers off or reboots.

use std::io::Write;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use clap::Args;

use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Instant;

use vms_uapi::KVM_MEM_PAGE_PROVIDER;

use crate::args::{format_size, parse_size, ImageName, PAGE_SIZE};
use crate::cmd::live_image;
use crate::dev::{CloneFd, Vms};
use crate::vmm::{control, imagefile};
use crate::vmm::devices::Virtio;
use crate::vmm::layout::{
    VIRTIO_BLK_BASE, VIRTIO_BLK_IRQ, VIRTIO_NET_BASE, VIRTIO_NET_IRQ, VIRTIO_RNG_BASE, VIRTIO_RNG_IRQ,
};
use crate::vmm::state::MachineState;
use crate::vmm::virtio::net::{Net, NetClaims, NetConfig};
use crate::vmm::virtio::blk::DiskConfig;
use crate::vmm::virtio::disk::DiskFormat;
use crate::vmm::virtio;
use crate::vmm::{BootImages, GuestRam, RunningVm, Stop, Vm, DEFAULT_CMDLINE, MAX_CPUS};
use crate::vmm::workingset::{self, Mode, WorkingSet};

const LONG_ABOUT: &str = "\
Boot a Linux guest under KVM, or start a clone of a live image (--image).

  vmsctl run --name web --kernel bzImage --initrd initrd.gz --bridge br0 --detach
  vmsctl live-image create web web-ready
  vmsctl run --name web-1 --image web-ready --id 1 --detach

The guest's memory is a vms clone: of a new empty image for a boot (named
boot.NAME), of the live image for a clone, whose pages then stream from the
image at fault time and stay shared until the clone writes them. A clone
resumes where the VM the image was made of was paused, and is handed its
identity through the guest agent before anything else runs there: 32 bytes
of host entropy that reseed the guest's CRNG (the parent's random-number
state must not be handed out twice), the host's wall clock, hostname NAME
and /run/vms-id N (scripts/guest/identity; what a guest needs:
docs/ARCHITECTURE.md#a-clones-identity).

Foreground (default): runs until the guest powers off or reboots. With
--detach: returns once the guest is ready (booted, or resumed with its
identity); the VM runs on in its own process, its console in
<run dir>/vm/NAME.log (run dir: $VMS_RUN_DIR, default /run/vmsctl), and is
reached by name: vmsctl list, exec, stop, live-image create.

The guest is a small PC without firmware or PCI, and without ACPI unless
--acpi is given: vmsctl loads the
bzImage (--kernel) and the initramfs (--initrd) into guest memory and
enters the kernel in 64-bit mode. The guest's first serial port (ttyS0)
is the console and goes to standard output as it comes; the second
(ttyS1) is the channel to the guest agent of the initramfs that
scripts/build-guest makes.

Devices: virtio-rng (unless --no-rng) and, with --disk FILE, a virtio-blk
disk backed by FILE, raw or qcow2 (/dev/vda in the guest; --disk-ro makes
it read-only; see --disk for what a live image does with it), and with
--bridge or --tap a virtio-net device (below). All are virtio-mmio
devices named on the command line, which the guest kernel must support (CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES), or,
with --acpi, described in the ACPI tables' DSDT (LNRO0005), as a stock
distro kernel expects; --acpi also gives the guest a VM generation ID,
which each clone changes (CONFIG_VMGENID reseeds the guest's CRNG).
With --bridge BR (or --tap NAME), a virtio-net device whose host end is
a tap of the VM's own on bridge BR (or the tap named): the guest gets an
address on the bridge's subnet (vms.net= on its command line; see --ip),
and each clone its own MAC and address.

vmsctl exits with status 0 when the guest reboots or powers off (and
says so on standard error), and with status 1 and the reason when it
cannot run the guest: a kernel panic, an exit KVM could not handle
(KVM_EXIT_INTERNAL_ERROR), or guest memory that could not be provided
(KVM_EXIT_MEMORY_FAULT, with the guest-physical address).

The kernel command line is
  console=ttyS0 reboot=k panic=1 acpi=off pci=off 8250.nr_uarts=2
  no_timer_check tsc=reliable quiet
(without acpi=off under --acpi), the devices' virtio_mmio.device=
parameters (not under --acpi), then --cmdline.";

/// Arguments of `vmsctl run`.
#[derive(Debug, Clone, Args)]
#[command(about = "Boot a Linux guest, or start a clone of a live image", long_about = LONG_ABOUT)]
pub struct RunArgs {
    /// The VM's name (letters, digits, '-', '_', '.'): how `vmsctl list`,
    /// `exec`, `stop` and `live-image create` find it.
    #[arg(long, value_parser = parse_vm_name)]
    name: String,
    /// The kernel, a bzImage with a 64-bit entry point.
    #[arg(long, value_name = "BZIMAGE", required_unless_present = "image")]
    kernel: Option<PathBuf>,
    /// The initramfs (a cpio archive, compressed as the kernel supports).
    #[arg(long, value_name = "FILE", required_unless_present = "image")]
    initrd: Option<PathBuf>,
    /// Start a clone of this live image instead of booting: it resumes
    /// where the VM the image was made of was.
    #[arg(long, value_name = "LIVE_IMAGE", conflicts_with_all = ["kernel", "initrd", "mem", "cpus", "cmdline"])]
    image: Option<ImageName>,
    /// The clone's identity number (with --image), handed to the guest
    /// with its name as hostname.
    #[arg(long, value_name = "N", requires = "image")]
    id: Option<u32>,
    /// Guest RAM: a multiple of 2M from 32M to 3G.
    #[arg(long, value_name = "SIZE", default_value = "256M", value_parser = parse_mem)]
    mem: u64,
    /// Keep at most SIZE of the clone's private memory (the pages it
    /// wrote) in RAM; the coldest of the rest go to a swap file of the
    /// clone's own in --swap-dir, and come back when the guest touches
    /// them. The VM runs on at its limit, only slower: while the swap file
    /// is being written, a guest (or the VMM's device emulation) that
    /// needs more of its own memory waits for the disk (`vmsctl stats --json`: "throttled"). Pages of its
    /// image that it only reads are shared and do not count.
    #[arg(long, value_name = "SIZE", value_parser = crate::args::parse_size_arg, conflicts_with_all = ["no_vms", "baseline"])]
    mem_limit: Option<u64>,
    /// Give the clone a swap file in DIR (default with --mem-limit:
    /// /var/tmp), a directory on a disk (tmpfs would keep the pages in
    /// RAM). The file has no name and goes with the VM; `vmsctl reset`
    /// gives its blocks back. With a swap file,
    /// the host kernel can also take the clone's cold private pages when
    /// it runs short of memory (the vms-clones shrinker), limit or not.
    #[arg(long, value_name = "DIR", conflicts_with_all = ["no_vms", "baseline"])]
    swap_dir: Option<PathBuf>,
    /// Number of vCPUs.
    #[arg(long, value_name = "N", default_value_t = 1,
          value_parser = clap::value_parser!(u8).range(1..=i64::from(MAX_CPUS)))]
    cpus: u8,
    /// Kernel parameters to add to the default command line.
    #[arg(long, value_name = "EXTRA")]
    cmdline: Option<String>,
    /// No virtio-rng device. By default a booting guest gets one (random
    /// bytes from the host's getrandom(2), at 0xd0000000, IRQ 5, named on
    /// its command line); a clone gets the devices its live image had.
    #[arg(long, conflicts_with = "image")]
    no_rng: bool,
    /// A disk for the guest: a raw image file (or a block device) whose
    /// size is a multiple of 512 bytes, or a qcow2 image (--disk-format),
    /// as virtio-blk (at 0xd0001000, IRQ 6; Linux calls it /dev/vda). A
    /// clone gets the disk its live image had: a copy-on-write qcow2
    /// overlay of its own in <run dir>/disks, made by its first write and
    /// gone when it stops. A live
    /// image freezes a writable disk's file (nothing writes it again; a
    /// VM that would is refused), and the VM goes on in FILE.IMAGE.qcow2.
    #[arg(long, value_name = "FILE", conflicts_with = "image")]
    disk: Option<PathBuf>,
    /// The guest may only read the disk (the VMM opens it read-only); its
    /// clones share the file as it is.
    #[arg(long, requires = "disk")]
    disk_ro: bool,
    /// The disk file's format: raw (the guest's bytes as they are), or
    /// qcow2 (QEMU's format, backing files included). Never guessed from
    /// the file's contents.
    #[arg(long, value_name = "FORMAT", default_value = "raw", requires = "disk")]
    disk_format: DiskFormat,
    /// Describe the machine with ACPI tables (experimental): the virtio
    /// devices as LNRO0005 in the DSDT instead of on the command line
    /// (how a stock distro kernel finds them), the serial ports, and a
    /// VM generation ID that each clone changes, so a guest kernel with
    /// CONFIG_VMGENID reseeds its CRNG as the clone resumes. Drops
    /// acpi=off and the virtio_mmio.device= parameters from the command
    /// line. A clone has ACPI if its live image's VM had.
    #[arg(long, conflicts_with = "image")]
    acpi: bool,
    /// A network device (virtio-net at 0xd0002000, IRQ 10; eth0 in the
    /// guest) whose host end is a tap made for this VM (named vms<pid>,
    /// gone when the VM stops) on this bridge of the host. Making the tap
    /// needs CAP_NET_ADMIN. A clone joins its live image's VM's bridge
    /// unless given another.
    #[arg(long, value_name = "BRIDGE", conflicts_with = "tap")]
    bridge: Option<String>,
    /// The network device's host end is this tap, made beforehand (for
    /// this user: ip tuntap add NAME mode tap user $USER), instead of one
    /// on --bridge.
    #[arg(long, value_name = "NAME")]
    tap: Option<String>,
    /// The network device's MAC address. Default: random for a booted VM;
    /// 06:76:6d plus the id's low 24 bits for a clone.
    #[arg(long, value_name = "MAC")]
    mac: Option<String>,
    /// The guest's IPv4 address, prefix length and optional gateway
    /// (ADDR/PREFIX[,GATEWAY]), or "none" to leave eth0 to the guest.
    /// Default on a bridge with an IPv4 address: host 2 of its subnet
    /// with the bridge as gateway; for clone N, host 16+N of its live
    /// image's VM's subnet (ids must then be unique per subnet).
    #[arg(long, value_name = "ADDR/PREFIX[,GW]")]
    ip: Option<String>,
    /// Run in the background: return once the guest is ready (booted,
    /// or resumed with its identity), its console going to
    /// <run dir>/vm/NAME.log.
    #[arg(long)]
    detach: bool,
    /// Guest RAM in plain anonymous memory instead of a vms clone (no
    /// live images then; for comparison and debugging).
    #[arg(long, hide = true, conflicts_with = "image")]
    no_vms: bool,
    /// With --image: prefetch the live image's working set (recorded with
    /// `vmsctl live-image record`) before the clone runs. MODE map (the
    /// default): read it into the image's cache ahead, in sorted runs,
    /// and map it into the guest's stage 2, so its first touches take no
    /// fault; cache: only the read. Without this flag or --no-prefetch a
    /// clone prefetches when a working set is stored. A set recorded for
    /// another image is ignored with a warning.
    #[arg(long, value_name = "MODE", num_args = 0..=1, default_missing_value = "map", requires = "image")]
    prefetch: Option<Mode>,
    /// With --image: do not prefetch, even if a working set is stored.
    #[arg(long, requires = "image", conflicts_with = "prefetch")]
    no_prefetch: bool,
    /// Benchmarks only: a clone whose memory is not a vms clone but what
    /// VMMs without vms do with a snapshot's memory file, for side-by-side
    /// figures (bench/prefetch.sh). `private`: a MAP_PRIVATE mapping of
    /// the file a live image was loaded from (no live images of it, no
    /// reset, no working set); `uffd`: anonymous memory that a
    /// userfaultfd page server fills from that file, after copying in the
    /// image's working set first (REAP's design).
    #[arg(long, value_name = "KIND", hide = true, requires = "image")]
    baseline: Option<Baseline>,
    /// Debugging: once the guest is ready, run CMD through the guest
    /// agent, print its output, then power the guest off. Fails if CMD
    /// fails.
    #[arg(long, value_name = "CMD", hide = true)]
    exec_after_ready: Option<String>,
    /// Seconds to wait for the guest to be ready.
    #[arg(long, value_name = "SECS", default_value_t = 300)]
    ready_timeout: u64,
    /// Internal (--detach): set in the forked VM process.
    #[arg(skip)]
    detached_child: bool,
    /// Internal: when the start was requested (Unix time in ns), for the
    /// start time a clone reports.
    #[arg(long, hide = true)]
    requested_at_ns: Option<u128>,
}

/// How long a command run with --exec-after-ready may take.
/// `--swap-dir` when only `--mem-limit` is given.
const DEFAULT_SWAP_DIR: &str = "/var/tmp";

const EXEC_TIMEOUT: Duration = Duration::from_secs(120);
/// How long the guest may take to power off when asked to.
const POWEROFF_TIMEOUT: Duration = Duration::from_secs(60);

/// Runs `vmsctl run`.
pub fn run(args: &RunArgs) -> Result<()> {
    let what = format!("vm \"{}\"", args.name);
    if args.detach && !args.detached_child {
        return detach(args).with_context(|| what.clone());
    }
    let requested = args.requested_at_ns.unwrap_or_else(now_ns);
    // The VM's own process began here: what came before is process start
    // (the fork of `--detach`).
    let entered_ns = now_ns();
    // The clone's own disk overlay, if it gets one, goes with the VM
    // (after everything else here has dropped).
    let _overlay = RemoveOnDrop(ephemeral_overlay(&args.name)?);
    let mut vmm = start(args).with_context(|| what.clone())?;
    vmm.phases.process_us = entered_ns.saturating_sub(requested) as f64 / 1000.0;
    if let Some(cmd) = &args.exec_after_ready {
        return exec_after_ready(vmm.running, &what, cmd, args);
    }
    let ready = vmm.become_ready(args, requested).with_context(|| what.clone());
    let ready = match ready {
        Ok(r) => r,
        Err(e) => {
            let stop = vmm.running.shutdown();
            return Err(e.context(format!("{stop}")));
        }
    };
    let info = Arc::new(Info {
        name: args.name.clone(),
        id: args.id,
        vcpus: vmm.cpus,
        mem_size: vmm.mem_size,
        cmdline: vmm.cmdline.clone(),
        net: vmm.net.clone(),
        started: Instant::now() - ready.since_start,
        start_us: ready.start_us,
        restore_us: ready.restore_us,
        phases: vmm.restored.map(|_| vmm.phases.clone()),
        ready_ms: ready.since_start.as_secs_f64() * 1000.0,
        prefetch: vmm.prefetch.take(),
        warnings: std::mem::take(&mut vmm.warnings),
    });
    let running = Arc::new(vmm.running);
    let server = control::Server::start(
        &args.name,
        handler(Arc::downgrade(&running), vmm.memory.clone(), info.clone()),
    )?;
    if args.detached_child {
        // The parent waits on the pipe (`detach`); the socket answers
        // from now on.
        tell_parent_ready(&status_json(&running, &vmm.memory, &info));
        // For whoever reads the log. On a line of its own: the guest's
        // console shares the log, and may be in the middle of a line, or
        // have left one unfinished (a stock distro's boot does).
        crate::vmm::serial::print_line(READY_LINE, Duration::from_millis(200));
    }
    let stop = running.status().wait(None).unwrap_or(Stop::Requested);
    drop(server);
    // Control requests in flight hold the VM; they end quickly once it
    // stops. Then stop the vCPU threads in order.
    let mut running = running;
    for _ in 0..500 {
        match Arc::try_unwrap(running) {
            Ok(r) => {
                r.shutdown();
                break;
            }
            Err(r) => {
                running = r;
                std::thread::sleep(Duration::from_millis(10));
            }
        }
    }
    vmm.memory.release();
    report(&what, stop)
}

/// A file removed when this drops.
struct RemoveOnDrop(PathBuf);

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// Where this VM process keeps a disk overlay that lives as long as it
/// does: a clone's copy-on-write overlay of its live image's disk, or
/// the new top of a clone's disk after a live image froze the old one.
/// In the run directory, named after the VM and the process (a VM of the
/// same name that died left its own). Removed when the VM stops.
fn ephemeral_overlay(name: &str) -> Result<PathBuf> {
    let dir = control::run_dir().join("disks");
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir.join(format!("{name}-{}.qcow2", std::process::id())))
}

/// What the VM process of `--detach` puts in its log once the guest is
/// ready (for a reader of the log: the parent learns it from the pipe).
const READY_LINE: &str = "vms-vm-ready";

/// In the forked VM process of `--detach`: the write end of the pipe
/// its parent waits on, until the VM is ready.
static READY_PIPE: std::sync::Mutex<Option<std::fs::File>> = std::sync::Mutex::new(None);

/// Tells the parent of `--detach` that the VM is ready: writes `status`
/// (the VM's status, as `vmsctl list --json` shows it) into the pipe and
/// closes it. Nothing to do in a VM process that was not forked so.
fn tell_parent_ready(status: &serde_json::Value) {
    let pipe = READY_PIPE.lock().unwrap_or_else(|e| e.into_inner()).take();
    if let Some(mut pipe) = pipe {
        // One write (serde_json's writer would make one per token): the
        // parent reads it whole, and a child killed in the middle leaves
        // nothing half written. A parent that is gone (killed, or gave
        // up) is no error of the VM's: it runs on.
        if let Ok(bytes) = serde_json::to_vec(status) {
            let _ = pipe.write_all(&bytes);
        }
    }
}

/// `--detach`: fork the VM's process, in a new session, its output going
/// to the VM's log; wait until it says the guest is ready (or fails).
///
/// A fork, not a new exec of vmsctl: a clone's start counts from the
/// request, and an exec (the dynamic loader, a few MiB of binary faulted
/// in and relocated, the arguments parsed again) took 22-63 ms of a
/// 36-103 ms clone start in the release test VM, where the whole bare VM
/// takes 4-6 ms (docs/BENCHMARKS.md, "Clone start, phase by phase").
/// This process has one thread here (vmsctl starts none before), so the
/// child may go on running Rust code: no lock can be held by a thread
/// the fork left behind.
///
/// The child says it is ready by writing its status into a pipe and
/// closing it; a child that dies first closes it empty. Before
/// 2026-12-06 this process read the whole log every 20 ms for a line
/// (some 4,000 times in a Debian boot's 80 s) and then asked the VM's
/// socket for the status: a clone's ready reached the user 52-129 ms
/// after the VM process had it (7 clones in the debug test VM).
fn detach(args: &RunArgs) -> Result<()> {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd};
    let requested = args.requested_at_ns.unwrap_or_else(now_ns);
    let dir = control::vm_dir();
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let log_path = dir.join(format!("{}.log", args.name));
    let log = std::fs::File::create(&log_path)
        .with_context(|| format!("creating {}", log_path.display()))?;
    let null = std::fs::File::open("/dev/null").context("opening /dev/null")?;
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into `fds`; close-on-exec, so
    // nothing the VM process runs inherits the write end.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } < 0 {
        return Err(std::io::Error::last_os_error()).context("making the VM process's ready pipe");
    }
    // SAFETY: both descriptors are new and ours alone.
    let (mut ready, tell) = unsafe { (std::fs::File::from_raw_fd(fds[0]), std::fs::File::from_raw_fd(fds[1])) };
    // Nothing buffered may be written twice, by both processes.
    std::io::stdout().flush()?;
    std::io::stderr().flush()?;
    // SAFETY: fork() in a process of one thread (see above); the child
    // only runs the VM, as this process would have, and exits.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(std::io::Error::last_os_error()).context("fork of the VM process");
    }
    if pid == 0 {
        drop(ready);
        *READY_PIPE.lock().unwrap_or_else(|e| e.into_inner()) = Some(tell);
        std::process::exit(detached_child(args, requested, &log, &null));
    }
    drop((log, tell));
    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout + 10);
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            // SAFETY: our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            bail!("the guest was not ready within {} s (log: {})", args.ready_timeout, log_path.display());
        }
        let mut pfd = libc::pollfd { fd: ready.as_raw_fd(), events: libc::POLLIN, revents: 0 };
        // SAFETY: one pollfd of ours; waits at most `left` (1 s at a time).
        let n = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if n > 0 {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
            return Err(std::io::Error::last_os_error()).context("waiting for the VM process");
        }
    }
    // The child writes its status in one write and closes the pipe; a
    // child that died first closed it empty.
    let mut status = Vec::new();
    ready.read_to_end(&mut status).context("reading the VM process's status")?;
    if !status.is_empty() {
        let status: serde_json::Value =
            serde_json::from_slice(&status).context("the VM process's status is not JSON")?;
        print_started(&status);
        return Ok(());
    }
    let mut wstatus = 0;
    // SAFETY: waits for our own child, which closed its end of the pipe
    // by exiting (it closes it otherwise only after writing).
    let reaped = unsafe { libc::waitpid(pid, &mut wstatus, 0) } == pid;
    let code = if !reaped {
        "status unknown".to_owned()
    } else if libc::WIFEXITED(wstatus) {
        format!("exit status: {}", libc::WEXITSTATUS(wstatus))
    } else {
        format!("signal {}", libc::WTERMSIG(wstatus))
    };
    let log = std::fs::read_to_string(&log_path).unwrap_or_default();
    let tail: Vec<&str> = log.lines().rev().take(15).collect();
    bail!(
        "the VM process exited ({code}) before the guest was ready; last lines of {}:\n{}",
        log_path.display(),
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    );
}

/// The forked VM process of `--detach`: leaves the session, puts its
/// output in `log` and its input on `null`, runs the VM; returns the exit
/// status.
fn detached_child(args: &RunArgs, requested: u128, log: &std::fs::File, null: &std::fs::File) -> i32 {
    use std::os::fd::AsRawFd;
    // SAFETY: plain syscalls on descriptors we own; the child leaves our
    // session, so it outlives this process and a terminal hangup.
    let redirected = unsafe {
        libc::setsid();
        libc::dup2(null.as_raw_fd(), 0) >= 0
            && libc::dup2(log.as_raw_fd(), 1) >= 0
            && libc::dup2(log.as_raw_fd(), 2) >= 0
    };
    if !redirected {
        return 1;
    }
    let child = RunArgs { detached_child: true, requested_at_ns: Some(requested), ..args.clone() };
    match run(&child) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("vmsctl: {e:#}");
            let _ = std::io::stderr().flush();
            1
        }
    }
}

/// One line about a VM that just started.
fn print_started(s: &serde_json::Value) {
    let name = s["name"].as_str().unwrap_or("?");
    for w in s["start_warnings"].as_array().into_iter().flatten() {
        eprintln!("vmsctl: {name}: {}", w.as_str().unwrap_or("?"));
    }
    match s["image_source"].as_str() {
        Some(image) => {
            println!(
                "{name}: resumed from live image {image} (id {}): first instruction {:.1} ms after the request (restore {:.1} ms), pid {}",
                s["id"],
                s["start_us"].as_f64().unwrap_or(0.0) / 1000.0,
                s["restore_us"].as_f64().unwrap_or(0.0) / 1000.0,
                s["pid"]
            );
            if let Some(p) = s["start_phases"].as_object() {
                let ms = |k: &str| p.get(k).and_then(|v| v.as_f64()).unwrap_or(0.0) / 1000.0;
                println!(
                    "{name}: start phases (ms): process {:.1}, state {:.1}, prefetch {:.1}, net {:.1}, memory {:.1}, \
                     vm {:.1}, vm-kvm {:.1}, vm-devices {:.1}, vm-vcpus {:.1}, attach {:.1}, restore {:.1}, \
                     connect {:.1}, vcpus {:.1}",
                    ms("process_us"),
                    ms("state_us"),
                    ms("prefetch_us"),
                    ms("net_us"),
                    ms("memory_us"),
                    ms("vm_us"),
                    ms("vm_kvm_us"),
                    ms("vm_devices_us"),
                    ms("vm_vcpus_us"),
                    ms("attach_us"),
                    ms("restore_us"),
                    ms("connect_us"),
                    ms("vcpus_us")
                );
            }
            if let Some(p) = s["prefetch"].as_object() {
                println!(
                    "{name}: prefetched the working set ({}): {} pages in {} runs, {} mapped in {:.1} ms{}",
                    p["mode"].as_str().unwrap_or("?"),
                    p["pages"],
                    p["runs"],
                    p["mapped"],
                    p["map_ms"].as_f64().unwrap_or(0.0),
                    p["map_error"].as_str().map(|e| format!(" (stopped: {e})")).unwrap_or_default()
                );
            }
        }
        None => println!(
            "{name}: booted, guest ready {:.2} s after the request, pid {}",
            s["ready_ms"].as_f64().unwrap_or(0.0) / 1000.0,
            s["pid"]
        ),
    }
}

fn now_ns() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0)
}

/// Guest RAM as a vms clone: the clone's fd (to attach, to read its
/// counters, to snapshot) and, for a boot, the empty image it came from.
pub struct Memory {
    vms: Option<Vms>,
    clone: Option<Arc<CloneFd>>,
    /// The empty image a booted VM's clone came from, deleted at the end
    /// if nothing uses it any more.
    boot_image: Option<ImageName>,
    /// The live image a clone was started from.
    source: Option<ImageName>,
    /// The live image a reset goes back to: the last one made of this VM,
    /// else the one it was started from. Held by a snapshot and a reset
    /// for their whole length, so that a reset restores the machine state
    /// of the image whose memory the clone has.
    reset_image: std::sync::Mutex<Option<ImageName>>,
}

impl Memory {
    fn release(&self) {
        if let (Some(vms), Some(image)) = (&self.vms, &self.boot_image) {
            // Refused (EBUSY) while live images made of this VM exist:
            // they are layered on it. `live-image delete` removes it then.
            let _ = vms.image_delete(&image.to_abi());
        }
    }
}

/// A started VM and what the control socket reports about it.
struct Vmm {
    running: RunningVm,
    memory: Arc<Memory>,
    cpus: u8,
    mem_size: u64,
    cmdline: String,
    restored: Option<Duration>,
    /// Where a clone's start went (`vcpus_us` filled in by
    /// `become_ready`, which waits for the first KVM_RUN).
    phases: StartPhases,
    /// When the vCPU threads were started.
    vcpus_started: Instant,
    /// The VM's network, if it has one.
    net: Option<NetConfig>,
    _net_claims: Option<NetClaims>,
    prefetch: Option<Prefetch>,
    /// What went wrong on the way that did not stop the start.
    warnings: Vec<String>,
}

/// Where the time from a clone's start request to its first instruction
/// goes, in microseconds, phase after phase (`vmsctl list --json`'s
/// `start_phases`; docs/BENCHMARKS.md, "Clone start, phase by phase").
#[derive(Clone, Default, serde::Serialize)]
struct StartPhases {
    /// From the request to this process's `run`: the fork of `--detach`.
    process_us: f64,
    /// Reading and parsing the live image's machine state.
    state_us: f64,
    /// The network: its tap, and its claims on a MAC and an address.
    net_us: f64,
    /// Guest RAM: /dev/vms opened, the clone made and mapped.
    memory_us: f64,
    /// KVM's VM, memslot, irqchip, PIT, vCPUs, and the devices, with the
    /// disk's overlay: the sum of the next three.
    vm_us: f64,
    /// Of `vm_us`: /dev/kvm opened, KVM's VM, memslot, irqchip and PIT.
    vm_kvm_us: f64,
    /// Of `vm_us`: the devices (serial ports, virtio devices with their
    /// I/O threads, ioeventfds and irqfds, the disk's overlay).
    vm_devices_us: f64,
    /// Of `vm_us`: KVM_CREATE_VCPU.
    vm_vcpus_us: f64,
    /// VMS_CLONE_ATTACH.
    attach_us: f64,
    /// The saved state into KVM: devices, then each vCPU.
    restore_us: f64,
    /// The working set: its file read and checked, its readahead started
    /// (both before `net`, counted here), and in mode map its pages
    /// mapped into stage 2 (after `restore`).
    prefetch_us: f64,
    /// The devices connected: irqfds, ioeventfds, I/O threads started.
    connect_us: f64,
    /// From the vCPU threads' start to the first KVM_RUN.
    vcpus_us: f64,
}

/// What a VM reports about its start.
struct Ready {
    since_start: Duration,
    start_us: Option<f64>,
    restore_us: Option<f64>,
}

/// Fixed facts about the VM for the control socket.
struct Info {
    name: String,
    id: Option<u32>,
    vcpus: u8,
    mem_size: u64,
    cmdline: String,
    net: Option<NetConfig>,
    started: Instant,
    start_us: Option<f64>,
    restore_us: Option<f64>,
    phases: Option<StartPhases>,
    ready_ms: f64,
    prefetch: Option<Prefetch>,
    warnings: Vec<String>,
}

/// A clone's prefetch of its live image's working set.
struct Prefetch {
    mode: Mode,
    set: WorkingSet,
    /// The readahead thread's result once it ended: bytes asked for, or
    /// why it failed. `None` for an image not loaded from a file (its
    /// pages are in memory already).
    read: Option<workingset::ReadaheadResult>,
    /// Pages mapped into stage 2 (mode map).
    mapped: u64,
    map_us: f64,
    map_error: Option<String>,
}

/// Reads live image `image`'s working set, if the clone is to prefetch
/// one, and starts its readahead. Problems with the set are warnings: a
/// clone that does not prefetch only starts slower.
///
/// Warnings go to `warnings` (and stderr, the log of a detached VM):
/// `vmsctl run --detach` prints them from the VM's status.
fn plan_prefetch(args: &RunArgs, image: &ImageName, mem_size: u64, warnings: &mut Vec<String>) -> Option<Prefetch> {
    if args.no_prefetch || args.no_vms || args.baseline.is_some() {
        return None;
    }
    let name = image.to_string();
    let mut warn = |w: String| {
        eprintln!("vmsctl: {}: {w}", args.name);
        warnings.push(w);
    };
    let set = match WorkingSet::load(&name) {
        Ok(Some(set)) => set,
        Ok(None) => {
            if args.prefetch.is_some() {
                warn(format!(
                    "not prefetching: live image {name} has no working set (record one with `vmsctl live-image record CLONE`)"
                ));
            }
            return None;
        }
        Err(e) => {
            warn(format!("not prefetching: {e:#}"));
            return None;
        }
    };
    let state = live_image::state_bytes(&name).unwrap_or_default();
    if let Some(why) = set.mismatch(&name, &state, mem_size) {
        warn(format!("not prefetching: the working set stored for live image {name} does not fit it: {why}"));
        return None;
    }
    let read = workingset::Source::load(&name)
        .and_then(|src| match src.open().and_then(|file| workingset::readahead(file, src.mem_offset, &set)) {
            Ok(done) => Some(done),
            Err(e) => {
                warn(format!("prefetch without readahead: {e:#}"));
                None
            }
        });
    Some(Prefetch { mode: args.prefetch.unwrap_or(Mode::Map), set, read, mapped: 0, map_us: 0.0, map_error: None })
}

impl Prefetch {
    /// What `vmsctl list --json` and `stats --json` show of it: with the
    /// clone's used pages (`touched`, VMS_CLONE_TOUCHED), misses (pages it
    /// used outside the set) and, in mode cache, hits (pages of the set it
    /// used). In mode map every page of the set counts as used once
    /// mapped, so hits are not known: KVM does not say which mapped pages
    /// the guest then accessed.
    fn json(&self, touched: Option<&[u64]>) -> serde_json::Value {
        let (mut hits, mut misses) = (0u64, 0u64);
        for p in touched.map(workingset::pages_of).into_iter().flatten() {
            if self.set.contains(p) {
                hits += 1;
            } else {
                misses += 1;
            }
        }
        let read = self.read.as_ref().map(|r| r.get().cloned());
        serde_json::json!({
            "mode": self.mode,
            "pages": self.set.pages,
            "runs": self.set.ranges.len(),
            "readahead_bytes": read.clone().flatten().and_then(|r| r.ok()),
            "readahead_done": read.clone().map(|r| r.is_some()),
            "readahead_error": read.flatten().and_then(|r| r.err()),
            "mapped": self.mapped,
            "map_ms": self.map_us / 1000.0,
            "map_error": self.map_error,
            "hits": touched.filter(|_| self.mode == Mode::Cache).map(|_| hits),
            "misses": touched.map(|_| misses),
        })
    }
}

/// Creates the VM (booting Linux or restoring a live image) and starts
/// the vCPUs.
fn start(args: &RunArgs) -> Result<Vmm> {
    let t0 = Instant::now();
    let mut phases = StartPhases::default();
    let mut mark = t0;
    let mut lap = |phase: &mut f64| {
        let now = Instant::now();
        *phase = (now - mark).as_secs_f64() * 1e6;
        mark = now;
    };
    let restore = match &args.image {
        Some(image) => Some((image.clone(), live_image::load_state(&image.to_string())?)),
        None => None,
    };
    lap(&mut phases.state_us);
    let mut warnings = Vec::new();
    let mut prefetch = match &restore {
        Some((image, s)) => plan_prefetch(args, image, s.mem_size, &mut warnings),
        None => None,
    };
    lap(&mut phases.prefetch_us);
    // The network first: a bad one is refused before anything is made.
    let net = net_config(args, restore.as_ref().map(|(_, s)| s)).context("the network")?;
    // Its MAC and address held for the VM's life against other VMs here.
    let net_claims = match &net {
        Some(c) => Some(c.claim(&control::run_dir().join("net"))?),
        None => None,
    };
    let net_dev = match &net {
        Some(c) => {
            let mut dev = Net::new(Box::new(c.open_link()?), c.mac_bytes()?);
            // A clone is off its link until its guest has its own MAC and
            // address (become_ready): it would speak as its parent.
            dev.set_muted(restore.is_some());
            Some(dev)
        }
        None => None,
    };
    lap(&mut phases.net_us);
    let (cpus, mem_size) = match &restore {
        Some((_, s)) => (s.vcpus.len() as u8, s.mem_size),
        None => (args.cpus, args.mem),
    };
    let (ram, memory) = guest_ram(args, mem_size)?;
    lap(&mut phases.memory_us);
    let flags = if memory.clone.is_some() { KVM_MEM_PAGE_PROVIDER } else { 0 };
    let uarts = restore.as_ref().map(|(_, s)| s.uarts.as_slice());
    let disk = match &args.disk {
        Some(path) => Some(DiskConfig::new(path, args.disk_format, args.disk_ro)?),
        None => None,
    };
    let overlay = ephemeral_overlay(&args.name)?;
    let virtio = match &restore {
        Some((_, s)) => Virtio::Restore { states: &s.virtio, disk: s.disk.as_ref(), overlay: &overlay, net: net_dev },
        None => Virtio::Fresh { rng: !args.no_rng, disk, net: net_dev },
    };
    let acpi = restore.as_ref().map_or(args.acpi, |(_, s)| s.acpi);
    let mut vm = Vm::create(cpus, ram, flags, uarts, virtio, acpi).context("creating the VM")?;
    lap(&mut phases.vm_us);
    let setup = vm.setup_times();
    phases.vm_kvm_us = setup.kvm.as_secs_f64() * 1e6;
    phases.vm_devices_us = setup.devices.as_secs_f64() * 1e6;
    phases.vm_vcpus_us = setup.vcpus.as_secs_f64() * 1e6;
    if let Some(clone) = &memory.clone {
        clone
            .attach(std::os::fd::AsRawFd::as_raw_fd(vm.vm_fd()), 0, 0, mem_size)
            .context("attaching the vms clone to the VM (VMS_CLONE_ATTACH)")?;
    }
    lap(&mut phases.attach_us);
    // Without ACPI the guest finds the virtio devices on its command
    // line; with it, in the DSDT (and ACPI must not be turned off).
    let mut base = DEFAULT_CMDLINE.to_owned();
    if acpi {
        base = base.replace("acpi=off ", "");
    } else {
        if !args.no_rng {
            base += &format!(" {}", virtio::mmio::cmdline_arg(VIRTIO_RNG_BASE, VIRTIO_RNG_IRQ));
        }
        if args.disk.is_some() {
            base += &format!(" {}", virtio::mmio::cmdline_arg(VIRTIO_BLK_BASE, VIRTIO_BLK_IRQ));
        }
        if net.is_some() {
            base += &format!(" {}", virtio::mmio::cmdline_arg(VIRTIO_NET_BASE, VIRTIO_NET_IRQ));
        }
    }
    if let Some(spec) = net.as_ref().and_then(NetConfig::guest_spec) {
        base += &format!(" vms.net={spec}");
    }
    let cmdline = match (&restore, &args.cmdline) {
        (Some((_, s)), _) => s.cmdline.clone(),
        (None, Some(extra)) => format!("{base} {extra}"),
        (None, None) => base,
    };
    let restored = match &restore {
        Some((image, s)) => {
            vm.restore(s).with_context(|| format!("restoring live image {image}"))?;
            lap(&mut phases.restore_us);
            if let Some(p) = prefetch.as_mut().filter(|p| p.mode == Mode::Map) {
                let t = Instant::now();
                match vm.pre_fault(&p.set.ranges) {
                    Ok(n) => p.mapped = n,
                    Err(e) => {
                        let w = format!("prefetch: {e:#}; the guest faults in the rest itself");
                        eprintln!("vmsctl: {}: {w}", args.name);
                        warnings.push(w);
                        p.map_error = Some(format!("{e:#}"));
                    }
                }
                p.map_us = t.elapsed().as_secs_f64() * 1e6;
                phases.prefetch_us += p.map_us;
            }
            Some(t0.elapsed())
        }
        None => {
            let (Some(kernel), Some(initrd)) = (&args.kernel, &args.initrd) else {
                bail!("--kernel and --initrd are needed to boot");
            };
            let images = BootImages { kernel, initrd, cmdline: &cmdline, acpi_rsdp: None };
            vm.boot_linux(&images).context("loading Linux")?;
            None
        }
    };
    let vcpus_started = Instant::now();
    let running = vm.start().context("starting the vCPUs")?;
    Ok(Vmm {
        running,
        memory: Arc::new(memory),
        cpus,
        mem_size,
        cmdline,
        restored,
        phases,
        vcpus_started,
        net,
        _net_claims: net_claims,
        prefetch,
        warnings,
    })
}

/// The VM's network: a booting VM's from --bridge/--tap/--mac/--ip; a
/// clone's from its live image's VM's, with its own MAC and address.
fn net_config(args: &RunArgs, restore: Option<&MachineState>) -> Result<Option<NetConfig>> {
    let (bridge, tap, mac, ip) = (args.bridge.as_deref(), args.tap.as_deref(), args.mac.as_deref(), args.ip.as_deref());
    match restore {
        None if bridge.is_none() && tap.is_none() => {
            ensure!(mac.is_none() && ip.is_none(), "--mac and --ip need a network: --bridge or --tap");
            Ok(None)
        }
        None => NetConfig::for_boot(bridge, tap, mac, ip).map(Some),
        Some(s) => match &s.net {
            Some(parent) => parent.for_clone(args.id.unwrap_or(0), bridge, tap, mac, ip).map(Some),
            None => {
                ensure!(
                    bridge.is_none() && tap.is_none() && mac.is_none() && ip.is_none(),
                    "the live image's VM had no network device; its clones cannot have one"
                );
                Ok(None)
            }
        },
    }
}

/// What a clone's memory is instead of a vms clone (`--baseline`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Baseline {
    /// MAP_PRIVATE of the live image's file.
    Private,
    /// Anonymous memory filled by a userfaultfd page server from the live
    /// image's file, which first copies in the image's working set
    /// (REAP's design).
    Uffd,
}

/// The guest's RAM: a clone of the live image (restore), of a new empty
/// image (boot), or anonymous memory (--no-vms).
fn guest_ram(args: &RunArgs, size: u64) -> Result<(GuestRam, Memory)> {
    if let (Some(baseline), Some(image)) = (args.baseline, &args.image) {
        let name = image.to_string();
        let src = workingset::Source::load(&name).with_context(|| {
            format!("--baseline: live image {image} was not loaded from a file (live-image load)")
        })?;
        let file = src.open()?;
        let ram = match baseline {
            Baseline::Private => {
                GuestRam::private_file(&file, src.mem_offset, size).context("MAP_PRIVATE of the image file")?
            }
            Baseline::Uffd => {
                let ram = GuestRam::anonymous(size).context("guest RAM")?;
                let state = live_image::state_bytes(&name)?;
                let set = WorkingSet::load(&name)?.filter(|s| s.mismatch(&name, &state, size).is_none());
                let t = Instant::now();
                let n = crate::vmm::uffd::serve(ram.host_addr().as_ptr() as u64, size, file, src.mem_offset, set.as_ref())?;
                eprintln!("vmsctl: userfaultfd: {n} pages of the working set copied in, {:.1} ms", t.elapsed().as_secs_f64() * 1e3);
                ram
            }
        };
        let memory = Memory { vms: None, clone: None, boot_image: None, source: Some(image.clone()), reset_image: Default::default() };
        return Ok((ram, memory));
    }
    if args.no_vms {
        let none = Memory { vms: None, clone: None, boot_image: None, source: None, reset_image: Default::default() };
        return Ok((GuestRam::anonymous(size).context("guest RAM")?, none));
    }
    let (vms, _) = Vms::open_checked().context("guest RAM is a vms clone (--no-vms for plain memory)")?;
    let (image, boot_image) = match &args.image {
        Some(image) => (image.clone(), None),
        None => {
            let boot: ImageName = format!("boot.{}", args.name)
                .parse()
                .map_err(|e| anyhow!("boot image name: {e}"))?;
            // A boot image left by a VM of that name that died: reuse the
            // name if nothing uses it.
            let _ = vms.image_delete(&boot.to_abi());
            vms.image_create_empty(&boot.to_abi(), size)
                .with_context(|| format!("creating the empty image {boot} for the VM's memory"))?;
            (boot.clone(), Some(boot))
        }
    };
    let clone = vms
        .clone_create(&image.to_abi())
        .with_context(|| format!("creating a clone of image {image}"))?;
    let swap_dir = args.swap_dir.clone().or_else(|| args.mem_limit.map(|_| PathBuf::from(DEFAULT_SWAP_DIR)));
    if let Some(swap_dir) = swap_dir {
        let what = if args.mem_limit.is_some() { "--mem-limit" } else { "--swap-dir" };
        // The module's writes to the swap file count against this
        // process's RLIMIT_FSIZE: past it, SIGXFSZ would kill the VM.
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: `rl` is a valid, writable `struct rlimit`.
        if unsafe { libc::getrlimit(libc::RLIMIT_FSIZE, &mut rl) } == 0 && rl.rlim_cur < size {
            bail!(
                "{what}: the file size limit (ulimit -f, {} bytes) is below the guest's memory ({}): \
                 the swap file could not hold it",
                rl.rlim_cur,
                format_size(size)
            );
        }
        let dir = std::fs::File::open(&swap_dir).with_context(|| format!("--swap-dir {}", swap_dir.display()))?;
        let limit = args.mem_limit.map_or(0, |l| l.div_ceil(PAGE_SIZE));
        clone
            .set_limit(limit, Some(std::os::fd::AsFd::as_fd(&dir)))
            .with_context(|| format!("{what}: a swap file in {}", swap_dir.display()))?;
    }
    let map = clone.map(size).with_context(|| format!("mapping the clone of image {image}"))?;
    let addr = NonNull::new(map.as_ptr()).context("clone mapped at 0")?;
    let clone = Arc::new(clone);
    // SAFETY: `map` is a read-write MAP_SHARED mapping of `size` bytes that
    // only its own drop unmaps; it moves into the RAM's keep-alive, which
    // drops after the VM.
    let ram = unsafe { GuestRam::from_raw(addr, size, Box::new((map, clone.clone()))) }?;
    let source = args.image.clone();
    let reset_image = std::sync::Mutex::new(source.clone());
    Ok((ram, Memory { vms: Some(vms), clone: Some(clone), boot_image, source, reset_image }))
}

impl Vmm {
    /// Waits for the guest: the ready marker after a boot; after a
    /// restore, hands the clone its identity through the agent.
    fn become_ready(&mut self, args: &RunArgs, requested_ns: u128) -> Result<Ready> {
        let timeout = Duration::from_secs(args.ready_timeout);
        let Some(restored) = self.restored else {
            let after = self.running.wait_ready(timeout)?;
            eprintln!(
                "vmsctl: vm \"{}\": guest ready {:.2} s after start ({} vCPUs, {})",
                args.name,
                after.as_secs_f64(),
                self.cpus,
                format_size(self.mem_size)
            );
            return Ok(Ready { since_start: after, start_us: None, restore_us: None });
        };
        // First instruction: when a vCPU first entered KVM_RUN, measured
        // against the request's wall-clock time.
        let first = loop {
            if let Some(t) = self.running.first_run() {
                break t;
            }
            std::thread::sleep(Duration::from_micros(200));
        };
        let connect = self.running.connect_time();
        self.phases.connect_us = connect.as_secs_f64() * 1e6;
        self.phases.vcpus_us = first.saturating_duration_since(self.vcpus_started + connect).as_secs_f64() * 1e6;
        let first_ns = now_ns().saturating_sub(first.elapsed().as_nanos());
        let start_us = first_ns.saturating_sub(requested_ns) as f64 / 1000.0;
        let agent = self.running.agent();
        give_identity(&self.running, |c| agent.exec(c, timeout), Some(args.id.unwrap_or(0)), &args.name, self.net.as_ref())?;
        Ok(Ready {
            since_start: first.elapsed(),
            start_us: Some(start_us),
            restore_us: Some(restored.as_secs_f64() * 1e6),
        })
    }
}

/// Hands a clone (`id` given) its identity through the agent, right after
/// it resumed from a live image or was reset to one, before any other
/// command: `vms-identity` reseeds the guest's CRNG from host entropy,
/// sets its clock to the host's, and gives it its name, network address
/// and MAC (scripts/guest/identity). A VM that was booted, not started
/// from a live image (`id` None), reset to a live image of itself keeps
/// the name and network it has there; its CRNG and clock are set afresh
/// all the same (`vms-resume`). Then puts the network device back on its
/// link. The command goes through `exec` (the agent's, or a reset's hold
/// of it).
fn give_identity(
    running: &RunningVm,
    exec: impl FnOnce(&str) -> Result<crate::vmm::Reply>,
    id: Option<u32>,
    name: &str,
    net: Option<&NetConfig>,
) -> Result<()> {
    hand_identity(exec, id, name, net)?;
    // Its own MAC and address now: on the link.
    running.set_net_muted(false);
    Ok(())
}

/// Runs the guest's side of [`give_identity`] through `exec`, and checks
/// that the guest reseeded its CRNG and set its clock; for any VMM whose
/// guest runs the vms agent (`vmsctl qemu` too).
pub fn hand_identity(
    exec: impl FnOnce(&str) -> Result<crate::vmm::Reply>,
    id: Option<u32>,
    name: &str,
    net: Option<&NetConfig>,
) -> Result<()> {
    let mut seed = [0u8; 32];
    crate::vmm::virtio::rng::fill_random(&mut seed).context("host entropy for the clone")?;
    let seed: String = seed.iter().map(|b| format!("{b:02x}")).collect();
    // The guest asks for the host's time itself, once its command runs
    // (agent.rs): the first command in a fresh clone may take seconds
    // to start.
    let command = match id {
        Some(id) => {
            let net = match net {
                Some(n) => format!(" {} {}", n.guest_spec().unwrap_or_else(|| "none".into()), n.mac),
                None => String::new(),
            };
            format!("vms-identity {id} {name} {seed}{net}")
        }
        None => format!("/sbin/vms-resume {seed}"),
    };
    let reply = exec(&command).context("handing the clone its identity (vms-identity through the agent)")?;
    let output = String::from_utf8_lossy(&reply.output);
    if reply.status != 0 {
        // 127: the shell found no vms-identity (or a helper of it).
        let hint = if reply.status == 127 || output.contains("not found") {
            " (a guest initramfs older than this vmsctl? rebuild it with scripts/build-guest)"
        } else {
            ""
        };
        bail!("vms-identity failed with status {}: {}{hint}", reply.status, output.trim_end());
    }
    if !output.contains("vms-resume: reseeded, clock set") {
        bail!(
            "the guest's vms-identity did not reseed its CRNG nor set its clock (an older guest \
             initramfs? rebuild it with scripts/build-guest): {output}"
        );
    }
    Ok(())
}

/// The control socket's handler.
fn handler(running: std::sync::Weak<RunningVm>, memory: Arc<Memory>, info: Arc<Info>) -> control::Handler {
    Arc::new(move |req| {
        let running = running.upgrade().context("the VM is stopping")?;
        serve(&running, &memory, &info, req)
    })
}

/// Serves one control request.
fn serve(
    running: &RunningVm,
    memory: &Memory,
    info: &Info,
    req: control::Request,
) -> Result<serde_json::Value> {
    match req {
        control::Request::Status => Ok(status_json(running, memory, info)),
        control::Request::Stop => {
            running.status().stop(Stop::Requested);
            Ok(serde_json::json!({}))
        }
        control::Request::Exec { cmd, timeout_ms } => {
            let reply = running.agent().exec(&cmd, Duration::from_millis(timeout_ms))?;
            Ok(serde_json::json!({
                "status": reply.status,
                "output": String::from_utf8_lossy(&reply.output),
            }))
        }
        control::Request::Snapshot { image } => snapshot(running, memory, info, &image),
        control::Request::Reset { timeout_ms } => reset(running, memory, info, Duration::from_millis(timeout_ms)),
        control::Request::RecordWorkingSet => record_working_set(memory, info),
    }
}

/// `live-image record`: the pages the clone has used since it was made,
/// stored as the working set of the live image it was started from.
fn record_working_set(memory: &Memory, info: &Info) -> Result<serde_json::Value> {
    let (Some(clone), Some(image)) = (&memory.clone, &memory.source) else {
        bail!("this VM was booted, not started from a live image: a working set is recorded from a clone");
    };
    let name = image.to_string();
    if info.prefetch.as_ref().is_some_and(|p| p.mode == Mode::Map && p.mapped > 0) {
        bail!(
            "this VM started with {name}'s working set mapped in (prefetch mode map), so every page of it counts as \
             used: record from a clone started with --no-prefetch (or --prefetch=cache)"
        );
    }
    let bitmap = clone.touched(info.mem_size / PAGE_SIZE).map_err(|e| match e.errno().map(|e| e.0) {
        Some(libc::ENOTTY) => anyhow!("the loaded vms module cannot say which pages a clone used (VMS_CLONE_TOUCHED): load the vms.ko built with this vmsctl"),
        _ => anyhow!(e).context("reading the pages the clone used (VMS_CLONE_TOUCHED)"),
    })?;
    let state = live_image::state_bytes(&name)?;
    let set = WorkingSet::from_bitmap(&name, &state, info.mem_size, &bitmap);
    set.store(&name)?;
    Ok(serde_json::json!({
        "image": name,
        "pages": set.pages,
        "runs": set.ranges.len(),
    }))
}

/// `vmsctl reset`: the VM back at its live image (the last one made of
/// it, else the one it was started from), in place: its memory, vCPUs,
/// devices and disk as they were in the image, then its identity again.
fn reset(running: &RunningVm, memory: &Memory, info: &Info, timeout: Duration) -> Result<serde_json::Value> {
    let Some(clone) = &memory.clone else {
        bail!("this VM runs on plain memory (--no-vms): it has no live image to go back to");
    };
    // Held to the end: a snapshot meanwhile would give the clone the
    // memory of another image than the state restored here.
    let reset_image = memory.reset_image.lock().unwrap_or_else(|e| e.into_inner());
    let Some(image) = reset_image.clone() else {
        bail!(
            "this VM was booted and no live image was made of it: nothing to reset to \
             (make one with `vmsctl live-image create {} IMAGE`)",
            info.name
        );
    };
    let state = live_image::load_state(&image.to_string())?;
    let stats = clone.stats().context("the clone's counters (VMS_CLONE_STATS)")?;
    let clone_image = vms_uapi::name_bytes(&stats.image).map(|b| String::from_utf8_lossy(b).into_owned());
    ensure!(
        clone_image.as_deref() == Some(image.to_string().as_str()),
        "the clone's memory is of image {}, not of live image {image} (a live image of this VM that failed \
         half way?): not resetting",
        clone_image.as_deref().unwrap_or("?")
    );
    let t0 = Instant::now();
    // A command in flight fails now; the guest's first command after
    // the reset is its identity.
    let agent = running.agent().hold_for_reset();
    let paused = running
        .reset(state, || clone.reset().context("dropping the clone's private pages (VMS_CLONE_RESET)"))
        .with_context(|| format!("resetting to live image {image}"))?;
    let t1 = Instant::now();
    let id = info.id.or(memory.source.as_ref().map(|_| 0));
    if let Err(e) = give_identity(running, |c| agent.exec(c, timeout), id, &info.name, info.net.as_ref()) {
        // As at a start: a guest without its identity does not run on.
        let e = e.context("after the reset (the VM is stopped)");
        running.status().stop(Stop::Failed(anyhow!("{e:#}")));
        return Err(e);
    }
    Ok(serde_json::json!({
        "image": image.to_string(),
        "paused_us": paused.as_micros() as u64,
        "identity_us": t1.elapsed().as_micros() as u64,
        "total_us": t0.elapsed().as_micros() as u64,
        "private_pages_dropped": stats.private_pages,
    }))
}

/// `live-image create`: pause, save the state, make the live image of
/// the memory in the kernel, resume.
fn snapshot(running: &RunningVm, memory: &Memory, info: &Info, image: &str) -> Result<serde_json::Value> {
    let name: ImageName = image.parse().map_err(|e| anyhow!("image name {image:?}: {e}"))?;
    let (Some(vms), Some(clone)) = (&memory.vms, &memory.clone) else {
        bail!("this VM runs on plain memory (--no-vms): no live images");
    };
    // Held to the end: a reset meanwhile would restore another image's
    // machine state (see `reset`).
    let mut reset_image = memory.reset_image.lock().unwrap_or_else(|e| e.into_inner());
    let state_path = live_image::state_path(image);
    if state_path.exists() {
        bail!("live image {image} exists ({})", state_path.display());
    }
    std::fs::create_dir_all(state_path.parent().expect("has a parent"))?;
    // A writable disk is frozen in the pause: the image's clones each get
    // an overlay of it. The VM goes on in a new overlay: next to a disk
    // file the user gave it (which it would have kept writing), or, for
    // a clone's own overlay (which goes when the clone stops), in the run
    // directory again, the frozen one moved next to the image's state.
    let ephemeral = ephemeral_overlay(&info.name)?;
    let plan = match running.disk().filter(|d| !d.read_only) {
        None => None,
        Some(d) if std::fs::metadata(&d.path).is_ok_and(|m| std::os::unix::fs::FileTypeExt::is_block_device(&m.file_type())) => bail!(
            "this VM's disk {} is a writable block device: a live image freezes the disk and goes on in an overlay file \
             next to it; give the VM a disk file, or the device with --disk-ro",
            d.path.display()
        ),
        Some(d) if d.path == ephemeral && live_image::disk_layer_path(image).exists() && {
            // Left by a live image of that name that failed after its
            // freeze, or kept for a loaded copy: gone unless used.
            live_image::remove_unused_layer(&live_image::disk_layer_path(image));
            live_image::disk_layer_path(image).exists()
        } => bail!(
            "{} exists and is in use (a disk layer of an earlier live image {image}, which a VM or another \
             live image uses); choose another name",
            live_image::disk_layer_path(image).display()
        ),
        Some(d) if d.path == ephemeral => Some((ephemeral.clone(), Some(live_image::disk_layer_path(image)))),
        Some(d) => {
            let name = d.path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            Some((d.path.with_file_name(format!("{name}.{image}.qcow2")), None))
        }
    };
    let freeze = plan.as_ref().map(|(top, to)| (top.as_path(), to.as_deref()));
    let (mut state, (), paused) = running.snapshot(&info.cmdline, freeze, |_| {
        vms.image_snapshot(&name.to_abi(), clone)
            .with_context(|| format!("making live image {image} (VMS_IMAGE_SNAPSHOT)"))?;
        Ok(())
    })?;
    state.net = info.net.clone();
    imagefile::write_atomic(&state_path, &state.to_bytes()?)?;
    // The clone's image is the live image now: a reset goes back to it.
    *reset_image = Some(name.clone());
    let pages = vms.image_info(&name.to_abi()).map(|s| s.cached_pages).unwrap_or(0);
    Ok(serde_json::json!({
        "image": image,
        "paused_us": paused.as_micros() as u64,
        "pages": pages,
    }))
}

fn status_json(running: &RunningVm, memory: &Memory, info: &Info) -> serde_json::Value {
    let clone = memory.clone.as_ref().and_then(|c| c.stats().ok());
    let image = clone
        .as_ref()
        .and_then(|c| vms_uapi::name_bytes(&c.image))
        .map(|b| String::from_utf8_lossy(b).into_owned());
    serde_json::json!({
        "name": info.name,
        "pid": std::process::id(),
        "id": info.id,
        "vcpus": info.vcpus,
        "mem_size": info.mem_size,
        "image": image,
        "image_source": memory.source.as_ref().map(|i| i.to_string()),
        "uptime_s": info.started.elapsed().as_secs(),
        "ready_ms": info.ready_ms,
        "start_us": info.start_us,
        "restore_us": info.restore_us,
        "start_phases": info.phases,
        "start_warnings": info.warnings,
        "prefetch": info.prefetch.as_ref().map(|p| {
            let touched = memory.clone.as_ref().and_then(|c| c.touched(info.mem_size / PAGE_SIZE).ok());
            p.json(touched.as_deref())
        }),
        "stopping": running.status().is_stopping(),
        "disk": running.disk().map(|d| serde_json::json!({
            "path": d.path,
            "format": d.format,
            "read_only": d.read_only,
            "size": d.size,
            "allocated": crate::vmm::virtio::disk::DiskFile::allocated(&d.path),
        })),
        "net": info.net.as_ref().map(|n| {
            let c = running.net_counters().unwrap_or_default();
            serde_json::json!({
                "bridge": n.bridge,
                "tap": n.host_tap(),
                "mac": n.mac,
                "address": n.address,
                "gateway": n.gateway,
                "rx_frames": c.rx_frames,
                "tx_frames": c.tx_frames,
                "rx_dropped": c.rx_dropped,
                "tx_dropped": c.tx_dropped,
            })
        }),
        "clone": clone.map(|c| serde_json::json!({
            "private_pages": c.private_pages,
            "faults": c.faults,
            "mmap_faults": c.mmap_faults,
            "shared_maps": c.shared_maps,
            "zero_maps": c.zero_maps,
            "streamed": c.streamed,
            "cow_copies": c.cow_copies,
            "io_errors": c.io_errors,
            "resets": c.resets,
        })),
        // Only for a clone with a limit or one that evicted (and a module
        // that has it).
        "footprint": memory.clone.as_ref().and_then(|c| c.footprint().ok()).filter(|f| f.limit != 0 || f.swapped != 0 || f.evicted != 0).map(|f| serde_json::json!({
            "limit_pages": f.limit,
            "resident": f.resident,
            "swapped": f.swapped,
            "evicted": f.evicted,
            "read_back": f.read_back,
            "evict_errors": f.evict_errors,
            "evict_held": f.evict_held,
            "shrunk": f.shrunk,
            "swap_bytes": f.swap_bytes,
            "swap_disk_bytes": f.swap_disk_bytes,
            "throttled": f.throttled,
        })),
    })
}

/// Says how the VM ended: on stderr if it ended as guests do, as the
/// error otherwise.
fn report(what: &str, stop: Stop) -> Result<()> {
    match stop {
        stop if stop.is_clean() => {
            eprintln!("vmsctl: {what}: {stop}");
            Ok(())
        }
        Stop::Failed(e) => Err(e.context(what.to_owned())),
        stop => Err(anyhow!("{what}: {stop}")),
    }
}

/// `--exec-after-ready`: waits for the guest, runs `cmd` through the
/// agent, prints its output and powers the guest off.
fn exec_after_ready(mut running: RunningVm, what: &str, cmd: &str, args: &RunArgs) -> Result<()> {
    let reply = match ready_and_exec(&running, what, cmd, args) {
        Ok(reply) => reply,
        Err(e) => {
            // Why the VM stopped, if it did, explains the error.
            let stop = running.shutdown();
            return Err(e.context(format!("{what} ({stop})")));
        }
    };
    std::io::stdout()
        .write_all(&reply.output)
        .context("writing the command's output")?;
    eprintln!(
        "vmsctl: {what}: {cmd:?} exited with status {}; powering off",
        reply.status
    );
    running
        .agent()
        .send("poweroff -f")
        .with_context(|| format!("{what}: powering off"))?;
    let stop = running.wait(Some(POWEROFF_TIMEOUT)).unwrap_or_else(|| {
        Stop::Failed(anyhow!(
            "did not power off within {} s",
            POWEROFF_TIMEOUT.as_secs()
        ))
    });
    report(what, stop)?;
    if reply.status != 0 {
        bail!("{what}: {cmd:?} failed with status {}", reply.status);
    }
    Ok(())
}

/// Waits for the ready marker and runs `cmd`.
fn ready_and_exec(
    running: &RunningVm,
    what: &str,
    cmd: &str,
    args: &RunArgs,
) -> Result<crate::vmm::Reply> {
    let ready = running.wait_ready(Duration::from_secs(args.ready_timeout))?;
    eprintln!(
        "vmsctl: {what}: guest ready {:.2} s after start ({} vCPUs, {})",
        ready.as_secs_f64(),
        args.cpus,
        format_size(args.mem)
    );
    running.agent().exec(cmd, EXEC_TIMEOUT)
}

/// Parses --mem: a size, checked as guest RAM.
fn parse_mem(s: &str) -> Result<u64, String> {
    let size = parse_size(s).map_err(|e| e.to_string())?;
    crate::vmm::memory::check_size(size).map_err(|e| e.to_string())?;
    Ok(size)
}

/// Parses --name: 1 to 31 letters, digits, '-', '_' and '.'.
fn parse_vm_name(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > 31 {
        return Err("a VM name has 1 to 31 characters".to_owned());
    }
    if let Some(c) = s
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')))
    {
        return Err(format!(
            "{c:?} is not allowed in a VM name (letters, digits, '-', '_' and '.' are)"
        ));
    }
    Ok(s.to_owned())
}
