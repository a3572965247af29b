// SPDX-License-Identifier: GPL-2.0

//! A small kselftest harness: TAP 13 output, kselftest exit codes,
//! assertions that report file:line and errno, and skips.
//!
//! A test binary looks like this:
//!
//! ```no_run
//! use vms_selftests::ksft::{self, Test};
//! use vms_selftests::test_assert_eq;
//!
//! fn adds() {
//!     test_assert_eq!(1 + 1, 2);
//! }
//!
//! fn main() {
//!     ksft::init(); // prints "TAP version 13"
//!     // Check requirements here; a missing one is ksft::skip("why").
//!     ksft::run(&[Test::new("adds", adds)]);
//! }
//! ```
//!
//! A failed assertion unwinds out of the subtest (which is reported
//! `not ok`) and the next subtest runs; the binary exits with
//! [`KSFT_FAIL`] if any failed, [`KSFT_SKIP`] if all were skipped, and
//! [`KSFT_PASS`] otherwise. A failure outside a subtest (setup in `main`)
//! exits with [`KSFT_FAIL`] at once.
//!
//! After the subtests, [`run`] adds one more: the kernel log written while
//! they ran must hold no WARN, BUG, KASAN or leak report.
//!
//! # States
//!
//! The harness is in one of three states, kept in `STATE`:
//! *Setup* (after [`init`], before the plan), *Running* a subtest, or
//! *Between* subtests. [`skip`] and a failure behave according to it.

use std::any::Any;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::panic::{self, Location};
use std::process;
use std::sync::{Mutex, Once};

/// Exit code: every subtest passed.
pub const KSFT_PASS: i32 = 0;
/// Exit code: a subtest or the setup failed.
pub const KSFT_FAIL: i32 = 1;
/// Exit code: an expected failure.
pub const KSFT_XFAIL: i32 = 2;
/// Exit code: an unexpected pass.
pub const KSFT_XPASS: i32 = 3;
/// Exit code: a requirement is missing, nothing was tested.
pub const KSFT_SKIP: i32 = 4;

/// One subtest: a name printed in its TAP line and the function to run.
#[derive(Clone, Copy)]
pub struct Test {
    /// The description in `ok N - name`.
    pub name: &'static str,
    /// The body; it fails by panicking (the assertion macros do that).
    pub func: fn(),
}

