// SPDX-License-Identifier: GPL-2.0

//! `vms-bench faults`: the fault service rate, in pages per second, of
//! every [`Backend`] on the same guest: each vCPU walks its share of the
//! region once, touching every page (reading and checking the image's
//! pattern, or writing), from the first `KVM_RUN` until the guest reports
//! done. All backends are measured in one process, interleaved run by run.

use std::sync::atomic::Ordering::Relaxed;
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::Barrier;
use std::thread;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuExit, VcpuFd};
use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::host;
use vms_selftests::ksft::{self, check};
use vms_selftests::kvm::{vm_create_pm32, Exit, Vm};
use vms_selftests::vms::{image_create, image_dir, unique_name, ImageFile, CLONE_GPA, PAGE_SIZE};
use vms_selftests::{test_assert, test_assert_eq};

use crate::diag::{self, Watchdog};
use crate::mem::{self, shares_of, Backend, Backing, Source};
use crate::report::{num, ratio, spread, Bar, Chart, Figure, Samples, Section, Table};
use crate::{mib_str, progress, Env, Size};

/// The memslot of the region and where it is in the guest.
const SLOT: u32 = 1;
const GPA: u64 = CLONE_GPA;

/// The longest a guest's walk may take before the watchdog ends the
/// program: 900 s (a walk of 64 MiB takes seconds, of 256 MiB at the
/// slowest rate seen on a busy host about 10 minutes), or
/// `$VMS_BENCH_WALK_LIMIT` seconds.
pub fn walk_limit() -> Duration {
    let s = std::env::var("VMS_BENCH_WALK_LIMIT").ok();
    Duration::from_secs(s.and_then(|s| s.parse().ok()).unwrap_or(900))
}

/// Values the write walk stores at byte 0 of page `p`: `WRITE_BASE + p`
/// (the complement at byte 2048), unlike anything in the image.
const WRITE_BASE: u32 = 0x3c00_0000;

/// Reading or writing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Access {
    Read,
    Write,
}

impl Access {
    fn name(self) -> &'static str {
        match self {
            Access::Read => "read",
            Access::Write => "write",
        }
    }
}

const BACKENDS: [Backend; 11] = [
    Backend::AnonFilled,
    Backend::AnonFresh,
    Backend::VmsWarm,
    Backend::VmsCold,
    Backend::VmsPlain,
    Backend::VmsHva,
    Backend::UffdMissing,
    Backend::UffdMissingCold,
    Backend::UffdMinor,
    Backend::FilePrivate,
    Backend::FilePrivateCold,
];

/// What to measure.
pub struct Params {
    pub size: Size,
    pub vcpus: Vec<usize>,
    pub runs: usize,
    /// Measure only these backends ([`Backend::key`]); all if empty.
    /// The ceiling is always measured.
    pub only: Vec<String>,
    /// Measure only these accesses; both if empty.
    pub access: Vec<String>,
    /// Also measure the userfaultfd backends with more than one vCPU
    /// (they stall in the test VM, see [`run_vcpus`]).
    pub uffd_smp: bool,
}

fn is_uffd(b: Backend) -> bool {
    matches!(
        b,
        Backend::UffdMissing | Backend::UffdMissingCold | Backend::UffdMinor
    )
}

/// Whether `--only` lets backend `b` run (the ceiling always does).
fn selected(p: &Params, b: Backend) -> bool {
    b == Backend::AnonFilled || p.only.is_empty() || p.only.iter().any(|k| k == b.key())
}

