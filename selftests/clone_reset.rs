// SPDX-License-Identifier: GPL-2.0

//! clone_reset: `VMS_CLONE_RESET` gives a clone its image back.
//!
//! - `reset_drops_private_pages`: a guest writes the first 256 pages of a
//!   1024-page pattern clone and the VMM the next 256; a reset drops all
//!   512 private pages. Then the guest reads the pattern everywhere (its
//!   stage 2 no longer maps a dropped page) and so does the VMM's mapping,
//!   the counters say 0 private pages and 1 reset, and writes copy again.
//!   A nonzero argument is refused with EINVAL.
//! - `reset_returns_to_the_live_image`: after a snapshot the clone's
//!   image is the live image; a reset goes back to it, not to the image
//!   the clone was first made from.
//! - `reset_during_vmm_fault`: a VMM read fault on a private page holds
//!   the page locked after resolving it (`vmm_map_delay_ms`), and the
//!   clone is reset meanwhile. The reset must wait for the fault to map
//!   the page, then unmap it: otherwise the VMM keeps the dropped page, a
//!   view of memory the guest no longer has.
//! - `reset_races`: a vCPU reads every page and copies it on write, and a
//!   VMM thread writes a new token to each page through one mapping and
//!   reads it back through a second, while the main thread resets the
//!   clone again and again. The guest must read the image's word 0
//!   throughout; the VMM must read back its latest token or the image's
//!   word (an older token is a page a mapping kept across a reset); freed
//!   pages sit in the debug quarantine, whose sentinel a write through a
//!   stale stage-2 or VMM mapping would change (a splat); KASAN sees a
//!   freed page used.
//! - `reset_races_with_swap`: the same on a clone with a 16-page limit and
//!   a swap file, whose pages are evicted and read back all along; each
//!   reset also gives the swap file's blocks back, which must not take a
//!   page evicted meanwhile (it would read back as zeros): it resets
//!   every second or two, and each reset sleeps 200 ms before it punches
//!   (`reset_punch_delay_ms`), a window the vCPU and the VMM write
//!   through; pages evicted in it are used again before the next reset.
//! - `reset_of_an_untouched_clone`: a clone never mapped nor attached.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing (and the third test if the
//! debug knob is missing).

use std::thread;
use std::time::{Duration, Instant};

use vms_selftests::guest::{self, Walk};
use vms_selftests::knob::{
    wait_for_delay, Knob, Quarantine, KNOB_DIR, RESET_PUNCH_DELAY_MS, VMM_DELAYS, VMM_MAP_DELAY_MS,
};
use vms_selftests::ksft::{self, Test, Watchdog};
use vms_selftests::kvm;
use vms_selftests::race::{token_race, RaceSpec};
use vms_selftests::vms::{
    image_create, image_dir, image_snapshot, pattern_page, pattern_word, require_vms_and_kvm, unique_name,
    vm_with_clone, vms_open, ImageFile, CLONE_GPA, HI_OFFSET, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};
use vms_uapi::VmsCloneFootprint;

/// 4 MiB image.
const PAGES: u64 = 1024;
/// The guest writes pages 0..256, the VMM 256..512.
const WRITTEN: u64 = 256;
/// Values unlike any pattern word (0x56xx_xxxx).
const GUEST_FIRST: u32 = 0x0a00_0000;
const VMM_VALUE: u32 = 0x0b00_0000;

/// Every page of `map`'s first `pages` reads as `want(i)`.
#[track_caller]
fn vmm_reads(map: &vms_selftests::vms::CloneMap, pages: u64, want: impl Fn(u64) -> Vec<u8>) {
    for i in 0..pages {
        let got = map.read_page(i);
        let w = want(i);
        let diff = got.iter().zip(&w).position(|(a, b)| a != b);
        test_assert!(
            diff.is_none(),
            "page {i} through the VMM's mapping differs at byte {diff:?}: {:#010x} at byte 0",
            u32::from_le_bytes(got[..4].try_into().unwrap())
        );
    }
}

