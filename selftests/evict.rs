// SPDX-License-Identifier: GPL-2.0

//! evict: a clone with a limit keeps at most that many private pages in
//! memory; the rest go to its swap file and come back when used
//! (`VMS_CLONE_SET_LIMIT`, `VMS_CLONE_FOOTPRINT`; issue 18).
//!
//! - `guest_writes_4x_its_limit`: a 256-page limit; the guest writes 1024
//!   pages and then checks every one of them, and so does the VMM's
//!   mapping (whose faults read pages back with their lock released).
//!   Private pages in memory never pass the limit by more than the fault
//!   in flight; those in memory plus those in the swap file are the 1024
//!   written; pages were evicted and read back. With the swap file on a
//!   disk slower than the guest's writes (the suite's `evict_ext4`), the
//!   guest's faults must wait while an eviction writes (the module's
//!   throttle): before 2026-12-06 they went on, and 942 pages stayed in
//!   memory. Lowering the limit to 64
//!   evicts down to it before the call returns; unwritten pages still read
//!   the image.
//! - `two_vcpus_write_4x_its_limit`: the same with two vCPUs at once,
//!   each writing half the pages, then each checking the other's half:
//!   at most one page past the limit per vCPU. On a slow disk one vCPU's
//!   faults wait while the other's eviction writes.
//! - `hung_swap_disk_holds_a_vcpu_2s_at_most`: two vCPUs write 256 pages
//!   each at a 64-page limit while every eviction hangs for 8 s before its
//!   writes (the `swap_write_delay_ms` knob). The vCPU that is not stuck
//!   in the eviction is turned back for at most 2 s, then goes on over the
//!   limit: it finishes before any eviction has ended. Then the clone
//!   comes to its limit and every page reads back.
//! - `snapshot_and_reset`: a snapshot of a clone with swapped pages reads
//!   them back first: a clone of the live image sees every byte written.
//!   A reset drops swapped pages with the rest: the clone reads its image,
//!   and its swap file's blocks are given back.
//! - `races`: a vCPU reads every page and writes to it, and a VMM thread
//!   writes a new token to each page through one mapping and reads it back
//!   through another, while the main thread moves the limit between 16
//!   and 64 pages of 256 and takes snapshots. The guest must read the
//!   image's word 0 throughout and the VMM its own latest token; freed
//!   pages sit in the debug quarantine, whose sentinel a write through a
//!   stale stage-2 or VMM mapping would change (a splat).
//! - `vmm_writes_past_its_limit`: with no VM at all, the VMM writes 512
//!   pages of a clone with a 64-page limit through its mapping. Its faults
//!   may not evict (they hold `mmap_lock`) but ask the module's worker,
//!   which brings the clone back to its limit within seconds; every page
//!   then reads back through the mapping.
//! - `vmm_writes_far_past_its_limit`: the same with 8,192 pages, 128x the
//!   limit, and no access after the writes: more than one pass of the
//!   worker's clock, most of which only makes pages old, so the worker
//!   must go on until the clone is at its limit, with no fault to kick it
//!   (it stopped with thousands of pages over the limit before 2026-12-05).
//! - `vmm_writes_at_a_slow_disk`: the VMM writes 1,024 pages at a
//!   64-page limit while every eviction takes 100 ms more
//!   (`swap_write_delay_ms`): its faults wait while the worker writes, so
//!   the clone is near its limit when the writes end (before 2026-12-06
//!   VMM faults were never throttled: 955 pages in memory).
//! - `vmm_reads_then_writes_at_a_slow_disk`: the same after the VMM read
//!   every page, so that its writes come through `page_mkwrite`.
//! - `turned_back_vmm_fault_reads_for_itself`: a VMM write (in a child
//!   process) turned back while an eviction hangs; meanwhile a vCPU's
//!   read of the same page fails (`image_read_fail`). The write's retry
//!   carries `FAULT_FLAG_TRIED`, which fails with a read error recorded
//!   for the page: it must read for itself and succeed (SIGBUS before).
//! - `young_pages_far_past_the_limit`: the VMM writes 8,192 pages with a
//!   swap file and no limit, then a limit of 64 pages is set and the
//!   ioctl's eviction cut short by signals (EINTR: the limit stays), so
//!   the clone is far over its limit with young pages and no eviction
//!   running, and no fault comes: the ioctl hands over to the worker,
//!   which must bring the clone to its limit past the pages it only made
//!   old (before 2026-12-05 nothing handed over, and the worker stopped
//!   after two rounds of such pages).
//! - `interrupted_set_limit_with_sa_restart`: the same ioctl, passing the
//!   swap directory, interrupted by signals whose handler has
//!   `SA_RESTART`: `EINTR` with the limit set, not a restart that fails
//!   with `EEXIST`.
//! - `hot_vmm_set_then_quiet`: the VMM writes 2,048 pages at a 64-page
//!   limit over and over for 3 s (a thrash: in the test VM every page is
//!   evicted and read back on each pass), then stops: the clone is at its
//!   limit within 20 s, and every page holds its last value.
//! - `held_pages_then_released`: 512 written pages, each held by a pipe
//!   (`vmsplice`), when the limit is lowered to 64: nothing can go, and
//!   the ioctl returns with the clone over its limit; the pipes are then
//!   read, and with no fault after, the worker (kicked by the ioctl,
//!   backing off while the pages were held) comes back on its own and
//!   brings the clone to its limit within 20 s.
//! - `guest_over_limit_with_pages_held`: the VMM writes 256 pages at a
//!   256-page limit and holds them in pipes; the guest writes 16 more, and
//!   its faults' evictions find only held pages and back off; the pipes
//!   are read and nothing touches the clone after: the worker, told by
//!   those faults, brings it to its limit within 20 s.
//! - `bad_input`: nonzero flags or reserved, a limit without a swap file:
//!   EINVAL; a swap directory fd that is not open: EBADF; a regular file:
//!   ENOTDIR; a second swap file: EEXIST. A limit of 0 needs no file.
//!
//! Swap files go in `$VMS_IMAGE_DIR` (a disk in `scripts/bench`), else
//! /tmp. Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::os::fd::AsRawFd;
use std::time::Duration;

