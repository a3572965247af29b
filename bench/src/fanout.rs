// SPDX-License-Identifier: GPL-2.0

//! `vms-bench fanout`: N clones of one image started at once. Each clone
//! is its own VM with one vCPU, started on its own thread; the threads
//! wait at a barrier, then each does the whole start (its memory, as
//! `vms-bench start` times it for one clone) and runs its guest to the
//! first instruction, an `out` at image page 0. Timed: from the barrier's
//! release to the exit of the last clone's first instruction (all
//! started), and to the median clone's.
//!
//! Rows, one per way of getting the memory:
//!
//! - **anon, empty**: the floor: anonymous memory with the code page
//!   written, no image at all;
//! - **vms clones, image cached**: `VMS_CLONE_CREATE`, `mmap` of the
//!   clone, the memslot (`KVM_MEM_PAGE_PROVIDER`), `VMS_CLONE_ATTACH`;
//!   the image's pages are in its cache (an untimed start came first);
//! - **vms clones, new image**: the same, from an image created just
//!   before the batch: N clones fault the same uncached page 0 at once;
//! - **uffd MISSING** (only with `--uffd`: it stalls in the test VM, see
//!   [`UFFD_NOTE`]): anonymous memory, a userfaultfd and its handler
//!   thread per clone, which answers with `UFFDIO_COPY` from its own
//!   mapping of the image file;
//! - **MAP_PRIVATE**: `mmap` of the image file;
//! - **copy**: anonymous memory and `pread` of the whole file into it
//!   (only while N times the image fits `--copy-max-total`).
//!
//! Once every clone of a batch ran its first instruction (a second
//! barrier, after the clock), each guest goes on to check pages spread
//! over the image ([`check_walk`]) and the host checks the vms and
//! userfaultfd counters: a wrong page fails the run.

use std::any::Any;
use std::os::unix::fs::FileExt;
use std::sync::{Arc, Barrier};
use std::thread;
use std::time::Instant;

use kvm_ioctls::Kvm;
use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::ksft::{self, check};
use vms_selftests::kvm::{vm_create, Vm};
use vms_selftests::vms::{
    image_create, pattern_word, unique_name, vm_attach_clone, Image, ImageFile, CLONE_GPA,
    PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

use crate::diag::Watchdog;
use crate::faults::walk_limit;
use crate::mem::Mapping;
use crate::report::{num, ratio, spread, Bar, Chart, Figure, Samples, Section, Table};
use crate::uffd::{self, Handler, Uffd};
use crate::{mib_str, progress, Env, Size};

const SLOT: u32 = 1;
const GPA: u64 = CLONE_GPA;
/// Pages each guest checks after the clock stopped, besides page 0.
const SAMPLES: u64 = 16;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum How {
    Empty,
    Vms,
    VmsNew,
    Uffd,
    FilePrivate,
    Copy,
}

const HOWS: [How; 6] = [
    How::Empty,
    How::Vms,
    How::VmsNew,
    How::Uffd,
    How::FilePrivate,
    How::Copy,
];

impl How {
    fn name(self) -> &'static str {
        match self {
            How::Empty => "anon, empty (no image; floor)",
            How::Vms => "vms clones, image cached",
            How::VmsNew => "vms clones, new image",
            How::Uffd => "uffd MISSING + UFFDIO_COPY",
            How::FilePrivate => "MAP_PRIVATE of the file",
            How::Copy => "copy the file into anon memory",
        }
    }

    /// Its name in the chart's legend.
    fn legend(self) -> &'static str {
        match self {
            How::Empty => "anon, empty",
            How::Vms => "vms, cached",
            How::VmsNew => "vms, new image",
            How::Uffd => "uffd",
            How::FilePrivate => "MAP_PRIVATE",
            How::Copy => "copy",
        }
    }

    /// Its short name, for `--only`.
    fn key(self) -> &'static str {
        match self {
            How::Empty => "empty",
            How::Vms => "vms",
            How::VmsNew => "vms-new",
            How::Uffd => "uffd",
            How::FilePrivate => "private",
            How::Copy => "copy",
        }
    }

    /// What the row measures, for the figure's notes.
    fn note(self, p: &Params) -> String {
        let copy_max = mib_str(p.copy_max_total.0);
        let s = match self {
            How::Empty => {
                "anonymous memory with the code page written, no image: the cost of N VMs \
                 and their first instructions alone."
            }
            How::Vms => {
                "`VMS_CLONE_CREATE`, `mmap` of the clone, the memslot with \
                 `KVM_MEM_PAGE_PROVIDER`, `VMS_CLONE_ATTACH`; the first instruction's fetch \
                 faults page 0 in through the provider, from the image's cache (warm since \
                 the untimed start)."
            }
            How::VmsNew => {
                "the same from an image created just before each batch \
                 (`VMS_IMAGE_CREATE`, not timed): the N clones fault the same uncached page \
                 0 at once, and the image reads each page from the file once (checked)."
            }
            How::Uffd => {
                "anonymous memory, a userfaultfd, its handler thread and a mapping of the \
                 image file per clone (Firecracker's UFFD backend): the first \
                 instruction's fetch is a userfaultfd round trip."
            }
            How::FilePrivate => {
                "`mmap(MAP_PRIVATE)` of the image file per clone; the clones share its \
                 page cache."
            }
            How::Copy => {
                "`pread` of the whole file into anonymous memory by every clone first (a \
                 VMM without lazy restore); only while N times the image is at most \
                 COPY_MAX in all."
            }
        };
        s.replace("COPY_MAX", &copy_max)
    }

    /// Whether the guest runs on the image (all but the floor, whose
    /// memory is zero but for the code).
    fn has_image(self) -> bool {
        self != How::Empty
    }
}

