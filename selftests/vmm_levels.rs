// SPDX-License-Identifier: GPL-2.0

//! vmm_levels: the VMM's mapping of a clone and its guest read the same
//! bytes when a VMM read races with a snapshot and a copy-on-write.
//!
//! A page an image holds as the file's page-cache page goes to stage 2
//! as it is, and to the VMM's mapping as a copy (see docs/ARCHITECTURE.md,
//! "Per-gfn states"). The race: a VMM read fault resolves the image's
//! copy, locks it and releases the clone's state (`vmm_map_delay_ms`
//! holds it there, before mm maps the page); meanwhile the clone is
//! snapshotted (its image becomes a live image on the old one) and the
//! guest writes the page, which copies it and unmaps the page the VMM
//! may map, under that page's lock. If each image level made its own
//! copy, the copy-on-write would retire the live image's copy while the
//! fault holds the old image's: the lock would not wait for the fault,
//! which would then map the old copy for good, a stale view of a page
//! the guest has written.
//!
//! After both, every page must read the same through the VMM's mapping
//! and in the guest, and only one VMM copy of the page must exist.
//!
//! `vmm_mappings_agree_through_cow`: a vCPU reads every page and writes
//! to it (a copy-on-write wherever the page is shared), and a VMM thread
//! writes a new token to each page through one mapping and reads it back
//! through another, while the main thread snapshots the clone again and
//! again (which makes every page shared again). The read must return the
//! token just written: the copy-on-write must unmap the shared page from
//! every VMM mapping before any other fault can find the new copy, or the
//! second mapping still shows the shared page while the first writes the
//! copy.
//!
//! Skips if `/dev/vms`, `/dev/kvm` or the knob is missing.

use std::thread;
use std::time::Duration;

