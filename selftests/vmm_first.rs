// SPDX-License-Identifier: GPL-2.0

//! vmm_first: the VMM's mapping of a clone and the guest see one memory.
//!
//! KVM's emulator and the VMM's device models reach guest memory through
//! the memslot's host address, the guest through stage 2: both must show
//! the same page for each gfn at all times, across the first write of
//! either side (which makes the clone's private copy). Each subtest takes
//! one page of a fresh clone through one order of accesses:
//!
//! - VMM writes, then the guest reads the VMM's value;
//! - the guest writes, then the VMM reads the guest's value;
//! - the VMM reads (the image's page), the guest writes, the VMM reads
//!   the guest's value;
//! - the guest reads (the image's page), the VMM writes, the guest reads
//!   the VMM's value.
//!
//! Each time the clone ends with one private copy of that page only.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::sync::Arc;

use vms_selftests::guest::{self, Walk};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm::{self, Vm};
use vms_selftests::vms::{
    image_create, pattern_page, pattern_word, require_vms_and_kvm, unique_name, vm_with_clone,
    vms_open, CloneMap, Image, ImageFile, VmsClone, CLONE_GPA, HI_OFFSET, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 256 KiB image.
const PAGES: u64 = 64;
/// The VMM's value (byte 0; its complement at byte 2048).
const VMM_VALUE: u32 = 0x7e00_0001;
/// The guest's value.
const GUEST_VALUE: u32 = 0x6700_0002;

/// A fresh image, clone, mapping and one-vCPU VM, dropped in the right
/// order (fields drop top down; the file goes last).
struct Setup {
    vm: Vm,
    map: Arc<CloneMap>,
    clone: VmsClone,
    image: Image,
    _file: ImageFile,
}

fn setup() -> Setup {
    let dev = vms_open();
    let name = unique_name("vmm_first");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let vm = vm_with_clone(&kvm, &clone, &map, 1);
    Setup {
        vm,
        map,
        clone,
        image,
        _file: file,
    }
}

impl Setup {
    /// The guest checks that page `page` holds `v` and `!v`.
    #[track_caller]
    fn guest_reads(&mut self, page: u64, v: u32) {
        let w = Walk::values(CLONE_GPA + page * PAGE_SIZE, 1, v);
        guest::run(&mut self.vm, 0, &guest::read_check(&w));
    }

    /// The guest writes `v` and `!v` to page `page`.
    #[track_caller]
    fn guest_writes(&mut self, page: u64, v: u32) {
        let w = Walk::values(CLONE_GPA + page * PAGE_SIZE, 1, v);
        guest::run(&mut self.vm, 0, &guest::write(&w));
    }

    /// The VMM writes `v` and `!v` to page `page` through its mapping.
    fn vmm_writes(&self, page: u64, v: u32) {
        self.map.write_u32(page * PAGE_SIZE, v);
        self.map.write_u32(page * PAGE_SIZE + HI_OFFSET, !v);
    }

    /// The VMM checks through its mapping that page `page` is the image's
    /// page with `v` and `!v` in the pattern words.
    #[track_caller]
    fn vmm_reads(&self, page: u64, v: u32) {
        let mut want = pattern_page(page);
        want[..4].copy_from_slice(&v.to_le_bytes());
        let h = HI_OFFSET as usize;
        want[h..h + 4].copy_from_slice(&(!v).to_le_bytes());
        let got = self.map.read_page(page);
        let first = got.iter().zip(&want).position(|(a, b)| a != b);
        test_assert!(
            first.is_none(),
            "page {page} differs at byte {}: read {:#x}, want {:#x}",
            first.unwrap_or(0),
            got[first.unwrap_or(0)],
            want[first.unwrap_or(0)]
        );
    }

    /// The clone made exactly one private copy.
    #[track_caller]
    fn one_private_copy(&self) {
        let s = self.clone.stats();
        ksft::ksft_print_msg(&format!("clone: {s:?}"));
        test_assert_eq!(s.cow_copies, 1);
        test_assert_eq!(s.private_pages, 1);
    }

    fn finish(self) {
        let Setup {
            vm,
            map,
            clone,
            image,
            _file,
        } = self;
        drop((vm, map, clone));
        image.delete();
    }
}

/// The VMM writes a page nobody touched; the guest reads the VMM's value.
fn vmm_writes_guest_reads() {
    let mut s = setup();
    s.vmm_writes(10, VMM_VALUE);
    s.guest_reads(10, VMM_VALUE);
    // The neighbours are untouched.
    s.guest_reads(9, pattern_word(9));
    s.guest_reads(11, pattern_word(11));
    s.one_private_copy();
    s.finish();
}

/// The guest writes a page nobody touched; the VMM reads the guest's value.
fn guest_writes_vmm_reads() {
    let mut s = setup();
    s.guest_writes(20, GUEST_VALUE);
    s.vmm_reads(20, GUEST_VALUE);
    s.vmm_reads(21, pattern_word(21));
    s.one_private_copy();
    s.finish();
}

/// The VMM maps the image's page by reading it; the guest's first write
/// must replace that mapping too.
fn vmm_reads_guest_writes_vmm_sees() {
    let mut s = setup();
    s.vmm_reads(30, pattern_word(30));
    s.guest_writes(30, GUEST_VALUE);
    s.vmm_reads(30, GUEST_VALUE);
    s.one_private_copy();
    s.finish();
}

/// The guest maps the image's page by reading it; the VMM's first write
/// must replace the stage-2 mapping too.
fn guest_reads_vmm_writes_guest_sees() {
    let mut s = setup();
    s.guest_reads(40, pattern_word(40));
    s.vmm_writes(40, VMM_VALUE);
    s.guest_reads(40, VMM_VALUE);
    s.one_private_copy();
    s.finish();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("vmm_writes_guest_reads", vmm_writes_guest_reads),
        Test::new("guest_writes_vmm_reads", guest_writes_vmm_reads),
        Test::new(
            "vmm_reads_guest_writes_vmm_sees",
            vmm_reads_guest_writes_vmm_sees,
        ),
        Test::new(
            "guest_reads_vmm_writes_guest_sees",
            guest_reads_vmm_writes_guest_sees,
        ),
    ]);
}
