// SPDX-License-Identifier: GPL-2.0

//! Running the vCPUs: one thread each, `KVM_RUN` in a loop, exits handed
//! to the devices; and stopping them all.
//!
//! Stopping uses KVM's `immediate_exit` the way rust-vmm VMMs do. Each
//! vCPU thread checks [`Status::is_stopping`] before every `KVM_RUN`. To
//! stop, the VMM sets that flag, then sends every vCPU thread the kick
//! signal (`SIGRTMIN`). Its handler sets `immediate_exit` in the thread's
//! own `kvm_run`, so whenever the signal lands, the thread leaves
//! `KVM_RUN` with `EINTR` and sees the flag: inside `KVM_RUN` (a vCPU
//! halted in the guest included), the signal interrupts it; between the
//! check and `KVM_RUN`, `immediate_exit` makes `KVM_RUN` return at once;
//! before the check, the check sees the flag.

use std::cell::Cell;
use std::ptr;
use std::sync::{Arc, OnceLock};
use std::thread::{self, JoinHandle};

use anyhow::{anyhow, bail, ensure, Context, Result};
use kvm_bindings::{
    kvm_run, KVM_INTERNAL_ERROR_DELIVERY_EV, KVM_INTERNAL_ERROR_EMULATION,
    KVM_INTERNAL_ERROR_SIMUL_EX, KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON,
    KVM_SYSTEM_EVENT_CRASH, KVM_SYSTEM_EVENT_RESET, KVM_SYSTEM_EVENT_SHUTDOWN,
};
use kvm_ioctls::{VcpuExit, VcpuFd};
use vmm_sys_util::errno;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use super::devices::Devices;
use super::state::{restore_vcpu_state, save_vcpu, VcpuState};
use super::status::{Status, Stop};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

/// Pausing the vCPUs for a snapshot. [`VcpuThreads::pause`] sets
/// `requested` and kicks every vCPU thread; each, before its next
/// `KVM_RUN`, completes the exit it was handling (a `KVM_RUN` with
/// `immediate_exit`, as KVM's api.rst asks before saving state), saves
/// its own state into `saved`, and waits until the pause ends.
#[derive(Default)]
pub struct Pause {
    requested: std::sync::atomic::AtomicBool,
    inner: Mutex<PauseInner>,
    changed: Condvar,
}

#[derive(Default)]
struct PauseInner {
    /// MSRs to save, set by the pauser.
    msrs: Vec<u32>,
    /// Each vCPU's saved state (or why saving failed), by index.
    saved: Vec<Option<std::result::Result<VcpuState, String>>>,
    /// Bumped when a pause ends.
    generation: u64,
    /// States for the paused vCPUs to load (a reset), by index, and the
    /// size of the host's XSAVE area they need.
    load: Vec<Option<VcpuState>>,
    xsave_size: i32,
    /// Each vCPU's result of loading its state.
    loaded: Vec<Option<std::result::Result<(), String>>>,
}

