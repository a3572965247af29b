// SPDX-License-Identifier: GPL-2.0

//! bad_input: every ioctl of `/dev/vms` and of a clone rejects bad input
//! with the errno `uapi/vms.h` gives for it.
//!
//! One subtest per case: bad file descriptors, files, sizes, offsets,
//! names, flags and reserved fields of `VMS_IMAGE_CREATE`; unknown names
//! and busy images for `VMS_IMAGE_INFO`, `VMS_IMAGE_DELETE`,
//! `VMS_IMAGE_LIST` and `VMS_CLONE_CREATE`; bad VMs, ranges, slots and a
//! second VM or clone for `VMS_CLONE_ATTACH`; ioctls of the wrong file;
//! an unprivileged caller; a `KVM_MEM_PAGE_PROVIDER` memslot that no
//! clone serves, which makes the guest's access fail with `EFAULT`; and
//! the memslot flag combined with `KVM_MEM_READONLY`, or set or cleared on
//! a live memslot, which KVM refuses with `EINVAL`.
//!
//! Every valid-looking argument is otherwise valid, so that the case at
//! hand is the only thing wrong with it; an image created by mistake is
//! deleted before the subtest fails.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;

use vms_selftests::guest::{self, Walk};
use vms_selftests::host::{become_user, fork_run, last_errno, ChildEnd};
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::kvm::{self, vcpu_run_memory_fault, vm_create_pm32, Vm};
use vms_selftests::vms::{
    __image_snapshot, image_snapshot_arg, name_of,
    __clone_create, __image_create, __image_delete, __image_info, __image_list, __vms_ioctl,
    clone_attach_arg, clone_create_arg, image_create, image_create_arg, image_info_arg,
    require_vms_and_kvm, unique_name, vm_attach_clone, vms_open, Image, ImageFile, VmsClone,
    CLONE_GPA, CLONE_SLOT, PAGE_SIZE, VMS_DEV,
};
use vms_selftests::{test_assert, test_assert_eq, test_assert_errno};
use vms_uapi::{
    name_bytes, VmsCloneAttach, VmsCloneStats, VmsImageCreate, VmsImageInfo, VmsImageList,
    VmsVersion, _IO, KVM_MEM_PAGE_PROVIDER, VMS_CLONE_ATTACH, VMS_CLONE_STATS, VMS_GET_VERSION,
    VMS_IMAGE_CREATE, VMS_IOCTL_TYPE, VMS_NAME_LEN,
};

/// The images: 64 KiB.
const PAGES: u64 = 16;
const SIZE: u64 = PAGES * PAGE_SIZE;
/// `nobody`.
const NOBODY: u32 = 65534;
/// The last page-aligned u64: an offset or size whose sum with another
/// one overflows.
const TOP: u64 = !(PAGE_SIZE - 1);

/// `/dev/vms`, a 16-page pattern file and a fresh image name, from which
/// each subtest builds its one bad argument.
struct Ctx {
    dev: File,
    file: ImageFile,
    name: String,
}

fn ctx() -> Ctx {
    let dev = vms_open();
    let name = unique_name("bad_input");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    Ctx { dev, file, name }
}

impl Ctx {
    /// A valid `VMS_IMAGE_CREATE` argument: the whole file, a fresh name.
    fn create_arg(&self) -> VmsImageCreate {
        image_create_arg(&self.name, self.file.file().as_raw_fd(), SIZE, 0)
    }

    /// Creates the image of [`Ctx::create_arg`].
    #[track_caller]
    fn image(&self) -> Image {
        image_create(&self.dev, &self.name, self.file.file(), SIZE, 0)
    }

    /// `VMS_IMAGE_CREATE` with `arg` must fail with `errno`; an image it
    /// created by mistake is deleted first.
    #[track_caller]
    fn create_fails(&self, arg: &VmsImageCreate, errno: i32) {
        let r = __image_create(&self.dev, arg);
        if r.is_ok() {
            self.delete_by_name(&arg.name);
        }
        test_assert_errno!(r, errno);
    }

    /// Deletes the image named by the name field `name`, if it has a
    /// NUL; ignores errors (cleanup).
    fn delete_by_name(&self, name: &[u8; VMS_NAME_LEN]) {
        let arg = VmsImageInfo {
            name: *name,
            ..VmsImageInfo::zeroed()
        };
        if name_bytes(name).is_some() {
            let _ = __image_delete(&self.dev, &arg);
        }
    }
}

