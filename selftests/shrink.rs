// SPDX-License-Identifier: GPL-2.0

//! shrink: under host memory pressure the kernel takes private pages back
//! from clones that have a swap file, whatever their limit, through the
//! `vms-clones` shrinker; the pages come back when used (issue 18).
//!
//! - `drop_caches`: two clones of one image each write 1024 pages; one
//!   has a swap file and no limit, the other neither. Writing 2 to
//!   `/proc/sys/vm/drop_caches` runs every shrinker: the first clone's
//!   pages go to its swap file (`shrunk`, `evicted`), the second keeps
//!   all of its own. Then the guest and the VMM read every page of both.
//! - `kswapd`: a clone (of an empty image) with a swap file writes 64
//!   MiB; a process then
//!   takes anonymous memory until little is left, so that kswapd and
//!   direct reclaim run. The clone gives pages back; once the process is
//!   gone, it still has at least half its pages in memory, and the
//!   shrinker takes at most 512 more in 5 s (asks made before the pressure
//!   ended may finish; before 2026-12-05 the worker went on until the
//!   clone was empty); the guest then reads every page it wrote.
//! - `races`: a vCPU reads and writes every page and a VMM thread writes
//!   and reads back tokens through two mappings (`token_race`), while the
//!   main thread runs `drop_caches` and takes snapshots, and a limit of
//!   64 pages comes and goes. Freed pages sit in the debug quarantine.
//! - `close_while_shrinking`: clones with swap files close while another
//!   thread runs `drop_caches` without pause: a clone's drop waits for the
//!   shrinker's worker, which may be evicting from it.
//! - `over_limit_while_backing_off`: 200 pages of a clone with a 256-page
//!   limit are held in pipes (`vmsplice`) while `drop_caches` asks the
//!   shrinker for them, which finds them held and backs off from the
//!   clone; in that second the VMM writes 300 more pages (its faults do
//!   not kick a worker that is backing off), the pipes are read, and
//!   nothing touches the clone after: the worker must come back when the
//!   back-off ends and bring the clone to its limit within 20 s.
//! - `idle_image`: an image made from a file whose cache holds every
//!   page (a clone's guest read them all, its VMM 16 of them, which made
//!   copies); once the clone is gone, `drop_caches` empties it
//!   (`dropped`, and no VMM copy left), and a new clone's guest and VMM
//!   read the image's bytes again, streamed anew.
//! - `used_image`: the same cache while the clone lives and its VM runs:
//!   `drop_caches` takes back every page but the 16 the VMM mapped, first
//!   unmapping the guest's (`unmapped`), then dropping them (`dropped`);
//!   the guest then reads every page again, the image's bytes, streamed
//!   anew, and so does the VMM.
//! - `used_image_races`: four clones of one image, each with a vCPU that
//!   reads every page, writes 64 of its own and reads them back, and a
//!   VMM that reads one more page each round, 10 rounds, while another
//!   thread runs `drop_caches` without pause: pages are unmapped from the
//!   clones, dropped and streamed again under them, and every read finds
//!   the image's bytes or the clone's own.
//! - `idle_parent_of_live_image`: an image a live image is layered on
//!   keeps its cache with no clone left, until the live image is deleted;
//!   then it gives it back, and a new clone reads the image.
//! - `idle_image_races`: clones of one image come and go, each reading
//!   every page (guest and VMM), with the image idle between them, while
//!   another thread runs `drop_caches` without pause: the cache is dropped
//!   between clones, never under one.
//!
//! Swap files go in `$VMS_IMAGE_DIR` (a disk in `scripts/bench`), else
//! /tmp. Skips if `/dev/vms` or `/dev/kvm` is missing, or without root
//! (`drop_caches`).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vms_selftests::guest::{self, Walk};
use vms_selftests::ksft::{self, Test, Watchdog};
use vms_selftests::kvm;
use vms_selftests::race::{eviction_race, EVICTION_RACE_PAGES};
use vms_selftests::vms::{
    image_create, image_create_empty, image_dir, image_snapshot, pattern_page, require_vms_and_kvm, unique_name, vm_with_clone,
    vms_open, Image, ImageFile, VmsClone, CLONE_GPA, PAGE_SIZE,
};
use vms_uapi::VmsImageStats;
use vms_selftests::{test_assert, test_assert_eq};

const PAGES: u64 = 2048;
const WRITTEN: u64 = 1024;
const FIRST: u32 = 0x0c00_0000;