/// Runs the benchmark and returns its figure.
pub fn run(env: &Env, p: &Params) -> Figure {
    let size = p.size.0;
    let pages = size / PAGE_SIZE;
    assert!(pages >= 16 && size.is_multiple_of(PAGE_SIZE));
    for &n in &p.vcpus {
        assert!((1..=8).contains(&n), "1 to 8 vCPUs");
    }
    progress(&format!(
        "faults: {} ({pages} pages), vCPUs {:?}, {} runs",
        mib_str(size),
        p.vcpus,
        p.runs
    ));

    let name = unique_name("bench-src");
    let file = ImageFile::with_pattern(&name, pages, 0);
    let warm = image_create(&env.dev, &name, file.file(), size, 0);
    // Warm it: one clone reads every page, so every page is cached.
    {
        let src = Source {
            dev: Some(&env.dev),
            file: &file,
            cold: None,
            size,
            warm: Some(&warm),
        };
        let b = Backing::new(&src, Backend::VmsWarm, 1);
        let mut vm = vm_create_pm32(&env.kvm);
        b.attach(&mut vm, SLOT, GPA);
        vm.add_vcpu_pm32(0, guest::code_gpa(0));
        guest::run(
            &mut vm,
            0,
            &guest::read_check(&Walk::pattern(GPA, 0, pages)),
        );
    }
    let is = warm.info();
    test_assert_eq!(is.cached_pages, pages, "the warm image caches every page");

    // The cold backends' file: a copy, written out, whose page cache
    // each of them drops. On tmpfs it cannot be dropped: only vms's
    // "cold" (not in the image cache) means something there.
    // Made only if a cold backend is measured (it costs a copy of the image).
    let in_memory = host::in_memory(&image_dir());
    let wants_cold = BACKENDS.iter().any(|&b| b.is_cold() && selected(p, b));
    let cold = wants_cold.then(|| {
        let cold = ImageFile::create(&unique_name("bench-cold"));
        let mut from = check(file.file().try_clone(), "dup image file");
        check(std::io::Seek::rewind(&mut from), "seek image file");
        // Closed before the cold vms row makes an image of it: vms
        // refuses a file that is open for writing.
        let mut to = cold.writer();
        check(std::io::copy(&mut from, &mut to), "copy image file");
        check(to.sync_all(), "fsync image file");
        drop(to);
        cold
    });
    let src = Source {
        dev: Some(&env.dev),
        file: &file,
        cold: cold.as_ref(),
        size,
        warm: Some(&warm),
    };
    // rates[backend][access][vcpus index]
    let mut rates = vec![vec![vec![Samples::default(); p.vcpus.len()]; 2]; BACKENDS.len()];
    // Walks given up as stalled, per point: not in the samples.
    let mut stalls = vec![vec![vec![0usize; p.vcpus.len()]; 2]; BACKENDS.len()];
    for run in 0..p.runs {
        for (vi, &n) in p.vcpus.iter().enumerate() {
            for (ai, access) in [Access::Read, Access::Write].into_iter().enumerate() {
                if !p.access.is_empty() && !p.access.iter().any(|a| a == access.name()) {
                    continue;
                }
                for (bi, &b) in BACKENDS.iter().enumerate() {
                    if !selected(p, b) {
                        continue;
                    }
                    if is_uffd(b) && n > 1 && !p.uffd_smp {
                        continue;
                    }
                    if b.is_cold() && b != Backend::VmsCold && in_memory {
                        continue;
                    }
                    let rate = loop {
                        if let Some(r) = measure(env, &src, b, access, n, env.verify_stride) {
                            break r;
                        }
                        let st = &mut stalls[bi][ai][vi];
                        *st += 1;
                        progress(&format!(
                            "faults run {}/{}: {} {}, {n} vCPU(s): stalled, measuring again",
                            run + 1,
                            p.runs,
                            b.name(),
                            access.name()
                        ));
                        test_assert!(*st <= MAX_STALLS, "{}: {} stalls", b.name(), *st);
                    };
                    progress(&format!(
                        "faults run {}/{}: {} {}, {n} vCPU(s): {} pages/s",
                        run + 1,
                        p.runs,
                        b.name(),
                        access.name(),
                        num(rate)
                    ));
                    rates[bi][ai][vi].push(rate);
                }
            }
        }
    }
    warm.delete();
    drop(file);
    drop(cold);

    figure(p, pages, in_memory, &rates, &stalls)
}