impl Test {
    /// A subtest named `name` that runs `func`.
    pub const fn new(name: &'static str, func: fn()) -> Self {
        Self { name, func }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Phase {
    Setup,
    Running,
    Between,
}

struct State {
    phase: Phase,
    /// Number of the last TAP line printed (`ok N`).
    num: usize,
    /// The plan, once printed.
    plan: Option<usize>,
    /// Names of the subtests not yet reported, for [`skip`].
    pending: Vec<&'static str>,
    pass: usize,
    fail: usize,
    skip: usize,
}

/// The harness state; see the module's `# States`.
static STATE: Mutex<State> = Mutex::new(State {
    phase: Phase::Setup,
    num: 0,
    plan: None,
    pending: Vec::new(),
    pass: 0,
    fail: 0,
    skip: 0,
});

static INIT: Once = Once::new();

/// The panic payload of a failed assertion: the lines of the diagnostic.
struct Failure(String);

/// The panic payload of [`skip`] inside a subtest: the reason.
struct Skip(String);

fn state() -> std::sync::MutexGuard<'static, State> {
    // A panic never happens while the lock is held, but do not turn a
    // poisoned lock into a second failure.
    STATE.lock().unwrap_or_else(|e| e.into_inner())
}

fn out(line: fmt::Arguments<'_>) {
    let mut stdout = io::stdout().lock();
    let _ = writeln!(stdout, "{line}");
    let _ = stdout.flush();
}

/// Prints `line` as a TAP diagnostic, each line prefixed with `# `.
pub fn ksft_print_msg(line: &str) {
    for l in line.lines() {
        out(format_args!("# {l}"));
    }
}

/// Prints `TAP version 13` and installs the panic hook that turns
/// assertion failures into `# ` diagnostics. Idempotent; [`run`] and
/// [`skip`] call it too.
pub fn init() {
    INIT.call_once(|| {
        out(format_args!("TAP version 13"));
        panic::set_hook(Box::new(panic_hook));
    });
}

/// Installs the panic hook of [`init`] without printing `TAP version
/// 13`: for programs that are not tests but reuse the helpers and their
/// assertions (`vms-bench`). A failed assertion then prints its `# `
/// diagnostic and ends the program with [`KSFT_FAIL`]; [`skip`] still
/// prints `1..0 # SKIP reason` and exits with [`KSFT_SKIP`].
pub fn init_tool() {
    INIT.call_once(|| panic::set_hook(Box::new(panic_hook)));
}

fn panic_hook(info: &panic::PanicHookInfo<'_>) {
    let payload = info.payload();
    if payload.is::<Skip>() {
        return;
    }
    match payload.downcast_ref::<Failure>() {
        Some(Failure(msg)) => ksft_print_msg(msg),
        None => {
            // A panic that is not one of our assertions: a bug in the test
            // or an unwrap. Report it the same way.
            let loc = info
                .location()
                .map(|l| format!("{}:{}", l.file(), l.line()))
                .unwrap_or_default();
            ksft_print_msg(&format!("{loc}: panic: {}", payload_str(payload)));
        }
    }
    // Outside a subtest nothing catches the unwind: end the test here.
    if state().phase != Phase::Running {
        out(format_args!("Bail out! setup failed"));
        process::exit(KSFT_FAIL);
    }
}

fn payload_str(payload: &(dyn Any + Send)) -> &str {
    if let Some(s) = payload.downcast_ref::<&str>() {
        s
    } else if let Some(s) = payload.downcast_ref::<String>() {
        s
    } else {
        "(non-string panic payload)"
    }
}

/// Prints the plan `1..n`.
pub fn ksft_set_plan(n: usize) {
    let mut st = state();
    st.plan = Some(n);
    drop(st);
    out(format_args!("1..{n}"));
}

/// Prints one TAP result line, numbering it.
fn result(status: &str, desc: &str, directive: Option<&str>) {
    let n = {
        let mut st = state();
        st.num += 1;
        st.num
    };
    match directive {
        Some(d) => out(format_args!("{status} {n} - {desc} # {d}")),
        None => out(format_args!("{status} {n} - {desc}")),
    }
}

/// Prints `ok N - desc`.
pub fn ksft_test_result_pass(desc: &str) {
    state().pass += 1;
    result("ok", desc, None);
}

/// Prints `not ok N - desc`.
pub fn ksft_test_result_fail(desc: &str) {
    state().fail += 1;
    result("not ok", desc, None);
}

/// Prints `ok N - desc # SKIP reason`.
pub fn ksft_test_result_skip(desc: &str, reason: &str) {
    state().skip += 1;
    result("ok", desc, Some(&format!("SKIP {reason}")));
}

/// Skips: the whole test binary when called from setup or between
/// subtests, only the current subtest when called from inside one.
///
/// From setup it prints `1..0 # SKIP reason` (if no plan was printed) and
/// exits with [`KSFT_SKIP`]; subtests not yet run are reported as skipped
/// too. Inside a subtest it unwinds to [`run`], which prints
/// `ok N - name # SKIP reason` and goes on with the next subtest.
pub fn skip(reason: impl fmt::Display) -> ! {
    init();
    let reason = reason.to_string();
    let (phase, plan, pending) = {
        let mut st = state();
        (st.phase, st.plan, std::mem::take(&mut st.pending))
    };
    if phase == Phase::Running {
        panic::panic_any(Skip(reason));
    }
    if plan.is_none() {
        out(format_args!("1..0 # SKIP {reason}"));
        process::exit(KSFT_SKIP);
    }
    for name in pending {
        ksft_test_result_skip(name, &reason);
    }
    finished()
}

/// Prints the totals and exits: [`KSFT_FAIL`] if a subtest failed,
/// [`KSFT_SKIP`] if every subtest was skipped, [`KSFT_PASS`] otherwise.
pub fn finished() -> ! {
    let st = state();
    let (pass, fail, skip) = (st.pass, st.fail, st.skip);
    let planned = st.plan.unwrap_or(0);
    let ran = st.num;
    drop(st);
    out(format_args!(
        "# Totals: pass:{pass} fail:{fail} xfail:0 xpass:0 skip:{skip} error:0"
    ));
    if ran != planned {
        ksft_print_msg(&format!("planned {planned} tests but ran {ran}"));
        process::exit(KSFT_FAIL);
    }
    let code = if fail > 0 {
        KSFT_FAIL
    } else if pass == 0 && skip > 0 {
        KSFT_SKIP
    } else {
        KSFT_PASS
    };
    process::exit(code)
}

/// Runs the subtests in order, then the kernel log check, and exits (see
/// [`finished`]).
pub fn run(tests: &[Test]) -> ! {
    init();
    let kmsg = Kmsg::open();
    ksft_set_plan(tests.len() + 1);
    state().pending = tests.iter().map(|t| t.name).collect();

    // `KSFT_ONLY=a,b` runs only those subtests (the others are skipped),
    // to repeat one while chasing a bug.
    let only = std::env::var("KSFT_ONLY").ok().filter(|o| !o.is_empty());
    let selected = |name: &str| {
        only.as_deref()
            .is_none_or(|o| o.split(',').any(|n| n == name))
    };
    for t in tests {
        {
            let mut st = state();
            st.pending.remove(0);
            if !selected(t.name) {
                drop(st);
                ksft_test_result_skip(t.name, "not in KSFT_ONLY");
                continue;
            }
            st.phase = Phase::Running;
        }
        let r = panic::catch_unwind(t.func);
        state().phase = Phase::Between;
        match r {
            Ok(()) => ksft_test_result_pass(t.name),
            Err(p) => match p.downcast::<Skip>() {
                Ok(s) => ksft_test_result_skip(t.name, &s.0),
                Err(_) => ksft_test_result_fail(t.name),
            },
        }
    }

    const KMSG_TEST: &str = "kernel log has no WARN/BUG/KASAN/leak report";
    match kmsg {
        Err(e) => ksft_test_result_skip(KMSG_TEST, &format!("/dev/kmsg: {e}")),
        Ok(mut k) => match k.reports() {
            Err(e) => {
                ksft_print_msg(&format!("reading /dev/kmsg: {e}"));
                ksft_test_result_fail(KMSG_TEST);
            }
            Ok(r) if r.is_empty() => ksft_test_result_pass(KMSG_TEST),
            Ok(r) => {
                for line in r {
                    ksft_print_msg(&format!("kernel: {line}"));
                }
                ksft_test_result_fail(KMSG_TEST);
            }
        },
    }
    finished()
}

/// Fails the current subtest (or the setup) with a diagnostic:
///
/// ```text
/// # file.rs:42: what
/// #   detail
/// #   errno=22 (Invalid argument)
/// ```
///
/// The assertion macros call it; `errno` is whatever the caller captured
/// (`None` prints no errno line).
pub fn fail(loc: &Location<'_>, what: &str, detail: fmt::Arguments<'_>, errno: Option<i32>) -> ! {
    let mut msg = format!("{}:{}: {what}", loc.file(), loc.line());
    let detail = detail.to_string();
    for l in detail.lines().filter(|l| !l.is_empty()) {
        msg.push_str("\n  ");
        msg.push_str(l);
    }
    if let Some(e) = errno {
        msg.push_str(&format!("\n  errno={e} ({})", strerror(e)));
    }
    panic::panic_any(Failure(msg))
}

/// The text of an errno, without Rust's ` (os error N)` suffix.
pub fn strerror(errno: i32) -> String {
    let s = io::Error::from_raw_os_error(errno).to_string();
    match s.rfind(" (os error ") {
        Some(i) => s[..i].to_string(),
        None => s,
    }
}

/// The errno of an error value, for diagnostics and errno assertions.
pub trait Errno {
    /// The errno, or 0 if the error does not carry one.
    fn errno(&self) -> i32;
}

impl Errno for io::Error {
    fn errno(&self) -> i32 {
        self.raw_os_error().unwrap_or(0)
    }
}

impl Errno for vmm_sys_util::errno::Error {
    fn errno(&self) -> i32 {
        vmm_sys_util::errno::Error::errno(*self)
    }
}

/// Unwraps a raw result, failing with `what` and the errno on error.
///
/// This is how a `foo()` helper asserts its `__foo()`.
#[track_caller]
pub fn check<T, E: Errno + fmt::Display>(r: Result<T, E>, what: &str) -> T {
    match r {
        Ok(v) => v,
        // With an errno, the errno line says it all; without one, print
        // the error.
        Err(e) if e.errno() != 0 => fail(
            Location::caller(),
            &format!("{what} failed"),
            format_args!(""),
            Some(e.errno()),
        ),
        Err(e) => fail(
            Location::caller(),
            &format!("{what} failed"),
            format_args!("{e}"),
            None,
        ),
    }
}

/// Fails unless `cond` holds; like the KVM selftests' `TEST_ASSERT`, the
/// diagnostic has the condition, an optional message and errno.
#[macro_export]
macro_rules! test_assert {
    ($cond:expr $(,)?) => {
        $crate::test_assert!($cond, "")
    };
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            let errno = ::std::io::Error::last_os_error().raw_os_error();
            $crate::ksft::fail(
                ::std::panic::Location::caller(),
                concat!("assertion failed: ", stringify!($cond)),
                format_args!($($fmt)+),
                errno,
            )
        }
    };
}