/// Run every shrinker once (`drop_caches` 2: slab objects only).
fn drop_caches() {
    std::fs::write("/proc/sys/vm/drop_caches", "2\n").expect("write /proc/sys/vm/drop_caches");
}

/// A thread that runs `drop_caches` without pause until stopped.
struct DropCachesLoop {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<u64>,
}

impl DropCachesLoop {
    fn start() -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0u64;
            while !flag.load(Ordering::Relaxed) {
                drop_caches();
                n += 1;
            }
            n
        });
        DropCachesLoop { stop, thread }
    }

    /// Stop the thread; how many times it ran `drop_caches`.
    fn stop(self) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        self.thread.join().expect("the drop_caches thread")
    }
}

/// Run shrinkers until `clone` gave at least `want` pages to them, for at
/// most `limit`; then wait until the module's worker, which evicts after
/// `drop_caches` returns, has stopped evicting from it (its footprint
/// stays the same for 300 ms, at most 10 s more), so that what the test
/// reads next is one state. Returns how many pages the clone gave.
fn shrink_until(clone: &VmsClone, want: u64, limit: Duration) -> u64 {
    let t0 = Instant::now();
    loop {
        drop_caches();
        let shrunk = clone.footprint().shrunk;
        if shrunk >= want || t0.elapsed() > limit {
            break;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    let t1 = Instant::now();
    let mut last = clone.footprint();
    while t1.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(300));
        let now = clone.footprint();
        if now == last {
            break;
        }
        last = now;
    }
    last.shrunk
}

fn drop_caches_test() {
    let dev = vms_open();
    let name = unique_name("shrink");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let swappable = image.clone_create();
    let kept = image.clone_create();
    let (map_s, map_k) = (swappable.map(), kept.map());
    let mut vm_s = vm_with_clone(&kvm, &swappable, &map_s, 1);
    let mut vm_k = vm_with_clone(&kvm, &kept, &map_k, 1);
    // A swap file, no limit: only memory pressure evicts.
    swappable.set_limit(0, Some(&image_dir()));

    let writes = Walk::values(CLONE_GPA, WRITTEN, FIRST);
    guest::run(&mut vm_s, 0, &guest::write(&writes));
    guest::run(&mut vm_k, 0, &guest::write(&writes));
    let f = swappable.footprint();
    test_assert_eq!((f.resident, f.evicted, f.shrunk), (WRITTEN, 0, 0), "no limit: nothing evicted yet");

    // The clock passes every page twice at most: once to make it old,
    // once to take it.
    let shrunk = shrink_until(&swappable, WRITTEN / 2, Duration::from_secs(30));
    let f = swappable.footprint();
    ksft::ksft_print_msg(&format!("after drop_caches: {f:?}"));
    test_assert!(shrunk >= WRITTEN / 2, "the shrinker took {shrunk} of {WRITTEN} pages in 30 s");
    test_assert_eq!(f.evicted, f.shrunk, "no limit: every eviction was the shrinker's");
    test_assert_eq!(f.resident + f.swapped, WRITTEN, "every written page is in memory or swapped");
    test_assert_eq!(f.evict_errors, 0);
    test_assert_eq!(swappable.stats().private_pages, f.resident);
    let fk = kept.footprint();
    test_assert_eq!((fk.resident, fk.evicted, fk.shrunk), (WRITTEN, 0, 0), "a clone without a swap file keeps its pages");

    guest::run(&mut vm_s, 0, &guest::read_check(&writes));
    guest::run(&mut vm_k, 0, &guest::read_check(&writes));
    let rest = Walk::pattern(CLONE_GPA + WRITTEN * PAGE_SIZE, WRITTEN, PAGES - WRITTEN);
    guest::run(&mut vm_s, 0, &guest::read_check(&rest));
    let f = swappable.footprint();
    test_assert!(f.read_back >= shrunk, "{} read back of {shrunk} shrunk", f.read_back);
    // Out again, then back through the VMM's faults.
    shrink_until(&swappable, f.shrunk + WRITTEN / 2, Duration::from_secs(30));
    map_s.check_values(0..WRITTEN, FIRST);
    map_k.check_values(0..WRITTEN, FIRST);
    let f = swappable.footprint();
    ksft::ksft_print_msg(&format!("after the checks: {f:?}"));
    test_assert_eq!(f.resident + f.swapped, WRITTEN);
    test_assert_eq!(f.evict_errors, 0);
    drop((vm_s, vm_k, map_s, map_k, swappable, kept));
    image.delete();
}