impl Pause {
    fn lock(&self) -> std::sync::MutexGuard<'_, PauseInner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn requested(&self) -> bool {
        self.requested.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// In vCPU `index`'s thread: save, then wait while the pause lasts
    /// (or the VM stops).
    fn park(&self, index: usize, vcpu: &mut VcpuFd, status: &Status) {
        // Complete a pending I/O or MMIO exit: KVM_RUN with immediate_exit
        // finishes it and returns EINTR without entering the guest.
        vcpu.set_kvm_immediate_exit(1);
        let _ = vcpu.run();
        vcpu.set_kvm_immediate_exit(0);
        let msrs = self.lock().msrs.clone();
        let saved = save_vcpu(vcpu, &msrs).map_err(|e| format!("vCPU {index}: {e:#}"));
        let mut inner = self.lock();
        let generation = inner.generation;
        inner.saved[index] = Some(saved);
        self.changed.notify_all();
        while inner.generation == generation && !status.is_stopping() {
            if let Some(state) = inner.load.get_mut(index).and_then(Option::take) {
                let xsave_size = inner.xsave_size;
                drop(inner);
                let loaded = restore_vcpu_state(xsave_size, vcpu, &state).map_err(|e| format!("vCPU {index}: {e:#}"));
                inner = self.lock();
                inner.loaded[index] = Some(loaded);
                self.changed.notify_all();
                continue;
            }
            inner = self
                .changed
                .wait_timeout(inner, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The running vCPU threads of a VM. Dropping it stops and joins them.
pub struct VcpuThreads {
    threads: Vec<JoinHandle<()>>,
    status: Arc<Status>,
    pause: Arc<Pause>,
    /// When the first vCPU first entered KVM_RUN.
    first_run: Arc<OnceLock<std::time::Instant>>,
}

/// Starts a thread per vCPU, each running its vCPU until the VM stops.
pub fn start(
    vcpus: Vec<VcpuFd>,
    devices: &Arc<Devices>,
    status: &Arc<Status>,
) -> Result<VcpuThreads> {
    install_kick_handler()?;
    // On an error below, dropping `running` stops the threads started.
    let mut running = VcpuThreads {
        threads: Vec::with_capacity(vcpus.len()),
        status: status.clone(),
        pause: Arc::new(Pause::default()),
        first_run: Arc::new(OnceLock::new()),
    };
    for (index, vcpu) in vcpus.into_iter().enumerate() {
        let (devices, status) = (devices.clone(), status.clone());
        let (pause, first_run) = (running.pause.clone(), running.first_run.clone());
        let thread = thread::Builder::new()
            .name(format!("vcpu{index}"))
            .spawn(move || vcpu_thread(index, vcpu, &devices, &status, &pause, &first_run))
            .with_context(|| format!("starting the thread of vCPU {index}"))?;
        running.threads.push(thread);
    }
    Ok(running)
}

impl VcpuThreads {
    /// How many vCPUs run.
    pub fn len(&self) -> usize {
        self.threads.len()
    }

    /// When a vCPU first entered `KVM_RUN` (the guest's first instruction
    /// after it, for a restored clone), if one did yet.
    pub fn first_run(&self) -> Option<std::time::Instant> {
        self.first_run.get().copied()
    }

    /// Pauses every vCPU, each saving its state (MSRs `msrs`); returns
    /// the states in vCPU order. The vCPUs stay paused until
    /// [`VcpuThreads::resume`].
    pub fn pause(&self, msrs: &[u32]) -> Result<Vec<VcpuState>> {
        let n = self.threads.len();
        {
            let mut inner = self.pause.lock();
            inner.msrs = msrs.to_vec();
            inner.saved = (0..n).map(|_| None).collect();
        }
        self.pause.requested.store(true, std::sync::atomic::Ordering::SeqCst);
        for thread in &self.threads {
            let _ = thread.kill(kick_signal());
        }
        let mut inner = self.wait_all("pause", |i| &i.saved)?;
        inner
            .saved
            .iter_mut()
            .map(|s| s.take().expect("checked above").map_err(|e| anyhow!(e)))
            .collect()
    }

    /// Loads `states` into the paused vCPUs (a reset), each in its own
    /// thread; `xsave_size` is the host's XSAVE area
    /// (`KVM_CAP_XSAVE2`). Only between [`pause`](Self::pause) and
    /// [`resume`](Self::resume).
    pub fn load(&self, states: Vec<VcpuState>, xsave_size: i32) -> Result<()> {
        let n = self.threads.len();
        ensure!(states.len() == n, "{} vCPU states for {n} vCPUs", states.len());
        {
            let mut inner = self.pause.lock();
            ensure!(self.pause.requested(), "the vCPUs are not paused");
            inner.xsave_size = xsave_size;
            inner.load = states.into_iter().map(Some).collect();
            inner.loaded = (0..n).map(|_| None).collect();
            self.pause.changed.notify_all();
        }
        let mut inner = self.wait_all("load their states", |i| &i.loaded)?;
        let loaded: Vec<_> = inner.loaded.drain(..).collect();
        for r in loaded {
            r.expect("checked above").map_err(|e| anyhow!(e))?;
        }
        Ok(())
    }

    /// Waits until every vCPU has put its result in `slots` (of the
    /// pause's state), at most 30 s; `what` the vCPUs do, for an error.
    fn wait_all<T>(
        &self,
        what: &str,
        slots: impl Fn(&PauseInner) -> &Vec<Option<T>>,
    ) -> Result<std::sync::MutexGuard<'_, PauseInner>> {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        let mut inner = self.pause.lock();
        while slots(&inner).iter().any(Option::is_none) {
            if self.status.is_stopping() {
                bail!("the VM stopped while its vCPUs were to {what}");
            }
            if std::time::Instant::now() > deadline {
                bail!("the vCPUs did not {what} within 30 s");
            }
            inner = self
                .pause
                .changed
                .wait_timeout(inner, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(inner)
    }

    /// Ends a pause: the vCPUs run on.
    pub fn resume(&self) {
        self.pause.requested.store(false, std::sync::atomic::Ordering::SeqCst);
        let mut inner = self.pause.lock();
        inner.generation += 1;
        self.pause.changed.notify_all();
    }

    /// Stops every vCPU (the VM stops as [`Stop::Requested`] unless it
    /// already stops for another reason) and waits for their threads.
    pub fn stop(&mut self) {
        self.status.stop(Stop::Requested);
        for thread in &self.threads {
            // Fails only for a thread that has already exited.
            let _ = thread.kill(kick_signal());
        }
        for thread in self.threads.drain(..) {
            if thread.join().is_err() {
                eprintln!("vmsctl: a vCPU thread panicked");
            }
        }
    }
}

impl Drop for VcpuThreads {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The body of vCPU `index`'s thread. An error stops the VM.
fn vcpu_thread(
    index: usize,
    mut vcpu: VcpuFd,
    devices: &Devices,
    status: &Status,
    pause: &Pause,
    first_run: &OnceLock<std::time::Instant>,
) {
    let kick = KickTarget::set(&mut vcpu);
    first_run.get_or_init(std::time::Instant::now);
    let result = run_vcpu(index, &mut vcpu, devices, status, pause);
    drop(kick);
    if let Err(e) = result {
        let e = e.context(format!("vCPU {index}{}", where_is(&vcpu)));
        status.stop(Stop::Failed(e));
    }
}

/// `KVM_RUN` until the VM stops.
fn run_vcpu(
    index: usize,
    vcpu: &mut VcpuFd,
    devices: &Devices,
    status: &Status,
    pause: &Pause,
) -> Result<()> {
    while !status.is_stopping() {
        if pause.requested() {
            pause.park(index, vcpu, status);
            continue;
        }
        match vcpu.run() {
            Ok(VcpuExit::InternalError) => return Err(internal_error(vcpu.get_kvm_run())),
            Ok(exit) => {
                if let Some(stop) = handle_exit(exit, devices)? {
                    status.stop(stop);
                }
            }
            // A kick (or another signal): look at the flag again.
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                vcpu.set_kvm_immediate_exit(0);
            }
            Err(e) => return Err(run_error(e)),
        }
    }
    Ok(())
}

/// Handles one exit; returns why the VM stops, if it does.
fn handle_exit(exit: VcpuExit, devices: &Devices) -> Result<Option<Stop>> {
    match exit {
        VcpuExit::IoIn(port, data) => devices.pio_read(port, data),
        VcpuExit::IoOut(port, data) => devices
            .pio_write(port, data)
            .with_context(|| format!("port {port:#x}"))?,
        VcpuExit::MmioRead(addr, data) => devices.mmio_read(addr, data),
        VcpuExit::MmioWrite(addr, data) => devices
            .mmio_write(addr, data)
            .with_context(|| format!("MMIO at {addr:#x}"))?,
        VcpuExit::Shutdown => return Ok(Some(Stop::TripleFault)),
        VcpuExit::SystemEvent(kind, _) => return system_event(kind).map(Some),
        VcpuExit::MemoryFault { flags, gpa, size } => bail!(
            "KVM_RUN failed (EFAULT) with KVM_EXIT_MEMORY_FAULT: guest memory at gpa {gpa:#x}, \
             {size:#x} bytes (flags {flags:#x}), could not be provided"
        ),
        VcpuExit::FailEntry(reason, cpu) => bail!(
            "KVM_EXIT_FAIL_ENTRY: the CPU refused to enter the guest \
             (hardware reason {reason:#x}, host CPU {cpu})"
        ),
        VcpuExit::IrqWindowOpen | VcpuExit::Intr | VcpuExit::IoapicEoi(_) => {}
        VcpuExit::Hlt => bail!("KVM_EXIT_HLT: unexpected with the in-kernel irqchip"),
        other => bail!("unexpected exit from KVM_RUN: {other:?}"),
    }
    Ok(None)
}

/// What a `KVM_EXIT_SYSTEM_EVENT` of type `kind` means.
fn system_event(kind: u32) -> Result<Stop> {
    Ok(match kind {
        KVM_SYSTEM_EVENT_SHUTDOWN => Stop::PowerOff,
        KVM_SYSTEM_EVENT_RESET => Stop::Reset,
        KVM_SYSTEM_EVENT_CRASH => bail!("the guest crashed (KVM_SYSTEM_EVENT_CRASH)"),
        _ => bail!("KVM_EXIT_SYSTEM_EVENT of unknown type {kind}"),
    })
}

/// Describes a `KVM_EXIT_INTERNAL_ERROR`.
fn internal_error(run: &kvm_run) -> anyhow::Error {
    // SAFETY: KVM_RUN returned KVM_EXIT_INTERNAL_ERROR, so `internal` is
    // the member of the exit union that KVM filled in.
    let internal = unsafe { run.__bindgen_anon_1.internal };
    let what = match internal.suberror {
        KVM_INTERNAL_ERROR_EMULATION => "KVM could not emulate an instruction",
        KVM_INTERNAL_ERROR_SIMUL_EX => "an exception while delivering an exception",
        KVM_INTERNAL_ERROR_DELIVERY_EV => "an event could not be delivered",
        KVM_INTERNAL_ERROR_UNEXPECTED_EXIT_REASON => "an unexpected hardware exit",
        _ => "unknown suberror",
    };
    let data = &internal.data[..(internal.ndata as usize).min(internal.data.len())];
    anyhow!(
        "KVM_EXIT_INTERNAL_ERROR: {what} (suberror {}, data {data:#x?})",
        internal.suberror
    )
}

/// Describes a failed `KVM_RUN` that is not a kick.
fn run_error(e: errno::Error) -> anyhow::Error {
    match e.errno() {
        libc::EFAULT => anyhow!(
            "KVM_RUN failed with EFAULT: guest memory could not be accessed \
             (and KVM did not say where)"
        ),
        _ => anyhow!("KVM_RUN: {e}"),
    }
}

/// Where the vCPU was, for an error message: `" at rip 0x..."`.
fn where_is(vcpu: &VcpuFd) -> String {
    vcpu.get_regs()
        .map(|r| format!(" at rip {:#x}", r.rip))
        .unwrap_or_default()
}

/// The signal that kicks a vCPU thread out of `KVM_RUN`.
fn kick_signal() -> libc::c_int {
    SIGRTMIN()
}

thread_local! {
    /// This thread's vCPU `kvm_run`, for the kick handler; null outside
    /// [`KickTarget`]'s life.
    static KVM_RUN: Cell<*mut kvm_run> = const { Cell::new(ptr::null_mut()) };
}

/// Makes the kick handler set `immediate_exit` of a vCPU while it lives.
struct KickTarget;

impl KickTarget {
    /// Points this thread's kick handler at `vcpu`'s `kvm_run`. The
    /// returned value must be dropped before `vcpu`.
    fn set(vcpu: &mut VcpuFd) -> Self {
        let run: *mut kvm_run = vcpu.get_kvm_run();
        KVM_RUN.with(|cell| cell.set(run));
        KickTarget
    }
}

impl Drop for KickTarget {
    fn drop(&mut self) {
        KVM_RUN.with(|cell| cell.set(ptr::null_mut()));
    }
}

/// The kick handler: only async-signal-safe work, a volatile store.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A const-initialized thread local without destructor: reading it is
    // a plain TLS access, safe in a signal handler.
    let run = KVM_RUN.with(Cell::get);
    if !run.is_null() {
        // SAFETY: a non-null pointer is the `kvm_run` mapping of the vCPU
        // this thread runs, alive until KickTarget clears it (before the
        // vCPU fd is closed). `immediate_exit` is a byte KVM reads at
        // KVM_RUN entry; a volatile store is how userspace sets it.
        unsafe { ptr::addr_of_mut!((*run).immediate_exit).write_volatile(1) };
    }
}

/// Installs the kick handler, once per process.
fn install_kick_handler() -> Result<()> {
    static INSTALLED: OnceLock<std::result::Result<(), errno::Error>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| register_signal_handler(kick_signal(), on_kick))
        .map_err(|e| anyhow!("installing the vCPU kick signal handler: {e}"))
}
