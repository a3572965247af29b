// SPDX-License-Identifier: GPL-2.0

//! stream_read: a guest reads every page of a clone and sees the image.
//!
//! A 16 MiB image holds the test pattern (see `lib/vms.rs`). One clone is
//! served to a guest at gpa 0x4000_0000; the guest reads the two pattern
//! words of every page and checks them. Each page is then read from the
//! file once and cached in the image, the clone holds no private page,
//! and every page took a stage-2 fault. A second subtest does the same
//! with an image that starts 8 KiB into its file (`file_offset`).
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use vms_selftests::guest::{self, Walk};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm;
use vms_selftests::vms::{
    image_create, require_vms_and_kvm, unique_name, vm_with_clone, vms_open, ImageFile, CLONE_GPA,
    PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 16 MiB.
const PAGES: u64 = 4096;

/// Streams a `PAGES`-page image that starts `junk` bytes into its file
/// through one clone and checks the counters.
fn stream(junk: u64) {
    let dev = vms_open();
    let name = unique_name("stream_read");
    let file = ImageFile::with_pattern(&name, PAGES, junk);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, junk);
    let clone = image.clone_create();
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);

    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)),
    );

    let cs = clone.stats();
    ksft::ksft_print_msg(&format!("clone: {cs:?}"));
    test_assert_eq!(cs.size, PAGES * PAGE_SIZE);
    test_assert_eq!(cs.private_pages, 0, "reads made private pages");
    test_assert_eq!(cs.cow_copies, 0, "reads made copies");
    test_assert!(cs.faults >= PAGES, "fewer stage-2 faults than pages");
    test_assert_eq!(cs.io_errors, 0);
    test_assert_eq!(cs.streamed, PAGES);

    let is = image.info();
    ksft::ksft_print_msg(&format!("image: {is:?}"));
    test_assert_eq!(is.size, PAGES * PAGE_SIZE);
    test_assert_eq!(is.clones, 1);
    test_assert_eq!(is.cached_pages, PAGES);
    test_assert_eq!(is.streamed, PAGES);
    test_assert_eq!(is.zero_pages, 0);
    test_assert_eq!(is.read_errors, 0);

    drop(vm);
    drop(map);
    drop(clone);
    test_assert_eq!(image.info().clones, 0, "the clone is gone");
    image.delete();
}

/// The image starts at file offset 0.
fn read_every_page() {
    stream(0);
}

/// The image starts at file offset 8 KiB: image page 0 is the file's
/// third page.
fn read_every_page_file_offset() {
    stream(2 * PAGE_SIZE);
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("read_every_page", read_every_page),
        Test::new("read_every_page_file_offset", read_every_page_file_offset),
    ]);
}