use vms_selftests::guest::{self, Walk};
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::host::{fork_run, no_core_dump, ChildEnd};
use vms_selftests::knob::{wait_for_delay, Knob, IMAGE_READ_FAIL, SWAP_WRITE_DELAY_MS, VMM_DELAYS};
use vms_selftests::kvm;
use vms_selftests::race::eviction_race;
use vms_selftests::vms::{
    image_create, image_dir, image_snapshot, require_vms_and_kvm, unique_name, vm_with_clone,
    vms_open, ImageFile, VmsClone, CLONE_GPA, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};
use vms_uapi::{VmsCloneFootprint, VmsCloneLimit};

/// 8 MiB image.
const PAGES: u64 = 2048;
/// The guest writes pages 0..WRITTEN.
const WRITTEN: u64 = 1024;
const LIMIT: u64 = 256;
/// Faults in flight past the limit: one vCPU, one page each.
const SLACK: u64 = 1;
const GUEST_FIRST: u32 = 0x0a00_0000;

fn guest_writes_4x_its_limit() {
    let dev = vms_open();
    let name = unique_name("evict");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    clone.set_limit(LIMIT, Some(&image_dir()));

    let writes = Walk::values(CLONE_GPA, WRITTEN, GUEST_FIRST);
    guest::run(&mut vm, 0, &guest::write(&writes));
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the writes: {f:?}"));
    test_assert_eq!(f.limit, LIMIT);
    test_assert!(f.resident <= LIMIT + SLACK, "{} pages in memory, limit {LIMIT}", f.resident);
    test_assert_eq!(f.resident + f.swapped, WRITTEN, "every written page is in memory or swapped");
    test_assert!(f.evicted >= WRITTEN - LIMIT - SLACK, "{} evicted", f.evicted);
    test_assert!(f.swap_bytes >= PAGE_SIZE, "a swap file of {} bytes", f.swap_bytes);
    test_assert_eq!(clone.stats().private_pages, f.resident);

    // Every page back, from the guest.
    guest::run(&mut vm, 0, &guest::read_check(&writes));
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the guest's check: {f:?}"));
    test_assert!(f.read_back >= WRITTEN - LIMIT - SLACK, "{} read back", f.read_back);
    test_assert!(f.resident <= LIMIT + SLACK, "{} pages in memory, limit {LIMIT}", f.resident);
    test_assert_eq!(f.resident + f.swapped, WRITTEN);
    test_assert_eq!(f.evict_errors, 0);

    // And from the VMM: swapped pages come back through its faults.
    let before = f.read_back;
    map.check_values(0..WRITTEN, GUEST_FIRST);
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the VMM's check: {f:?}"));
    test_assert!(f.read_back > before, "the VMM read nothing back");
    test_assert_eq!(f.resident + f.swapped, WRITTEN);

    // Down to 64 at once; the rest of the image still reads the pattern.
    clone.set_limit(64, None);
    let f = clone.footprint();
    test_assert!(f.resident <= 64, "{} pages in memory after lowering the limit to 64", f.resident);
    test_assert_eq!(f.resident + f.swapped, WRITTEN);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA + WRITTEN * PAGE_SIZE, WRITTEN, PAGES - WRITTEN)),
    );
    guest::run(&mut vm, 0, &guest::read_check(&writes));
    // No limit: pages come back and stay.
    clone.set_limit(0, None);
    guest::run(&mut vm, 0, &guest::read_check(&writes));
    let f = clone.footprint();
    test_assert_eq!((f.resident, f.swapped), (WRITTEN, 0), "no limit: everything back in memory");
    drop((vm, map, clone));
    image.delete();
}

/// Runs `code[i]` on vCPU `i` of `vm`, each on its own thread, all at once;
/// fails unless every one completes.
fn run_vcpus(vm: &mut kvm::Vm, code: &[Vec<u8>]) {
    run_vcpus_then(vm, code, |_| ());
}

