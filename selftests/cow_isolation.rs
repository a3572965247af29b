// SPDX-License-Identifier: GPL-2.0

//! cow_isolation: a guest's writes stay in its own clone.
//!
//! Two clones A and B of one 16 MiB pattern image, each in its own VM.
//! A's guest writes new values to both pattern words of every page of the
//! first 1 MiB; then B's guest reads the original pattern everywhere, and
//! A's guest reads its own values in the first 1 MiB and the pattern
//! after it. A then writes the second MiB, which it has just read (its
//! stage 2 maps the image's pages there read-only, so the copy must zap
//! them), and reads its values back; B still reads the image there. The
//! VMM's mappings agree: A's shows A's values (and the rest of each
//! written page is still the image's), B's shows the image. The image file
//! is unchanged. A made exactly one private copy per written page; B made
//! none.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use vms_selftests::guest::{self, Walk};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm;
use vms_selftests::vms::{
    image_create, pattern_page, require_vms_and_kvm, unique_name, vm_with_clone, vms_open,
    ImageFile, CLONE_GPA, HI_OFFSET, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 16 MiB image.
const PAGES: u64 = 4096;
/// A writes the first 1 MiB.
const WRITTEN: u64 = 256;
/// A's value at byte 0 of page i is `A_FIRST + i` (its complement at byte
/// 2048), unlike any pattern word (0x56xx_xxxx).
const A_FIRST: u32 = 0x0a00_0000;

fn writes_stay_private() {
    let dev = vms_open();
    let name = unique_name("cow_isolation");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();

    let clone_a = image.clone_create();
    let map_a = clone_a.map();
    let mut vm_a = vm_with_clone(&kvm, &clone_a, &map_a, 1);
    let clone_b = image.clone_create();
    let map_b = clone_b.map();
    let mut vm_b = vm_with_clone(&kvm, &clone_b, &map_b, 1);
    test_assert_eq!(image.info().clones, 2);

    let a_values = Walk::values(CLONE_GPA, WRITTEN, A_FIRST);
    guest::run(&mut vm_a, 0, &guest::write(&a_values));

    // B sees the image, also where A wrote.
    guest::run(
        &mut vm_b,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)),
    );
    // A sees its own values, and the image past them.
    guest::run(&mut vm_a, 0, &guest::read_check(&a_values));
    guest::run(
        &mut vm_a,
        0,
        &guest::read_check(&Walk::pattern(
            CLONE_GPA + WRITTEN * PAGE_SIZE,
            WRITTEN,
            PAGES - WRITTEN,
        )),
    );

    // Read, then written: the copy replaces a page stage 2 maps.
    let a_again = Walk::values(CLONE_GPA + WRITTEN * PAGE_SIZE, WRITTEN, A_FIRST + WRITTEN as u32);
    guest::run(&mut vm_a, 0, &guest::write(&a_again));
    guest::run(&mut vm_a, 0, &guest::read_check(&a_again));
    guest::run(
        &mut vm_b,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA + WRITTEN * PAGE_SIZE, WRITTEN, WRITTEN)),
    );

    // The VMM's mappings: A's written pages are the image's page with A's
    // two words; B's are the image's.
    for i in 0..WRITTEN {
        let (lo, hi) = a_values.value(i as u32);
        let mut want = pattern_page(i);
        want[..4].copy_from_slice(&lo.to_le_bytes());
        let h = HI_OFFSET as usize;
        want[h..h + 4].copy_from_slice(&hi.to_le_bytes());
        test_assert!(map_a.read_page(i) == want, "A's mapping, page {i}");
        test_assert!(
            map_b.read_page(i) == pattern_page(i),
            "B's mapping, page {i}"
        );
    }

    let a = clone_a.stats();
    let b = clone_b.stats();
    ksft::ksft_print_msg(&format!("A: {a:?}\nB: {b:?}"));
    test_assert_eq!(a.cow_copies, 2 * WRITTEN);
    test_assert_eq!(a.private_pages, 2 * WRITTEN);
    test_assert_eq!(b.cow_copies, 0);
    test_assert_eq!(b.private_pages, 0);
    let is = image.info();
    ksft::ksft_print_msg(&format!("image: {is:?}"));
    test_assert_eq!(is.cached_pages, PAGES, "one cached copy of each page");

    drop((vm_a, vm_b, map_a, map_b, clone_a, clone_b));
    image.delete();

    // Nothing wrote to the file.
    let diff = file.first_difference(PAGES, 0);
    test_assert!(
        diff.is_none(),
        "the image file changed at byte {:#x}",
        diff.unwrap_or(0)
    );
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[Test::new("writes_stay_private", writes_stay_private)]);
}