fn reset_drops_private_pages() {
    let dev = vms_open();
    let name = unique_name("clone_reset");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);

    // The guest reads everything first (stage 2 maps the image's pages),
    // then writes its share (each a copy that replaces a mapped page).
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)));
    guest::run(&mut vm, 0, &guest::write(&Walk::values(CLONE_GPA, WRITTEN, GUEST_FIRST)));
    for p in WRITTEN..2 * WRITTEN {
        map.write_u32(p * PAGE_SIZE, VMM_VALUE + p as u32);
    }
    let before = clone.stats();
    test_assert_eq!(before.private_pages, 2 * WRITTEN);
    test_assert_eq!(before.resets, 0);

    let e = clone.__reset(1).expect_err("VMS_CLONE_RESET with argument 1 worked");
    test_assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "a nonzero argument: {e}");
    test_assert_eq!(clone.stats().private_pages, 2 * WRITTEN, "a refused reset dropped pages");

    clone.reset();
    let after = clone.stats();
    ksft::ksft_print_msg(&format!("before: {before:?}\nafter: {after:?}"));
    test_assert_eq!(after.private_pages, 0);
    test_assert_eq!(after.resets, 1);
    test_assert_eq!(after.cow_copies, before.cow_copies, "counters carry on");

    // Both views read the image again.
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)));
    vmm_reads(&map, PAGES, pattern_page);

    // Writes copy again.
    guest::run(&mut vm, 0, &guest::write(&Walk::values(CLONE_GPA, 16, GUEST_FIRST)));
    guest::run(&mut vm, 0, &guest::read_check(&Walk::values(CLONE_GPA, 16, GUEST_FIRST)));
    let again = clone.stats();
    test_assert_eq!(again.private_pages, 16);
    test_assert_eq!(again.cow_copies, before.cow_copies + 16);
    // A reset with nothing private is fine too.
    clone.reset();
    clone.reset();
    test_assert_eq!(clone.stats().resets, 3);
    vmm_reads(&map, PAGES, pattern_page);

    drop((vm, map, clone));
    image.delete();
    test_assert!(file.first_difference(PAGES, 0).is_none(), "the image file changed");
}

fn reset_returns_to_the_live_image() {
    let dev = vms_open();
    let name = unique_name("clone_reset_live");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let base = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let live;
    let kvm = kvm::open_kvm();
    let clone = base.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);

    // Pages 0..64 hold A in the live image; then the clone writes B over
    // 0..128.
    let a = Walk::values(CLONE_GPA, 64, GUEST_FIRST);
    guest::run(&mut vm, 0, &guest::write(&a));
    live = image_snapshot(&dev, &unique_name("clone_reset_live_img"), &clone);
    guest::run(&mut vm, 0, &guest::write(&Walk::values(CLONE_GPA, 128, VMM_VALUE)));
    test_assert_eq!(clone.stats().private_pages, 128);

    clone.reset();
    test_assert_eq!(clone.stats().private_pages, 0);
    guest::run(&mut vm, 0, &guest::read_check(&a));
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA + 64 * PAGE_SIZE, 64, PAGES - 64)),
    );
    let want = |i: u64| {
        let mut p = pattern_page(i);
        if i < 64 {
            let v = GUEST_FIRST + i as u32;
            let hi = HI_OFFSET as usize;
            p[..4].copy_from_slice(&v.to_le_bytes());
            p[hi..hi + 4].copy_from_slice(&(!v).to_le_bytes());
        }
        p
    };
    vmm_reads(&map, PAGES, want);

    drop((vm, map, clone));
    live.delete();
    base.delete();
}