/// [`run_vcpus`], calling `first` on this thread with the number of the
/// first vCPU to stop, as soon as it stops (the others may still run).
fn run_vcpus_then(vm: &mut kvm::Vm, code: &[Vec<u8>], first: impl FnOnce(usize)) {
    for (i, c) in code.iter().enumerate() {
        guest::load(vm, i, c);
    }
    let (stopped, stops) = std::sync::mpsc::channel();
    let outcomes: Vec<_> = std::thread::scope(|sc| {
        let threads: Vec<_> = vm
            .vcpus_mut()
            .iter_mut()
            .enumerate()
            .map(|(i, vcpu)| {
                let stopped = stopped.clone();
                sc.spawn(move || {
                    let o = guest::__run_to_end(vcpu);
                    let _ = stopped.send(i);
                    o
                })
            })
            .collect();
        // A thread that panics sends nothing: every one gone, no first.
        drop(stopped);
        if let Ok(i) = stops.recv() {
            first(i);
        }
        threads.into_iter().map(|t| t.join()).collect()
    });
    for (i, o) in outcomes.into_iter().enumerate() {
        match o {
            Ok(Ok(guest::Outcome::Done)) => {}
            Ok(Ok(other)) => test_assert!(false, "vCPU {i}: {}", guest::describe(&other)),
            Ok(Err(e)) => test_assert!(false, "vCPU {i}: KVM_RUN: {e}"),
            Err(_) => test_assert!(false, "vCPU {i}: its thread panicked"),
        }
    }
}

/// Waits up to 20 s for `clone` to come down to `limit` pages in memory
/// with nothing touching it (after `what`), then checks that it did, that
/// its `pages` written pages are all in memory or swapped, and that no
/// write to the swap file failed; returns the footprint.
#[track_caller]
fn settles(clone: &VmsClone, limit: u64, pages: u64, what: &str) -> VmsCloneFootprint {
    let (f, secs) = clone.wait_resident_at_most(limit, Duration::from_secs(20));
    ksft::ksft_print_msg(&format!("{secs:.2} s after {what}: {f:?}"));
    test_assert!(f.resident <= limit, "{} pages in memory 20 s after {what}, limit {limit}", f.resident);
    test_assert_eq!(f.resident + f.swapped, pages, "every written page is in memory or swapped");
    test_assert_eq!(f.evict_errors, 0);
    f
}

fn two_vcpus_write_4x_its_limit() {
    let dev = vms_open();
    let name = unique_name("evict_2v");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 2);
    clone.set_limit(LIMIT, Some(&image_dir()));

    let half = WRITTEN / 2;
    let walks = [
        Walk::values(CLONE_GPA, half, GUEST_FIRST),
        Walk::values(CLONE_GPA + half * PAGE_SIZE, half, GUEST_FIRST + half as u32),
    ];
    run_vcpus(&mut vm, &walks.iter().map(guest::write).collect::<Vec<_>>());
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the writes: {f:?}"));
    test_assert!(f.resident <= LIMIT + 2 * SLACK, "{} pages in memory, limit {LIMIT}", f.resident);
    test_assert_eq!(f.resident + f.swapped, WRITTEN, "every written page is in memory or swapped");
    test_assert_eq!(f.evict_errors, 0);
    // Each vCPU checks the other's pages.
    run_vcpus(&mut vm, &[guest::read_check(&walks[1]), guest::read_check(&walks[0])]);
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the guest's check: {f:?}"));
    test_assert!(f.resident <= LIMIT + 2 * SLACK, "{} pages in memory, limit {LIMIT}", f.resident);
    test_assert_eq!(f.resident + f.swapped, WRITTEN);
    map.check_values(0..WRITTEN, GUEST_FIRST);
    drop((vm, map, clone));
    image.delete();
}