/// One measurement: a fresh backing and VM, `n` vCPUs each walking its
/// share once; returns pages per second (all pages over the wall time
/// from the first vCPU's first `KVM_RUN` to the last vCPU's report).
/// Then checks what the guest saw and wrote, and the counters. `None`:
/// the walk stalled (see [`run_vcpus`]) and was given up.
fn measure(
    env: &Env,
    src: &Source<'_>,
    b: Backend,
    access: Access,
    n: usize,
    stride: u64,
) -> Option<f64> {
    let pages = src.size / PAGE_SIZE;
    let mut backing = Backing::new(src, b, n as u64);
    let mut vm = vm_create_pm32(&env.kvm);
    backing.attach(&mut vm, SLOT, GPA);
    for (i, (start, len)) in shares_of(src.size, n as u64).into_iter().enumerate() {
        let (gpa, first, count) = (GPA + start, start / PAGE_SIZE, len / PAGE_SIZE);
        let code = match access {
            Access::Read if b.has_image() => guest::read_check(&Walk::pattern(gpa, first, count)),
            Access::Read => guest::read_check(&Walk::zeros(gpa, count)),
            Access::Write => guest::write(&Walk::values(
                gpa,
                count,
                WRITE_BASE.wrapping_add(first as u32),
            )),
        };
        vm.add_vcpu_pm32(i as u64, guest::code_gpa(i));
        guest::load(&mut vm, i, &code);
    }

    let secs = run_vcpus(&mut vm, is_uffd(b));
    let served = backing.stop_handlers();
    let secs = secs?;

    // What the guest wrote is in the VMM's view (a sample of pages, all
    // of them in a smoke run); what it read it checked itself.
    if access == Access::Write {
        for p in (0..pages).step_by(stride as usize).chain([pages - 1]) {
            let want = WRITE_BASE.wrapping_add(p as u32);
            let at = p * PAGE_SIZE;
            test_assert_eq!(backing.read_u32(at), want, "{}: page {p}", b.name());
            test_assert_eq!(backing.read_u32(at + 2048), !want, "{}: page {p}", b.name());
        }
        // The image file is untouched (MINOR maps a copy in shmem).
        for p in [0, pages / 2, pages - 1] {
            let mut w = [0u8; 4];
            check(
                std::os::unix::fs::FileExt::read_exact_at(src.file.file(), &mut w, p * PAGE_SIZE),
                "read image file",
            );
            test_assert_eq!(
                u32::from_le_bytes(w),
                vms_selftests::vms::pattern_word(p),
                "{}: the image file changed at page {p}",
                b.name()
            );
        }
    }
    match b {
        Backend::UffdMissing | Backend::UffdMissingCold | Backend::UffdMinor => {
            test_assert_eq!(served.resolved, pages, "{}: {served:?}", b.name());
        }
        Backend::VmsWarm | Backend::VmsCold | Backend::VmsPlain | Backend::VmsHva => {
            let cs = backing.clone().expect("a clone").stats();
            let what = format!("{}, {}: {cs:?}", b.name(), access.name());
            if b == Backend::VmsHva {
                // KVM went through the VMM's mapping, never the provider.
                test_assert!(cs.faults == 0 && cs.mmap_faults >= pages, "{what}");
            } else {
                test_assert!(cs.faults >= pages, "{what}");
            }
            test_assert_eq!(cs.io_errors, 0, "{what}");
            let streamed = if b == Backend::VmsCold { pages } else { 0 };
            test_assert_eq!(cs.streamed, streamed, "{what}");
            let private = if access == Access::Write { pages } else { 0 };
            test_assert_eq!(cs.private_pages, private, "{what}");
            test_assert_eq!(cs.cow_copies, private, "{what}");
            let image = backing.own_image().or(src.warm).expect("an image");
            let is = image.info();
            test_assert_eq!(is.cached_pages, pages, "{}: {is:?}", b.name());
            test_assert_eq!(is.read_errors, 0, "{}: {is:?}", b.name());
        }
        _ => {}
    }
    drop(vm);
    drop(backing);
    Some(pages as f64 / secs)
}

/// How long a userfaultfd walk may go without a single resolved fault
/// before it counts as stalled (at the slowest rate seen, on a busy host,
/// a fault is resolved every few milliseconds).
const STALL: Duration = Duration::from_secs(30);

/// How long a walk without userfaultfd may run before it counts as
/// stalled: a 256 MiB walk takes seconds even streamed from a file, but in
/// the test VM a vCPU has (rarely) looped in KVM's instruction emulator on
/// other memslots too (see [`run_vcpus`]).
const STALL_WALK: Duration = Duration::from_secs(120);

/// Stalls of one point after which the benchmark fails.
const MAX_STALLS: usize = 5;

/// Sent to a vCPU thread to make its `KVM_RUN` return `EINTR`.
const KICK: libc::c_int = libc::SIGUSR1;

extern "C" fn on_kick(_: libc::c_int) {}

/// Installs an empty [`KICK`] handler without `SA_RESTART`, once.
fn install_kick_handler() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // SAFETY: a zeroed sigaction with a handler that does nothing
        // (async-signal-safe) and an empty mask.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(KICK, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            check::<(), _>(Err(std::io::Error::last_os_error()), "sigaction");
        }
    });
}