// VMS_IMAGE_CREATE

/// An `fd` that is not open: `EBADF`.
fn create_bad_fd_ebadf() {
    let c = ctx();
    for fd in [-1, 1_000_000] {
        let arg = VmsImageCreate {
            fd,
            ..c.create_arg()
        };
        c.create_fails(&arg, libc::EBADF);
    }
}

/// A directory is not a regular file: `EINVAL`.
fn create_directory_einval() {
    let c = ctx();
    let dir = check(
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY)
            .open("/tmp"),
        "open /tmp",
    );
    let arg = VmsImageCreate {
        fd: dir.as_raw_fd(),
        ..c.create_arg()
    };
    c.create_fails(&arg, libc::EINVAL);
}

/// A file open for writing only: `EACCES`.
fn create_write_only_eacces() {
    let c = ctx();
    let wo = check(
        OpenOptions::new().write(true).open(c.file.path()),
        "open the image file write-only",
    );
    let arg = VmsImageCreate {
        fd: wo.as_raw_fd(),
        ..c.create_arg()
    };
    c.create_fails(&arg, libc::EACCES);
}

/// A size of 0 or not a multiple of 4096: `EINVAL`.
fn create_bad_size_einval() {
    let c = ctx();
    for size in [0, 1, 2048, SIZE - 1] {
        let arg = VmsImageCreate {
            size,
            ..c.create_arg()
        };
        c.create_fails(&arg, libc::EINVAL);
    }
}

/// A file offset that is not a multiple of 4096: `EINVAL` (the file is
/// long enough for it).
fn create_unaligned_offset_einval() {
    let c = ctx();
    for file_offset in [1, 2048, PAGE_SIZE - 1] {
        let arg = VmsImageCreate {
            size: SIZE - PAGE_SIZE,
            file_offset,
            ..c.create_arg()
        };
        c.create_fails(&arg, libc::EINVAL);
    }
}

/// A file shorter than `file_offset + size`, also when the sum
/// overflows: `EINVAL`.
fn create_file_too_short_einval() {
    let c = ctx();
    for (size, file_offset) in [
        (SIZE + PAGE_SIZE, 0),
        (SIZE, PAGE_SIZE),
        (PAGE_SIZE, SIZE),
        (PAGE_SIZE, TOP),
        (TOP, PAGE_SIZE),
    ] {
        let arg = VmsImageCreate {
            size,
            file_offset,
            ..c.create_arg()
        };
        c.create_fails(&arg, libc::EINVAL);
    }
}

/// Names that are empty, contain '/' or a space, or fill the field
/// without a NUL: `EINVAL`.
fn create_bad_name_einval() {
    let c = ctx();
    let mut names: Vec<[u8; VMS_NAME_LEN]> = Vec::new();
    for bad in [&b""[..], b"a/b", b"/", b"a b"] {
        let mut n = [0; VMS_NAME_LEN];
        n[..bad.len()].copy_from_slice(bad);
        names.push(n);
    }
    names.push([b'a'; VMS_NAME_LEN]);
    for name in names {
        let arg = VmsImageCreate {
            name,
            ..c.create_arg()
        };
        c.create_fails(&arg, libc::EINVAL);
    }
}

/// A name in use: `EEXIST`, also from another file.
fn create_name_taken_eexist() {
    let c = ctx();
    let image = c.image();
    c.create_fails(&c.create_arg(), libc::EEXIST);
    let other = ImageFile::with_pattern(&unique_name("bad_input"), PAGES, 0);
    let arg = VmsImageCreate {
        fd: other.file().as_raw_fd(),
        ..c.create_arg()
    };
    c.create_fails(&arg, libc::EEXIST);
    image.delete();
}

/// A non-zero `flags` or `reserved[i]`: `EINVAL`.
fn create_flags_reserved_einval() {
    let c = ctx();
    for flags in [1, 1 << 31] {
        let arg = VmsImageCreate {
            flags,
            ..c.create_arg()
        };
        c.create_fails(&arg, libc::EINVAL);
    }
    for i in 0..4 {
        let mut arg = c.create_arg();
        arg.reserved[i] = 1;
        c.create_fails(&arg, libc::EINVAL);
    }
}

// VMS_IMAGE_INFO, VMS_IMAGE_DELETE, VMS_IMAGE_LIST

/// Info of a name no image has: `ENOENT`.
fn info_unknown_enoent() {
    let c = ctx();
    let mut arg = image_info_arg(&c.name);
    test_assert_errno!(__image_info(&c.dev, &mut arg), libc::ENOENT);
}

