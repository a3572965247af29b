// SPDX-License-Identifier: GPL-2.0

//! stream_read: a guest reads every page of a clone and sees the image.
//!
//! A 16 MiB image holds the test pattern (see `lib/vms.rs`). One clone is
//! served to a guest at gpa 0x4000_0000; the guest reads the two pattern
//! words of every page and checks them. Each page is then read from the
//! file once and cached in the image, the clone holds no private page,
//! and every page took a stage-2 fault. The file is on tmpfs, so every
//! page is in its page cache: the image keeps references to those pages
//! (`file_pages`) instead of copies. A second subtest does the same with
//! an image that starts 8 KiB into its file (`file_offset`).
//!
//! A third tries to truncate the file under an image whose cache holds
//! its page-cache pages, mapped by clones' stage 2 and copied for the
//! VMM: vms denies writes to the file while the image lives, so the
//! truncate (and an open for writing) fails with `ETXTBSY` and the file
//! keeps its bytes; the clone's guest and VMM, and a new clone's, still
//! read the image, a guest write copies it, and nothing in the kernel log
//! complains (a page-cache page mapped into a VMM's mapping would be
//! "still mapped when deleted" if the file were truncated).
//!
//! A fourth reads the first MiB of a cold image file in order and checks
//! that the page cache read far ahead of it: vms widens the file's
//! readahead window to 2 MiB. It needs a file system that reads ahead, so
//! it runs in `stream_read_ext4` (the test VM's disk) and skips on tmpfs.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use vms_selftests::guest::{self, Walk};
use vms_selftests::host::{fadvise_dontneed, in_memory, resident_pages};
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::kvm;
use vms_selftests::vms::{
    image_create, image_dir, pattern_page, require_vms_and_kvm, unique_name, vm_with_clone,
    vms_open, ImageFile, CLONE_GPA, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq, test_assert_errno};

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
    test_assert_eq!(is.file_pages, PAGES, "tmpfs has every page in its page cache");
    test_assert_eq!(is.vmm_copies, 0, "no VMM read");
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

/// Try to truncate the image file while the image holds its page-cache
/// pages: refused.
fn truncate_refused_under_image() {
    const N: u64 = 64;
    let dev = vms_open();
    let name = unique_name("stream_trunc");
    let file = ImageFile::with_pattern(&name, N, 0);
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();

    let a = image.clone_create();
    let a_map = a.map();
    let mut a_vm = vm_with_clone(&kvm, &a, &a_map, 1);
    guest::run(&mut a_vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, N)));
    test_assert!(a_map.read_page(1) == pattern_page(1), "the VMM's view of page 1");
    let is = image.info();
    test_assert_eq!(is.file_pages, N, "{is:?}");
    test_assert_eq!(is.vmm_copies, 1, "the VMM's read made one copy: {is:?}");

    test_assert_errno!(file.__truncate(0), libc::ETXTBSY, "truncate(2) of the image file");
    test_assert_errno!(file.__writer(), libc::ETXTBSY, "open the image file for writing");
    test_assert_eq!(file.first_difference(N, 0), None, "the image file changed");

    // A's stage 2 still maps the pages; a new clone faults them in again
    // from the image's cache.
    guest::run(&mut a_vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, N)));
    let b = image.clone_create();
    let b_map = b.map();
    let mut b_vm = vm_with_clone(&kvm, &b, &b_map, 1);
    guest::run(&mut b_vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, N)));
    test_assert!(b_map.read_page(1) == pattern_page(1), "B's VMM, page 1 (the copy)");
    test_assert!(b_map.read_page(2) == pattern_page(2), "B's VMM, page 2 (a new copy)");
    guest::run(&mut b_vm, 0, &guest::write(&Walk::values(CLONE_GPA + 3 * PAGE_SIZE, 1, 7)));
    let mut want = pattern_page(3);
    want[..4].copy_from_slice(&7u32.to_le_bytes());
    test_assert!(
        b_map.read_page(3)[4..2048] == want[4..2048],
        "B's copy of page 3 kept the image's bytes"
    );
    test_assert!(a_map.read_page(3) == pattern_page(3), "A still sees the image's page 3");

    let is = image.info();
    ksft::ksft_print_msg(&format!("image: {is:?}"));
    test_assert_eq!(is.read_errors, 0, "{is:?}");
    test_assert_eq!(is.streamed, N, "nothing read again: {is:?}");
    test_assert_eq!(is.vmm_copies, 3, "pages 1, 2 and 3 (A's VMM): {is:?}");
    test_assert_eq!(b.stats().private_pages, 1);

    drop((a_vm, a_map, a, b_vm, b_map, b));
    image.delete();
}

/// A guest reads the first `READ` pages of a cold 8 MiB image in order:
/// the page cache must read more than 512 KiB past them. With the
/// device's window (128 KiB for virtio-blk) it reads at most two windows,
/// 256 KiB, ahead of a sequential stream; with vms's 2 MiB the windows
/// grow to 1 MiB and 2 MiB.
fn readahead_window() {
    const N: u64 = 2048;
    const READ: u64 = 256;
    const AHEAD_MIN: u64 = 128;
    if in_memory(&image_dir()) {
        ksft::skip("image files on tmpfs, which reads nothing ahead (stream_read_ext4 runs this on a disk)");
    }
    let dev = vms_open();
    let name = unique_name("stream_ra");
    let file = ImageFile::with_pattern(&name, N, 0);
    check(file.file().sync_all(), "fsync the image file");
    fadvise_dontneed(file.file());
    let left = resident_pages(file.file(), N * PAGE_SIZE);
    test_assert!(left <= N / 100, "{left} pages stayed in the page cache after POSIX_FADV_DONTNEED");
    let image = image_create(&dev, &name, file.file(), N * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);

    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, READ)));

    let resident = resident_pages(file.file(), N * PAGE_SIZE);
    let is = image.info();
    ksft::ksft_print_msg(&format!(
        "read {READ} pages in order; {resident} of {N} in the page cache; image: {is:?}"
    ));
    test_assert_eq!(is.streamed, READ, "{is:?}");
    test_assert_eq!(is.read_errors, 0, "{is:?}");
    test_assert!(resident >= READ, "{resident} pages in the page cache, {READ} read");
    test_assert!(
        resident - READ > AHEAD_MIN,
        "the page cache read {} pages ahead of a sequential stream, not more than {AHEAD_MIN}: \
         the file kept the device's readahead window",
        resident - READ
    );
    drop((vm, map, clone));
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("read_every_page", read_every_page),
        Test::new("read_every_page_file_offset", read_every_page_file_offset),
        Test::new("truncate_refused_under_image", truncate_refused_under_image),
        Test::new("readahead_window", readahead_window),
    ]);
}
