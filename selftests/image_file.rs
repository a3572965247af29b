// SPDX-License-Identifier: GPL-2.0

//! image_file: nobody can write an image's file while the image lives.
//!
//! An image maps its file's own page-cache pages into its clones' stage
//! 2, so a write to the file would change memory that guests already read
//! (and not the VMM's copy of it). vms therefore denies writes to the
//! file's inode while an image uses it, as the kernel does for a running
//! executable or an active swap file. One subtest per rule:
//!
//! - with an image of it, the file cannot be opened for writing
//!   (`O_WRONLY`, `O_RDWR`, `O_TRUNC`, a reopen of the image's own fd
//!   through `/proc/self/fd`) or truncated by path: `ETXTBSY`; readers
//!   still read it;
//! - `VMS_IMAGE_CREATE` refuses a file that anyone holds open for writing
//!   (another fd, the fd passed itself when it is `O_RDWR`, a shared
//!   writable mapping whose fd was closed): `ETXTBSY`, after the errnos of
//!   other bad input; it works once every writer is gone;
//! - the denial is counted per inode: two images of one file, and a
//!   create that fails later (`EEXIST`), give back exactly what they took,
//!   so the file is writable again after the last image is deleted;
//! - nothing a writer tries changes what a clone reads: after each
//!   attempt (open for writing and write, truncate, `O_TRUNC`, replacing
//!   the file by `rename(2)`, which succeeds but makes a new file), the
//!   guest and the VMM read the image's bytes, in the pages they read
//!   before and in the pages they had not read.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::Arc;

use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::host::Mapping;
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::kvm::{self, Vm};
use vms_selftests::vms::{
    __image_create, __image_delete, image_create, image_create_arg, pattern_page,
    require_vms_and_kvm, unique_name, vm_with_clone, vms_open, CloneMap, ImageFile, CLONE_GPA,
    PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq, test_assert_errno};
use vms_uapi::{VmsImageCreate, VmsImageInfo};

/// 64 KiB image.
const PAGES: u64 = 16;
const SIZE: u64 = PAGES * PAGE_SIZE;

/// Opens `path` with `flags` (`O_WRONLY`, `O_RDWR`, plus any others),
/// returning the raw result.
fn __open(path: &Path, flags: i32) -> io::Result<File> {
    let acc = flags & libc::O_ACCMODE;
    OpenOptions::new()
        .read(acc == libc::O_RDWR)
        .write(true)
        .custom_flags(flags & !libc::O_ACCMODE)
        .open(path)
}

/// With an image of it, the file cannot be opened for writing or
/// truncated; it can still be read.
fn writers_refused() {
    let dev = vms_open();
    let name = unique_name("image_file");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), SIZE, 0);
    let path = file.path();

    test_assert_errno!(file.__writer(), libc::ETXTBSY, "open O_WRONLY");
    test_assert_errno!(__open(path, libc::O_RDWR), libc::ETXTBSY, "open O_RDWR");
    test_assert_errno!(
        __open(path, libc::O_WRONLY | libc::O_TRUNC),
        libc::ETXTBSY,
        "open O_WRONLY | O_TRUNC"
    );
    test_assert_errno!(
        __open(path, libc::O_WRONLY | libc::O_APPEND),
        libc::ETXTBSY,
        "open O_WRONLY | O_APPEND"
    );
    let own = format!("/proc/self/fd/{}", file.file().as_raw_fd());
    test_assert_errno!(
        __open(Path::new(&own), libc::O_RDWR),
        libc::ETXTBSY,
        "reopen the image's fd O_RDWR"
    );
    test_assert_errno!(file.__truncate(0), libc::ETXTBSY, "truncate to 0");
    test_assert_errno!(
        file.__truncate(SIZE + PAGE_SIZE),
        libc::ETXTBSY,
        "truncate up"
    );
    // A new reader, and the file as it was.
    let reader = check(File::open(path), "open the image file read-only");
    let mut page = vec![0u8; PAGE_SIZE as usize];
    check(
        reader.read_exact_at(&mut page, 3 * PAGE_SIZE),
        "read the image file",
    );
    test_assert!(page == pattern_page(3), "page 3 read through a new reader");
    test_assert_eq!(file.first_difference(PAGES, 0), None, "the file changed");
    image.delete();
}