/// Info with a non-zero `flags` or `pad`: `EINVAL`.
fn info_flags_pad_einval() {
    let c = ctx();
    let image = c.image();
    let mut arg = VmsImageInfo {
        flags: 1,
        ..image_info_arg(&c.name)
    };
    test_assert_errno!(__image_info(&c.dev, &mut arg), libc::EINVAL);
    let mut arg = VmsImageInfo {
        pad: 1,
        ..image_info_arg(&c.name)
    };
    test_assert_errno!(__image_info(&c.dev, &mut arg), libc::EINVAL);
    image.delete();
}

/// Delete of a name no image has: `ENOENT`.
fn delete_unknown_enoent() {
    let c = ctx();
    test_assert_errno!(
        __image_delete(&c.dev, &image_info_arg(&c.name)),
        libc::ENOENT
    );
}

/// Delete with a non-zero `flags` or `pad`: `EINVAL`, and the image
/// stays.
fn delete_flags_pad_einval() {
    let c = ctx();
    let image = c.image();
    for arg in [
        VmsImageInfo {
            flags: 1,
            ..image_info_arg(&c.name)
        },
        VmsImageInfo {
            pad: 1,
            ..image_info_arg(&c.name)
        },
    ] {
        test_assert_errno!(__image_delete(&c.dev, &arg), libc::EINVAL);
    }
    test_assert_eq!(image.info().size, SIZE, "the image is still there");
    image.delete();
}

/// Delete while a clone exists, through its fd or only its mapping:
/// `EBUSY`; it works once the clone is gone.
fn delete_busy_ebusy() {
    let c = ctx();
    let image = c.image();
    let clone = image.clone_create();
    test_assert_errno!(
        __image_delete(&c.dev, &image_info_arg(&c.name)),
        libc::EBUSY
    );
    let map = clone.map();
    drop(clone);
    test_assert_errno!(
        __image_delete(&c.dev, &image_info_arg(&c.name)),
        libc::EBUSY,
    );
    drop(map);
    image.delete();
}

/// List finds the image by index.
fn list_finds_image() {
    let c = ctx();
    let image = c.image();
    let mut found = false;
    for index in 0.. {
        let mut arg = VmsImageList {
            index,
            ..VmsImageList::zeroed()
        };
        match __image_list(&c.dev, &mut arg) {
            Ok(()) => found |= name_bytes(&arg.name) == Some(c.name.as_bytes()),
            Err(e) => {
                test_assert_eq!(e.raw_os_error(), Some(libc::ENOENT), "index {index}");
                break;
            }
        }
    }
    test_assert!(found, "{} not listed", c.name);
    image.delete();
}

/// List past the last image: `ENOENT`.
fn list_past_end_enoent() {
    let c = ctx();
    let mut arg = VmsImageList {
        index: u32::MAX,
        ..VmsImageList::zeroed()
    };
    test_assert_errno!(__image_list(&c.dev, &mut arg), libc::ENOENT);
}

/// List with a non-zero `flags` or `reserved[i]`: `EINVAL`.
fn list_flags_reserved_einval() {
    let c = ctx();
    let image = c.image();
    let mut args = vec![VmsImageList {
        flags: 1,
        ..VmsImageList::zeroed()
    }];
    for i in 0..2 {
        let mut a = VmsImageList::zeroed();
        a.reserved[i] = 1;
        args.push(a);
    }
    for mut arg in args {
        test_assert_errno!(__image_list(&c.dev, &mut arg), libc::EINVAL);
    }
    image.delete();
}

// VMS_CLONE_CREATE

/// A clone of a name no image has: `ENOENT`.
fn clone_unknown_enoent() {
    let c = ctx();
    test_assert_errno!(
        __clone_create(&c.dev, &clone_create_arg(&c.name)),
        libc::ENOENT
    );
}

/// A clone with a non-zero `flags`, `pad` or `reserved[i]`: `EINVAL`.
fn clone_flags_pad_reserved_einval() {
    let c = ctx();
    let image = c.image();
    let good = clone_create_arg(&c.name);
    let mut args = vec![];
    let mut a = good;
    a.flags = 1;
    args.push(a);
    let mut a = good;
    a.pad = 1;
    args.push(a);
    for i in 0..4 {
        let mut a = good;
        a.reserved[i] = 1;
        args.push(a);
    }
    for arg in args {
        test_assert_errno!(__clone_create(&c.dev, &arg), libc::EINVAL);
    }
    test_assert_eq!(image.info().clones, 0);
    image.delete();
}

