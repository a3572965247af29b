// SPDX-License-Identifier: GPL-2.0

//! live_image: `VMS_IMAGE_SNAPSHOT` turns a running clone's memory into a
//! new image without copying, and that image never changes afterwards.
//!
//! - `snapshot_moves_pages`: clone A of an empty 16 MiB image writes 256
//!   pages; the snapshot "live" holds exactly those 256 pages (generation
//!   1, parent = the empty image), A keeps reading them (0 private pages
//!   now) and its next writes copy again; clone B of "live" reads what A
//!   had at the snapshot, not what A wrote after it, through its guest and
//!   its mapping. Delete is refused while a clone or a live image uses an
//!   image, and works once they are gone.
//! - `snapshot_while_writing`: a vCPU writes its pages and a VMM thread
//!   writes through the mapping, without pause, while five snapshots are
//!   taken. Each snapshot read through a fresh clone right after it was
//!   taken and again at the end holds the same bytes: no write after a
//!   snapshot reaches it (a stale writable stage-2 or VMM mapping would
//!   leak one), and A still reads its own last writes.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::thread;
use std::time::Duration;

use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm;
use vms_selftests::vms::{
    image_create_empty, image_snapshot, name_of, require_vms_and_kvm, unique_name, vm_with_clone,
    vms_open, CloneMap, CLONE_GPA, HI_OFFSET, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 16 MiB images.
const PAGES: u64 = 4096;
/// A writes the first 1 MiB before the snapshot.
const WRITTEN: u64 = 256;
/// ... and half of it again after.
const REWRITTEN: u64 = 128;
const V1: u32 = 0x0a00_0000;
const V2: u32 = 0x0b00_0000;

fn errno_of(r: std::io::Result<()>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

fn snapshot_moves_pages() {
    let dev = vms_open();
    let base_name = unique_name("live_base");
    let live_name = unique_name("live");
    let mut base = image_create_empty(&dev, &base_name, PAGES * PAGE_SIZE);
    let kvm = kvm::open_kvm();
    let clone_a = base.clone_create();
    let map_a = clone_a.map();
    let mut vm_a = vm_with_clone(&kvm, &clone_a, &map_a, 1);

    // An empty image reads as zero.
    guest::run(&mut vm_a, 0, &guest::read_check(&Walk::zeros(CLONE_GPA, PAGES)));
    let v1 = Walk::values(CLONE_GPA, WRITTEN, V1);
    guest::run(&mut vm_a, 0, &guest::write(&v1));
    test_assert_eq!(clone_a.stats().private_pages, WRITTEN);

    let mut live = image_snapshot(&dev, &live_name, &clone_a);
    let a = clone_a.stats();
    let l = live.info();
    let b = base.info();
    ksft::ksft_print_msg(&format!("after snapshot: A {a:?}\nlive {l:?}\nbase {b:?}"));
    test_assert_eq!(a.private_pages, 0, "A's pages moved into the image");
    test_assert_eq!(name_of(&a.image), live_name, "A is now a clone of the live image");
    test_assert_eq!(l.cached_pages, WRITTEN, "the live image holds A's pages");
    test_assert_eq!(l.generation, 1);
    test_assert_eq!(name_of(&l.parent), base_name);
    test_assert_eq!(l.clones, 1);
    test_assert_eq!(b.clones, 0);
    test_assert_eq!(b.children, 1);

    // A reads its pages, now shared, without copying; then writes again.
    guest::run(&mut vm_a, 0, &guest::read_check(&v1));
    test_assert_eq!(clone_a.stats().private_pages, 0, "reads copy nothing");
    let v2 = Walk::values(CLONE_GPA, REWRITTEN, V2);
    guest::run(&mut vm_a, 0, &guest::write(&v2));
    test_assert_eq!(clone_a.stats().private_pages, REWRITTEN);

    // B, a clone of the live image, sees A's memory at the snapshot.
    let clone_b = live.clone_create();
    let map_b = clone_b.map();
    let mut vm_b = vm_with_clone(&kvm, &clone_b, &map_b, 1);
    guest::run(&mut vm_b, 0, &guest::read_check(&v1));
    guest::run(
        &mut vm_b,
        0,
        &guest::read_check(&Walk::zeros(CLONE_GPA + WRITTEN * PAGE_SIZE, PAGES - WRITTEN)),
    );
    for i in 0..WRITTEN {
        let (lo, hi) = v1.value(i as u32);
        test_assert_eq!(map_b.read_u32(i * PAGE_SIZE), lo, "B's mapping, page {i}");
        test_assert_eq!(map_b.read_u32(i * PAGE_SIZE + HI_OFFSET), hi, "B's mapping, page {i}");
        let want = if i < REWRITTEN { v2.value(i as u32).0 } else { lo };
        test_assert_eq!(map_a.read_u32(i * PAGE_SIZE), want, "A's mapping, page {i}");
    }
    test_assert_eq!(clone_b.stats().private_pages, 0);
    test_assert_eq!(live.info().clones, 2);

    test_assert_eq!(errno_of(base.__delete()), libc::EBUSY, "base has a live image on it");
    test_assert_eq!(errno_of(live.__delete()), libc::EBUSY, "live has clones");
    drop((vm_a, vm_b, map_a, map_b, clone_a, clone_b));
    test_assert_eq!(live.info().clones, 0);
    test_assert_eq!(errno_of(base.__delete()), libc::EBUSY, "live still exists");
    live.delete();
    test_assert_eq!(base.info().children, 0);
    base.delete();
}

/// Pages the writers of `snapshot_while_writing` touch.
const HOT: u64 = 64;
const SNAPSHOTS: usize = 5;

/// Word 0 and word 1 of each of the first [`HOT`] pages of an image, read
/// through a fresh clone's mapping.
fn hot_words(map: &CloneMap) -> Vec<(u32, u32)> {
    (0..HOT)
        .map(|i| (map.read_u32(i * PAGE_SIZE + 8), map.read_u32(i * PAGE_SIZE + 4)))
        .collect()
}

fn snapshot_while_writing() {
    let dev = vms_open();
    let base_name = unique_name("live_race");
    let base = image_create_empty(&dev, &base_name, PAGES * PAGE_SIZE);
    let kvm = kvm::open_kvm();
    let clone_a = base.clone_create();
    let map_a = clone_a.map();
    let mut vm_a = vm_with_clone(&kvm, &clone_a, &map_a, 1);
    // The guest writes a counter to word 1 of each hot page (and checks
    // word 0 is zero); the VMM thread writes its counter to word 2.
    guest::load(&mut vm_a, 0, &guest::read_write_forever(&Walk::zeros(CLONE_GPA, HOT)));

    let stop = AtomicBool::new(false);
    let vmm_last = AtomicU32::new(0);
    let mut snaps = Vec::new();
    let mut first_reads = Vec::new();
    thread::scope(|s| {
        let vcpu = &mut vm_a.vcpus_mut()[0];
        let stop = &stop;
        let guest_thread = s.spawn(move || {
            let mut passes = 0u64;
            while !stop.load(Ordering::SeqCst) {
                match guest::__run(vcpu) {
                    Ok(Outcome::Progress) => passes += 1,
                    o => return Err(format!("vCPU: {o:?}")),
                }
            }
            Ok(passes)
        });
        let (map, last) = (&map_a, &vmm_last);
        let vmm_thread = s.spawn(move || {
            let mut n = 0u32;
            while !stop.load(Ordering::SeqCst) {
                n += 1;
                map.write_u32((u64::from(n) % HOT) * PAGE_SIZE + 8, n);
                last.store(n, Ordering::SeqCst);
            }
            n
        });
        for k in 0..SNAPSHOTS {
            thread::sleep(Duration::from_millis(50));
            let name = format!("{base_name}.{k}");
            let image = image_snapshot(&dev, &name, &clone_a);
            let c = image.clone_create();
            first_reads.push(hot_words(&c.map()));
            snaps.push(image);
        }
        thread::sleep(Duration::from_millis(50));
        stop.store(true, Ordering::SeqCst);
        let passes = guest_thread.join().unwrap();
        let writes = vmm_thread.join().unwrap();
        ksft::ksft_print_msg(&format!("guest passes {passes:?}, VMM writes {writes}"));
        test_assert!(matches!(passes, Ok(p) if p > 0), "the guest ran: {passes:?}");
    });

    // Every snapshot still holds what it held when it was taken.
    for (k, (image, first)) in snaps.iter().zip(&first_reads).enumerate() {
        let c = image.clone_create();
        let now = hot_words(&c.map());
        let diff = now.iter().zip(first).position(|(a, b)| a != b);
        test_assert!(diff.is_none(), "snapshot {k} changed at page {diff:?}");
        ksft::ksft_print_msg(&format!("snapshot {k}: generation {}", image.info().generation));
        test_assert_eq!(image.info().generation, k as u64 + 1);
    }
    // Successive snapshots differ (the writers went on between them).
    test_assert!(first_reads.windows(2).any(|w| w[0] != w[1]), "the writers made progress");
    // A reads its own last VMM write.
    let n = vmm_last.load(Ordering::SeqCst);
    test_assert_eq!(map_a.read_u32((u64::from(n) % HOT) * PAGE_SIZE + 8), n);

    drop((vm_a, map_a, clone_a));
    // Newest first: each is the base of the next.
    for image in snaps.into_iter().rev() {
        image.delete();
    }
    base.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("snapshot_moves_pages", snapshot_moves_pages),
        Test::new("snapshot_while_writing", snapshot_while_writing),
    ]);
}