/// What to measure.
pub struct Params {
    /// Clone counts.
    pub fanout: Vec<usize>,
    /// Image size.
    pub size: Size,
    pub runs: usize,
    /// Largest total (clones times image size) the "copy" row reads.
    pub copy_max_total: Size,
    /// Measure only these rows ([`How::key`]) and the floor; all if
    /// empty.
    pub only: Vec<String>,
    /// Also measure the userfaultfd row (see [`UFFD_NOTE`]).
    pub uffd: bool,
}

/// Why the userfaultfd row is measured only on request.
const UFFD_NOTE: &str = "In the test VM a guest on a userfaultfd memslot sometimes never \
    completes a fault: its vCPU loops between the guest and KVM's instruction emulator while \
    the handler has answered every fault it received, as the faults figure describes for 2 \
    vCPUs. Here it happened with clones of 1 vCPU, 32 at once, twice in two tries, after 50 to \
    130 clones (the second time in a guest's check, after its first instruction); a watchdog \
    then ends the run after `VMS_BENCH_WALK_LIMIT` seconds (900 by default), and the emulated \
    machine is not trusted past such a stall.";

impl Params {
    fn copies(&self, n: usize) -> bool {
        (n as u64).saturating_mul(self.size.0) <= self.copy_max_total.0
    }

    fn selected(&self, how: How) -> bool {
        match how {
            How::Empty => true,
            How::Uffd if !self.uffd => false,
            _ => self.only.is_empty() || self.only.iter().any(|k| k == how.key()),
        }
    }
}

/// The pages a guest checks once every clone started: [`SAMPLES`] pages
/// (fewer in a tiny image) spread evenly over the image as far as a
/// 32-bit guest reaches, the first one page `step`, none of them page 0
/// (the code). On the image they hold the pattern of
/// `vms_selftests::vms`; in the floor's memory, zeros.
fn check_walk(size: u64, image: bool) -> Walk {
    let reach = (size / PAGE_SIZE).min(((1 << 32) - GPA) / PAGE_SIZE);
    assert!(reach >= 2, "an image of at least two pages");
    let n = SAMPLES.min(reach - 1);
    let step = (reach - 1) / n;
    Walk {
        gpa: u32::try_from(GPA + step * PAGE_SIZE).expect("a 32-bit guest"),
        pages: n as u32,
        stride: i32::try_from(step * PAGE_SIZE).expect("a 32-bit stride"),
        // pattern_word(p) = 0x5600_0000 | p = 0x5600_0000 + p: page
        // k * step holds pattern_word(step) + (k - 1) * step.
        first: if image { pattern_word(step) } else { 0 },
        step: if image { step as u32 } else { 0 },
        xor: if image { !0 } else { 0 },
    }
}