// VMS_IMAGE_SNAPSHOT

/// A snapshot of a file that is not a clone (the image file, /dev/vms):
/// `EINVAL`; of a closed fd: `EBADF`. No image appears.
fn snapshot_not_a_clone() {
    let c = ctx();
    let name = format!("{}.s", c.name);
    for fd in [c.file.file().as_raw_fd(), c.dev.as_raw_fd()] {
        test_assert_errno!(__image_snapshot(&c.dev, &image_snapshot_arg(&name, fd)), libc::EINVAL);
    }
    test_assert_errno!(__image_snapshot(&c.dev, &image_snapshot_arg(&name, 999)), libc::EBADF);
    test_assert_errno!(__image_info(&c.dev, &mut image_info_arg(&name)), libc::ENOENT);
}

/// A snapshot with non-zero `flags` or `reserved[i]`: `EINVAL`; under a
/// taken name: `EEXIST`. The clone keeps its image and pages.
fn snapshot_bad_args() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let good = image_snapshot_arg(&format!("{}.s", c.name), clone.fd().as_raw_fd());
    let mut args = vec![];
    let mut a = good;
    a.flags = 1;
    args.push(a);
    for i in 0..4 {
        let mut a = good;
        a.reserved[i] = 1;
        args.push(a);
    }
    for arg in args {
        test_assert_errno!(__image_snapshot(&c.dev, &arg), libc::EINVAL);
    }
    let taken = image_snapshot_arg(&c.name, clone.fd().as_raw_fd());
    test_assert_errno!(__image_snapshot(&c.dev, &taken), libc::EEXIST);
    test_assert_eq!(name_of(&clone.stats().image), c.name);
    test_assert_eq!(image.info().children, 0);
    drop(clone);
    image.delete();
}

// VMS_CLONE_ATTACH

/// A 16-page image and a clone of it; drop before the image.
fn clone_of(c: &Ctx) -> (Image, VmsClone) {
    let image = c.image();
    let clone = image.clone_create();
    (image, clone)
}

/// A `vm_fd` that is not open: `EBADF`.
fn attach_bad_vm_fd_ebadf() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    for fd in [-1, 1_000_000] {
        test_assert_errno!(
            clone.__attach(&clone_attach_arg(fd, CLONE_SLOT, 0, SIZE)),
            libc::EBADF
        );
    }
    drop(clone);
    image.delete();
}

/// A `vm_fd` that is not a KVM VM (the clone itself, `/dev/vms`,
/// `/dev/kvm`, a vCPU): `EINVAL`.
fn attach_not_a_vm_einval() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    vm.add_vcpu_pm32(0, guest::code_gpa(0));
    let fds = [
        clone.fd().as_raw_fd(),
        c.dev.as_raw_fd(),
        kvm.as_raw_fd(),
        vm.vcpu(0).as_raw_fd(),
    ];
    for fd in fds {
        test_assert_errno!(
            clone.__attach(&clone_attach_arg(fd, CLONE_SLOT, 0, SIZE)),
            libc::EINVAL,
        );
    }
    drop((vm, clone));
    image.delete();
}

/// Unaligned, empty or out-of-range `offset`/`size` (also when the sum
/// overflows): `EINVAL`.
fn attach_bad_range_einval() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let kvm = kvm::open_kvm();
    let vm = vm_create_pm32(&kvm);
    for (offset, size) in [
        (1, PAGE_SIZE),
        (2048, PAGE_SIZE),
        (0, 1),
        (0, PAGE_SIZE + 1),
        (0, 0),
        (PAGE_SIZE, 0),
        (0, SIZE + PAGE_SIZE),
        (PAGE_SIZE, SIZE),
        (SIZE, PAGE_SIZE),
        (TOP, PAGE_SIZE),
        (PAGE_SIZE, TOP),
    ] {
        let arg = clone_attach_arg(vm.fd().as_raw_fd(), CLONE_SLOT, offset, size);
        test_assert_errno!(
            clone.__attach(&arg),
            libc::EINVAL,
            "offset {offset:#x} size {size:#x}"
        );
    }
    drop((vm, clone));
    image.delete();
}