/// A swap disk that hangs (`swap_write_delay_ms`: every eviction sleeps
/// [`HUNG_MS`] before its writes): two vCPUs write 256 pages each at a
/// 64-page limit. The first fault over the limit evicts and hangs in the
/// sleep with its pages in writeback; the other vCPU's faults are turned
/// back (the throttle) for at most 2 s, then go on over the limit. So the
/// first vCPU to finish does so before any eviction has ended, with its
/// faults throttled and the clone far over its limit; and once the disk
/// is back, the clone comes to its limit and every page reads back.
fn hung_swap_disk_holds_a_vcpu_2s_at_most() {
    const EACH: u64 = 256;
    const LIMIT_H: u64 = 64;
    /// Well past the throttle's 2 s, so that the other vCPU's writes
    /// (a few hundred faults) end before the hung eviction does.
    const HUNG_MS: u32 = 8000;
    let knob = Knob::require(SWAP_WRITE_DELAY_MS);
    let dev = vms_open();
    let name = unique_name("evict_hung");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 2);
    clone.set_limit(LIMIT_H, Some(&image_dir()));

    let walks = [
        Walk::values(CLONE_GPA, EACH, GUEST_FIRST),
        Walk::values(CLONE_GPA + EACH * PAGE_SIZE, EACH, GUEST_FIRST + EACH as u32),
    ];
    knob.set(HUNG_MS);
    let t0 = std::time::Instant::now();
    let mut first = None;
    run_vcpus_then(&mut vm, &walks.iter().map(guest::write).collect::<Vec<_>>(), |i| {
        let f = clone.footprint();
        // No eviction sleeps after this one (the one asleep sleeps on).
        knob.set(0);
        first = Some((i, t0.elapsed(), f));
    });
    let (i, secs, f) = first.expect("a vCPU stopped");
    ksft::ksft_print_msg(&format!("vCPU {i} done after {:.2} s: {f:?}", secs.as_secs_f64()));
    test_assert!(f.throttled > 0, "the first vCPU to finish was never turned back");
    test_assert_eq!(f.evicted, 0, "an eviction ended before the first vCPU finished: it waited for the hung disk");
    test_assert!(f.resident > LIMIT_H + EACH / 2, "{} pages in memory: nobody went on over the limit", f.resident);

    // A fault evicts before it takes its page: at most one page past the
    // limit per vCPU, also at rest.
    settles(&clone, LIMIT_H + 2 * SLACK, 2 * EACH, "the writes");
    run_vcpus(&mut vm, &[guest::read_check(&walks[1]), guest::read_check(&walks[0])]);
    map.check_values(0..2 * EACH, GUEST_FIRST);
    drop((vm, map, clone));
    image.delete();
}

fn snapshot_and_reset() {
    let dev = vms_open();
    let name = unique_name("evict_snap");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    clone.set_limit(128, Some(&image_dir()));
    let writes = Walk::values(CLONE_GPA, 512, GUEST_FIRST);
    guest::run(&mut vm, 0, &guest::write(&writes));
    let f = clone.footprint();
    test_assert!(f.swapped >= 512 - 128 - SLACK, "{} pages swapped", f.swapped);

    let live = image_snapshot(&dev, &unique_name("evict_live"), &clone);
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the snapshot: {f:?}"));
    test_assert_eq!((f.resident, f.swapped), (0, 0), "the snapshot took every page");
    // A clone of the live image reads every page the first one wrote.
    let other = live.clone_create();
    let other_map = other.map();
    let mut vm2 = vm_with_clone(&kvm, &other, &other_map, 1);
    guest::run(&mut vm2, 0, &guest::read_check(&writes));
    other_map.check_values(0..512, GUEST_FIRST);
    drop((vm2, other_map, other));

    // The first clone writes again (over its limit), then resets.
    let again = Walk::values(CLONE_GPA, 512, 0x0b00_0000);
    guest::run(&mut vm, 0, &guest::write(&again));
    let f = clone.footprint();
    test_assert!(f.swapped > 0);
    test_assert!(
        f.swap_disk_bytes >= f.swapped * PAGE_SIZE,
        "{} pages swapped in a swap file of {} bytes on disk",
        f.swapped,
        f.swap_disk_bytes
    );
    clone.reset();
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("after the reset: {f:?}"));
    test_assert_eq!((f.resident, f.swapped), (0, 0), "the reset dropped every page");
    // And gave the swap file's blocks back (the test's swap file is on
    // tmpfs or ext4: both punch holes).
    test_assert_eq!(f.swap_disk_bytes, 0, "the swap file's blocks after the reset");
    guest::run(&mut vm, 0, &guest::read_check(&writes));
    map.check_values(0..512, GUEST_FIRST);
    drop((vm, map, clone));
    live.delete();
    image.delete();
}

fn races() {
    let f = eviction_race("evict_race", 16, |n, clone| {
        clone.set_limit(if n.is_multiple_of(2) { 16 } else { 64 }, None);
    });
    test_assert!(f.evicted > 0 && f.read_back > 0, "nothing was evicted and read back");
    test_assert_eq!(f.evict_errors, 0);
}

fn vmm_writes_past_its_limit() {
    vmm_writes(512, 64);
}

/// Far past it: one pass of the worker's clock (a few hundred pages per
/// clone and round) only makes the VMM's pages old; the worker must go
/// on until the clone is at its limit, with no fault to kick it again.
fn vmm_writes_far_past_its_limit() {
    vmm_writes(8192, 64);
}