/// Kibibytes of `field` in /proc/meminfo.
fn meminfo_kib(field: &str) -> u64 {
    let s = std::fs::read_to_string("/proc/meminfo").expect("read /proc/meminfo");
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':')?.trim().strip_suffix(" kB")?.parse().ok())
        .unwrap_or_else(|| panic!("no {field} in /proc/meminfo"))
}

const KSWAPD_PAGES: u64 = 16384;
/// Pages the shrinker may still take once the pressure ended: asks made
/// just before (8 batches of 64).
const AFTER_PRESSURE: u64 = 512;

fn kswapd() {
    let dev = vms_open();
    let name = unique_name("shrink_kswapd");
    // Empty: an image made from a file would give its cache first (the
    // pages its clone copied, no clone maps them), and the ask then goes
    // to the clone only once that is gone (`used_image` tests the cache).
    let image = image_create_empty(&dev, &name, KSWAPD_PAGES * PAGE_SIZE);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    clone.set_limit(0, Some(&image_dir()));
    let writes = Walk::values(CLONE_GPA, KSWAPD_PAGES, FIRST);
    guest::run(&mut vm, 0, &guest::write(&writes));
    // Twice, so the clock's next pass finds them old.
    guest::run(&mut vm, 0, &guest::read_check(&writes));

    // Another process (this binary, `--hog`) takes anonymous memory until
    // little is free, and holds it: the kernel reclaims (kswapd, direct
    // reclaim). It is the OOM killer's first choice, should it come to
    // that; the clone's pages count for nothing in `MemAvailable`.
    let _dog = Watchdog::start("kswapd", Duration::from_secs(240));
    let start = meminfo_kib("MemAvailable");
    let t0 = Instant::now();
    let mut hog = std::process::Command::new(std::env::current_exe().expect("this binary"))
        .arg("--hog")
        .spawn()
        .expect("start the memory hog");
    let mut hog_status = None;
    while clone.footprint().shrunk == 0 && t0.elapsed() < Duration::from_secs(90) && hog_status.is_none() {
        std::thread::sleep(Duration::from_millis(200));
        hog_status = hog.try_wait().expect("wait for the hog");
    }
    let low_free = meminfo_kib("MemFree");
    let f = clone.footprint();
    let _ = hog.kill();
    let _ = hog.wait();
    ksft::ksft_print_msg(&format!(
        "MemAvailable {} MiB at the start, MemFree {} MiB at the end, after {:.1} s (hog: {}); {f:?}",
        start / 1024,
        low_free / 1024,
        t0.elapsed().as_secs_f64(),
        hog_status.map_or("running".to_owned(), |s| s.to_string()),
    ));
    test_assert!(f.shrunk > 0, "memory pressure took no page from the clone");
    // The pressure is over (the hog is gone, its memory freed): what
    // reclaim asked before may finish (a few batches), but the clone is
    // not emptied for it.
    let ended = clone.footprint();
    std::thread::sleep(Duration::from_secs(5));
    let after = clone.footprint();
    let more = after.shrunk - ended.shrunk;
    ksft::ksft_print_msg(&format!("5 s after the pressure ended: {more} more pages shrunk; {after:?}"));
    test_assert!(
        more <= AFTER_PRESSURE,
        "{more} pages shrunk in the 5 s after the pressure ended (at most {AFTER_PRESSURE})"
    );
    // While the hog's memory was freed (seconds, in a debug kernel that
    // poisons each page) reclaim stopped asking; the clone gave a few
    // hundred pages to the pressure, and must not have been emptied.
    test_assert!(
        after.resident >= KSWAPD_PAGES / 2,
        "{} of {KSWAPD_PAGES} pages left in memory once the pressure ended",
        after.resident
    );
    test_assert_eq!(after.resident + after.swapped, KSWAPD_PAGES);
    test_assert_eq!(after.evict_errors, 0);
    guest::run(&mut vm, 0, &guest::read_check(&writes));
    drop((vm, map, clone));
    image.delete();
}

fn races() {
    let f = eviction_race("shrink_race", 0, |n, clone| {
        drop_caches();
        if n.is_multiple_of(7) {
            clone.set_limit(if n.is_multiple_of(2) { 64 } else { 0 }, None);
        }
    });
    test_assert!(f.shrunk > 0 && f.read_back > 0, "the shrinker evicted nothing that came back");
    test_assert_eq!(f.evict_errors, 0);
}