/// A non-zero `flags`, `pad` or `reserved[i]`: `EINVAL`.
fn attach_flags_pad_reserved_einval() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let kvm = kvm::open_kvm();
    let vm = vm_create_pm32(&kvm);
    let good = clone_attach_arg(vm.fd().as_raw_fd(), CLONE_SLOT, 0, SIZE);
    let mut args = vec![
        VmsCloneAttach { flags: 1, ..good },
        VmsCloneAttach { pad: 1, ..good },
    ];
    for i in 0..4 {
        let mut a = good;
        a.reserved[i] = 1;
        args.push(a);
    }
    for arg in args {
        test_assert_errno!(clone.__attach(&arg), libc::EINVAL);
    }
    drop((vm, clone));
    image.delete();
}

/// A slot attached already, with a range that does not overlap the
/// first: `EEXIST`.
fn attach_same_slot_eexist() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    let half = SIZE / 2;
    vm_attach_clone(&mut vm, &clone, &map, CLONE_SLOT, CLONE_GPA, 0, half);
    let arg = clone_attach_arg(vm.fd().as_raw_fd(), CLONE_SLOT, half, half);
    test_assert_errno!(clone.__attach(&arg), libc::EEXIST);
    drop((vm, map, clone));
    image.delete();
}

/// A range that overlaps an attached one, in another slot: `EINVAL`.
fn attach_overlap_einval() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    let half = SIZE / 2;
    vm_attach_clone(&mut vm, &clone, &map, CLONE_SLOT, CLONE_GPA, 0, half);
    for (offset, size) in [
        (0, half),
        (half / 2, half),
        (0, SIZE),
        (half - PAGE_SIZE, 2 * PAGE_SIZE),
    ] {
        let arg = clone_attach_arg(vm.fd().as_raw_fd(), CLONE_SLOT + 1, offset, size);
        test_assert_errno!(
            clone.__attach(&arg),
            libc::EINVAL,
            "offset {offset:#x} size {size:#x}"
        );
    }
    drop((vm, map, clone));
    image.delete();
}

/// A clone attached to one VM, attached to a second: `EBUSY`.
fn attach_second_vm_ebusy() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm1 = vm_create_pm32(&kvm);
    vm_attach_clone(&mut vm1, &clone, &map, CLONE_SLOT, CLONE_GPA, 0, SIZE / 2);
    let vm2 = vm_create_pm32(&kvm);
    let arg = clone_attach_arg(vm2.fd().as_raw_fd(), CLONE_SLOT, SIZE / 2, SIZE / 2);
    test_assert_errno!(clone.__attach(&arg), libc::EBUSY);
    drop((vm2, vm1, map, clone));
    image.delete();
}

/// A second clone attached to a VM that one clone serves: `EBUSY`.
fn attach_second_clone_ebusy() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let clone2 = image.clone_create();
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    vm_attach_clone(&mut vm, &clone, &map, CLONE_SLOT, CLONE_GPA, 0, SIZE);
    let arg = clone_attach_arg(vm.fd().as_raw_fd(), CLONE_SLOT + 1, 0, SIZE);
    test_assert_errno!(clone2.__attach(&arg), libc::EBUSY);
    drop((vm, map, clone, clone2));
    image.delete();
}

// Wrong file, bad pointer

/// An ioctl the clone does not know, or one of `/dev/vms`, on a clone:
/// `ENOTTY`; the clone's ioctls on `/dev/vms`: `ENOTTY`.
fn wrong_file_enotty() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    // SAFETY: a `_IO` number carries no argument; 0 is not dereferenced.
    let r = unsafe { __vms_ioctl(clone.fd(), _IO(VMS_IOCTL_TYPE, 0x7f), 0) };
    test_assert_errno!(r, libc::ENOTTY);

    let create = image_create_arg(
        &unique_name("bad_input"),
        c.file.file().as_raw_fd(),
        SIZE,
        0,
    );
    // SAFETY: a valid VmsImageCreate, which VMS_IMAGE_CREATE only reads.
    let r = unsafe { __vms_ioctl(clone.fd(), VMS_IMAGE_CREATE, &create as *const _ as u64) };
    if r.is_ok() {
        c.delete_by_name(&create.name);
    }
    test_assert_errno!(r, libc::ENOTTY);
    let mut v = VmsVersion::zeroed();
    // SAFETY: a VmsVersion, valid for whatever the kernel writes.
    let r = unsafe { __vms_ioctl(clone.fd(), VMS_GET_VERSION, &mut v as *mut _ as u64) };
    test_assert_errno!(r, libc::ENOTTY);

    let mut s = VmsCloneStats::zeroed();
    // SAFETY: a VmsCloneStats, valid for whatever the kernel writes.
    let r = unsafe { __vms_ioctl(&c.dev, VMS_CLONE_STATS, &mut s as *mut _ as u64) };
    test_assert_errno!(r, libc::ENOTTY);
    let attach = clone_attach_arg(-1, CLONE_SLOT, 0, SIZE);
    // SAFETY: a VmsCloneAttach, which VMS_CLONE_ATTACH only reads.
    let r = unsafe { __vms_ioctl(&c.dev, VMS_CLONE_ATTACH, &attach as *const _ as u64) };
    test_assert_errno!(r, libc::ENOTTY);
    drop(clone);
    image.delete();
}