/// The VMM writes `pages` pages of a clone with a limit of `limit` (its
/// faults may not evict) and then touches none: the worker brings the
/// clone to its limit within 20 s.
fn vmm_writes(pages: u64, limit: u64) {
    let dev = vms_open();
    let name = unique_name("evict_vmm");
    let file = ImageFile::with_pattern(&name, pages, 0);
    let image = image_create(&dev, &name, file.file(), pages * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    clone.set_limit(limit, Some(&image_dir()));
    map.write_values(0..pages, GUEST_FIRST);
    settles(&clone, limit, pages, "the VMM's writes");
    map.check_values(0..pages, GUEST_FIRST);
    drop((map, clone));
    image.delete();
}

/// The VMM writes 1,024 pages at a 64-page limit to a slow swap disk
/// (`swap_write_delay_ms`: each eviction's batch takes 100 ms more):
/// while the worker writes, the VMM's faults wait as a vCPU's do, so the
/// clone is near its limit when the writes end, not 1,024 pages deep in
/// memory with the worker behind.
fn vmm_writes_at_a_slow_disk() {
    vmm_at_a_slow_disk(false);
}

/// The same, the VMM reading every page first: its writes then come
/// through `page_mkwrite` on the image's pages it mapped read-only.
fn vmm_reads_then_writes_at_a_slow_disk() {
    vmm_at_a_slow_disk(true);
}

fn vmm_at_a_slow_disk(read_first: bool) {
    const PAGES_S: u64 = 1024;
    const LIMIT_S: u64 = 64;
    /// Pages the VMM may write before the worker, kicked by its first
    /// fault over the limit, has a batch in writeback (the worker has to
    /// be scheduled; the test VM has one CPU), and between two batches.
    const LAG: u64 = 256;
    let knob = Knob::require(SWAP_WRITE_DELAY_MS);
    let dev = vms_open();
    let name = unique_name("evict_slow");
    let file = ImageFile::with_pattern(&name, PAGES_S, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_S * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    clone.set_limit(LIMIT_S, Some(&image_dir()));
    if read_first {
        for i in 0..PAGES_S {
            map.read_u32(i * PAGE_SIZE);
        }
        test_assert_eq!(clone.footprint().resident, 0, "reads took private pages");
    }
    knob.set(100);
    let t0 = std::time::Instant::now();
    map.write_values(0..PAGES_S, GUEST_FIRST);
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("writes done after {:.2} s: {f:?}", t0.elapsed().as_secs_f64()));
    test_assert!(
        f.resident <= LIMIT_S + LAG,
        "{} pages in memory after the VMM's writes, limit {LIMIT_S}",
        f.resident
    );
    test_assert!(f.throttled > 0, "no VMM fault was turned back");
    knob.set(0);
    settles(&clone, LIMIT_S, PAGES_S, "the writes");
    map.check_values(0..PAGES_S, GUEST_FIRST);
    drop((map, clone));
    image.delete();
}

/// A VMM fault turned back (the clone over its limit while an eviction
/// hangs, `swap_write_delay_ms`) retries with `FAULT_FLAG_TRIED`, whose
/// arms fail with a read error recorded for the page. While it is turned
/// back, a vCPU's read of the same page fails (`image_read_fail`): the
/// VMM's write must still read the page for itself and succeed, not die
/// of the vCPU's error (SIGBUS without a read of its own, before
/// 2026-12-06).
fn turned_back_vmm_fault_reads_for_itself() {
    const LIMIT_T: u64 = 64;
    /// A page nobody touched: not in the image's cache.
    const P: u64 = 1000;
    const WORD: u32 = 0x5a5a_5a5a;
    let delay = Knob::require(SWAP_WRITE_DELAY_MS);
    let fail = Knob::require(IMAGE_READ_FAIL);
    let delays = Knob::require(VMM_DELAYS);
    let dev = vms_open();
    let name = unique_name("evict_tb");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 2);
    clone.set_limit(LIMIT_T, Some(&image_dir()));
    map.write_values(0..LIMIT_T, GUEST_FIRST);
    // vCPU 0 writes past the limit: one of its faults evicts and hangs
    // with its pages in writeback. vCPU 1 reads page P.
    let past = Walk::values(CLONE_GPA + LIMIT_T * PAGE_SIZE, 16, GUEST_FIRST + LIMIT_T as u32);
    guest::load(&mut vm, 0, &guest::write(&past));
    guest::load(&mut vm, 1, &guest::read_check(&Walk::pattern(CLONE_GPA + P * PAGE_SIZE, P, 1)));
    let p = map.ptr_at(P * PAGE_SIZE) as usize;
    let before = delays.get();
    delay.set(4000);
    let (v0, v1) = vm.vcpus_mut().split_at_mut(1);
    std::thread::scope(|sc| {
        let hung = sc.spawn(|| guest::__run_to_end(&mut v0[0]));
        test_assert!(wait_for_delay(&delays, before, Duration::from_secs(30)), "no eviction began its writes");
        // Later evictions write at once; the one asleep sleeps on.
        delay.set(0);
        let turned = clone.footprint().throttled;
        let writer = sc.spawn(move || {
            fork_run(|| {
                no_core_dump();
                // The default action for SIGBUS: Rust's runtime handles it
                // (for stack overflows) by setting the default and
                // returning, so the write would be tried again, and a
                // second attempt reads the page anew, hiding the first
                // one's error.
                // SAFETY: installs no handler (SIG_DFL); async-signal-safe
                // in the forked child.
                unsafe { libc::signal(libc::SIGBUS, libc::SIG_DFL) };
                // SAFETY: `p` is page P's address in the clone's mapping,
                // which the child inherited (shared).
                unsafe { (p as *mut u32).write_volatile(WORD) };
                0
            })
        });
        let t0 = std::time::Instant::now();
        while clone.footprint().throttled == turned {
            test_assert!(t0.elapsed() < Duration::from_secs(3), "the VMM's write was never turned back");
            std::thread::sleep(Duration::from_millis(1));
        }
        fail.set(1);
        let (gpa, _) = kvm::vcpu_run_memory_fault(&mut v1[0]);
        let t1 = t0.elapsed();
        let (f1, s1) = (clone.footprint(), clone.stats());
        test_assert_eq!(gpa, CLONE_GPA + P * PAGE_SIZE, "vCPU 1's failed read");
        let end = writer.join().expect("the writer's thread");
        ksft::ksft_print_msg(&format!(
            "vCPU 1's read failed {:.3} s after the first turn-back ({} turn-backs, {} I/O errors, {} VMM faults); the VMM's write ended after {:.3} s ({} turn-backs, {} VMM faults): {end:?}",
            t1.as_secs_f64(),
            f1.throttled - turned,
            s1.io_errors,
            s1.mmap_faults,
            t0.elapsed().as_secs_f64(),
            clone.footprint().throttled - turned,
            clone.stats().mmap_faults,
        ));
        test_assert_eq!(end, ChildEnd::Exited(0), "the VMM's write, turned back while a vCPU's read of its page failed");
        let hung = hung.join().expect("vCPU 0's thread");
        test_assert!(matches!(hung, Ok(guest::Outcome::Done)), "vCPU 0: {hung:?}");
    });
    test_assert_eq!(map.read_u32(P * PAGE_SIZE), WORD);
    test_assert_eq!(fail.get(), 0, "the injected error was not used");
    drop((vm, map, clone));
    image.delete();
}