/// The guest: `out PORT_PROGRESS, al` (`E6 ib`), the first instruction,
/// whose exit stops the clock (it needs no register set up), then
/// [`guest::read_check`] of `walk`, which reports `PORT_DONE` or the
/// first wrong page (its code is position-independent: short relative
/// jumps, absolute data addresses).
fn program(walk: &Walk) -> Vec<u8> {
    let mut code = vec![0xe6, guest::PORT_PROGRESS as u8];
    code.extend(guest::read_check(walk));
    code
}

/// What the clones of a batch share; nothing here is timed.
struct Batch<'a> {
    kvm: &'a Kvm,
    how: How,
    size: u64,
    file: &'a ImageFile,
    /// The image the vms rows clone.
    image: Option<&'a Image>,
    /// The floor's program (the image holds the others').
    empty_code: &'a [u8],
    /// Pages each guest touches: page 0 and those of its check.
    touched: u64,
}

pub fn run(env: &Env, p: &Params) -> Figure {
    let size = p.size.0;
    let pages = size / PAGE_SIZE;
    if let Some(k) = p.only.iter().find(|k| !HOWS.iter().any(|h| h.key() == *k)) {
        ksft::fail(
            std::panic::Location::caller(),
            "unknown row in --only",
            format_args!("{k:?}: the rows are vms, vms-new, uffd (with --uffd), private, copy"),
            None,
        );
    }
    progress(&format!(
        "fanout: {:?} clones of a {} image, {} runs, copy up to {} in all",
        p.fanout,
        mib_str(size),
        p.runs,
        mib_str(p.copy_max_total.0)
    ));
    // The image: the pattern in every page, the guest's program over the
    // start of page 0.
    let walk = check_walk(size, true);
    let name = unique_name("bench-fanout");
    let file = ImageFile::with_pattern(&name, pages, 0);
    // Through a writer closed at once: vms refuses a file that is open
    // for writing.
    check(
        file.writer().write_all_at(&program(&walk), 0),
        "write image file",
    );
    let image = image_create(&env.dev, &name, file.file(), size, 0);
    let empty_code = program(&check_walk(size, false));
    let batch = |how: How, n: usize| -> (f64, f64) {
        // A new image for every batch of the "new image" row: its cache
        // is empty when the clones start.
        let new = (how == How::VmsNew)
            .then(|| image_create(&env.dev, &unique_name("bench-fanout"), file.file(), size, 0));
        let b = Batch {
            kvm: &env.kvm,
            how,
            size,
            file: &file,
            image: new.as_ref().or(Some(&image)),
            empty_code: &empty_code,
            touched: 1 + walk.pages as u64,
        };
        let touched = b.touched;
        let r = start_batch(&b, n);
        if let Some(new) = new {
            // Each page read once into the cache, for all the clones
            // that faulted it at once.
            let is = new.info();
            test_assert_eq!(is.cached_pages, touched, "{n} clones: {is:?}");
            new.delete();
        }
        r
    };

    // One untimed start of each row first: the image's pages in its
    // cache, the file's in the page cache, the code paths warm.
    for &how in &HOWS {
        if p.selected(how) && (how != How::Copy || p.copies(1)) {
            batch(how, 1);
        }
    }
    // all[n][how], median[n][how]: ms from the release.
    let mut all = vec![vec![Samples::default(); HOWS.len()]; p.fanout.len()];
    let mut median = all.clone();
    for run in 0..p.runs {
        for (ni, &n) in p.fanout.iter().enumerate() {
            for (hi, &how) in HOWS.iter().enumerate() {
                if !p.selected(how) || (how == How::Copy && !p.copies(n)) {
                    continue;
                }
                let (a, m) = batch(how, n);
                progress(&format!(
                    "fanout run {}/{}: {n} x {}: all started {} ms, median clone {} ms",
                    run + 1,
                    p.runs,
                    how.name(),
                    num(a * 1e3),
                    num(m * 1e3)
                ));
                all[ni][hi].push(a * 1e3);
                median[ni][hi].push(m * 1e3);
            }
        }
    }
    if p.selected(How::Vms) {
        // Each page its clones touched read once, for all of them.
        let is = image.info();
        test_assert_eq!(is.cached_pages, 1 + walk.pages as u64, "{is:?}");
    }
    image.delete();
    drop(file);
    figure(p, &all, &median)
}

