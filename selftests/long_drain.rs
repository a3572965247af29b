// SPDX-License-Identifier: GPL-2.0

//! long_drain: a clone or image of hundreds of thousands of pages gives
//! the CPU up while the module frees or moves them.
//!
//! The host kernels vms runs on are often not preemptible in the kernel
//! (`PREEMPT_NONE`, `PREEMPT_VOLUNTARY`; the debug kernel here is
//! `PREEMPT_NONE`): a loop over every page of a big clone must call
//! `cond_resched()`, or it holds its CPU for as long as it runs (seconds
//! for a clone of many GiB), starving whatever else runs there, up to
//! soft-lockup and RCU-stall reports.
//!
//! Each subtest fills a clone of an empty image with private pages (up
//! to 1 GiB, half of the free memory at most) through the VMM's mapping
//! (`MADV_POPULATE_WRITE`), then times one operation that goes over all
//! of them, while a thread pinned to the same CPU as the caller measures
//! the longest time it could not run. That time must stay under 2 s:
//!
//! - `close_drains`: the clone's last reference goes (its fd closed, its
//!   mapping unmapped): `VmClone`'s drop frees every private page;
//! - `snapshot_and_delete`: `VMS_IMAGE_SNAPSHOT` moves every private page
//!   into the new image; then, its clone gone, the live image is deleted
//!   (`VMS_IMAGE_DELETE`), which frees its pages.
//!
//! `VMS_CLONE_RESET` frees a clone's pages through the same loop as the
//! close (`PageTable::drain`); it is not timed here, as filling a clone
//! costs about 40 s in the debug test VM (that is also why this test runs
//! in the `load` suite's test VM, whose lane has room; see
//! `selftests/run`).
//!
//! An operation that took less than 2 s cannot show the fault; the test
//! then says so in a `#` line (the figure is still printed). A loop that
//! yields too seldom but holds the CPU for less than 2 s at these sizes
//! passes.
//!
//! Skips if `/dev/vms` is missing, or if there is not enough memory for
//! 64 MiB of pages.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use vms_selftests::ksft::{self, check, ksft_print_msg, Test};
use vms_selftests::vms::{
    image_create_empty, image_snapshot, unique_name, vms_open, CloneMap, VmsClone, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// At most this much memory in pages: 1 GiB. A loop over that many pages
/// without a `cond_resched()` held the CPU for 3-4 s in the debug test VM
/// (6.6-6.9 s for 1.6 GiB, 2026-12-04), twice [`MAX_GAP`].
const MAX_PAGES: u64 = 256 * 1024;
/// At least this much, or the test skips: 64 MiB.
const MIN_PAGES: u64 = 16 * 1024;
/// The CPU both the caller and the meter run on.
const CPU: usize = 0;
/// The longest time the meter may be kept off its CPU. With every loop
/// yielding it saw 20-110 ms in the debug test VM; a host that stalls the
/// emulated machine would show here too, which is why this is not lower.
const MAX_GAP: Duration = Duration::from_secs(2);

/// Pins the calling thread to CPU `cpu`.
fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: `cpu` is below CPU_SETSIZE.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: `set` is a valid cpu_set_t of the size passed.
    let r = unsafe { libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) };
    check(if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }, "sched_setaffinity");
}

/// How many pages the test fills: `MAX_PAGES`, or half of MemAvailable.
fn pages() -> u64 {
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let avail_kib: u64 = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    (avail_kib / 4 / 2).min(MAX_PAGES)
}