extern "C" fn on_signal(_: libc::c_int) {}

/// `VMS_CLONE_SET_LIMIT` with `arg` on `clone`, from a thread that gets
/// `SIGUSR2` every millisecond until the call returns, with a handler that
/// does nothing (with `SA_RESTART` if `restart`); the call's result.
fn set_limit_under_signals(clone: &VmsClone, arg: &VmsCloneLimit, restart: bool) -> std::io::Result<()> {
    // SAFETY: a handler that does nothing.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_signal as extern "C" fn(libc::c_int) as usize;
        sa.sa_flags = if restart { libc::SA_RESTART } else { 0 };
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR2, &sa, std::ptr::null_mut());
    }
    let done = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        let (tx, rx) = std::sync::mpsc::channel();
        let done = &done;
        let h = sc.spawn(move || {
            // SAFETY: this thread's own id.
            tx.send(unsafe { libc::pthread_self() } as usize).unwrap();
            let r = clone.__set_limit(arg);
            done.store(true, std::sync::atomic::Ordering::SeqCst);
            r
        });
        let t = rx.recv().unwrap();
        while !done.load(std::sync::atomic::Ordering::SeqCst) {
            // SAFETY: the thread is alive until `done`; a signal to it only
            // interrupts its ioctl.
            unsafe { libc::pthread_kill(t as libc::pthread_t, libc::SIGUSR2) };
            std::thread::sleep(Duration::from_millis(1));
        }
        h.join().unwrap()
    })
}

