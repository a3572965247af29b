// SPDX-License-Identifier: GPL-2.0

//! io_error: a page the image cannot read is an error, never zeros.
//!
//! A one-page image is made of a file that cannot be read: the sysfs
//! attribute `/sys/kernel/fscaps`, a regular file whose inode says 4096
//! bytes (every sysfs attribute does) and whose read returns two, so
//! every read of the page comes back short. (This test used to truncate
//! an image's file under it; vms now refuses that with `ETXTBSY`, see
//! `image_file`.) Each subtest touches the page in a fresh clone:
//!
//! - a guest read: `KVM_RUN` fails with `EFAULT` and exit reason
//!   `KVM_EXIT_MEMORY_FAULT` for that page's gpa, and again when run
//!   again (the access is not completed);
//! - a guest write (the private copy needs the image's page): the same;
//! - a read and a write through the VMM's mapping: `SIGBUS` (tried in a
//!   forked child).
//!
//! The image counts a read error and caches nothing (no zero page
//! either); the clone counts an I/O error and holds no private page.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::fs::File;
use std::sync::Arc;

use vms_selftests::guest::{self, Walk};
use vms_selftests::host::{fork_run, no_core_dump, ChildEnd};
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::kvm::{self, vcpu_run_memory_fault, Vm};
use vms_selftests::vms::{
    image_create, pattern_word, require_vms_and_kvm, unique_name, vm_with_clone, vms_open,
    CloneMap, Image, VmsClone, CLONE_GPA, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// The image's file: a sysfs attribute, 4096 bytes by its size, a few
/// by its contents.
const SHORT_FILE: &str = "/sys/kernel/fscaps";

/// Fields drop top down: VM, mapping, clone, image, file.
struct Setup {
    vm: Vm,
    map: Arc<CloneMap>,
    clone: VmsClone,
    image: Image,
    _file: File,
}

/// A one-page image of [`SHORT_FILE`], whose page cannot be read, a
/// clone of it, the clone's mapping and a VM with one vCPU that it
/// serves.
fn setup() -> Setup {
    let dev = vms_open();
    let name = unique_name("io_error");
    let file = check(File::open(SHORT_FILE), SHORT_FILE);
    let size = check(file.metadata(), SHORT_FILE).len();
    test_assert_eq!(size, PAGE_SIZE, "the size of a sysfs attribute");
    let image = image_create(&dev, &name, &file, PAGE_SIZE, 0);
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
    /// Runs `code` and asserts that it stops, twice, on a memory fault at
    /// clone page `page`.
    #[track_caller]
    fn guest_faults(&mut self, code: &[u8], page: u64) {
        guest::load(&mut self.vm, 0, code);
        for attempt in 0..2 {
            let (gpa, size) = vcpu_run_memory_fault(self.vm.vcpu(0));
            test_assert_eq!(gpa, CLONE_GPA + page * PAGE_SIZE, "attempt {attempt}");
            test_assert_eq!(size, PAGE_SIZE, "attempt {attempt}");
        }
    }

    /// Touches clone page `page` through the VMM's mapping in a child and
    /// asserts that the child dies of SIGBUS.
    #[track_caller]
    fn vmm_sigbus(&self, page: u64, write: bool) {
        let p = self.map.ptr_at(page * PAGE_SIZE).cast::<u32>();
        let end = fork_run(|| {
            no_core_dump();
            // SAFETY: `p` is an aligned address in the clone's mapping,
            // which the child inherited; the access is expected to raise
            // SIGBUS.
            unsafe {
                if write {
                    p.write_volatile(0x1234_5678);
                } else {
                    let _ = p.read_volatile();
                }
            }
            0
        });
        test_assert_eq!(
            end,
            ChildEnd::Signaled(libc::SIGBUS),
            "{} of page {page} through the mapping",
            if write { "write" } else { "read" }
        );
    }

    /// The counters after the failed accesses.
    #[track_caller]
    fn errors_counted(&self) {
        let is = self.image.info();
        let cs = self.clone.stats();
        ksft::ksft_print_msg(&format!("image: {is:?}\nclone: {cs:?}"));
        test_assert!(is.read_errors >= 1, "image read_errors");
        test_assert_eq!(is.cached_pages, 0, "a failed read cached a page");
        test_assert_eq!(is.zero_pages, 0, "a failed read became a zero page");
        test_assert!(cs.io_errors >= 1, "clone io_errors");
        test_assert_eq!(cs.private_pages, 0);
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

fn guest_read_efault() {
    let mut s = setup();
    let w = Walk::pattern(CLONE_GPA, 0, 1);
    s.guest_faults(&guest::read_check(&w), 0);
    s.errors_counted();
    s.finish();
}

fn guest_write_efault() {
    let mut s = setup();
    let w = Walk::values(CLONE_GPA, 1, pattern_word(0));
    s.guest_faults(&guest::write(&w), 0);
    s.errors_counted();
    s.finish();
}

fn vmm_read_sigbus() {
    let s = setup();
    s.vmm_sigbus(0, false);
    s.errors_counted();
    s.finish();
}

fn vmm_write_sigbus() {
    let s = setup();
    s.vmm_sigbus(0, true);
    s.errors_counted();
    s.finish();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("guest_read_efault", guest_read_efault),
        Test::new("guest_write_efault", guest_write_efault),
        Test::new("vmm_read_sigbus", vmm_read_sigbus),
        Test::new("vmm_write_sigbus", vmm_write_sigbus),
    ]);
}