/// `VMS_CLONE_STATS` to an unmapped address: `EFAULT`.
fn clone_stats_bad_pointer_efault() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    // SAFETY: address 8 is in the never-mapped first page
    // (vm.mmap_min_addr): the kernel's copy fails, nothing of ours is
    // touched.
    let r = unsafe { __vms_ioctl(clone.fd(), VMS_CLONE_STATS, 8) };
    test_assert_errno!(r, libc::EFAULT);
    drop(clone);
    image.delete();
}

// Privilege

/// Runs `f` in a child as `nobody`; its exit status is `f`'s, or 255 if
/// dropping privileges failed.
fn as_nobody(f: impl FnOnce() -> i32) -> ChildEnd {
    fork_run(|| {
        if become_user(NOBODY) != 0 {
            return 255;
        }
        f()
    })
}

/// The errno of a raw ioctl result as an exit status: 0 on success.
fn status_of(r: std::io::Result<i32>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(254),
    }
}

/// Without `CAP_SYS_ADMIN`, through a `/dev/vms` fd opened by root:
/// creating and deleting images is `EPERM`.
fn unprivileged_create_delete_eperm() {
    let c = ctx();
    let image = c.image();
    let new = image_create_arg(
        &unique_name("bad_input"),
        c.file.file().as_raw_fd(),
        SIZE,
        0,
    );
    let end = as_nobody(|| status_of(__image_create(&c.dev, &new).map(|_| 0)));
    if end == ChildEnd::Exited(0) {
        c.delete_by_name(&new.name);
    }
    test_assert_eq!(end, ChildEnd::Exited(libc::EPERM), "VMS_IMAGE_CREATE");

    let del = image_info_arg(&c.name);
    let end = as_nobody(|| status_of(__image_delete(&c.dev, &del).map(|_| 0)));
    test_assert_eq!(end, ChildEnd::Exited(libc::EPERM), "VMS_IMAGE_DELETE");
    test_assert_eq!(image.info().size, SIZE, "the image is still there");
    image.delete();
}

/// Without `CAP_SYS_ADMIN`, through a `/dev/vms` fd opened by root:
/// reading an image's counters and cloning it work (only creating and
/// deleting need the capability).
fn unprivileged_info_clone_allowed() {
    let c = ctx();
    let image = c.image();
    let mut info = image_info_arg(&c.name);
    let end = as_nobody(|| status_of(__image_info(&c.dev, &mut info).map(|_| 0)));
    test_assert_eq!(end, ChildEnd::Exited(0), "VMS_IMAGE_INFO");
    let arg = clone_create_arg(&c.name);
    let end = as_nobody(|| status_of(__clone_create(&c.dev, &arg).map(|_| 0)));
    test_assert_eq!(end, ChildEnd::Exited(0), "VMS_CLONE_CREATE");
    image.delete();
}

/// `/dev/vms` is mode 0600: `nobody` cannot open it (`EACCES`).
fn unprivileged_open_eacces() {
    let path = CString::new(VMS_DEV).expect("no NUL in the path");
    let end = as_nobody(|| {
        // SAFETY: `path` is a NUL-terminated string that outlives the
        // call.
        let fd = unsafe { libc::open(path.as_ptr(), libc::O_RDWR | libc::O_CLOEXEC) };
        if fd >= 0 {
            0
        } else {
            last_errno()
        }
    });
    test_assert_eq!(end, ChildEnd::Exited(libc::EACCES));
}

// KVM