fn reset_during_vmm_fault() {
    const PAGE: u64 = 5;
    const DELAY_MS: u32 = 1000;
    let map_delay = Knob::require(VMM_MAP_DELAY_MS);
    let delays = Knob::require(VMM_DELAYS);
    let dev = vms_open();
    let name = unique_name("clone_reset_fault");
    let file = ImageFile::with_pattern(&name, 16, 0);
    let image = image_create(&dev, &name, file.file(), 16 * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    // The guest's write makes the page private; the VMM has not mapped it.
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(CLONE_GPA + PAGE * PAGE_SIZE, 1, GUEST_FIRST)),
    );
    test_assert_eq!(clone.stats().private_pages, 1);

    let before = delays.get();
    map_delay.set(DELAY_MS);
    let read = thread::scope(|s| {
        let m = &map;
        let reader = s.spawn(move || m.read_u32(PAGE * PAGE_SIZE));
        test_assert!(
            wait_for_delay(&delays, before, Duration::from_secs(10)),
            "the VMM's read never reached the delayed fault (returned: {})",
            reader.is_finished()
        );
        map_delay.set(0);
        test_assert!(!reader.is_finished(), "the VMM's read returned inside its delay");
        // The fault holds the private page, locked, not yet mapped.
        let t0 = Instant::now();
        clone.reset();
        let took = t0.elapsed();
        ksft::ksft_print_msg(&format!(
            "the reset took {} ms, the fault {}",
            took.as_millis(),
            if reader.is_finished() { "had returned" } else { "had not returned yet" }
        ));
        // It waited for the fault's page lock, most of the delay.
        test_assert!(
            took >= Duration::from_millis(100),
            "the reset took {} ms: it did not wait for the fault holding the page",
            took.as_millis()
        );
        reader.join().expect("the VMM reader panicked")
    });
    ksft::ksft_print_msg(&format!("the racing VMM read saw {read:#010x}"));
    test_assert!(
        read == GUEST_FIRST || read == pattern_word(PAGE),
        "the racing read saw {read:#010x}: neither the guest's value nor the image's"
    );
    test_assert_eq!(clone.stats().private_pages, 0);
    // Now, after the reset: the image's bytes in both views.
    vmm_reads(&map, 16, pattern_page);
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, 16)));

    drop((vm, map, clone));
    image.delete();
}

/// `reset_races` runs until the guest made 30 passes over the clone and
/// the VMM thread as many rounds, or for 40 s on a slow machine (at least
/// one of each is required), with a reset every 10 ms: between the
/// accesses, not back to back.
const RACE: RaceSpec =
    RaceSpec { pages: 256, time: Duration::from_secs(40), rounds: 30, pause: Duration::from_millis(10) };
/// The debug quarantine's ring for the race (`quarantine_pages`).
const QUARANTINE: u32 = 64;
/// How long a reset of [`reset_races_with_swap`] waits before it punches
/// the swap file (`reset_punch_delay_ms`): long enough for the vCPU and
/// the VMM to write past the limit meanwhile (in the emulated test VM).
const PUNCH_DELAY_MS: u32 = 200;
/// [`reset_races_with_swap`] resets at every 100th turn (about every 1-2
/// s): a page evicted in a reset's window is used again, so read back,
/// before the next reset drops it.
const RESET_EVERY: u32 = 100;

fn reset_races() {
    reset_race("clone_reset_race", None, 1);
}

/// [`reset_races`] on a clone with a 16-page limit and a swap file: its
/// pages are evicted and read back all along, and every reset gives the
/// swap file's blocks back. A page evicted while a reset punched the file
/// would read back as zeros under its entry.
fn reset_races_with_swap() {
    let (f, resets) = reset_race("clone_reset_swap", Some(16), RESET_EVERY);
    // Resets came while pages were evicted and read back.
    test_assert!(resets >= 3, "{resets} resets");
    test_assert!(f.evicted > 0 && f.read_back > 0, "nothing was evicted or read back: {f:?}");
}