/// The VMM takes a clone over its limit while the worker backs off from
/// it for the shrinker: 200 pages under a 256-page limit, held in pipes,
/// so the shrinker's eviction (`drop_caches`) can take none and backs off;
/// in that second the VMM writes 300 more (its faults do not kick the
/// worker, which is backing off), then the pipes are read and nothing
/// touches the clone: the worker must come back when the back-off ends.
fn over_limit_while_backing_off() {
    const PAGES_B: u64 = 1024;
    const LIMIT_B: u64 = 256;
    let dev = vms_open();
    let name = unique_name("shrink_backoff");
    let file = ImageFile::with_pattern(&name, PAGES_B, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_B * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    clone.set_limit(LIMIT_B, Some(&image_dir()));
    map.write_values(0..200, FIRST);
    let pipes = map.hold_in_pipes(0..200);
    let t0 = Instant::now();
    while clone.footprint().evict_held == 0 && t0.elapsed() < Duration::from_secs(10) {
        drop_caches();
        std::thread::sleep(Duration::from_millis(20));
    }
    let held = clone.footprint();
    map.write_values(200..500, FIRST);
    let written = t0.elapsed();
    pipes.release();
    let (f, secs) = clone.wait_resident_at_most(LIMIT_B, Duration::from_secs(20));
    ksft::ksft_print_msg(&format!(
        "shrinker held off: {held:?}; 300 more written {:.2} s after the first drop_caches; {:.2} s after the pipes were read: {f:?}",
        written.as_secs_f64(),
        secs
    ));
    test_assert!(held.evict_held > 0, "the shrinker found no held page");
    test_assert!(f.resident <= LIMIT_B, "{} pages in memory 20 s after, limit {LIMIT_B}", f.resident);
    test_assert_eq!(f.resident + f.swapped, 500);
    test_assert_eq!(f.evict_errors, 0);
    map.check_values(0..500, FIRST);
    drop((map, clone));
    image.delete();
}

fn close_while_shrinking() {
    let dev = vms_open();
    let name = unique_name("shrink_close");
    let file = ImageFile::with_pattern(&name, EVICTION_RACE_PAGES, 0);
    let image = image_create(&dev, &name, file.file(), EVICTION_RACE_PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let _dog = Watchdog::start("close while shrinking", Duration::from_secs(240));
    let shrinker = DropCachesLoop::start();
    let writes = Walk::values(CLONE_GPA, EVICTION_RACE_PAGES, FIRST);
    let mut shrunk = 0;
    for _ in 0..20 {
        let clone = image.clone_create();
        let map = clone.map();
        let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
        clone.set_limit(0, Some(&image_dir()));
        guest::run(&mut vm, 0, &guest::write(&writes));
        guest::run(&mut vm, 0, &guest::read_check(&writes));
        shrunk += clone.footprint().shrunk;
        drop((vm, map, clone));
    }
    let calls = shrinker.stop();
    ksft::ksft_print_msg(&format!("20 clones closed; {calls} drop_caches; {shrunk} pages shrunk"));
    test_assert!(shrunk > 0, "the shrinker took nothing from 20 clones");
    image.delete();
}

/// Run `drop_caches` until `image`'s cache is empty, for at most 30 s.
fn drop_until_empty(image: &Image) -> VmsImageStats {
    drop_until_at_most(image, 0)
}

/// A clone of `image` on `kvm` whose guest reads every page of it, and
/// whose VMM reads pages 0..16 (making the image's VMM copies of them):
/// all must be the image's pattern.
fn read_through_clone(image: &Image, kvm: &kvm_ioctls::Kvm, pages: u64) -> VmsClone {
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(kvm, &clone, &map, 1);
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, pages)));
    for p in 0..16 {
        test_assert!(map.read_page(p) == pattern_page(p), "the VMM's view of page {p}");
    }
    drop((vm, map));
    clone
}

fn idle_image() {
    const N: u64 = 2048;
    let dev = vms_open();
    let name = unique_name("shrink_idle");
    let file = ImageFile::with_pattern(&name, N, 0);
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = read_through_clone(&image, &kvm, N);
    let is = image.info();
    test_assert_eq!((is.cached_pages, is.vmm_copies, is.streamed), (N, 16, N), "{is:?}");
    drop(clone);

    let is = drop_until_empty(&image);
    ksft::ksft_print_msg(&format!("idle, after drop_caches: {is:?}"));
    test_assert_eq!((is.clones, is.cached_pages, is.file_pages, is.vmm_copies), (0, 0, 0, 0), "{is:?}");
    test_assert_eq!(is.dropped, N);

    // A new clone streams every page again and reads the image.
    let clone = read_through_clone(&image, &kvm, N);
    let is = image.info();
    ksft::ksft_print_msg(&format!("read again: {is:?}"));
    test_assert_eq!((is.cached_pages, is.vmm_copies, is.streamed), (N, 16, 2 * N), "{is:?}");
    test_assert_eq!(clone.stats().streamed, N);
    drop(clone);
    image.delete();
}