/// A `KVM_MEM_PAGE_PROVIDER` memslot that no clone serves: the guest's
/// access fails (`KVM_RUN`: `EFAULT`, `KVM_EXIT_MEMORY_FAULT`), in a VM
/// without a clone and in a slot next to an attached one.
fn provider_slot_without_clone_efault() {
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    check(
        vm.__add_memory_flags(CLONE_SLOT, KVM_MEM_PAGE_PROVIDER, CLONE_GPA, SIZE as usize),
        "KVM_SET_USER_MEMORY_REGION2 (KVM_MEM_PAGE_PROVIDER)",
    );
    vm.add_vcpu_pm32(0, guest::code_gpa(0));
    let page = 3;
    let gpa = CLONE_GPA + page * PAGE_SIZE;
    guest::load(&mut vm, 0, &guest::read_check(&Walk::zeros(gpa, 1)));
    test_assert_eq!(vcpu_run_memory_fault(vm.vcpu(0)), (gpa, PAGE_SIZE));
    drop(vm);

    // Slot 1 is the clone's, slot 2 has the flag but nobody attached it.
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let map = clone.map();
    let mut vm = vm_create_pm32(&kvm);
    vm_attach_clone(&mut vm, &clone, &map, CLONE_SLOT, CLONE_GPA, 0, SIZE);
    let gpa2 = CLONE_GPA + 0x1000_0000;
    check(
        vm.__add_memory_flags(CLONE_SLOT + 1, KVM_MEM_PAGE_PROVIDER, gpa2, SIZE as usize),
        "KVM_SET_USER_MEMORY_REGION2 (KVM_MEM_PAGE_PROVIDER)",
    );
    vm.add_vcpu_pm32(0, guest::code_gpa(0));
    guest::load(&mut vm, 0, &guest::read_check(&Walk::zeros(gpa2, 1)));
    test_assert_eq!(vcpu_run_memory_fault(vm.vcpu(0)), (gpa2, PAGE_SIZE));
    drop((vm, map, clone));
    image.delete();
}

/// `KVM_SET_USER_MEMORY_REGION2` of memslot `slot` at `gpa` over `size`
/// bytes at `hva` with `flags`, for a memslot that exists already (a
/// flags-only update) or that must be refused: the raw result.
fn __set_region(vm: &Vm, slot: u32, flags: u32, gpa: u64, size: u64, hva: u64) -> Result<(), i32> {
    let region = kvm_bindings::kvm_userspace_memory_region2 {
        slot,
        flags,
        guest_phys_addr: gpa,
        memory_size: size,
        userspace_addr: hva,
        ..Default::default()
    };
    // SAFETY: `hva..hva + size` is the range an existing memslot of `vm`
    // already covers, kept mapped by `vm` (an update changes only the
    // flags), or the update is refused and nothing is installed.
    unsafe { vm.fd().set_user_memory_region2(region) }.map_err(|e| e.errno())
}

/// `KVM_MEM_PAGE_PROVIDER | KVM_MEM_READONLY`: `EINVAL`. A read-only slot
/// maps the provider's page without write access, so a guest write would
/// fault back to the provider for ever.
fn provider_slot_readonly_einval() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let vm = vm_create_pm32(&kvm);
    let flags = KVM_MEM_PAGE_PROVIDER | kvm_bindings::KVM_MEM_READONLY;
    test_assert_eq!(
        __set_region(&vm, CLONE_SLOT, flags, CLONE_GPA, SIZE, map.hva()),
        Err(libc::EINVAL)
    );
    drop((vm, map, clone));
    image.delete();
}