/// `VMS_IMAGE_CREATE` with `arg` must fail with `errno`; an image it
/// created by mistake is deleted first.
#[track_caller]
fn create_fails(dev: &File, arg: &VmsImageCreate, errno: i32, what: &str) {
    let r = __image_create(dev, arg);
    if r.is_ok() {
        let _ = __image_delete(
            dev,
            &VmsImageInfo {
                name: arg.name,
                ..VmsImageInfo::zeroed()
            },
        );
    }
    test_assert_errno!(r, errno, "{what}");
}

/// `VMS_IMAGE_CREATE` refuses a file open for writing, in any way.
fn create_refused_while_open_for_writing() {
    let dev = vms_open();
    let name = unique_name("image_file");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let ro = file.file().as_raw_fd();

    // Another fd holds it open for writing.
    let w = file.writer();
    let arg = image_create_arg(&name, ro, SIZE, 0);
    create_fails(
        &dev,
        &arg,
        libc::ETXTBSY,
        "a read-only fd while a writer is open",
    );
    // Other bad input keeps its errno.
    let bad_size = VmsImageCreate {
        size: SIZE + PAGE_SIZE,
        ..arg
    };
    create_fails(&dev, &bad_size, libc::EINVAL, "too large, a writer open");
    let wo = image_create_arg(&name, w.as_raw_fd(), SIZE, 0);
    create_fails(&dev, &wo, libc::EACCES, "the write-only fd");
    drop(w);

    // The fd passed is open for reading and writing.
    let rw = check(
        __open(file.path(), libc::O_RDWR),
        "open the image file O_RDWR",
    );
    let arg_rw = image_create_arg(&name, rw.as_raw_fd(), SIZE, 0);
    create_fails(&dev, &arg_rw, libc::ETXTBSY, "an O_RDWR fd");

    // A shared writable mapping keeps write access after its fd closes.
    let m = check(Mapping::file(&rw, SIZE, true), "mmap the image file shared");
    drop(rw);
    create_fails(&dev, &arg, libc::ETXTBSY, "a shared writable mapping");
    drop(m);

    // No writer left: it works.
    let image = image_create(&dev, &name, file.file(), SIZE, 0);
    test_assert_eq!(image.info().size, SIZE);
    image.delete();
}

/// The denial is counted: two images of one file and a failed create
/// give back what they took.
fn writable_after_delete() {
    let dev = vms_open();
    let name = unique_name("image_file");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let a = image_create(&dev, &name, file.file(), SIZE, 0);
    // A second image of the same file, through a second read-only open.
    let other = check(File::open(file.path()), "open the image file read-only");
    let b = image_create(&dev, &unique_name("image_file"), &other, SIZE, 0);
    // Denied, then refused for its name: the denial is given back.
    let taken = image_create_arg(&name, other.as_raw_fd(), SIZE, 0);
    create_fails(&dev, &taken, libc::EEXIST, "a taken name");
    test_assert_errno!(file.__writer(), libc::ETXTBSY, "two images");

    a.delete();
    test_assert_errno!(file.__writer(), libc::ETXTBSY, "one image left");
    test_assert_errno!(file.__truncate(0), libc::ETXTBSY, "one image left");
    b.delete();

    let w = check(
        file.__writer(),
        "open for writing after the last image went",
    );
    check(w.write_all_at(&[0x77; 16], 0), "write the file");
    check(
        file.__truncate(PAGE_SIZE),
        "truncate after the last image went",
    );
    drop(w);
    test_assert_eq!(check(file.file().metadata(), "stat").len(), PAGE_SIZE);
}

/// Runs `code` on vCPU 0 and asserts that it completed; `when` names the
/// moment.
#[track_caller]
fn run_ok(vm: &mut Vm, code: &[u8], when: &str) {
    guest::load(vm, 0, code);
    let outcome = check(guest::__run(vm.vcpu(0)), "KVM_RUN");
    test_assert_eq!(
        outcome,
        Outcome::Done,
        "{when}: the guest read {}",
        guest::describe(&outcome)
    );
}