/// Fails unless `left == right`, printing both.
#[macro_export]
macro_rules! test_assert_eq {
    ($left:expr, $right:expr $(,)?) => {
        $crate::test_assert_eq!($left, $right, "")
    };
    ($left:expr, $right:expr, $($fmt:tt)+) => {
        match (&$left, &$right) {
            (l, r) => {
                if !(*l == *r) {
                    let errno = ::std::io::Error::last_os_error().raw_os_error();
                    $crate::ksft::fail(
                        ::std::panic::Location::caller(),
                        concat!(
                            "assertion failed: ",
                            stringify!($left),
                            " == ",
                            stringify!($right)
                        ),
                        format_args!(
                            "left:  {:?}\nright: {:?}\n{}",
                            l,
                            r,
                            format_args!($($fmt)+)
                        ),
                        errno,
                    )
                }
            }
        }
    };
}

/// Fails unless the raw result `r` is an error with errno `expected`
/// (a `libc::E*` constant); an optional message follows, as in
/// [`test_assert!`].
#[macro_export]
macro_rules! test_assert_errno {
    ($r:expr, $expected:expr $(,)?) => {
        $crate::test_assert_errno!($r, $expected, "")
    };
    ($r:expr, $expected:expr, $($fmt:tt)+) => {
        match $r {
            Ok(v) => $crate::ksft::fail(
                ::std::panic::Location::caller(),
                concat!(stringify!($r), " succeeded"),
                format_args!(
                    "expected errno={} ({}), got Ok({:?})\n{}",
                    $expected,
                    $crate::ksft::strerror($expected),
                    v,
                    format_args!($($fmt)+)
                ),
                None,
            ),
            Err(e) => {
                let got = $crate::ksft::Errno::errno(&e);
                if got != $expected {
                    $crate::ksft::fail(
                        ::std::panic::Location::caller(),
                        concat!(stringify!($r), " failed with the wrong errno"),
                        format_args!(
                            "expected errno={} ({})\n{}",
                            $expected,
                            $crate::ksft::strerror($expected),
                            format_args!($($fmt)+)
                        ),
                        Some(got),
                    )
                }
            }
        }
    };
}