/// `KVM_MEM_PAGE_PROVIDER` cannot be cleared on a served memslot, nor
/// set on a plain one (`EINVAL`): the slot's existing mappings came from
/// the other source. The served slot keeps working, and dirty logging
/// can still be switched on and off on it.
fn provider_flag_change_einval() {
    let c = ctx();
    let (image, clone) = clone_of(&c);
    let map = clone.map();
    let kvm = kvm::open_kvm();
    let mut vm = vm_create_pm32(&kvm);
    vm_attach_clone(&mut vm, &clone, &map, CLONE_SLOT, CLONE_GPA, 0, SIZE);
    vm.add_vcpu_pm32(0, guest::code_gpa(0));
    // Map every page of the slot in stage 2 first.
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)));

    let (gpa, hva) = (CLONE_GPA, map.hva());
    test_assert_eq!(__set_region(&vm, CLONE_SLOT, 0, gpa, SIZE, hva), Err(libc::EINVAL));
    let log = kvm_bindings::KVM_MEM_LOG_DIRTY_PAGES;
    test_assert_eq!(__set_region(&vm, CLONE_SLOT, log, gpa, SIZE, hva), Err(libc::EINVAL));
    check(
        __set_region(&vm, CLONE_SLOT, KVM_MEM_PAGE_PROVIDER | log, gpa, SIZE, hva)
            .map_err(std::io::Error::from_raw_os_error),
        "dirty logging on for a provider slot",
    );
    check(
        __set_region(&vm, CLONE_SLOT, KVM_MEM_PAGE_PROVIDER, gpa, SIZE, hva)
            .map_err(std::io::Error::from_raw_os_error),
        "dirty logging off for a provider slot",
    );
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(CLONE_GPA, 0, PAGES)));

    // A plain slot of anonymous memory, mapped in stage 2, stays plain.
    let gpa2 = CLONE_GPA + 0x1000_0000;
    vm.add_memory(CLONE_SLOT + 1, gpa2, SIZE as usize);
    guest::run(&mut vm, 0, &guest::read_check(&Walk::zeros(gpa2, PAGES)));
    let hva2 = vm.mem_hva(gpa2);
    test_assert_eq!(
        __set_region(&vm, CLONE_SLOT + 1, KVM_MEM_PAGE_PROVIDER, gpa2, SIZE, hva2),
        Err(libc::EINVAL)
    );
    guest::run(&mut vm, 0, &guest::read_check(&Walk::zeros(gpa2, PAGES)));
    drop((vm, map, clone));
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("create_bad_fd_ebadf", create_bad_fd_ebadf),
        Test::new("create_directory_einval", create_directory_einval),
        Test::new("create_write_only_eacces", create_write_only_eacces),
        Test::new("create_bad_size_einval", create_bad_size_einval),
        Test::new(
            "create_unaligned_offset_einval",
            create_unaligned_offset_einval,
        ),
        Test::new("create_file_too_short_einval", create_file_too_short_einval),
        Test::new("create_bad_name_einval", create_bad_name_einval),
        Test::new("create_name_taken_eexist", create_name_taken_eexist),
        Test::new("create_flags_reserved_einval", create_flags_reserved_einval),
        Test::new("info_unknown_enoent", info_unknown_enoent),
        Test::new("info_flags_pad_einval", info_flags_pad_einval),
        Test::new("delete_unknown_enoent", delete_unknown_enoent),
        Test::new("delete_flags_pad_einval", delete_flags_pad_einval),
        Test::new("delete_busy_ebusy", delete_busy_ebusy),
        Test::new("list_finds_image", list_finds_image),
        Test::new("list_past_end_enoent", list_past_end_enoent),
        Test::new("list_flags_reserved_einval", list_flags_reserved_einval),
        Test::new("clone_unknown_enoent", clone_unknown_enoent),
        Test::new("snapshot_not_a_clone", snapshot_not_a_clone),
        Test::new("snapshot_bad_args", snapshot_bad_args),
        Test::new(
            "clone_flags_pad_reserved_einval",
            clone_flags_pad_reserved_einval,
        ),
        Test::new("attach_bad_vm_fd_ebadf", attach_bad_vm_fd_ebadf),
        Test::new("attach_not_a_vm_einval", attach_not_a_vm_einval),
        Test::new("attach_bad_range_einval", attach_bad_range_einval),
        Test::new(
            "attach_flags_pad_reserved_einval",
            attach_flags_pad_reserved_einval,
        ),
        Test::new("attach_same_slot_eexist", attach_same_slot_eexist),
        Test::new("attach_overlap_einval", attach_overlap_einval),
        Test::new("attach_second_vm_ebusy", attach_second_vm_ebusy),
        Test::new("attach_second_clone_ebusy", attach_second_clone_ebusy),
        Test::new("wrong_file_enotty", wrong_file_enotty),
        Test::new(
            "clone_stats_bad_pointer_efault",
            clone_stats_bad_pointer_efault,
        ),
        Test::new(
            "unprivileged_create_delete_eperm",
            unprivileged_create_delete_eperm,
        ),
        Test::new(
            "unprivileged_info_clone_allowed",
            unprivileged_info_clone_allowed,
        ),
        Test::new("unprivileged_open_eacces", unprivileged_open_eacces),
        Test::new(
            "provider_slot_without_clone_efault",
            provider_slot_without_clone_efault,
        ),
        Test::new("provider_slot_readonly_einval", provider_slot_readonly_einval),
        Test::new("provider_flag_change_einval", provider_flag_change_einval),
    ]);
}