/// The guest and the VMM read pages `0..pages` of the image.
#[track_caller]
fn reads_image(vm: &mut Vm, map: &CloneMap, pages: u64, when: &str) {
    run_ok(
        vm,
        &guest::read_check(&Walk::pattern(CLONE_GPA, 0, pages)),
        when,
    );
    for p in 0..pages {
        test_assert!(
            map.read_page(p) == pattern_page(p),
            "{when}: the VMM's page {p}"
        );
    }
}

/// Whatever a writer tries, a clone reads the image's bytes.
fn clone_reads_unchanged() {
    let dev = vms_open();
    let name = unique_name("image_file");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), SIZE, 0);
    let clone = image.clone_create();
    let map: Arc<CloneMap> = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    let path = file.path().to_path_buf();
    let other = vec![0x77u8; SIZE as usize];

    // The first half, through stage 2 and through the VMM's mapping.
    reads_image(&mut vm, &map, PAGES / 2, "before any write");
    let is = image.info();
    test_assert_eq!(
        is.file_pages,
        PAGES / 2,
        "stage 2 maps the file's pages: {is:?}"
    );

    // Open for writing and overwrite the whole file.
    let r = __open(&path, libc::O_RDWR);
    ksft::ksft_print_msg(&format!("open O_RDWR: {:?}", r.as_ref().map(|_| ())));
    if let Ok(w) = r {
        check(w.write_all_at(&other, 0), "write the image file");
        check(w.sync_all(), "fsync the image file");
    }
    reads_image(&mut vm, &map, PAGES / 2, "after open(O_RDWR) and write");

    // Truncate by path, then grow it back (holes read as zero).
    let r = file.__truncate(0);
    ksft::ksft_print_msg(&format!("truncate: {r:?}"));
    if r.is_ok() {
        check(file.__truncate(SIZE), "truncate up");
    }
    reads_image(&mut vm, &map, PAGES / 2, "after truncate");

    // O_TRUNC and write.
    let r = __open(&path, libc::O_WRONLY | libc::O_TRUNC);
    ksft::ksft_print_msg(&format!(
        "open O_WRONLY | O_TRUNC: {:?}",
        r.as_ref().map(|_| ())
    ));
    if let Ok(w) = r {
        check(w.write_all_at(&other, 0), "write the image file");
    }
    reads_image(&mut vm, &map, PAGES / 2, "after open(O_TRUNC) and write");

    // Replace the file: a new file under the same name, which can be
    // written. The image keeps reading the one it was made of.
    let new = path.with_extension("new");
    check(fs::write(&new, &other), "write the new file");
    check(
        fs::rename(&new, &path),
        "rename the new file over the image file",
    );
    let w = check(file.__writer(), "open the new file for writing");
    check(w.write_all_at(&[0x66; 64], 0), "write the new file");
    drop(w);

    // Every page now, those read before and those not yet read, and a
    // new clone.
    reads_image(&mut vm, &map, PAGES, "after every write");
    let b = image.clone_create();
    let b_map = b.map();
    let mut b_vm = vm_with_clone(&kvm, &b, &b_map, 1);
    reads_image(&mut b_vm, &b_map, PAGES, "a new clone, after every write");
    let is = image.info();
    ksft::ksft_print_msg(&format!("image: {is:?}"));
    test_assert_eq!(is.read_errors, 0, "{is:?}");
    test_assert_eq!(is.streamed, PAGES, "{is:?}");
    test_assert_eq!(clone.stats().private_pages, 0);

    drop((vm, map, clone, b_vm, b_map, b));
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("writers_refused", writers_refused),
        Test::new(
            "create_refused_while_open_for_writing",
            create_refused_while_open_for_writing,
        ),
        Test::new("writable_after_delete", writable_after_delete),
        Test::new("clone_reads_unchanged", clone_reads_unchanged),
    ]);
}
