// SPDX-License-Identifier: GPL-2.0

//! named_clone: `VMS_CLONE_NAME` gives a clone a device,
//! `/dev/vms-clone/NAME`, whose files are files of the clone (issue 17:
//! a path a VMM such as QEMU can take as guest memory).
//!
//! - `a_name_keeps_the_clone`: a clone with a private page is named and
//!   its own file descriptor and mapping closed; opened by its name it is
//!   the same clone (its counters, its private page, the image's other
//!   pages), two mappings of named files see each other's writes, and a
//!   reset through a named file unmaps every mapping of the clone (the
//!   named files share the clone's page-cache mapping), so all read the
//!   image again.
//! - `unname_while_mapped`: after `VMS_CLONE_UNNAME` the device is gone
//!   (open fails with `ENOENT`) but an open file and a mapping keep the
//!   clone, and the image cannot be deleted until they are gone.
//! - `a_named_file_is_a_clone_fd`: a named file works where a clone file
//!   descriptor is expected (`VMS_IMAGE_SNAPSHOT`).
//! - `bad_names`: every errno `vms.h` gives: `EEXIST`, `EBUSY`, `EINVAL`
//!   (bad names, `.` first, flags, reserved, a file that is not a clone,
//!   `clone_fd` not -1 to unname), `EBADF`, `ENOENT`, `EPERM` without
//!   `CAP_SYS_ADMIN`, and `EACCES` for a read-only open; and the next name
//!   does not take the minor just freed.
//!
//! Skips if `/dev/vms` is missing.

use std::os::fd::AsRawFd;
use std::path::Path;

use vms_selftests::host::{become_user, fork_run, ChildEnd};
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::vms::{
    __clone_name, __clone_unname, __image_delete, clone_name_arg, image_create, image_info_arg,
    image_snapshot, pattern_page, pattern_word, unique_name, vms_open, ImageFile, VmsClone,
    NAMED_CLONE_DIR, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq, test_assert_errno};

/// 64 KiB images.
const PAGES: u64 = 16;
const SIZE: u64 = PAGES * PAGE_SIZE;
/// A value unlike any pattern word (0x56xx_xxxx).
const WRITTEN: u32 = 0x0c00_0003;
const NOBODY: u32 = 65534;

/// A clone name for this test: image names' rules, at most 31 bytes.
fn clone_name(tag: &str) -> String {
    format!("nc-{tag}-{}", std::process::id())
}

fn node(name: &str) -> std::path::PathBuf {
    Path::new(NAMED_CLONE_DIR).join(name)
}

#[track_caller]
fn name(dev: &std::fs::File, name: &str, clone: &VmsClone) {
    check(__clone_name(dev, &clone_name_arg(name, clone.fd().as_raw_fd())), "VMS_CLONE_NAME");
}

#[track_caller]
fn unname(dev: &std::fs::File, name: &str) {
    check(__clone_unname(dev, &clone_name_arg(name, -1)), "VMS_CLONE_UNNAME");
}

/// The module's reference count (`/sys/module/vms/refcnt`), if known.
fn module_refs() -> Option<u64> {
    std::fs::read_to_string("/sys/module/vms/refcnt").ok()?.trim().parse().ok()
}