/// Starts `n` clones at once, each on its own thread, and returns the
/// seconds from the release of the barrier until the last of them ran
/// its first instruction, and until the median one did.
fn start_batch(b: &Batch<'_>, n: usize) -> (f64, f64) {
    assert!(n >= 1);
    let _watchdog = Watchdog::start(&format!("{n} x {}: starting", b.how.name()), walk_limit());
    let go = Barrier::new(n);
    let started = Barrier::new(n);
    let times: Vec<(Instant, Instant)> = thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (go, started) = (&go, &started);
                thread::Builder::new()
                    .name(format!("clone-{i}"))
                    .spawn_scoped(s, move || start_one(b, i, go, started))
                    .expect("spawn a clone thread")
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
            .collect()
    });
    // The release: the first thread out of the barrier.
    let t0 = times.iter().map(|t| t.0).min().expect("a clone");
    let ends = Samples(times.iter().map(|t| (t.1 - t0).as_secs_f64()).collect());
    (ends.max(), ends.median())
}

/// One clone's thread: waits at `go`, starts its VM, runs the guest to
/// its first instruction, waits at `started` for the others, then lets
/// the guest check its pages and checks the counters. Returns the moment
/// it left `go` and the moment its first instruction exited.
fn start_one(b: &Batch<'_>, i: usize, go: &Barrier, started: &Barrier) -> (Instant, Instant) {
    let who = format!("{}, clone {i}", b.how.name());
    let size = b.size;
    // Declared before the VM, so they go after it.
    let mut clone = None;
    let mut handler: Option<Handler> = None;
    let mut _uffd: Option<Arc<Uffd>> = None;

    go.wait();
    let t0 = Instant::now();
    let mut vm = match b.how {
        How::Vms | How::VmsNew => {
            let c = b.image.expect("an image").clone_create();
            let map = c.map();
            let mut vm = vm_create(b.kvm);
            vm_attach_clone(&mut vm, &c, &map, SLOT, GPA, 0, size);
            clone = Some(c);
            vm
        }
        How::Uffd => {
            let m = Arc::new(check(Mapping::anon(size), "mmap guest memory"));
            let u = Arc::new(check(Uffd::new(uffd::Mode::Missing), "userfaultfd"));
            check(
                u.register(m.hva(), size, uffd::Mode::Missing),
                "UFFDIO_REGISTER",
            );
            let src = check(Mapping::file_ro(b.file.file(), size), "mmap image file");
            handler = Some(Handler::start(
                u.clone(),
                uffd::Mode::Missing,
                m.hva(),
                Some(Arc::new(src)),
            ));
            _uffd = Some(u);
            let mut vm = vm_create(b.kvm);
            attach(&mut vm, m, size);
            vm
        }
        How::FilePrivate => {
            let m = check(Mapping::file(b.file.file(), size, false), "mmap image file");
            let mut vm = vm_create(b.kvm);
            attach(&mut vm, Arc::new(m), size);
            vm
        }
        How::Copy => {
            let m = check(Mapping::anon(size), "mmap guest memory");
            m.fill_from(b.file.file());
            let mut vm = vm_create(b.kvm);
            attach(&mut vm, Arc::new(m), size);
            vm
        }
        How::Empty => {
            let m = check(Mapping::anon(size), "mmap guest memory");
            m.write(0, b.empty_code);
            let mut vm = vm_create(b.kvm);
            attach(&mut vm, Arc::new(m), size);
            vm
        }
    };
    vm.add_vcpu_pm32(0, GPA);
    let (first, t1) = check(guest::__run_timed(vm.vcpu(0)), "KVM_RUN");
    expect(
        &who,
        "run its first instruction",
        &first,
        &Outcome::Progress,
    );

    // Not timed: every clone started; now the guest checks its pages.
    started.wait();
    let rest = check(guest::__run(vm.vcpu(0)), "KVM_RUN");
    let what = if b.how.has_image() {
        "read the image's pattern"
    } else {
        "read zeros"
    };
    expect(&who, what, &rest, &Outcome::Done);
    if let Some(c) = &clone {
        let cs = c.stats();
        test_assert!(cs.faults >= b.touched, "{who}: {cs:?}");
        test_assert_eq!(cs.io_errors, 0, "{who}: {cs:?}");
        test_assert_eq!(cs.private_pages, 0, "{who}: {cs:?}");
    }
    if let Some(h) = handler.take() {
        let served = h.stop();
        test_assert_eq!(served.resolved, b.touched, "{who}: {served:?}");
    }
    (t0, t1)
}