/// Runs `op` on CPU [`CPU`] while a thread pinned there too spins on the
/// clock; returns how long `op` took and the longest gap the spinner saw
/// between two of its readings (the time it could not run).
fn metered(op: impl FnOnce()) -> (Duration, Duration) {
    pin(CPU);
    let stop = Arc::new(AtomicBool::new(false));
    let running = Arc::new(AtomicBool::new(false));
    let max_gap_ns = Arc::new(AtomicU64::new(0));
    let meter = {
        let (stop, running, max_gap_ns) = (stop.clone(), running.clone(), max_gap_ns.clone());
        thread::spawn(move || {
            pin(CPU);
            running.store(true, Ordering::Release);
            let mut last = Instant::now();
            let mut max = 0u64;
            while !stop.load(Ordering::Acquire) {
                let now = Instant::now();
                max = max.max((now - last).as_nanos() as u64);
                last = now;
            }
            max_gap_ns.store(max, Ordering::Release);
        })
    };
    while !running.load(Ordering::Acquire) {
        thread::yield_now();
    }
    let t0 = Instant::now();
    op();
    let took = t0.elapsed();
    stop.store(true, Ordering::Release);
    meter.join().expect("the meter thread panicked");
    (took, Duration::from_nanos(max_gap_ns.load(Ordering::Acquire)))
}

/// Judges one metered operation over `pages` pages.
#[track_caller]
fn judge(what: &str, pages: u64, took: Duration, gap: Duration) {
    ksft_print_msg(&format!(
        "{what}: {pages} pages in {} ms; the CPU was not given up for {} ms at most",
        took.as_millis(),
        gap.as_millis()
    ));
    if took < MAX_GAP {
        ksft_print_msg(&format!(
            "{what}: took less than {} ms: too short for this test to see a missing cond_resched()",
            MAX_GAP.as_millis()
        ));
    }
    test_assert!(
        gap < MAX_GAP,
        "{what} kept its CPU for {} ms of its {} ms (no cond_resched() in a loop over {pages} pages?)",
        gap.as_millis(),
        took.as_millis()
    );
}

/// A clone of a new empty image of `pages` pages, mapped, with every
/// page private.
fn full_clone(dev: &std::fs::File, pages: u64) -> (vms_selftests::vms::Image, VmsClone, Arc<CloneMap>) {
    let image = image_create_empty(dev, &unique_name("long_drain"), pages * PAGE_SIZE);
    let clone = image.clone_create();
    let map = clone.map();
    let t0 = Instant::now();
    map.populate_write(map.len());
    test_assert_eq!(clone.stats().private_pages, pages);
    ksft_print_msg(&format!("{pages} private pages made in {} ms", t0.elapsed().as_millis()));
    (image, clone, map)
}

fn close_drains() {
    let dev = vms_open();
    let n = pages();
    let (image, clone, map) = full_clone(&dev, n);
    // The fd first: the mapping holds the clone's file, so its unmap
    // drops the last reference, in this thread (the file's release runs
    // as the munmap returns to user space).
    drop(clone);
    let (took, gap) = metered(|| map.unmap());
    judge("close", n, took, gap);
    drop(image);
}

fn snapshot_and_delete() {
    let dev = vms_open();
    let n = pages();
    let (image, clone, map) = full_clone(&dev, n);
    let name = unique_name("long_drain_live");
    let mut live = None;
    let (took, gap) = metered(|| live = Some(image_snapshot(&dev, &name, &clone)));
    let live = live.expect("snapshot made no image");
    test_assert_eq!(live.info().cached_pages, n);
    judge("snapshot", n, took, gap);
    // The live image's pages go with it, once its clone is gone; then the
    // image it is layered on can go too.
    drop(clone);
    map.unmap();
    let (took, gap) = metered(|| live.delete());
    judge("image delete", n, took, gap);
    drop(image);
}

fn main() {
    ksft::init();
    if std::fs::metadata("/dev/vms").is_err() {
        ksft::skip("no /dev/vms (vms.ko not loaded)");
    }
    let n = pages();
    if n < MIN_PAGES {
        ksft::skip(format!("{n} pages is less than half of MemAvailable: too little memory"));
    }
    ksft_print_msg(&format!("{n} pages ({} MiB) per clone", (n * PAGE_SIZE) >> 20));
    ksft::run(&[
        Test::new("close_drains", close_drains),
        Test::new("snapshot_and_delete", snapshot_and_delete),
    ]);
}