/// Runs `vcpu` to its program's report, like `guest::__run_timed`, but
/// gives up (`None`) when a `KVM_RUN` is interrupted with `abort` set.
fn run_to_report(vcpu: &mut VcpuFd, abort: &AtomicBool) -> Option<(Outcome, Instant)> {
    loop {
        let exit: Option<Exit> = match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => None,
            Ok(VcpuExit::Intr) => None,
            Ok(exit) => Some(exit.into()),
            Err(e) => Some(check(Err(e), "KVM_RUN")),
        };
        match exit {
            // Interrupted: go on, unless told to give up.
            None if abort.load(Relaxed) => return None,
            None => continue,
            Some(exit) => {
                let at = Instant::now();
                return Some((check(guest::__outcome(vcpu, exit), "KVM_RUN"), at));
            }
        }
    }
}

/// Runs every vCPU of `vm` on its own thread, started together, each to
/// its program's report, which must be "done"; returns the wall time in
/// seconds from the earliest first `KVM_RUN` to the latest report.
///
/// With `uffd`, a walk in which no userfaultfd fault was resolved for
/// [`STALL`] is given up (`None`): its vCPU threads are kicked out of
/// `KVM_RUN`; without, a walk still running after [`STALL_WALK`] is. In
/// the test VM a vCPU sometimes loops in KVM's instruction emulator on a
/// userfaultfd memslot with 2 vCPUs, and never comes back; KVM's own
/// `demand_paging_test` does the same there. Once (at 5972118, third run,
/// `vms, image cached` read with 2 vCPUs) a vCPU on a vms memslot did too,
/// after its partner had finished: its thread was in
/// `x86_emulate_instruction` called from `kvm_mmu_page_fault`, which vms's
/// page provider cannot reach (it maps a page or fails the fault).
pub fn run_vcpus(vm: &mut Vm, uffd: bool) -> Option<f64> {
    install_kick_handler();
    // A guest that never reports otherwise (a lost wake-up, a stuck
    // fault) ends the program with a diagnostic instead of hanging it.
    let _watchdog = Watchdog::start("a guest's page walk", walk_limit());
    let vcpus = vm.vcpus_mut();
    let n = vcpus.len();
    let barrier = Barrier::new(n);
    let abort = AtomicBool::new(false);
    let tids: Vec<AtomicU64> = (0..n).map(|_| AtomicU64::new(0)).collect();
    let done: Vec<AtomicBool> = (0..n).map(|_| AtomicBool::new(false)).collect();
    let times: Vec<Option<(Instant, Instant)>> = thread::scope(|s| {
        let handles: Vec<_> = vcpus
            .iter_mut()
            .enumerate()
            .map(|(i, vcpu)| {
                let (barrier, abort, tid, done) = (&barrier, &abort, &tids[i], &done[i]);
                let t = thread::Builder::new().name(format!("vcpu-{i}"));
                t.spawn_scoped(s, move || {
                    // SAFETY: pthread_self has no preconditions.
                    tid.store(unsafe { libc::pthread_self() } as u64, Relaxed);
                    barrier.wait();
                    let t0 = Instant::now();
                    let r = run_to_report(vcpu, abort);
                    done.store(true, Relaxed);
                    let (outcome, t1) = r?;
                    if outcome != Outcome::Done {
                        ksft::fail(
                            std::panic::Location::caller(),
                            "guest program did not complete",
                            format_args!("vCPU {i}: {}", guest::describe(&outcome)),
                            None,
                        );
                    }
                    Some((t0, t1))
                })
                .expect("spawn a vCPU thread")
            })
            .collect();
        // Watch for a stall; kick the vCPUs that are still running until
        // they have all given up.
        let started = Instant::now();
        let mut last = (diag::UFFD_RESOLVED.load(Relaxed), started);
        while !done.iter().all(|d| d.load(Relaxed)) {
            thread::sleep(Duration::from_millis(100));
            let r = diag::UFFD_RESOLVED.load(Relaxed);
            if r != last.0 {
                last = (r, Instant::now());
            }
            let stalled = if uffd {
                last.1.elapsed() >= STALL
            } else {
                started.elapsed() >= STALL_WALK
            };
            if stalled {
                abort.store(true, Relaxed);
            }
            if abort.load(Relaxed) {
                for (tid, d) in tids.iter().zip(&done) {
                    let t = tid.load(Relaxed);
                    if !d.load(Relaxed) && t != 0 {
                        // SAFETY: `t` is a thread of this scope that has
                        // not finished (it sets `done` before returning).
                        unsafe { libc::pthread_kill(t as libc::pthread_t, KICK) };
                    }
                }
            }
        }
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    let times: Vec<(Instant, Instant)> = times.into_iter().collect::<Option<_>>()?;
    let start = times.iter().map(|t| t.0).min().expect("a vCPU");
    let end = times.iter().map(|t| t.1).max().expect("a vCPU");
    Some((end - start).as_secs_f64())
}

fn series(b: Backend) -> usize {
    match b {
        Backend::AnonFilled | Backend::AnonFresh => 0,
        Backend::VmsWarm | Backend::VmsCold | Backend::VmsPlain | Backend::VmsHva => 1,
        Backend::UffdMissing | Backend::UffdMissingCold | Backend::UffdMinor => 2,
        Backend::FilePrivate | Backend::FilePrivateCold => 3,
    }
}

fn figure(
    p: &Params,
    pages: u64,
    in_memory: bool,
    rates: &[Vec<Vec<Samples>>],
    stalls: &[Vec<Vec<usize>>],
) -> Figure {
    let vcpu_name = |n: usize| {
        if n == 1 {
            "1 vCPU".to_string()
        } else {
            format!("{n} vCPUs")
        }
    };
    let mut header = vec!["backend".to_string(), "access".to_string()];
    for &n in &p.vcpus {
        header.push(format!("{}: pages/s", vcpu_name(n)));
        header.push("min–max".into());
        header.push("÷ ceiling".into());
    }
    let header: Vec<&str> = header.iter().map(|s| s.as_str()).collect();
    let mut table = Table::new(&header);
    let ceiling = |ai: usize, vi: usize| rates[0][ai][vi].median();
    for (ai, access) in [Access::Read, Access::Write].into_iter().enumerate() {
        for (bi, b) in BACKENDS.iter().enumerate() {
            let mut row = vec![b.name().to_string(), access.name().to_string()];
            for (vi, s) in rates[bi][ai].iter().enumerate() {
                row.push(num(s.median()));
                row.push(spread(s));
                row.push(ratio(s.median() / ceiling(ai, vi)));
            }
            table.row(row);
        }
    }

    let mut md = String::new();
    md.push_str("## Fault service rate\n\n");
    md.push_str(&format!(
        "Each vCPU touches every page of its share of a {} region ({pages} pages, split \
         evenly between the vCPUs) once, reading (and checking the image's contents) or \
         writing; pages/s = all pages / wall time from the first `KVM_RUN` to the last \
         vCPU's report (an `out`). Median and min–max over {} run(s); the backends are \
         interleaved run by run in one process. `÷ ceiling` is the median divided by that \
         of `anon, prefilled` with the same access and vCPU count.\n\n",
        mib_str(p.size.0),
        p.runs
    ));
    md.push_str(&table.markdown());
    md.push_str(
        "\nThe backends:\n\n\
         - **anon, prefilled (ceiling)**: anonymous memory the VMM filled with the image \
         before the guest ran: a fault is a stage-2 (NPT) fault only, the host page exists.\n\
         - **anon, zero-fill on fault**: untouched anonymous memory: a read maps the zero \
         page (the guest checks zeros), a write allocates and zeroes a page; the \
         `demand_paging_test` baseline.\n\
         - **vms, image cached (warm)**: a fresh clone of an image whose pages are all in \
         the vms image cache (one clone read them all first); a write copies the page \
         (copy-on-write).\n\
         - **vms, image cold**: a fresh clone of a new image of the *cold file*, a \
         copy of the image file whose page cache is dropped with `POSIX_FADV_DONTNEED` \
         before each run (checked with `mincore`). The first touch of a page reads it \
         from the file through the page cache (a miss reads the page and its readahead \
         window; a page with the readahead marker starts the next window, as a page \
         fault on a file mapping does) and takes the page-cache page by reference, no \
         copy; it keeps it in the vms image cache, then maps it (or copies it on a \
         write).\n\
         - **uffd MISSING + UFFDIO_COPY**: anonymous memory registered with userfaultfd; \
         one handler thread per vCPU share (as `demand_paging_test`) answers each fault \
         by `UFFDIO_COPY` from a read-only mapping of the image file (page cache \
         warm); **, file cold**: the same, from a mapping of the cold file (the \
         handler's copy faults the page in from the disk).\n\
         - **uffd MINOR + UFFDIO_CONTINUE (shmem)**: a memfd holding a copy of the image, \
         filled through one mapping; the guest gets a second mapping, registered for \
         MINOR faults, and the handler answers with `UFFDIO_CONTINUE`. Its writes go to \
         the shared memfd (no copy-on-write): each run gets a fresh memfd.\n\
         - **MAP_PRIVATE of the image file**: reads map the file's page cache (read \
         through before each run: warm), writes copy the page into anonymous memory; \
         **, cold**: the same mapping of the cold file.\n\n\
         Anonymous memory is mapped with `MADV_NOHUGEPAGE` (as the KVM selftests' \
         \"anonymous\" backing), shmem and tmpfs use 4 KiB pages and vms maps 4 KiB pages: \
         every backend takes one stage-2 fault per page.\n\n\
         All rates are from a nested guest under QEMU TCG: absolute numbers mean little, \
         the ratios between rows measured side by side do.\n",
    );
    let dir = image_dir();
    if in_memory {
        md.push_str(&format!(
            "\n**Image files in memory**: they were in `{}` ({}), whose page cache \
             `POSIX_FADV_DONTNEED` cannot drop. *vms, image cold* therefore means \"not in \
             the vms image cache\": each first touch looks the page up in the file's page \
             cache and takes it by reference. The other cold rows are not measured (n/a). \
             `scripts/bench` puts the files on a disk (`scripts/vm --disk`) instead.\n",
            dir.display(),
            mem::mount_of(&dir)
        ));
    } else {
        md.push_str(&format!(
            "\n**Image files on a disk**: `{}` ({}). A cold row's first touch of a page \
             reads the disk (for vms, once for all clones of the image); its rate is bound \
             by the disk and its readahead, so compare it with the other cold rows, not \
             with the ceiling.\n",
            dir.display(),
            mem::mount_of(&dir)
        ));
    }
    if p.vcpus.iter().any(|&n| n > 1) {
        if p.uffd_smp {
            md.push_str(
                "\n**Warning**: the userfaultfd rows were measured with more than one vCPU \
                 (`--uffd-smp`). In the test VM such walks can stall (see below), and after \
                 a stall other walks have failed with wrong guest accesses: treat every \
                 figure of this run with suspicion.\n",
            );
        } else {
            md.push_str(&format!(
                "\n**Not measured (n/a)**: the userfaultfd rows with more than one vCPU. In \
                 the test VM a vCPU on a userfaultfd memslot with 2 vCPUs sometimes never \
                 completes a fault: it loops between the guest and KVM's instruction emulator \
                 and its handler receives nothing more. KVM's own `demand_paging_test -v 2` \
                 stalls the same way there, without vms.ko loaded (at iteration 26 of \
                 `-u MISSING -b 64M` and 3 of `-u MINOR -s shmem`, with 64 MiB); \
                 after such a stall, later walks of other backends have failed with wrong \
                 guest accesses (an MMIO exit at a pattern value instead of an address), so \
                 the emulated machine is not trusted past it. With 1 vCPU, 150 walks in a \
                 row showed no stall; without userfaultfd, 250 walks with 2 vCPUs neither, \
                 but one `vms, image cached` read walk with 2 vCPUs stalled the same way \
                 later (a full run at 5972118, after about 130 walks). \
                 `vms-bench faults --uffd-smp` measures them anyway (walks with no resolved \
                 fault for {} s are given up and measured again); `scripts/bench --uffd-smp` \
                 measures them one walk per fresh boot of the test VM and counts the walks \
                 that fail.\n",
                STALL.as_secs()
            ));
        }
    }
    let mut stalled = Vec::new();
    for (bi, b) in BACKENDS.iter().enumerate() {
        for (ai, access) in [Access::Read, Access::Write].into_iter().enumerate() {
            for (vi, &n) in p.vcpus.iter().enumerate() {
                let k = stalls[bi][ai][vi];
                if k > 0 {
                    stalled.push(format!("{} {}, {n} vCPU(s): {k}", b.name(), access.name()));
                }
            }
        }
    }
    if !stalled.is_empty() {
        md.push_str(&format!(
            "\n**Stalled walks, measured again** (not in the samples): {}; a userfaultfd \
             walk with no resolved fault for {} s, or another walk still running after {} s, \
             is given up. Treat the figures measured after a stall with suspicion (see \
             above).\n",
            stalled.join("; "),
            STALL.as_secs(),
            STALL_WALK.as_secs()
        ));
    }
    md.push_str(&targets(p, in_memory, rates));

    let mut sections = Vec::new();
    for (ai, access) in [Access::Read, Access::Write].into_iter().enumerate() {
        for (vi, &n) in p.vcpus.iter().enumerate() {
            sections.push(Section {
                title: format!("{}, {}", access.name(), vcpu_name(n)),
                bars: BACKENDS
                    .iter()
                    .enumerate()
                    .filter(|(bi, _)| !rates[*bi][ai][vi].0.is_empty())
                    .map(|(bi, &b)| {
                        let s = &rates[bi][ai][vi];
                        Bar {
                            label: b.name().into(),
                            value: s.median(),
                            lo: s.min(),
                            hi: s.max(),
                            series: series(b),
                        }
                    })
                    .collect(),
            });
        }
    }
    Figure {
        name: "faults",
        markdown: md,
        chart: Chart {
            title: format!(
                "Fault service rate, {} region (median, min–max over {} runs)",
                mib_str(p.size.0),
                p.runs
            ),
            unit: "pages/s".into(),
            log: false,
            series: vec![
                "plain memory".into(),
                "vms".into(),
                "userfaultfd".into(),
                "MAP_PRIVATE".into(),
            ],
            sections,
        },
    }
}

/// The targets for vms, with the measured values.
fn targets(p: &Params, in_memory: bool, rates: &[Vec<Vec<Samples>>]) -> String {
    let idx = |b: Backend| BACKENDS.iter().position(|&x| x == b).expect("a backend");
    let m = |b: Backend, ai: usize, vi: usize| rates[idx(b)][ai][vi].median();
    let mut t = Table::new(&["target (vms)", "vCPUs", "measured", "met"]);
    let yes = |r: f64, ok: bool| {
        if !r.is_finite() {
            "n/a"
        } else if ok {
            "yes"
        } else {
            "no"
        }
        .to_string()
    };
    for (vi, &n) in p.vcpus.iter().enumerate() {
        for b in [Backend::VmsWarm, Backend::VmsCold] {
            let r = m(b, 0, vi) / m(Backend::AnonFilled, 0, vi);
            t.row(vec![
                format!("{}: read ≥ 0.8x ceiling", b.name()),
                n.to_string(),
                ratio(r),
                yes(r, r >= 0.8),
            ]);
        }
        for b in [Backend::VmsWarm, Backend::VmsCold] {
            // Cold against cold: both read the same disk.
            let uffd = if b == Backend::VmsCold && !in_memory {
                Backend::UffdMissingCold
            } else {
                Backend::UffdMissing
            };
            let r = m(b, 0, vi) / m(uffd, 0, vi);
            t.row(vec![
                format!("{}: read ≥ 2x {}", b.name(), uffd.name()),
                n.to_string(),
                ratio(r),
                yes(r, r >= 2.0),
            ]);
        }
        for ai in 0..2 {
            // Issue 17: what the claim saves a VMM that sets no flag.
            let r = m(Backend::VmsPlain, ai, vi) / m(Backend::VmsHva, ai, vi);
            t.row(vec![
                format!(
                    "{}: {} vs {}",
                    Backend::VmsPlain.name(),
                    ["read", "write"][ai],
                    Backend::VmsHva.name()
                ),
                n.to_string(),
                ratio(r),
                "(reported)".to_string(),
            ]);
        }
        for b in [Backend::VmsWarm, Backend::VmsCold] {
            let r = m(b, 1, vi) / m(Backend::AnonFilled, 1, vi);
            let z = m(b, 1, vi) / m(Backend::AnonFresh, 1, vi);
            t.row(vec![
                format!("{}: write (CoW) ≥ 0.7x ceiling", b.name()),
                n.to_string(),
                format!("{} ({} of zero-fill)", ratio(r), ratio(z)),
                yes(r, r >= 0.7),
            ]);
        }
    }
    format!(
        "\n### Targets (issue 5; reported, not asserted)\n\n{}",
        t.markdown()
    )
}