#[track_caller]
fn expect(who: &str, what: &str, got: &Outcome, want: &Outcome) {
    if got != want {
        ksft::fail(
            std::panic::Location::caller(),
            &format!("the guest did not {what}"),
            format_args!("{who}: {}", guest::describe(got)),
            None,
        );
    }
}

/// Installs `m` as the VM's memslot at [`GPA`].
fn attach(vm: &mut Vm, m: Arc<Mapping>, size: u64) {
    let hva = m.hva();
    let owner: Arc<dyn Any + Send + Sync> = m;
    // SAFETY: the range is the mapping `owner` holds, which the VM keeps.
    let r = unsafe { vm.__add_memory_at(SLOT, 0, GPA, size, hva, owner) };
    check(r, "KVM_SET_USER_MEMORY_REGION2");
}

fn figure(p: &Params, all: &[Vec<Samples>], median: &[Vec<Samples>]) -> Figure {
    let size = p.size.0;
    let mut t = Table::new(&[
        "clones",
        "how",
        "all started: ms (median)",
        "min–max",
        "÷ floor",
        "median clone: ms",
        "min–max",
    ]);
    for (ni, &n) in p.fanout.iter().enumerate() {
        let floor = all[ni][0].median();
        for (hi, &how) in HOWS.iter().enumerate() {
            if !p.selected(how) {
                continue;
            }
            let (a, m) = (&all[ni][hi], &median[ni][hi]);
            if a.0.is_empty() {
                t.row(vec![
                    n.to_string(),
                    how.name().into(),
                    format!(
                        "not run ({n} x {} > {})",
                        mib_str(size),
                        mib_str(p.copy_max_total.0)
                    ),
                    "".into(),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
                continue;
            }
            t.row(vec![
                n.to_string(),
                how.name().into(),
                num(a.median()),
                spread(a),
                ratio(a.median() / floor),
                num(m.median()),
                spread(m),
            ]);
        }
    }
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let mut md = String::new();
    md.push_str("## Fan-out: clones started at once\n\n");
    md.push_str(&format!(
        "N clones of one {} image started at the same moment, each its own VM with one \
         vCPU, each on its own thread. The threads wait at a barrier; released, each does \
         the whole start (its memory as the row says, `KVM_CREATE_VM`, the memslot, \
         `KVM_CREATE_VCPU` and registers) and runs its guest until the first instruction \
         (an `out` at guest-physical {GPA:#x}, image page 0) exits. *All started* is the \
         time from the release (the first thread out of the barrier) to that exit in the \
         last clone; *median clone* the time to the median clone's exit. The N threads \
         share the test VM's {cpus} vCPUs: beyond {cpus} clones the starts queue, and \
         *all started* grows with N even where one start costs nothing more. The image \
         file (the test pattern in every page, on the test VM's tmpfs) and the vms image \
         exist before; each row started one clone, untimed, before the runs. After all \
         clones of a batch started (not timed), each guest checks {} pages spread over \
         the image (the pattern; zeros for `anon, empty`). Median and min–max over {} \
         run(s); `÷ floor` is the median *all started* over that of `anon, empty` at the \
         same N.\n\n",
        mib_str(size),
        SAMPLES,
        p.runs
    ));
    md.push_str(&t.markdown());
    md.push('\n');
    for how in HOWS.iter().filter(|&&h| p.selected(h)) {
        md.push_str(&format!("- **{}**: {}\n", how.name(), how.note(p)));
    }
    if !p.uffd {
        md.push_str(&format!(
            "\n**Not measured**: {} (`vms-bench fanout --uffd` measures it anyway). \
             {UFFD_NOTE}\n",
            How::Uffd.name()
        ));
    } else if p.selected(How::Uffd) {
        md.push_str(&format!("\n**{}**: {UFFD_NOTE}\n", How::Uffd.name()));
    }

    // The rows measured, in the legend's order (their colours).
    let shown: Vec<How> = HOWS.iter().copied().filter(|&h| p.selected(h)).collect();
    let sections = p
        .fanout
        .iter()
        .enumerate()
        .map(|(ni, &n)| Section {
            title: format!("{n} clone(s) of a {} image at once", mib_str(size)),
            bars: HOWS
                .iter()
                .enumerate()
                .filter(|(hi, _)| !all[ni][*hi].0.is_empty())
                .map(|(hi, how)| {
                    let x = &all[ni][hi];
                    Bar {
                        label: how.name().into(),
                        value: x.median(),
                        lo: x.min(),
                        hi: x.max(),
                        series: shown.iter().position(|h| h == how).expect("a row shown"),
                    }
                })
                .collect(),
        })
        .collect();
    Figure {
        name: "fanout",
        markdown: md,
        chart: Chart {
            title: format!(
                "Fan-out: N clones at once, until the last one started (median, min–max, {} runs)",
                p.runs
            ),
            unit: "ms".into(),
            log: true,
            series: shown.iter().map(|h| h.legend().to_string()).collect(),
            sections,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn check_walk_spreads_over_the_image() {
        // 256 MiB: 65,536 pages, 16 samples 4,095 pages apart.
        let w = check_walk(256 << 20, true);
        assert_eq!((w.pages, w.stride), (16, 4095 * 4096));
        assert_eq!(w.gpa as u64, GPA + 4095 * 4096);
        assert_eq!(w.value(0).0, pattern_word(4095));
        assert_eq!(w.value(15).0, pattern_word(16 * 4095));
        // A tiny image: every page but page 0.
        let w = check_walk(4 * 4096, true);
        assert_eq!((w.pages, w.stride), (3, 4096));
        assert_eq!(w.value(2).0, pattern_word(3));
        // Beyond 4 GiB of guest-physical addresses: the reachable part.
        let w = check_walk(16 << 30, true);
        let last = w.gpa as u64 + (w.pages as u64 - 1) * w.stride as u64;
        assert!(last + PAGE_SIZE <= 1 << 32);
        // The floor reads zeros.
        assert_eq!(check_walk(256 << 20, false).value(3), (0, 0));
    }

    #[test]
    fn program_reports_first() {
        let code = program(&check_walk(1 << 20, true));
        assert_eq!(code[..2], [0xe6, guest::PORT_PROGRESS as u8]);
        assert!(code.len() < 256);
    }
}