fn a_name_keeps_the_clone() {
    let dev = vms_open();
    let refs = module_refs();
    let iname = unique_name("named_clone");
    let file = ImageFile::with_pattern(&iname, PAGES, 0);
    let image = image_create(&dev, &iname, file.file(), SIZE, 0);
    let n = clone_name("keep");
    {
        let clone = image.clone_create();
        let map = clone.map();
        map.write_u32(3 * PAGE_SIZE, WRITTEN);
        name(&dev, &n, &clone);
        test_assert!(node(&n).exists(), "{} exists once named", node(&n).display());
        map.unmap();
        drop(clone);
        // A named clone may serve a VM with no file open: the name holds
        // the module (rmmod: EBUSY).
        if let Some(r) = refs {
            test_assert_eq!(module_refs(), Some(r + 1), "the name holds a module reference");
        }
    }
    let a = check(VmsClone::__open_named(&n, SIZE), "open the named clone");
    let s = a.stats();
    test_assert_eq!(s.private_pages, 1, "the named clone kept its private page");
    test_assert_eq!(s.size, SIZE);
    let ma = a.map();
    test_assert_eq!(ma.read_u32(3 * PAGE_SIZE), WRITTEN, "page 3 as the clone wrote it");
    test_assert!(ma.read_page(5) == pattern_page(5), "page 5 is the image's");
    // Two named files, two mappings: one clone.
    let b = check(VmsClone::__open_named(&n, SIZE), "open the named clone again");
    let mb = b.map();
    ma.write_u32(7 * PAGE_SIZE, WRITTEN + 4);
    test_assert_eq!(mb.read_u32(7 * PAGE_SIZE), WRITTEN + 4, "a write through one named mapping shows in the other");
    test_assert_eq!(b.stats().private_pages, 2);
    // A reset through a named file: no mapping keeps a dropped page.
    b.reset();
    for (m, which) in [(&ma, "first"), (&mb, "second")] {
        for page in [3, 7] {
            test_assert_eq!(
                m.read_u32(page * PAGE_SIZE),
                pattern_word(page),
                "page {page} through the {which} mapping after the reset"
            );
        }
    }
    test_assert_eq!(a.stats().private_pages, 0);
    drop((ma, mb, a, b));
    unname(&dev, &n);
    test_assert!(!node(&n).exists(), "{} is gone once unnamed", node(&n).display());
    test_assert_eq!(module_refs(), refs, "the module reference goes with the name");
    image.delete();
}

fn unname_while_mapped() {
    let dev = vms_open();
    let iname = unique_name("named_clone");
    let file = ImageFile::with_pattern(&iname, PAGES, 0);
    let image = image_create(&dev, &iname, file.file(), SIZE, 0);
    let n = clone_name("unmap");
    let clone = image.clone_create();
    name(&dev, &n, &clone);
    drop(clone);
    let named = check(VmsClone::__open_named(&n, SIZE), "open the named clone");
    let map = named.map();
    unname(&dev, &n);
    test_assert_errno!(VmsClone::__open_named(&n, SIZE), libc::ENOENT, "open after VMS_CLONE_UNNAME");
    // The open file and its mapping keep the clone.
    map.write_u32(2 * PAGE_SIZE, WRITTEN);
    test_assert_eq!(map.read_u32(2 * PAGE_SIZE), WRITTEN);
    test_assert_eq!(named.stats().private_pages, 1);
    drop(named);
    test_assert_errno!(
        __image_delete(&dev, &image_info_arg(&iname)),
        libc::EBUSY,
        "the image while a mapping of its unnamed clone remains"
    );
    test_assert_eq!(map.read_u32(2 * PAGE_SIZE), WRITTEN, "the mapping alone keeps the clone");
    drop(map);
    image.delete();
}

fn a_named_file_is_a_clone_fd() {
    let dev = vms_open();
    let iname = unique_name("named_clone");
    let file = ImageFile::with_pattern(&iname, PAGES, 0);
    let image = image_create(&dev, &iname, file.file(), SIZE, 0);
    let n = clone_name("snap");
    let clone = image.clone_create();
    name(&dev, &n, &clone);
    drop(clone);
    let named = check(VmsClone::__open_named(&n, SIZE), "open the named clone");
    let map = named.map();
    map.write_u32(0, WRITTEN);
    let live = unique_name("named_live");
    // (VMS_IMAGE_SNAPSHOT on the named file's descriptor)
    let child = image_snapshot(&dev, &live, &named);
    let other = child.clone_create();
    let omap = other.map();
    test_assert_eq!(omap.read_u32(0), WRITTEN, "a clone of the live image reads what the named clone wrote");
    drop((omap, other, map, named));
    unname(&dev, &n);
    child.delete();
    image.delete();
}