/// The race of [`reset_races`], on a clone with a limit if `limit` is
/// given, resetting at every `every`th turn of the main thread (then for
/// the whole of the race's time, not just its rounds); returns the
/// clone's footprint after the race and how many resets it made.
fn reset_race(prefix: &str, limit: Option<u64>, every: u32) -> (VmsCloneFootprint, u64) {
    let dev = vms_open();
    let name = unique_name(prefix);
    const RACE_PAGES: u64 = RACE.pages;
    let file = ImageFile::with_pattern(&name, RACE_PAGES, 0);
    let image = image_create(&dev, &name, file.file(), RACE_PAGES * PAGE_SIZE, 0);
    // Freed private pages sit in the quarantine, filled with a sentinel: a
    // write through a stage-2 or VMM mapping that outlived a reset changes
    // it.
    let quarantine = Quarantine::start(QUARANTINE);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    // A second VMM mapping: written through `map`, read through `other`.
    let other = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    // With a swap file, each reset sleeps before it punches the file (if
    // the module has the knob): the window in which an eviction would
    // write a page whose block the punch then takes.
    let mut _punch_delay = None;
    if let Some(limit) = limit {
        clone.set_limit(limit, Some(&image_dir()));
        if std::path::Path::new(KNOB_DIR).join(RESET_PUNCH_DELAY_MS).exists() {
            let k = Knob::require(RESET_PUNCH_DELAY_MS);
            k.set(PUNCH_DELAY_MS);
            _punch_delay = Some(k);
        } else {
            ksft::ksft_print_msg("no reset_punch_delay_ms knob: the resets punch without a window held open");
        }
    }
    // The image's word at byte 8 of each page.
    let image_word8: Vec<u32> = (0..RACE_PAGES)
        .map(|p| u32::from_le_bytes(pattern_page(p)[8..12].try_into().unwrap()))
        .collect();
    let mut resets = 0u64;
    let _dog = Watchdog::start("clone_reset races", Duration::from_secs(240));
    // The guest checks word 0 of every page and writes word 4; the VMM
    // writes a token through `map` and must read it back through `other`,
    // or the image's word if a reset came in between. An older token is
    // a page that one of the mappings kept across a reset.
    let mut stirs = 0u32;
    // Spaced resets run for the race's whole time: its rounds could end
    // it before the first reset on a fast machine.
    let spec = if every > 1 { RaceSpec { rounds: u64::MAX, ..RACE } } else { RACE };
    let r = token_race(&mut vm, &map, &other, spec, |p| Some(image_word8[p as usize]), || {
        stirs += 1;
        if stirs.is_multiple_of(every) {
            clone.reset();
            resets += 1;
        }
        true
    });
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!(
        "{resets} resets, {} guest passes, {} VMM rounds; {:?}; {f:?}",
        r.passes,
        r.vmm_rounds,
        clone.stats()
    ));
    // The guest stops on its own exit only when it found a bad page.
    r.assert_clean();
    test_assert!(resets > 0);
    clone.reset();
    test_assert_eq!(clone.stats().private_pages, 0);
    if limit.is_some() {
        // The last reset punched the swap file (tmpfs or ext4 here).
        let after = clone.footprint();
        test_assert_eq!(after.swap_disk_bytes, 0, "the swap file's blocks after the last reset: {after:?}");
    }
    vmm_reads(&map, RACE_PAGES, pattern_page);
    vmm_reads(&other, RACE_PAGES, pattern_page);

    drop((vm, map, other, clone));
    quarantine.assert_unchanged();
    image.delete();
    (f, resets)
}

/// A clone never mapped nor attached: a reset has nothing to do.
fn reset_of_an_untouched_clone() {
    let dev = vms_open();
    let name = unique_name("clone_reset_bare");
    let file = ImageFile::with_pattern(&name, 16, 0);
    let image = image_create(&dev, &name, file.file(), 16 * PAGE_SIZE, 0);
    let clone = image.clone_create();
    clone.reset();
    let s = clone.stats();
    test_assert_eq!(s.private_pages, 0);
    test_assert_eq!(s.resets, 1);
    drop(clone);
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("reset_drops_private_pages", reset_drops_private_pages),
        Test::new("reset_returns_to_the_live_image", reset_returns_to_the_live_image),
        Test::new("reset_during_vmm_fault", reset_during_vmm_fault),
        Test::new("reset_races", reset_races),
        Test::new("reset_races_with_swap", reset_races_with_swap),
        Test::new("reset_of_an_untouched_clone", reset_of_an_untouched_clone),
    ]);
}