/// A clone left far over its limit with only young pages: the VMM wrote
/// 8,192 pages with a swap file and no limit (young: resolved since the
/// clock last passed), then `VMS_CLONE_SET_LIMIT` to 64 pages was cut
/// short by a signal (EINTR: the limit is set, the eviction stopped).
/// No fault comes after: the ioctl must hand over to the worker, which
/// must go on past the pages its first rounds only made old.
fn young_pages_far_past_the_limit() {
    const PAGES_Y: u64 = 8192;
    const LIMIT_Y: u64 = 64;
    let dev = vms_open();
    let name = unique_name("evict_young");
    let file = ImageFile::with_pattern(&name, PAGES_Y, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_Y * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    clone.set_limit(0, Some(&image_dir()));
    map.write_values(0..PAGES_Y, GUEST_FIRST);
    let arg = VmsCloneLimit { limit: LIMIT_Y, swap_dir_fd: -1, ..VmsCloneLimit::zeroed() };
    let r = set_limit_under_signals(&clone, &arg, false);
    let f0 = clone.footprint();
    ksft::ksft_print_msg(&format!("VMS_CLONE_SET_LIMIT: {r:?}; {f0:?}"));
    if r.is_ok() {
        ksft::skip("VMS_CLONE_SET_LIMIT finished before a signal came");
    }
    test_assert_eq!(r.unwrap_err().raw_os_error(), Some(libc::EINTR));
    test_assert_eq!(f0.limit, LIMIT_Y, "an interrupted VMS_CLONE_SET_LIMIT sets the limit");
    settles(&clone, LIMIT_Y, PAGES_Y, "the ioctl");
    map.check_values(0..PAGES_Y, GUEST_FIRST);
    drop((map, clone));
    image.delete();
}

/// A handler installed with `SA_RESTART` (as many runtimes install theirs)
/// must not restart an interrupted `VMS_CLONE_SET_LIMIT`: the first call
/// set the limit and made the swap file, and its restart would fail with
/// `EEXIST` (before 2026-12-06 it did). `EINTR`, with the limit set, or
/// success if no signal came in time.
fn interrupted_set_limit_with_sa_restart() {
    const PAGES_Y: u64 = 8192;
    const LIMIT_Y: u64 = 64;
    let dev = vms_open();
    let name = unique_name("evict_restart");
    let file = ImageFile::with_pattern(&name, PAGES_Y, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_Y * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    // No swap file yet: the VMM's writes stay in memory.
    map.write_values(0..PAGES_Y, GUEST_FIRST);
    let dir = check(std::fs::File::open(image_dir()), "open the swap directory");
    let arg = VmsCloneLimit { limit: LIMIT_Y, swap_dir_fd: dir.as_raw_fd(), ..VmsCloneLimit::zeroed() };
    let r = set_limit_under_signals(&clone, &arg, true);
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!("VMS_CLONE_SET_LIMIT: {r:?}; {f:?}"));
    test_assert_eq!(f.limit, LIMIT_Y, "the limit is set");
    if let Err(e) = &r {
        test_assert_eq!(e.raw_os_error(), Some(libc::EINTR), "an interrupted call: {e}");
    }
    let (f, _) = clone.wait_resident_at_most(LIMIT_Y, Duration::from_secs(20));
    test_assert!(f.resident <= LIMIT_Y, "{} pages in memory 20 s after the ioctl", f.resident);
    map.check_values(0..PAGES_Y, GUEST_FIRST);
    drop((map, clone, dir));
    image.delete();
    if r.is_ok() {
        ksft::skip("VMS_CLONE_SET_LIMIT finished before a signal came");
    }
}

/// The VMM keeps writing 2,048 pages of a clone with a 64-page limit for
/// 3 s (a working set 32x the limit), then stops: with no fault after,
/// the clone is at its limit within 20 s, and every page holds its last
/// value.
fn hot_vmm_set_then_quiet() {
    const PAGES_H: u64 = 2048;
    const LIMIT_H: u64 = 64;
    let dev = vms_open();
    let name = unique_name("evict_hot");
    let file = ImageFile::with_pattern(&name, PAGES_H, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_H * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    clone.set_limit(LIMIT_H, Some(&image_dir()));
    let t0 = std::time::Instant::now();
    let mut passes = 0u32;
    while t0.elapsed() < Duration::from_secs(3) {
        for p in 0..PAGES_H {
            let v = GUEST_FIRST.wrapping_add(p as u32).wrapping_add(passes);
            map.write_u32(p * PAGE_SIZE, v);
        }
        passes += 1;
    }
    let busy = clone.footprint();
    ksft::ksft_print_msg(&format!("{passes} passes over {PAGES_H} pages in 3 s: {busy:?}"));
    settles(&clone, LIMIT_H, PAGES_H, "the VMM stopped");
    for p in 0..PAGES_H {
        let want = GUEST_FIRST.wrapping_add(p as u32).wrapping_add(passes - 1);
        test_assert_eq!(map.read_u32(p * PAGE_SIZE), want, "page {p}");
    }
    drop((map, clone));
    image.delete();
}

/// Pages held while the limit is lowered: the VMM writes 512 pages, then
/// puts every one into pipes with `vmsplice` (a pipe holds a reference to
/// each page until it is read), then `VMS_CLONE_SET_LIMIT` to 64 pages
/// can evict nothing and returns, the clone over its limit. The pipes are
/// then read, and no fault comes: the worker, kicked by the ioctl and
/// backing off while the pages were held, must come back on its own.
fn held_pages_then_released() {
    const PAGES_P: u64 = 512;
    const LIMIT_P: u64 = 64;
    let dev = vms_open();
    let name = unique_name("evict_held");
    let file = ImageFile::with_pattern(&name, PAGES_P, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_P * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    clone.set_limit(0, Some(&image_dir()));
    map.write_values(0..PAGES_P, GUEST_FIRST);
    let pipes = map.hold_in_pipes(0..PAGES_P);
    clone.set_limit(LIMIT_P, None);
    let f0 = clone.footprint();
    pipes.release();
    ksft::ksft_print_msg(&format!("with the pages held: {f0:?}"));
    test_assert!(f0.resident > LIMIT_P, "held pages were evicted ({} in memory)", f0.resident);
    settles(&clone, LIMIT_P, PAGES_P, "they were let go");
    map.check_values(0..PAGES_P, GUEST_FIRST);
    drop((map, clone));
    image.delete();
}

/// A guest takes its clone over the limit while every older private page
/// is held: the VMM writes 256 pages (at its 256-page limit, not over
/// it), holds them in pipes, and the guest writes 16 more. The faults'
/// evictions find only held pages and back off; the pipes are then read
/// and nothing touches the clone: the worker must have been told, and
/// come back when its back-off ends.
fn guest_over_limit_with_pages_held() {
    const PAGES_G: u64 = 512;
    const LIMIT_G: u64 = 256;
    const MORE: u64 = 16;
    let dev = vms_open();
    let name = unique_name("evict_guest_held");
    let file = ImageFile::with_pattern(&name, PAGES_G, 0);
    let image = image_create(&dev, &name, file.file(), PAGES_G * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    clone.set_limit(LIMIT_G, Some(&image_dir()));
    map.write_values(0..LIMIT_G, GUEST_FIRST);
    let pipes = map.hold_in_pipes(0..LIMIT_G);
    let more = Walk::values(CLONE_GPA + LIMIT_G * PAGE_SIZE, MORE, GUEST_FIRST.wrapping_add(LIMIT_G as u32));
    guest::run(&mut vm, 0, &guest::write(&more));
    let f0 = clone.footprint();
    pipes.release();
    ksft::ksft_print_msg(&format!("after the guest's writes: {f0:?}"));
    test_assert!(f0.resident > LIMIT_G, "the guest's faults evicted held pages ({} in memory)", f0.resident);
    settles(&clone, LIMIT_G, LIMIT_G + MORE, "the pipes were read");
    map.check_values(0..LIMIT_G + MORE, GUEST_FIRST);
    drop((vm, map, clone));
    image.delete();
}

fn bad_input() {
    let dev = vms_open();
    let name = unique_name("evict_bad");
    let file = ImageFile::with_pattern(&name, 16, 0);
    let image = image_create(&dev, &name, file.file(), 16 * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let dir = check(std::fs::File::open(image_dir()), "open the swap directory");
    let good = VmsCloneLimit { limit: 8, swap_dir_fd: dir.as_raw_fd(), ..VmsCloneLimit::zeroed() };
    let errno = |arg: &VmsCloneLimit| clone.__set_limit(arg).err().and_then(|e| e.raw_os_error());
    test_assert_eq!(errno(&VmsCloneLimit { flags: 1, ..good }), Some(libc::EINVAL), "flags");
    test_assert_eq!(errno(&VmsCloneLimit { reserved: [0, 0, 1, 0], ..good }), Some(libc::EINVAL), "reserved");
    test_assert_eq!(
        errno(&VmsCloneLimit { swap_dir_fd: -1, ..good }),
        Some(libc::EINVAL),
        "a limit without a swap file"
    );
    test_assert_eq!(errno(&VmsCloneLimit { swap_dir_fd: 9999, ..good }), Some(libc::EBADF), "a closed fd");
    test_assert_eq!(
        errno(&VmsCloneLimit { swap_dir_fd: file.file().as_raw_fd(), ..good }),
        Some(libc::ENOTDIR),
        "a regular file"
    );
    test_assert_eq!(
        errno(&VmsCloneLimit { limit: 0, swap_dir_fd: -1, ..good }),
        None,
        "no limit needs no swap file"
    );
    test_assert_eq!(errno(&good), None, "a limit and a swap directory");
    test_assert_eq!(errno(&good), Some(libc::EEXIST), "a second swap file");
    test_assert_eq!(errno(&VmsCloneLimit { swap_dir_fd: -1, limit: 4, ..good }), None, "a new limit");
    test_assert_eq!(clone.footprint().limit, 4);
    drop(clone);
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("guest_writes_4x_its_limit", guest_writes_4x_its_limit),
        Test::new("two_vcpus_write_4x_its_limit", two_vcpus_write_4x_its_limit),
        Test::new("hung_swap_disk_holds_a_vcpu_2s_at_most", hung_swap_disk_holds_a_vcpu_2s_at_most),
        Test::new("snapshot_and_reset", snapshot_and_reset),
        Test::new("races", races),
        Test::new("vmm_writes_past_its_limit", vmm_writes_past_its_limit),
        Test::new("vmm_writes_far_past_its_limit", vmm_writes_far_past_its_limit),
        Test::new("vmm_writes_at_a_slow_disk", vmm_writes_at_a_slow_disk),
        Test::new("vmm_reads_then_writes_at_a_slow_disk", vmm_reads_then_writes_at_a_slow_disk),
        Test::new("turned_back_vmm_fault_reads_for_itself", turned_back_vmm_fault_reads_for_itself),
        Test::new("young_pages_far_past_the_limit", young_pages_far_past_the_limit),
        Test::new("interrupted_set_limit_with_sa_restart", interrupted_set_limit_with_sa_restart),
        Test::new("hot_vmm_set_then_quiet", hot_vmm_set_then_quiet),
        Test::new("held_pages_then_released", held_pages_then_released),
        Test::new("guest_over_limit_with_pages_held", guest_over_limit_with_pages_held),
        Test::new("bad_input", bad_input),
    ]);
}