/// Run `drop_caches` until `image`'s cache holds at most `left` pages, for
/// at most 30 s.
fn drop_until_at_most(image: &Image, left: u64) -> VmsImageStats {
    let t0 = Instant::now();
    loop {
        let is = image.info();
        if is.cached_pages <= left || t0.elapsed() > Duration::from_secs(30) {
            return is;
        }
        drop_caches();
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn used_image() {
    const N: u64 = 2048;
    let dev = vms_open();
    let name = unique_name("shrink_used");
    let file = ImageFile::with_pattern(&name, N, 0);
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    let all = Walk::pattern(CLONE_GPA, 0, N);
    guest::run(&mut vm, 0, &guest::read_check(&all));
    for p in 0..16 {
        test_assert!(map.read_page(p) == pattern_page(p), "the VMM's view of page {p}");
    }
    let before = image.info();
    test_assert_eq!((before.cached_pages, before.vmm_copies, before.streamed), (N, 16, N), "{before:?}");
    // The guest's pages go (unmapped first, then dropped); the VMM's stay.
    let is = drop_until_at_most(&image, 16);
    ksft::ksft_print_msg(&format!("used, after drop_caches: {is:?}"));
    test_assert_eq!((is.clones, is.cached_pages, is.vmm_copies), (1, 16, 16), "{is:?}");
    test_assert_eq!((is.dropped, is.unmapped), (N - 16, N - 16), "{is:?}");
    // Streamed again, under the same clone: the image's bytes.
    guest::run(&mut vm, 0, &guest::read_check(&all));
    for p in 0..32 {
        test_assert!(map.read_page(p) == pattern_page(p), "the VMM's view of page {p}, again");
    }
    let again = image.info();
    ksft::ksft_print_msg(&format!("read again: {again:?}"));
    test_assert_eq!((again.cached_pages, again.streamed), (N, 2 * N - 16), "{again:?}");
    test_assert_eq!(again.read_errors, 0);
    drop((vm, map, clone));
    image.delete();
}

fn used_image_races() {
    const N: u64 = 1024;
    const OWN: u64 = 64;
    let dev = vms_open();
    let name = unique_name("shrink_used_race");
    let file = ImageFile::with_pattern(&name, N, 0);
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let _dog = Watchdog::start("used image races", Duration::from_secs(300));
    let shrinker = DropCachesLoop::start();
    let threads: Vec<_> = (0..4u32)
        .map(|t| {
            let clone = image.clone_create();
            std::thread::spawn(move || {
                let kvm = kvm::open_kvm();
                let map = clone.map();
                let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
                let shared = Walk::pattern(CLONE_GPA + OWN * PAGE_SIZE, OWN, N - OWN);
                for round in 0..10u32 {
                    guest::run(&mut vm, 0, &guest::read_check(&shared));
                    let own = Walk::values(CLONE_GPA, OWN, FIRST + (t << 20) + (round << 12));
                    guest::run(&mut vm, 0, &guest::write(&own));
                    guest::run(&mut vm, 0, &guest::read_check(&own));
                    let p = OWN + u64::from(round);
                    test_assert!(map.read_page(p) == pattern_page(p), "clone {t}: the VMM's view of page {p}");
                }
                clone.stats()
            })
        })
        .collect();
    let stats: Vec<_> = threads.into_iter().map(|t| t.join().expect("a clone's thread")).collect();
    let calls = shrinker.stop();
    let is = image.info();
    ksft::ksft_print_msg(&format!("4 clones, 10 rounds; {calls} drop_caches; {is:?}"));
    for (t, s) in stats.iter().enumerate() {
        ksft::ksft_print_msg(&format!("clone {t}: {s:?}"));
    }
    test_assert!(is.unmapped > 0 && is.dropped > 0, "nothing was taken back from the clones: {is:?}");
    test_assert!(is.streamed > N, "nothing was streamed again: {is:?}");
    test_assert_eq!(is.read_errors, 0);
    image.delete();
}

/// A live image holds its parent: the parent keeps its cache while the
/// live image exists, though no clone is left, and gives it back once the
/// live image is deleted.
fn idle_parent_of_live_image() {
    const N: u64 = 512;
    let dev = vms_open();
    let name = unique_name("shrink_parent");
    let file = ImageFile::with_pattern(&name, N, 0);
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = read_through_clone(&image, &kvm, N);
    clone.map().write_values(0..8, FIRST);
    let live = image_snapshot(&dev, &unique_name("shrink_live"), &clone);
    drop(clone);
    for _ in 0..10 {
        drop_caches();
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    let is = image.info();
    test_assert_eq!((is.clones, is.children, is.cached_pages, is.dropped), (0, 1, N, 0), "a live image is layered on it: {is:?}");
    test_assert_eq!(live.info().dropped, 0, "a live image gives nothing back");
    live.delete();
    let is = drop_until_empty(&image);
    ksft::ksft_print_msg(&format!("after the live image went: {is:?}"));
    test_assert_eq!((is.children, is.cached_pages, is.vmm_copies, is.dropped), (0, 0, 0, N), "{is:?}");
    drop(read_through_clone(&image, &kvm, N));
    image.delete();
}

fn idle_image_races() {
    const N: u64 = 1024;
    let dev = vms_open();
    let name = unique_name("shrink_idle_race");
    let file = ImageFile::with_pattern(&name, N, 0);
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let _dog = Watchdog::start("idle image races", Duration::from_secs(240));
    let shrinker = DropCachesLoop::start();
    for i in 0..30u64 {
        drop(read_through_clone(&image, &kvm, N));
        // Idle for a while now and then, so that the worker drops.
        std::thread::sleep(Duration::from_millis(if i % 3 == 0 { 200 } else { 1 }));
    }
    let calls = shrinker.stop();
    let is = image.info();
    ksft::ksft_print_msg(&format!("30 clones; {calls} drop_caches; {is:?}"));
    test_assert!(is.dropped > 0, "nothing was dropped between clones");
    test_assert_eq!(is.read_errors, 0);
    image.delete();
}

/// The memory hog of `kswapd`, in its own process: takes anonymous memory
/// while more than `min_free_kbytes` is free (below the zones' low
/// watermarks, where kswapd wakes), in chunks of half what is free above
/// that (filled by the kernel: `MAP_POPULATE`), touching what it holds
/// meanwhile, until killed.
fn hog() -> ! {
    std::fs::write("/proc/self/oom_score_adj", "1000\n").expect("oom_score_adj");
    let min_free: u64 = std::fs::read_to_string("/proc/sys/vm/min_free_kbytes")
        .expect("min_free_kbytes")
        .trim()
        .parse()
        .expect("min_free_kbytes");
    let mut held: Vec<(*mut u8, usize)> = Vec::new();
    loop {
        let free = meminfo_kib("MemFree");
        if free > min_free {
            let len = (((free - min_free) / 2) << 10).clamp(4 << 20, 256 << 20) as usize;
            // SAFETY: a new anonymous mapping, kept until the process dies.
            let p = unsafe {
                libc::mmap(
                    std::ptr::null_mut(),
                    len,
                    libc::PROT_READ | libc::PROT_WRITE,
                    libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_POPULATE,
                    -1,
                    0,
                )
            };
            assert_ne!(p, libc::MAP_FAILED, "mmap");
            held.push((p.cast(), len));
        } else {
            for &(p, len) in &held {
                for off in (0..len).step_by(4096) {
                    // SAFETY: inside the mapping.
                    unsafe { p.add(off).write_volatile(1) };
                }
            }
        }
    }
}

fn main() {
    if std::env::args().nth(1).as_deref() == Some("--hog") {
        hog();
    }
    ksft::init();
    require_vms_and_kvm();
    // SAFETY: geteuid() reads the process's credentials, nothing else.
    let root = unsafe { libc::geteuid() } == 0;
    if !root || std::fs::metadata("/proc/sys/vm/drop_caches").is_err() {
        ksft::skip("needs root to write /proc/sys/vm/drop_caches");
    }
    ksft::run(&[
        Test::new("drop_caches", drop_caches_test),
        Test::new("kswapd", kswapd),
        Test::new("races", races),
        Test::new("close_while_shrinking", close_while_shrinking),
        Test::new("over_limit_while_backing_off", over_limit_while_backing_off),
        Test::new("idle_image", idle_image),
        Test::new("used_image", used_image),
        Test::new("used_image_races", used_image_races),
        Test::new("idle_parent_of_live_image", idle_parent_of_live_image),
        Test::new("idle_image_races", idle_image_races),
    ]);
}