fn bad_names() {
    let dev = vms_open();
    let iname = unique_name("named_clone");
    let file = ImageFile::with_pattern(&iname, PAGES, 0);
    let image = image_create(&dev, &iname, file.file(), SIZE, 0);
    let n = clone_name("bad");
    let a = image.clone_create();
    let b = image.clone_create();
    let fd = a.fd().as_raw_fd();
    name(&dev, &n, &a);
    test_assert_errno!(__clone_name(&dev, &clone_name_arg(&n, b.fd().as_raw_fd())), libc::EEXIST, "a name in use");
    test_assert_errno!(__clone_name(&dev, &clone_name_arg(&clone_name("two"), fd)), libc::EBUSY, "a second name");
    for bad in [".x", "..", "."] {
        test_assert_errno!(__clone_name(&dev, &clone_name_arg(bad, b.fd().as_raw_fd())), libc::EINVAL, "name {bad:?}");
    }
    let mut arg = clone_name_arg(&clone_name("b"), b.fd().as_raw_fd());
    arg.name = [0; vms_uapi::VMS_NAME_LEN];
    test_assert_errno!(__clone_name(&dev, &arg), libc::EINVAL, "an empty name");
    arg = clone_name_arg(&clone_name("b"), b.fd().as_raw_fd());
    arg.name = [b'a'; vms_uapi::VMS_NAME_LEN];
    test_assert_errno!(__clone_name(&dev, &arg), libc::EINVAL, "a name without its NUL");
    arg = clone_name_arg("a/b", b.fd().as_raw_fd());
    test_assert_errno!(__clone_name(&dev, &arg), libc::EINVAL, "a name with a slash");
    arg = clone_name_arg(&clone_name("b"), b.fd().as_raw_fd());
    arg.flags = 1;
    test_assert_errno!(__clone_name(&dev, &arg), libc::EINVAL, "flags");
    arg.flags = 0;
    arg.reserved[3] = 1;
    test_assert_errno!(__clone_name(&dev, &arg), libc::EINVAL, "reserved");
    arg.reserved[3] = 0;
    arg.clone_fd = dev.as_raw_fd();
    test_assert_errno!(__clone_name(&dev, &arg), libc::EINVAL, "/dev/vms is not a clone");
    arg.clone_fd = -1;
    test_assert_errno!(__clone_name(&dev, &arg), libc::EBADF, "clone_fd -1");
    test_assert_errno!(__clone_unname(&dev, &clone_name_arg(&clone_name("none"), -1)), libc::ENOENT, "no such name");
    test_assert_errno!(__clone_unname(&dev, &clone_name_arg(&n, fd)), libc::EINVAL, "unname with a clone_fd");
    let status = |r: std::io::Result<()>| match r {
        Ok(()) => 0,
        Err(e) => e.raw_os_error().unwrap_or(254),
    };
    let arg = clone_name_arg(&clone_name("nobody"), b.fd().as_raw_fd());
    let end = fork_run(|| if become_user(NOBODY) != 0 { 255 } else { status(__clone_name(&dev, &arg)) });
    test_assert_eq!(end, ChildEnd::Exited(libc::EPERM), "VMS_CLONE_NAME as nobody");
    let arg = clone_name_arg(&n, -1);
    let end = fork_run(|| if become_user(NOBODY) != 0 { 255 } else { status(__clone_unname(&dev, &arg)) });
    test_assert_eq!(end, ChildEnd::Exited(libc::EPERM), "VMS_CLONE_UNNAME as nobody");
    test_assert!(node(&n).exists(), "the name survives the refused calls");
    // A read-only file of a clone could still reset it: refused.
    test_assert_errno!(std::fs::File::open(node(&n)), libc::EACCES, "a read-only open");
    // The next name takes another minor, not the one just freed: a node
    // that outlived its name must not open the next clone.
    use std::os::unix::fs::MetadataExt;
    let first = std::fs::metadata(node(&n)).map(|m| m.rdev()).unwrap_or(0);
    unname(&dev, &n);
    let n2 = clone_name("next");
    name(&dev, &n2, &a);
    let second = std::fs::metadata(node(&n2)).map(|m| m.rdev()).unwrap_or(0);
    test_assert!(first != 0 && second != 0 && first != second, "minors {first:#x} then {second:#x}");
    unname(&dev, &n2);
    drop((a, b));
    image.delete();
}

fn main() {
    ksft::init();
    if !Path::new(vms_selftests::vms::VMS_DEV).exists() {
        ksft::skip("/dev/vms is missing (vms.ko not loaded)");
    }
    ksft::run(&[
        Test::new("a_name_keeps_the_clone", a_name_keeps_the_clone),
        Test::new("unname_while_mapped", unname_while_mapped),
        Test::new("a_named_file_is_a_clone_fd", a_named_file_is_a_clone_fd),
        Test::new("bad_names", bad_names),
    ]);
}