use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::knob::{wait_for_delay, Knob, VMM_DELAYS, VMM_MAP_DELAY_MS};
use vms_selftests::ksft::{self, Test, Watchdog};
use vms_selftests::kvm;
use vms_selftests::race::{token_race, RaceSpec};
use vms_selftests::vms::{
    image_create, image_snapshot, pattern_page, require_vms_and_kvm, unique_name, vm_with_clone,
    vms_open, ImageFile, CLONE_GPA, HI_OFFSET, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// The image: a few pages of the test pattern.
const PAGES: u64 = 8;
/// The page both sides race on.
const PAGE: u64 = 3;
/// What the guest writes to it at byte 0 (its complement at byte 2048).
const WRITTEN: u32 = 0x7700_0000;
/// How long the VMM's fault sleeps with the page locked.
const DELAY_MS: u32 = 1000;

/// Page `i` as both sides must see it at the end.
fn expected(i: u64) -> Vec<u8> {
    let mut page = pattern_page(i);
    if i == PAGE {
        let hi = HI_OFFSET as usize;
        page[..4].copy_from_slice(&WRITTEN.to_le_bytes());
        page[hi..hi + 4].copy_from_slice(&(!WRITTEN).to_le_bytes());
    }
    page
}

fn snapshot_and_cow_during_vmm_read() {
    let map_delay = Knob::require(VMM_MAP_DELAY_MS);
    let delays = Knob::require(VMM_DELAYS);
    let dev = vms_open();
    let name = unique_name("vmm_levels");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let base = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    // Declared before the clone, so that a failure drops (deletes) it
    // after the clone and before `base`.
    let live;
    let kvm = kvm::open_kvm();
    let clone = base.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);

    let before = delays.get();
    map_delay.set(DELAY_MS);
    live = thread::scope(|s| {
        let m = &map;
        let reader = s.spawn(move || m.read_u32(PAGE * PAGE_SIZE));
        test_assert!(
            wait_for_delay(&delays, before, Duration::from_secs(10)),
            "the VMM's read never reached the delayed fault (returned: {})",
            reader.is_finished()
        );
        // Only this fault sleeps.
        map_delay.set(0);
        test_assert!(!reader.is_finished(), "the VMM's read returned inside its delay");
        let live = image_snapshot(&dev, &unique_name("vmm_levels_live"), &clone);
        let write = Walk::values(CLONE_GPA + PAGE * PAGE_SIZE, 1, WRITTEN);
        guest::run(&mut vm, 0, &guest::write(&write));
        // Where the race was not hit (the fault mapped the page before the
        // copy), the test cannot fail: say which it was.
        let waited = reader.is_finished();
        let read = reader.join().expect("the VMM reader panicked");
        ksft::ksft_print_msg(&format!(
            "the racing VMM read saw {read:#010x}; it had {}returned when the guest's write did",
            if waited { "" } else { "not " }
        ));
        live
    });

    let cs = clone.stats();
    let (b, l) = (base.info(), live.info());
    ksft::ksft_print_msg(&format!("clone {cs:?}\nbase {b:?}\nlive {l:?}"));
    test_assert_eq!(b.file_pages, 1, "the page is the file's page-cache page");
    test_assert_eq!(cs.private_pages, 1, "the guest's write made a private copy");

    // The VMM's view.
    for i in 0..PAGES {
        let got = map.read_page(i);
        let want = expected(i);
        let diff = got.iter().zip(&want).position(|(a, b)| a != b);
        test_assert!(
            diff.is_none(),
            "page {i} through the VMM's mapping differs at byte {diff:?}: {:#010x} at byte 0, \
             the guest wrote {WRITTEN:#010x} to page {PAGE}",
            u32::from_le_bytes(got[..4].try_into().unwrap())
        );
    }
    // The guest's view: the pattern around the page it wrote.
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGE)));
    let write = Walk::values(CLONE_GPA + PAGE * PAGE_SIZE, 1, WRITTEN);
    guest::run(&mut vm, 0, &guest::read_check(&write));
    let after = PAGE + 1;
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA + after * PAGE_SIZE, after, PAGES - after)),
    );
    // One VMM copy of the file page, whichever image level asks for it.
    test_assert_eq!(
        b.vmm_copies + l.vmm_copies,
        1,
        "VMM copies of the page: base {}, live {}",
        b.vmm_copies,
        l.vmm_copies
    );

    drop((vm, map, clone));
    live.delete();
    base.delete();
}

const RACE: RaceSpec =
    RaceSpec { pages: 256, time: Duration::from_secs(40), rounds: u64::MAX, pause: Duration::from_millis(20) };
const RACE_SNAPSHOTS: usize = 40;

fn vmm_mappings_agree_through_cow() {
    let dev = vms_open();
    let name = unique_name("vmm_levels_race");
    let file = ImageFile::with_pattern(&name, RACE.pages, 0);
    let image = image_create(&dev, &name, file.file(), RACE.pages * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let other = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    let mut lives = Vec::new();
    let _dog = Watchdog::start("vmm_levels races", Duration::from_secs(240));
    let r = token_race(&mut vm, &map, &other, RACE, |_| None, || {
        if lives.len() >= RACE_SNAPSHOTS {
            return false;
        }
        lives.push(image_snapshot(&dev, &unique_name("vmm_levels_race_live"), &clone));
        true
    });
    ksft::ksft_print_msg(&format!(
        "{} snapshots, {} guest passes, {} VMM rounds",
        lives.len(),
        r.passes,
        r.vmm_rounds
    ));
    test_assert!(matches!(r.guest, Outcome::Done), "the guest saw a wrong page: {}", guest::describe(&r.guest));
    test_assert!(r.vmm.is_none(), "the VMM: {}", r.vmm.unwrap_or_default());
    test_assert!(r.vmm_rounds > 0, "the VMM thread never finished a round");
    drop((vm, map, other, clone));
    for live in lives.into_iter().rev() {
        live.delete();
    }
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("snapshot_and_cow_during_vmm_read", snapshot_and_cow_during_vmm_read),
        Test::new("vmm_mappings_agree_through_cow", vmm_mappings_agree_through_cow),
    ]);
}
