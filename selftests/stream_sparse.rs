// SPDX-License-Identifier: GPL-2.0

//! stream_sparse: a 64 GiB image costs only the pages a guest touches.
//!
//! The image file is a 64 GiB sparse file holding the test pattern in
//! four pages (at 0, 1 GiB, 17 GiB and 64 GiB - 4 KiB); every other page
//! is a hole. One clone is attached to one VM as four 512 MiB windows
//! (`VMS_CLONE_ATTACH` offsets 0, 1 GiB, 17 GiB and 63.5 GiB) in memslots
//! 1-4 at gpa 0x4000_0000, 0x6000_0000, 0x8000_0000 and 0xa000_0000: a
//! 32-bit guest reaches 4 GiB, so windows of 1 GiB would not all fit.
//! The guest reads the four written pages and a hole next to each; the
//! VMM reads one written page and a hole at 40 GiB through its mapping.
//!
//! Holes read as zero; the image read exactly the pages touched, cached
//! the written ones and served the holes with the zero page; and free
//! memory (`MemFree` plus the per-CPU free lists) fell by far less than
//! the image's size.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use vms_selftests::guest::{self, Walk};
use vms_selftests::host::{mem_free, mib};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm::{self, vm_create_pm32};
use vms_selftests::vms::{
    image_create, pattern_page, require_vms_and_kvm, unique_name, vm_attach_clone, vms_open,
    ImageFile, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

const GIB: u64 = 1 << 30;
/// The image: 64 GiB, 16 Mi pages.
const SIZE: u64 = 64 * GIB;
/// Each window of the clone in guest memory.
const WINDOW: u64 = 512 << 20;
/// The windows: (memslot, gpa, byte offset in the clone).
const WINDOWS: [(u32, u64, u64); 4] = [
    (1, 0x4000_0000, 0),
    (2, 0x6000_0000, GIB),
    (3, 0x8000_0000, 17 * GIB),
    (4, 0xa000_0000, SIZE - WINDOW),
];
/// The pages that hold the pattern (image page indexes).
const DATA: [u64; 4] = [
    0,
    GIB / PAGE_SIZE,
    17 * GIB / PAGE_SIZE,
    SIZE / PAGE_SIZE - 1,
];
/// The holes the guest reads, one in each window.
const HOLES: [u64; 4] = [
    1,
    GIB / PAGE_SIZE + 1,
    17 * GIB / PAGE_SIZE + 77,
    SIZE / PAGE_SIZE - 2,
];
/// A hole only the VMM reads, outside every window.
const VMM_HOLE: u64 = 40 * GIB / PAGE_SIZE;
/// A bound on what the whole test may cost: 1/256 of the image. It
/// leaves room for per-page metadata of up to 8 bytes per 4 KiB page
/// (1/512 of the size) but not for anything that grows with the pages'
/// contents.
const MEM_BOUND: u64 = SIZE / 256;

/// The gpa at which the guest sees image page `page`.
fn gpa_of(page: u64) -> u64 {
    let off = page * PAGE_SIZE;
    let (_, gpa, start) = WINDOWS
        .iter()
        .find(|(_, _, start)| (*start..*start + WINDOW).contains(&off))
        .expect("page outside the windows");
    gpa + (off - start)
}

fn sparse_64g() {
    let dev = vms_open();
    let name = unique_name("stream_sparse");
    let file = ImageFile::sparse(&name, SIZE, &DATA);
    let free_before = mem_free();

    let image = image_create(&dev, &name, file.file(), SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    for &(slot, gpa, offset) in &WINDOWS {
        vm_attach_clone(&mut vm, &clone, &map, slot, gpa, offset, WINDOW);
    }
    vm.add_vcpu_pm32(0, guest::code_gpa(0));

    for &page in &DATA {
        let w = Walk::pattern(gpa_of(page), page, 1);
        guest::run(&mut vm, 0, &guest::read_check(&w));
    }
    for &page in &HOLES {
        let w = Walk::zeros(gpa_of(page), 1);
        guest::run(&mut vm, 0, &guest::read_check(&w));
    }
    test_assert!(
        map.read_page(DATA[2]) == pattern_page(DATA[2]),
        "the VMM's view of page {}",
        DATA[2]
    );
    test_assert!(
        map.read_page(VMM_HOLE).iter().all(|&b| b == 0),
        "the VMM's view of hole page {VMM_HOLE}"
    );

    let free_after = mem_free();
    let used = free_before.saturating_sub(free_after);
    ksft::ksft_print_msg(&format!(
        "free memory fell by {:.1} MiB for a {} GiB image",
        mib(used),
        SIZE / GIB
    ));

    let data = DATA.len() as u64;
    let holes = HOLES.len() as u64 + 1;
    let is = image.info();
    let cs = clone.stats();
    ksft::ksft_print_msg(&format!("image: {is:?}\nclone: {cs:?}"));
    test_assert_eq!(is.size, SIZE);
    test_assert_eq!(is.streamed, data + holes, "pages read = pages touched");
    test_assert_eq!(is.zero_pages, holes, "holes touched");
    test_assert_eq!(is.cached_pages, data, "written pages touched");
    test_assert_eq!(is.file_pages, data, "kept as the file's page-cache pages");
    test_assert_eq!(is.vmm_copies, 1, "the VMM's read of a written page copied it");
    test_assert_eq!(is.read_errors, 0);
    test_assert_eq!(cs.size, SIZE);
    test_assert_eq!(cs.streamed, data + holes);
    test_assert_eq!(cs.private_pages, 0);
    test_assert!(cs.faults >= data + HOLES.len() as u64, "stage-2 faults");
    test_assert!(cs.mmap_faults >= 2, "the VMM's two reads");
    test_assert!(
        cs.zero_maps >= HOLES.len() as u64,
        "the guest's holes are zero-page mappings"
    );
    test_assert!(
        used < MEM_BOUND,
        "free memory fell by {:.1} MiB, the bound is {:.0} MiB",
        mib(used),
        mib(MEM_BOUND)
    );

    drop((vm, map, clone));
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[Test::new("sparse_64g", sparse_64g)]);
}
