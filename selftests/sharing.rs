// SPDX-License-Identifier: GPL-2.0

//! sharing: clones that only read share one copy of the image.
//!
//! Eight clones of one 64 MiB pattern image, each in its own VM, and each
//! guest reads every page (the VMs run one after the other and all stay
//! alive). The image then caches each page once, no clone holds a
//! private page, and free memory (`MemFree` plus the per-CPU free lists)
//! fell by less than a quarter of one copy of the image (not eight): the
//! file is on tmpfs, so the image's cache holds the file's own page-cache
//! pages, which the clones map, and copies nothing.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use vms_selftests::guest::{self, Walk};
use vms_selftests::host::{mem_free, mib};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm;
use vms_selftests::vms::{
    image_create, require_vms_and_kvm, unique_name, vm_with_clone, vms_open, ImageFile, CLONE_GPA,
    PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 64 MiB image.
const PAGES: u64 = 16384;
const SIZE: u64 = PAGES * PAGE_SIZE;
const CLONES: usize = 8;

fn eight_clones_one_copy() {
    let dev = vms_open();
    let name = unique_name("sharing");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), SIZE, 0);
    let kvm = kvm::open_kvm();
    // The file is in memory already (tmpfs): from here on, only what the
    // module and KVM allocate counts.
    let free_before = mem_free();

    let mut clones = Vec::new();
    for i in 0..CLONES {
        let clone = image.clone_create();
        let map = clone.map();
        let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
        guest::run(
            &mut vm,
            0,
            &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)),
        );
        ksft::ksft_print_msg(&format!("clone {i} read {PAGES} pages"));
        clones.push((vm, map, clone));
    }

    let free_after = mem_free();
    let used = free_before.saturating_sub(free_after);
    ksft::ksft_print_msg(&format!(
        "free memory fell by {:.1} MiB with {CLONES} clones of a {:.0} MiB image",
        mib(used),
        mib(SIZE)
    ));

    let is = image.info();
    ksft::ksft_print_msg(&format!("image: {is:?}"));
    test_assert_eq!(is.clones, CLONES as u64);
    test_assert_eq!(is.cached_pages, PAGES, "one cached copy of each page");
    test_assert_eq!(is.file_pages, PAGES, "each page the file's page-cache page");
    test_assert_eq!(is.vmm_copies, 0, "no VMM read");
    test_assert_eq!(is.streamed, PAGES, "each page read from the file once");
    let mut streamed = 0;
    for (i, (_, _, clone)) in clones.iter().enumerate() {
        let cs = clone.stats();
        test_assert_eq!(cs.private_pages, 0, "clone {i}: {cs:?}");
        test_assert_eq!(cs.cow_copies, 0, "clone {i}: {cs:?}");
        test_assert!(cs.faults >= PAGES, "clone {i}: {cs:?}");
        test_assert!(cs.shared_maps >= PAGES, "clone {i}: {cs:?}");
        streamed += cs.streamed;
    }
    test_assert_eq!(streamed, PAGES, "the clones streamed each page once");
    test_assert!(
        used < SIZE / 4,
        "free memory fell by {:.1} MiB: more than a quarter of the image",
        mib(used)
    );

    drop(clones);
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[Test::new("eight_clones_one_copy", eight_clones_one_copy)]);
}