/// The kernel log from the time [`Kmsg::open`] was called.
struct Kmsg {
    file: File,
}

/// Kernel log lines that mean the kernel found a bug.
const KMSG_REPORTS: &[&str] = &[
    "WARNING:",
    "BUG:",
    "BUG ",
    "KASAN",
    "UBSAN",
    "kmemleak",
    "Oops",
    "general protection fault",
    "refcount_t:",
    "list_add corruption",
    "list_del corruption",
    "RCU detected stall",
    "soft lockup",
    "hung_task",
];

impl Kmsg {
    /// Opens `/dev/kmsg` positioned after the last record.
    fn open() -> io::Result<Self> {
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open("/dev/kmsg")?;
        // SAFETY: lseek on an fd we own; no memory is passed.
        let r = unsafe { libc::lseek(file.as_raw_fd(), 0, libc::SEEK_END) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(Self { file })
    }

    /// The messages written since [`Kmsg::open`] that report a kernel bug.
    fn reports(&mut self) -> io::Result<Vec<String>> {
        let mut found = Vec::new();
        // One read returns one record; a record is at most 8 KiB (including
        // its continuation lines).
        let mut buf = vec![0u8; 8192];
        loop {
            let n = match self.file.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                // EPIPE: records were overwritten before we read them.
                Err(e) if e.raw_os_error() == Some(libc::EPIPE) => continue,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            let rec = String::from_utf8_lossy(&buf[..n]);
            // "prio,seq,usec,flags;message\n continuation\n"
            let msg = rec.split_once(';').map_or(&*rec, |(_, m)| m);
            let first = msg.lines().next().unwrap_or("");
            if KMSG_REPORTS.iter().any(|p| first.contains(p)) {
                found.push(first.to_string());
            }
        }
        Ok(found)
    }
}

/// Ends the test binary with [`KSFT_FAIL`] if it is still alive after a
/// time limit, for steps that could hang (a vCPU that never exits, a join
/// of a thread stuck in `KVM_RUN`).
///
/// Start it before the step, drop it after: dropping it disarms it. On
/// expiry it prints `# what: still running after N s` and `Bail out!`,
/// then exits; it cannot unwind the thread that hangs.
pub struct Watchdog {
    disarm: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Watchdog {
    /// Arms a watchdog for `what` that fires after `limit`.
    pub fn start(what: &str, limit: std::time::Duration) -> Self {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let what = what.to_string();
        let thread = std::thread::spawn(move || {
            // Disconnected (the Watchdog was dropped) ends the wait early.
            if let Err(std::sync::mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                ksft_print_msg(&format!(
                    "{what}: still running after {} s",
                    limit.as_secs()
                ));
                dump_task_stacks();
                dump_activity();
                out(format_args!("Bail out! {what} hangs"));
                process::exit(KSFT_FAIL);
            }
        });
        Self {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

/// Prints where each of this process's threads is waiting in the kernel
/// (`/proc/self/task/*/stack`, root only), so that a hang names its place.
fn dump_task_stacks() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return;
    };
    for task in tasks.flatten() {
        let dir = task.path();
        let read = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        ksft_print_msg(&format!(
            "thread {} ({}), state {}",
            task.file_name().to_string_lossy(),
            read("comm").trim(),
            read("stat")
                .rsplit_once(") ")
                .and_then(|(_, rest)| rest.split(' ').next().map(str::to_string))
                .unwrap_or_default()
        ));
        for line in read("stack").lines() {
            ksft_print_msg(&format!("    {line}"));
        }
    }
}

/// Per thread of this process: (tid, comm, utime, stime, guest time), in
/// clock ticks, from `/proc/self/task/*/stat`.
fn task_times() -> Vec<(String, String, u64, u64, u64)> {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for task in tasks.flatten() {
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let Some((head, rest)) = stat.rsplit_once(") ") else { continue };
        let comm = head.split_once(" (").map(|(_, c)| c.to_string()).unwrap_or_default();
        // After the comm: field 3 (state) is rest[0]; utime is field 14,
        // stime 15, guest_time 43.
        let f: Vec<&str> = rest.split(' ').collect();
        let at = |n: usize| f.get(n - 3).and_then(|x| x.parse().ok()).unwrap_or(0);
        v.push((task.file_name().to_string_lossy().into_owned(), comm, at(14), at(15), at(43)));
    }
    v
}

/// KVM's statistics of this process's VMs (`/sys/kernel/debug/kvm/PID-FD/`:
/// counters summed over each VM's vCPUs), as (VM, name, value).
fn kvm_stats() -> Vec<(String, String, u64)> {
    let me = format!("{}-", process::id());
    let mut v = Vec::new();
    let Ok(vms) = std::fs::read_dir("/sys/kernel/debug/kvm") else {
        return v;
    };
    for vm in vms.flatten() {
        let name = vm.file_name().to_string_lossy().into_owned();
        if !name.starts_with(&me) {
            continue;
        }
        let Ok(files) = std::fs::read_dir(vm.path()) else { continue };
        for f in files.flatten() {
            if let Ok(x) = std::fs::read_to_string(f.path()) {
                if let Ok(n) = x.trim().parse() {
                    v.push((name.clone(), f.file_name().to_string_lossy().into_owned(), n));
                }
            }
        }
    }
    v
}

/// What this process's threads and VMs do over one second of a hang:
/// CPU time per thread (a vCPU gaining guest time runs its guest; one
/// gaining system time loops in the kernel) and the KVM counters that
/// moved (exits, page faults), so that a vCPU that never leaves
/// `KVM_RUN` shows whether it still exits at all.
fn dump_activity() {
    let (t0, k0) = (task_times(), kvm_stats());
    std::thread::sleep(std::time::Duration::from_secs(1));
    let (t1, k1) = (task_times(), kvm_stats());
    for (tid, comm, u, s, g) in &t1 {
        if let Some((_, _, u0, s0, g0)) = t0.iter().find(|t| &t.0 == tid) {
            let (du, ds, dg) = (u.saturating_sub(*u0), s.saturating_sub(*s0), g.saturating_sub(*g0));
            if du + ds + dg > 0 {
                ksft_print_msg(&format!(
                    "thread {tid} ({comm}) in 1 s: user {du}, system {ds}, guest {dg} ticks"
                ));
            }
        }
    }
    let moved: Vec<String> = k1
        .iter()
        .filter_map(|(vm, n, v)| {
            let before = k0.iter().find(|k| &k.0 == vm && &k.1 == n)?.2;
            (*v != before).then(|| format!("{vm} {n} +{}", v.wrapping_sub(before)))
        })
        .collect();
    if k1.is_empty() {
        ksft_print_msg("KVM counters: none readable (no debugfs)");
    } else if moved.is_empty() {
        ksft_print_msg("KVM counters in 1 s: none moved");
    } else {
        ksft_print_msg(&format!("KVM counters in 1 s: {}", moved.join(", ")));
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
