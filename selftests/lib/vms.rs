// SPDX-License-Identifier: GPL-2.0

//! `/dev/vms` helpers: open the device and issue its ioctls; test images
//! (files with a known per-page pattern, and images made of them that are
//! deleted on drop), clones and their mappings, and a VM whose memslot is
//! served by a clone.
//!
//! # The test pattern
//!
//! Page `i` of a test image holds [`pattern_word`]`(i)` = `0x5600_0000 | i`
//! as a little-endian u32 at byte 0, its complement at byte
//! [`HI_OFFSET`] (2048), and [`pattern_byte`]`(i, off)` everywhere else,
//! so a page read from the wrong place, a zero-filled page or a page cut
//! short shows. [`pattern_page`] builds a whole page.

use std::any::Any;
use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::sync::Arc;

use kvm_ioctls::Kvm;
use vmm_sys_util::errno;
use vms_uapi::{
    set_name, VmsCloneAttach, VmsCloneCreate, VmsCloneFootprint, VmsCloneLimit, VmsCloneName,
    VmsCloneStats, VmsCloneTouched, VmsImageCreate, VmsImageInfo, VmsImageList, VmsImageSnapshot,
    VmsImageStats, VmsVersion, KVM_MEM_PAGE_PROVIDER, VMS_CLONE_ATTACH, VMS_CLONE_CREATE,
    VMS_CLONE_FOOTPRINT, VMS_CLONE_NAME, VMS_CLONE_RESET, VMS_CLONE_SET_LIMIT, VMS_CLONE_STATS,
    VMS_CLONE_TOUCHED,
    VMS_CLONE_UNNAME, VMS_GET_VERSION,
    VMS_IMAGE_CREATE, VMS_IMAGE_DELETE, VMS_IMAGE_EMPTY, VMS_IMAGE_INFO, VMS_IMAGE_LIST,
    VMS_IMAGE_SNAPSHOT, VMS_NAME_LEN,
};

use crate::guest;
use crate::ksft::{self, check};
use crate::kvm::{vm_create_pm32, Vm};

/// The vms device.
pub const VMS_DEV: &str = "/dev/vms";

/// Opens [`VMS_DEV`] read-write, returning the raw result.
pub fn __vms_open() -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(VMS_DEV)
}

/// Opens [`VMS_DEV`]; skips the test if the module is not loaded (no
/// device node, or a node without a driver) or the device is not
/// accessible.
#[track_caller]
pub fn vms_open() -> File {
    match __vms_open() {
        Ok(f) => f,
        Err(e)
            if matches!(
                e.raw_os_error(),
                Some(libc::ENOENT | libc::ENODEV | libc::ENXIO)
            ) =>
        {
            ksft::skip(format_args!(
                "{VMS_DEV}: {} (is vms.ko loaded?)",
                ksft::strerror(e.raw_os_error().unwrap_or(0))
            ))
        }
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => ksft::skip(format_args!(
            "{VMS_DEV}: {} (run as root)",
            ksft::strerror(libc::EACCES)
        )),
        Err(e) => check(Err(e), "open /dev/vms"),
    }
}

/// Issues ioctl `request` on `dev` (`/dev/vms` or a clone) with argument
/// `arg`, returning the raw result (the ioctl's non-negative return value,
/// or its errno).
///
/// # Safety
///
/// If `request` makes the kernel read or write through `arg`, then `arg`
/// must be valid for those accesses, or an address the process does not
/// map (the kernel then fails with `EFAULT`, which is what a test of bad
/// pointers wants). It must not point at memory that Rust code relies on
/// being left unchanged.
pub unsafe fn __vms_ioctl(dev: &impl AsRawFd, request: u32, arg: u64) -> io::Result<i32> {
    // SAFETY: `dev` is an open fd; the caller guarantees `arg` is fine
    // for `request` (see `# Safety`).
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), libc::Ioctl::from(request), arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `VMS_GET_VERSION` with the argument `v` as given (so a test can set
/// `flags` or `reserved`), returning the raw result.
pub fn __vms_get_version(dev: &File, v: &mut VmsVersion) -> io::Result<()> {
    let arg = v as *mut VmsVersion as u64;
    // SAFETY: `arg` points at a `VmsVersion`, the argument type of
    // VMS_GET_VERSION, which is valid for every bit pattern the kernel
    // may write.
    unsafe { __vms_ioctl(dev, VMS_GET_VERSION, arg) }.map(|_| ())
}

/// `VMS_GET_VERSION` with a zeroed argument, asserting that it worked.
#[track_caller]
pub fn vms_get_version(dev: &File) -> VmsVersion {
    let mut v = VmsVersion::zeroed();
    check(__vms_get_version(dev, &mut v), "VMS_GET_VERSION");
    v
}

/// The page size of images and clones.
pub const PAGE_SIZE: u64 = 4096;

/// Byte offset in a page of the second pattern word.
pub const HI_OFFSET: u64 = 2048;

/// The u32 at byte 0 of image page `page`: `0x5600_0000 | page`.
pub fn pattern_word(page: u64) -> u32 {
    assert!(page < 1 << 24, "the pattern has 24 bits of page index");
    0x5600_0000 | page as u32
}

/// The byte at `off` of image page `page`, outside the two pattern words.
pub fn pattern_byte(page: u64, off: usize) -> u8 {
    (off as u8) ^ (page as u8).rotate_left(3) ^ 0xa5
}

/// Fills `buf` (one page) with the pattern of image page `page`.
pub fn fill_pattern_page(page: u64, buf: &mut [u8]) {
    assert_eq!(buf.len() as u64, PAGE_SIZE);
    for (off, b) in buf.iter_mut().enumerate() {
        *b = pattern_byte(page, off);
    }
    let w = pattern_word(page);
    buf[..4].copy_from_slice(&w.to_le_bytes());
    let hi = HI_OFFSET as usize;
    buf[hi..hi + 4].copy_from_slice(&(!w).to_le_bytes());
}

/// Image page `page` as the test pattern gives it.
pub fn pattern_page(page: u64) -> Vec<u8> {
    let mut buf = vec![0; PAGE_SIZE as usize];
    fill_pattern_page(page, &mut buf);
    buf
}

/// A name unique to this process and call: `test-PID-N`, which is a valid
/// image name (at most 31 bytes of letters, digits, `-` and `_`).
pub fn unique_name(test: &str) -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    let name = format!("{test}-{}-{n}", std::process::id());
    assert!(name.len() < VMS_NAME_LEN, "image name {name} too long");
    name
}

/// A name field as a string ("?" if it has no NUL or is not UTF-8).
pub fn name_of(name: &[u8; VMS_NAME_LEN]) -> String {
    vms_uapi::name_bytes(name)
        .and_then(|b| std::str::from_utf8(b).ok())
        .unwrap_or("?")
        .to_string()
}

/// A file that images are created from, in [`image_dir`], removed on
/// drop. `/tmp` in the test VM is a tmpfs: a sparse file costs only the
/// pages written.
///
/// The file it holds open ([`ImageFile::file`]) is open for reading only:
/// vms refuses to make an image of a file that anyone holds open for
/// writing, and while an image uses the file nobody can open it for
/// writing (both `ETXTBSY`). It is written through [`ImageFile::writer`],
/// a file of its own that must be closed before an image is made.
pub struct ImageFile {
    path: PathBuf,
    file: File,
}

/// Where [`ImageFile`]s are made: `$VMS_IMAGE_DIR`, else `/tmp`.
/// `scripts/bench` points it at a disk (`scripts/vm --disk`), where
/// `POSIX_FADV_DONTNEED` really empties the page cache.
pub fn image_dir() -> PathBuf {
    std::env::var_os("VMS_IMAGE_DIR")
        .filter(|d| !d.is_empty())
        .map_or_else(|| PathBuf::from("/tmp"), PathBuf::from)
}

impl ImageFile {
    /// Creates the empty file `vms-NAME.img` in [`image_dir`].
    #[track_caller]
    pub fn create(name: &str) -> Self {
        let path = image_dir().join(format!("vms-{name}.img"));
        drop(check(
            OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path),
            "create image file",
        ));
        let file = check(File::open(&path), "open image file");
        Self { path, file }
    }

    /// Creates a file of `junk + pages * 4096` bytes: `junk` bytes of 0xee
    /// (which `file_offset` skips), then `pages` pages of the pattern.
    #[track_caller]
    pub fn with_pattern(name: &str, pages: u64, junk: u64) -> Self {
        let f = Self::create(name);
        let w = f.writer();
        if junk > 0 {
            check(
                w.write_all_at(&vec![0xee; junk as usize], 0),
                "write image file",
            );
        }
        // 1 MiB at a time.
        const CHUNK: u64 = 256;
        let mut buf = vec![0u8; (CHUNK * PAGE_SIZE) as usize];
        let mut page = 0;
        while page < pages {
            let n = CHUNK.min(pages - page);
            for (i, p) in buf
                .chunks_mut(PAGE_SIZE as usize)
                .take(n as usize)
                .enumerate()
            {
                fill_pattern_page(page + i as u64, p);
            }
            check(
                w.write_all_at(&buf[..(n * PAGE_SIZE) as usize], junk + page * PAGE_SIZE),
                "write image file",
            );
            page += n;
        }
        f
    }

    /// Creates a sparse file of `size` bytes that holds the pattern in
    /// pages `pages` only; every other page is a hole.
    #[track_caller]
    pub fn sparse(name: &str, size: u64, pages: &[u64]) -> Self {
        let f = Self::create(name);
        let w = f.writer();
        check(w.set_len(size), "ftruncate image file");
        for &p in pages {
            check(
                w.write_all_at(&pattern_page(p), p * PAGE_SIZE),
                "write image file",
            );
        }
        f
    }

    /// Opens the file for writing, returning the raw result: `ETXTBSY`
    /// while an image uses it.
    pub fn __writer(&self) -> io::Result<File> {
        OpenOptions::new().write(true).open(&self.path)
    }

    /// Opens the file for writing, asserting that it worked. Close it
    /// before making an image of the file.
    #[track_caller]
    pub fn writer(&self) -> File {
        check(self.__writer(), "open image file for writing")
    }

    /// `truncate(2)` of the file, by its path, to `len` bytes, returning
    /// the raw result: `ETXTBSY` while an image uses it.
    pub fn __truncate(&self, len: u64) -> io::Result<()> {
        let path = CString::new(self.path.as_os_str().as_bytes()).expect("a path without NUL");
        // SAFETY: `path` is a NUL-terminated string that outlives the call.
        if unsafe { libc::truncate(path.as_ptr(), len as libc::off_t) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// The open file, read-only.
    pub fn file(&self) -> &File {
        &self.file
    }

    /// Its path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether the file still holds exactly `junk` bytes of 0xee and
    /// `pages` pattern pages, as [`ImageFile::with_pattern`] wrote it;
    /// on a difference, returns the first differing byte offset.
    #[track_caller]
    pub fn first_difference(&self, pages: u64, junk: u64) -> Option<u64> {
        let len = check(self.file.metadata(), "stat image file").len();
        if len != junk + pages * PAGE_SIZE {
            return Some(len.min(junk + pages * PAGE_SIZE));
        }
        let mut buf = vec![0u8; junk as usize];
        check(self.file.read_exact_at(&mut buf, 0), "read image file");
        if let Some(i) = buf.iter().position(|&b| b != 0xee) {
            return Some(i as u64);
        }
        let mut page = vec![0u8; PAGE_SIZE as usize];
        for p in 0..pages {
            let at = junk + p * PAGE_SIZE;
            check(self.file.read_exact_at(&mut page, at), "read image file");
            let want = pattern_page(p);
            if let Some(i) = page.iter().zip(&want).position(|(a, b)| a != b) {
                return Some(at + i as u64);
            }
        }
        None
    }
}

impl Drop for ImageFile {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// A [`VmsImageCreate`] for image `name` from `fd`, all else zero.
pub fn image_create_arg(name: &str, fd: RawFd, size: u64, file_offset: u64) -> VmsImageCreate {
    let mut arg = VmsImageCreate {
        fd,
        size,
        file_offset,
        ..VmsImageCreate::zeroed()
    };
    assert!(set_name(&mut arg.name, name.as_bytes()), "bad name {name}");
    arg
}

/// A [`VmsImageInfo`] naming image `name`, all else zero.
pub fn image_info_arg(name: &str) -> VmsImageInfo {
    let mut arg = VmsImageInfo::zeroed();
    assert!(set_name(&mut arg.name, name.as_bytes()), "bad name {name}");
    arg
}

/// A [`VmsCloneCreate`] naming image `name`, all else zero.
pub fn clone_create_arg(name: &str) -> VmsCloneCreate {
    let mut arg = VmsCloneCreate::zeroed();
    assert!(set_name(&mut arg.name, name.as_bytes()), "bad name {name}");
    arg
}

/// A [`VmsCloneAttach`] of clone bytes `offset..offset + size` to memslot
/// `slot` of the VM `vm_fd`, all else zero.
pub fn clone_attach_arg(vm_fd: RawFd, slot: u32, offset: u64, size: u64) -> VmsCloneAttach {
    VmsCloneAttach {
        vm_fd,
        slot,
        offset,
        size,
        ..VmsCloneAttach::zeroed()
    }
}

/// `VMS_IMAGE_CREATE` with `arg` as given, returning the raw result.
pub fn __image_create(dev: &File, arg: &VmsImageCreate) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsImageCreate, the argument type of
    // VMS_IMAGE_CREATE, which the kernel only reads.
    unsafe { __vms_ioctl(dev, VMS_IMAGE_CREATE, arg as *const _ as u64) }.map(|_| ())
}

/// `VMS_IMAGE_INFO` with `arg` as given, returning the raw result.
pub fn __image_info(dev: &File, arg: &mut VmsImageInfo) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsImageInfo, the argument type of
    // VMS_IMAGE_INFO, valid for every bit pattern the kernel may write.
    unsafe { __vms_ioctl(dev, VMS_IMAGE_INFO, arg as *mut _ as u64) }.map(|_| ())
}

/// `VMS_IMAGE_INFO` of image `name`, asserting that it worked.
#[track_caller]
pub fn image_info(dev: &File, name: &str) -> VmsImageStats {
    let mut arg = image_info_arg(name);
    check(__image_info(dev, &mut arg), "VMS_IMAGE_INFO");
    arg.stats
}

/// `VMS_IMAGE_DELETE` with `arg` as given, returning the raw result.
pub fn __image_delete(dev: &File, arg: &VmsImageInfo) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsImageInfo, the argument type of
    // VMS_IMAGE_DELETE, which the kernel only reads.
    unsafe { __vms_ioctl(dev, VMS_IMAGE_DELETE, arg as *const _ as u64) }.map(|_| ())
}

/// `VMS_IMAGE_LIST` with `arg` as given, returning the raw result.
pub fn __image_list(dev: &File, arg: &mut VmsImageList) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsImageList, the argument type of
    // VMS_IMAGE_LIST, valid for every bit pattern the kernel may write.
    unsafe { __vms_ioctl(dev, VMS_IMAGE_LIST, arg as *mut _ as u64) }.map(|_| ())
}

/// `VMS_CLONE_CREATE` with `arg` as given, returning the raw result: the
/// new clone's file descriptor.
pub fn __clone_create(dev: &File, arg: &VmsCloneCreate) -> io::Result<OwnedFd> {
    // SAFETY: `arg` points at a VmsCloneCreate, the argument type of
    // VMS_CLONE_CREATE, which the kernel only reads.
    let fd = unsafe { __vms_ioctl(dev, VMS_CLONE_CREATE, arg as *const _ as u64) }?;
    // SAFETY: on success VMS_CLONE_CREATE returns a new file descriptor
    // that nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Where named clones appear (`VMS_CLONE_NAME`).
pub const NAMED_CLONE_DIR: &str = "/dev/vms-clone";

/// A [`VmsCloneName`] naming clone `clone_fd` `name`, all else zero.
pub fn clone_name_arg(name: &str, clone_fd: RawFd) -> VmsCloneName {
    let mut arg = VmsCloneName { clone_fd, ..VmsCloneName::zeroed() };
    assert!(set_name(&mut arg.name, name.as_bytes()), "bad name {name}");
    arg
}

/// `VMS_CLONE_NAME` with `arg` as given, returning the raw result.
pub fn __clone_name(dev: &File, arg: &VmsCloneName) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsCloneName, the argument type of
    // VMS_CLONE_NAME, which the kernel only reads.
    unsafe { __vms_ioctl(dev, VMS_CLONE_NAME, arg as *const _ as u64) }.map(|_| ())
}

/// `VMS_CLONE_UNNAME` with `arg` as given, returning the raw result.
pub fn __clone_unname(dev: &File, arg: &VmsCloneName) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsCloneName, the argument type of
    // VMS_CLONE_UNNAME, which the kernel only reads.
    unsafe { __vms_ioctl(dev, VMS_CLONE_UNNAME, arg as *const _ as u64) }.map(|_| ())
}

/// `VMS_IMAGE_SNAPSHOT` with `arg` as given, returning the raw result.
pub fn __image_snapshot(dev: &File, arg: &VmsImageSnapshot) -> io::Result<()> {
    // SAFETY: `arg` points at a VmsImageSnapshot, the argument type of
    // VMS_IMAGE_SNAPSHOT, which the kernel only reads.
    unsafe { __vms_ioctl(dev, VMS_IMAGE_SNAPSHOT, arg as *const _ as u64) }.map(|_| ())
}

/// A [`VmsImageSnapshot`] of clone `clone_fd` named `name`, all else zero.
pub fn image_snapshot_arg(name: &str, clone_fd: RawFd) -> VmsImageSnapshot {
    let mut arg = VmsImageSnapshot { clone_fd, ..VmsImageSnapshot::zeroed() };
    assert!(set_name(&mut arg.name, name.as_bytes()), "bad name {name}");
    arg
}

/// An image in the module, deleted on drop.
///
/// Drop it (or call [`Image::delete`], which asserts) after its clones:
/// declared before them, it is dropped after them, also when a failed
/// assertion unwinds.
pub struct Image {
    dev: File,
    name: String,
    size: u64,
    deleted: bool,
}

/// Creates image `name` of `size` bytes from `file` at `file_offset`
/// (`VMS_IMAGE_CREATE`), asserting that it worked.
#[track_caller]
pub fn image_create(dev: &File, name: &str, file: &File, size: u64, file_offset: u64) -> Image {
    let arg = image_create_arg(name, file.as_raw_fd(), size, file_offset);
    check(__image_create(dev, &arg), "VMS_IMAGE_CREATE");
    Image::named(dev, name, size)
}

/// Creates the empty image `name` of `size` bytes (`VMS_IMAGE_CREATE`
/// with `VMS_IMAGE_EMPTY`), asserting that it worked.
#[track_caller]
pub fn image_create_empty(dev: &File, name: &str, size: u64) -> Image {
    let mut arg = image_create_arg(name, -1, size, 0);
    arg.flags = VMS_IMAGE_EMPTY;
    check(__image_create(dev, &arg), "VMS_IMAGE_CREATE (VMS_IMAGE_EMPTY)");
    Image::named(dev, name, size)
}

/// Makes the live image `name` of `clone`'s current memory
/// (`VMS_IMAGE_SNAPSHOT`), asserting that it worked.
#[track_caller]
pub fn image_snapshot(dev: &File, name: &str, clone: &VmsClone) -> Image {
    let arg = image_snapshot_arg(name, clone.fd().as_raw_fd());
    check(__image_snapshot(dev, &arg), "VMS_IMAGE_SNAPSHOT");
    Image::named(dev, name, clone.size())
}

impl Image {
    /// The existing image `name` of `size` bytes, deleted on drop.
    #[track_caller]
    fn named(dev: &File, name: &str, size: u64) -> Image {
        Image {
            dev: check(dev.try_clone(), "dup /dev/vms fd"),
            name: name.to_string(),
            size,
            deleted: false,
        }
    }

    /// `VMS_IMAGE_DELETE`, returning the raw result (on success the image
    /// is not deleted again on drop).
    pub fn __delete(&mut self) -> io::Result<()> {
        let r = __image_delete(&self.dev, &image_info_arg(&self.name));
        self.deleted |= r.is_ok();
        r
    }

    /// Its name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Its size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Its counters (`VMS_IMAGE_INFO`).
    #[track_caller]
    pub fn info(&self) -> VmsImageStats {
        image_info(&self.dev, &self.name)
    }

    /// A new clone of it (`VMS_CLONE_CREATE`), asserting that it worked.
    #[track_caller]
    pub fn clone_create(&self) -> VmsClone {
        let fd = check(
            __clone_create(&self.dev, &clone_create_arg(&self.name)),
            "VMS_CLONE_CREATE",
        );
        VmsClone {
            fd,
            size: self.size,
        }
    }

    /// Deletes it (`VMS_IMAGE_DELETE`), asserting that it worked: every
    /// clone must be gone.
    #[track_caller]
    pub fn delete(mut self) {
        self.deleted = true;
        check(
            __image_delete(&self.dev, &image_info_arg(&self.name)),
            "VMS_IMAGE_DELETE",
        );
    }
}

impl Drop for Image {
    fn drop(&mut self) {
        if self.deleted {
            return;
        }
        if let Err(e) = __image_delete(&self.dev, &image_info_arg(&self.name)) {
            ksft::ksft_print_msg(&format!(
                "cleanup: VMS_IMAGE_DELETE {}: {}",
                self.name,
                ksft::strerror(e.raw_os_error().unwrap_or(0))
            ));
        }
    }
}

/// A clone: its file descriptor and size.
#[derive(Debug)]
pub struct VmsClone {
    fd: OwnedFd,
    size: u64,
}

impl VmsClone {
    /// Its file descriptor.
    pub fn fd(&self) -> &OwnedFd {
        &self.fd
    }

    /// Its size in bytes (the image's).
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Opens the clone named `name` (`/dev/vms-clone/NAME`), read-write,
    /// as a clone of `size` bytes, returning the raw result.
    pub fn __open_named(name: &str, size: u64) -> io::Result<Self> {
        let f = OpenOptions::new().read(true).write(true).open(Path::new(NAMED_CLONE_DIR).join(name))?;
        Ok(Self { fd: f.into(), size })
    }

    /// `VMS_CLONE_ATTACH` with `arg` as given, returning the raw result.
    pub fn __attach(&self, arg: &VmsCloneAttach) -> io::Result<()> {
        // SAFETY: `arg` points at a VmsCloneAttach, the argument type of
        // VMS_CLONE_ATTACH, which the kernel only reads.
        unsafe { __vms_ioctl(&self.fd, VMS_CLONE_ATTACH, arg as *const _ as u64) }.map(|_| ())
    }

    /// Attaches clone bytes `offset..offset + size` to memslot `slot` of
    /// the VM `vm_fd`, asserting that it worked.
    #[track_caller]
    pub fn attach(&self, vm_fd: RawFd, slot: u32, offset: u64, size: u64) {
        check(
            self.__attach(&clone_attach_arg(vm_fd, slot, offset, size)),
            "VMS_CLONE_ATTACH",
        );
    }

    /// `VMS_CLONE_STATS` into `out`, returning the raw result.
    pub fn __stats(&self, out: &mut VmsCloneStats) -> io::Result<()> {
        // SAFETY: `out` points at a VmsCloneStats, the argument type of
        // VMS_CLONE_STATS, valid for every bit pattern the kernel may
        // write.
        unsafe { __vms_ioctl(&self.fd, VMS_CLONE_STATS, out as *mut _ as u64) }.map(|_| ())
    }

    /// Its counters (`VMS_CLONE_STATS`), asserting that it worked.
    #[track_caller]
    pub fn stats(&self) -> VmsCloneStats {
        let mut s = VmsCloneStats::zeroed();
        check(self.__stats(&mut s), "VMS_CLONE_STATS");
        s
    }

    /// `VMS_CLONE_RESET` with `arg` (0 is the only good one), returning
    /// the raw result.
    pub fn __reset(&self, arg: u64) -> io::Result<()> {
        // SAFETY: VMS_CLONE_RESET takes no argument: the kernel reads no
        // memory at `arg`, whatever it is.
        unsafe { __vms_ioctl(&self.fd, VMS_CLONE_RESET, arg) }.map(|_| ())
    }

    /// Drops its private pages (`VMS_CLONE_RESET`), asserting that it
    /// worked.
    #[track_caller]
    pub fn reset(&self) {
        check(self.__reset(0), "VMS_CLONE_RESET");
    }

    /// `VMS_CLONE_SET_LIMIT` with `arg` as given, returning the raw
    /// result.
    pub fn __set_limit(&self, arg: &VmsCloneLimit) -> io::Result<()> {
        // SAFETY: `arg` points at a VmsCloneLimit, the argument type of
        // VMS_CLONE_SET_LIMIT, which the kernel only reads.
        unsafe { __vms_ioctl(&self.fd, VMS_CLONE_SET_LIMIT, arg as *const _ as u64) }.map(|_| ())
    }

    /// Limits the clone to `limit` private pages in memory
    /// (`VMS_CLONE_SET_LIMIT`), its swap file in directory `dir` (`None`:
    /// keep the one it has), asserting that it worked.
    #[track_caller]
    pub fn set_limit(&self, limit: u64, dir: Option<&Path>) {
        let d = dir.map(|d| check(File::open(d), "open swap directory"));
        let arg = VmsCloneLimit {
            limit,
            swap_dir_fd: d.as_ref().map_or(-1, |f| f.as_raw_fd()),
            ..VmsCloneLimit::zeroed()
        };
        check(self.__set_limit(&arg), "VMS_CLONE_SET_LIMIT");
    }

    /// Waits, for at most `within`, until the clone has at most `limit`
    /// private pages in memory (an eviction by the module's worker, which
    /// nothing here kicks); returns its footprint then and the seconds it
    /// took.
    #[track_caller]
    pub fn wait_resident_at_most(&self, limit: u64, within: std::time::Duration) -> (VmsCloneFootprint, f64) {
        let t0 = std::time::Instant::now();
        let mut f = self.footprint();
        while f.resident > limit && t0.elapsed() < within {
            std::thread::sleep(std::time::Duration::from_millis(50));
            f = self.footprint();
        }
        (f, t0.elapsed().as_secs_f64())
    }

    /// Its limit and swap counters (`VMS_CLONE_FOOTPRINT`), asserting that
    /// it worked.
    #[track_caller]
    pub fn footprint(&self) -> VmsCloneFootprint {
        let mut f = VmsCloneFootprint::zeroed();
        // SAFETY: `f` is a VmsCloneFootprint, the argument type of
        // VMS_CLONE_FOOTPRINT, valid for every bit pattern the kernel may
        // write.
        let r = unsafe { __vms_ioctl(&self.fd, VMS_CLONE_FOOTPRINT, &mut f as *mut _ as u64) };
        check(r, "VMS_CLONE_FOOTPRINT");
        f
    }

    /// `VMS_CLONE_TOUCHED` with `arg` as given (its `bitmap` must be
    /// writable for `npages` bits, or a bad address the kernel refuses),
    /// returning the raw result; `arg.touched` is written.
    pub fn __touched(&self, arg: &mut VmsCloneTouched) -> io::Result<()> {
        // SAFETY: `arg` points at a VmsCloneTouched, the argument type of
        // VMS_CLONE_TOUCHED; the kernel writes `touched` and the bitmap at
        // `arg.bitmap`, which the caller provides (or makes bad on
        // purpose: the kernel checks user addresses).
        unsafe { __vms_ioctl(&self.fd, VMS_CLONE_TOUCHED, arg as *mut _ as u64) }.map(|_| ())
    }

    /// The pages of `first..first + npages` the clone has used
    /// (`VMS_CLONE_TOUCHED`), as a list of page numbers, asserting that it
    /// worked and that the count it returned matches the bitmap.
    #[track_caller]
    pub fn touched(&self, first: u64, npages: u64) -> Vec<u64> {
        // One word more than needed, to see that the kernel writes no
        // more than it should.
        let words = npages.div_ceil(64) as usize;
        let mut bitmap = vec![u64::MAX; words + 1];
        let mut arg = VmsCloneTouched {
            bitmap: bitmap.as_mut_ptr() as u64,
            first,
            npages,
            ..VmsCloneTouched::zeroed()
        };
        check(self.__touched(&mut arg), "VMS_CLONE_TOUCHED");
        assert_eq!(bitmap[words], u64::MAX, "VMS_CLONE_TOUCHED wrote past its bitmap");
        let mut pages = Vec::new();
        for (w, word) in bitmap[..words].iter().enumerate() {
            for b in 0..64 {
                if word & (1 << b) != 0 {
                    let i = w as u64 * 64 + b;
                    assert!(i < npages, "VMS_CLONE_TOUCHED set bit {i} past npages {npages}");
                    pages.push(first + i);
                }
            }
        }
        assert_eq!(arg.touched, pages.len() as u64, "VMS_CLONE_TOUCHED: count against bitmap");
        pages
    }

    /// Maps the whole clone (see [`CloneMap::__new`]), asserting that it
    /// worked.
    #[track_caller]
    pub fn map(&self) -> Arc<CloneMap> {
        Arc::new(check(CloneMap::__new(self), "mmap clone"))
    }
}

/// The VMM's mapping of a whole clone: `MAP_SHARED`, read-write, offset
/// 0 = image page 0.
///
/// Accesses go through volatile reads and writes: the guest and the
/// module change the memory behind the compiler's back.
///
/// # Invariants
///
/// `ptr..ptr + len` is reserved for this value from its creation to its
/// drop: mapped from the clone until [`CloneMap::unmap`] (then `unmapped`
/// is true), an inaccessible anonymous mapping after it.
pub struct CloneMap {
    ptr: NonNull<u8>,
    len: usize,
    unmapped: AtomicBool,
}

// SAFETY: the mapping is plain shared memory, reachable from any thread;
// the accessors are volatile and take `&self`, like accesses to memory
// shared with another process.
unsafe impl Send for CloneMap {}
// SAFETY: as for Send.
unsafe impl Sync for CloneMap {}

impl CloneMap {
    /// Maps `clone` (`mmap(MAP_SHARED, PROT_READ | PROT_WRITE)` of its
    /// whole size at offset 0), returning the raw result.
    pub fn __new(clone: &VmsClone) -> io::Result<Self> {
        let len = clone.size as usize;
        // SAFETY: a new shared mapping of the clone at an address the
        // kernel picks; it aliases nothing of ours.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                clone.fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // INVARIANT: mmap succeeded: `p` maps `len` bytes of the clone.
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
            unmapped: AtomicBool::new(false),
        })
    }

    /// The host virtual address of clone byte 0.
    pub fn hva(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The mapping's length: the clone's size.
    pub fn len(&self) -> u64 {
        self.len as u64
    }

    /// Whether the mapping is empty (never: clones are not).
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// A raw pointer to clone byte `off`, for tests that expect an access
    /// to fault (in a forked child, see [`crate::host::fork_run`]).
    pub fn ptr_at(&self, off: u64) -> *mut u8 {
        assert!(off < self.len as u64, "offset {off:#x} outside the clone");
        // The offset is inside the mapping: the pointer stays in it.
        self.ptr.as_ptr().wrapping_add(off as usize)
    }

    #[track_caller]
    fn word(&self, off: u64) -> *mut u32 {
        assert!(
            !self.unmapped.load(Ordering::Relaxed),
            "clone mapping used after unmap"
        );
        assert!(
            off.is_multiple_of(4) && off + 4 <= self.len as u64,
            "bad offset {off:#x}"
        );
        self.ptr_at(off).cast()
    }

    /// Reads the u32 at clone byte `off` (4-byte aligned).
    #[track_caller]
    pub fn read_u32(&self, off: u64) -> u32 {
        let p = self.word(off);
        // SAFETY: `p` is aligned and inside the mapping, which is mapped
        // (type invariant; `word` checked `unmapped`).
        unsafe { p.read_volatile() }
    }

    /// Asserts that page `p` of `pages` holds `first + p` at byte 0 and
    /// its complement at [`HI_OFFSET`] (what [`guest::Walk::values`]
    /// writes), reading through this mapping.
    #[track_caller]
    pub fn check_values(&self, pages: std::ops::Range<u64>, first: u32) {
        for p in pages {
            let (lo, hi) = (self.read_u32(p * PAGE_SIZE), self.read_u32(p * PAGE_SIZE + HI_OFFSET));
            let want = first.wrapping_add(p as u32);
            crate::test_assert!(
                lo == want && hi == !want,
                "VMM read of page {p}: {lo:#010x}/{hi:#010x}, expected {want:#010x}/{:#010x}",
                !want
            );
        }
    }

    /// Writes, through this mapping, what [`check_values`](Self::check_values)
    /// expects of `pages`: `first + p` at the start of page `p`, its
    /// complement at `HI_OFFSET`.
    pub fn write_values(&self, pages: std::ops::Range<u64>, first: u32) {
        for p in pages {
            let v = first.wrapping_add(p as u32);
            self.write_u32(p * PAGE_SIZE, v);
            self.write_u32(p * PAGE_SIZE + HI_OFFSET, !v);
        }
    }

    /// Writes `v` to the u32 at clone byte `off` (4-byte aligned).
    #[track_caller]
    pub fn write_u32(&self, off: u64, v: u32) {
        let p = self.word(off);
        // SAFETY: as in `read_u32`; the mapping is writable.
        unsafe { p.write_volatile(v) }
    }

    /// Holds a reference to each page of `pages` (clone page numbers) in
    /// pipes, with `vmsplice` (a pipe keeps each page until it is read):
    /// pages someone holds, which eviction must leave alone. Asserts that
    /// it worked. The references go with [`PagePipes::release`].
    #[track_caller]
    pub fn hold_in_pipes(&self, pages: std::ops::Range<u64>) -> PagePipes {
        /// Pages per pipe (1 MiB, the default `pipe-max-size`).
        const PER_PIPE: u64 = 256;
        let mut pipes = Vec::new();
        let mut first = pages.start;
        while first < pages.end {
            let n = PER_PIPE.min(pages.end - first);
            let mut fds = [0; 2];
            // SAFETY: `fds` has room for the two descriptors.
            crate::test_assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0, "pipe");
            pipes.push(fds);
            // SAFETY: fcntl on our own pipe.
            let size = unsafe { libc::fcntl(fds[1], libc::F_SETPIPE_SZ, (PER_PIPE * PAGE_SIZE) as libc::c_int) };
            crate::test_assert!(size >= (n * PAGE_SIZE) as libc::c_int, "F_SETPIPE_SZ: {size}");
            let iov: Vec<libc::iovec> = (first..first + n)
                .map(|p| libc::iovec { iov_base: self.ptr_at(p * PAGE_SIZE).cast(), iov_len: PAGE_SIZE as usize })
                .collect();
            // SAFETY: the iovecs point into this mapping, live meanwhile.
            let got = unsafe { libc::vmsplice(fds[1], iov.as_ptr(), iov.len(), 0) };
            crate::test_assert_eq!(got, (n * PAGE_SIZE) as isize, "vmsplice");
            first += n;
        }
        PagePipes(pipes)
    }

    /// Write-faults the mapping's first `len` bytes in, in the kernel
    /// (`MADV_POPULATE_WRITE`): every page of them becomes private, with
    /// one fault each and no access from user space. Asserts that it
    /// worked.
    #[track_caller]
    pub fn populate_write(&self, len: u64) {
        assert!(len <= self.len as u64, "populate_write: {len} bytes of a {}-byte mapping", self.len);
        // SAFETY: the range lies in this mapping (checked above; type
        // invariant); populating it only faults its pages in, it neither
        // reads nor writes their bytes.
        let r = unsafe { libc::madvise(self.ptr.as_ptr().cast(), len as usize, libc::MADV_POPULATE_WRITE) };
        check(if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) }, "MADV_POPULATE_WRITE");
    }

    /// Clone page `page`, read through the mapping.
    #[track_caller]
    pub fn read_page(&self, page: u64) -> Vec<u8> {
        let mut out = Vec::with_capacity(PAGE_SIZE as usize);
        for off in (0..PAGE_SIZE).step_by(4) {
            out.extend_from_slice(&self.read_u32(page * PAGE_SIZE + off).to_le_bytes());
        }
        out
    }

    /// Unmaps the clone while keeping the address range reserved (an
    /// inaccessible anonymous mapping replaces it), so that memslots that
    /// still point here never reach memory the process reuses. Dropping
    /// the clone's last file reference then is the same as `munmap`.
    #[track_caller]
    pub fn unmap(&self) {
        self.unmapped.store(true, Ordering::Relaxed);
        // SAFETY: MAP_FIXED over our own mapping (type invariant) replaces
        // it; nothing of ours is in the range and no reference into it
        // exists (the accessors copy out).
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            check::<(), _>(
                Err(io::Error::last_os_error()),
                "mmap over the clone mapping",
            );
        }
    }

    /// Maps `clone` (the one this mapping was made from) again where it
    /// was, after [`CloneMap::unmap`]: so a test can create a memslot on
    /// the range first and map the clone under it afterwards.
    #[track_caller]
    pub fn remap(&self, clone: &VmsClone) {
        assert_eq!(clone.size(), self.len as u64, "the same clone");
        // SAFETY: MAP_FIXED over our own reserved range (type invariant),
        // which nothing else uses; the clone's mapping replaces it.
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED | libc::MAP_FIXED,
                clone.fd().as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            check::<(), _>(Err(io::Error::last_os_error()), "mmap the clone again");
        }
        self.unmapped.store(false, Ordering::Relaxed);
    }
}

impl Drop for CloneMap {
    fn drop(&mut self) {
        // SAFETY: by the type invariant the range is ours; no reference
        // into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// The memslot through which the tests' guests reach a clone.
pub const CLONE_SLOT: u32 = 1;
/// Where that memslot starts in guest physical memory: 1 GiB, above the
/// code memory and well inside the 4 GiB a 32-bit guest reaches.
pub const CLONE_GPA: u64 = 0x4000_0000;

/// Installs memslot `slot` at `gpa` with `KVM_MEM_PAGE_PROVIDER` for
/// clone bytes `offset..offset + size` as mapped by `map`
/// (`userspace_addr` = `map.hva() + offset`), returning the raw result.
/// The VM keeps `map` alive.
pub fn __vm_add_clone_slot(
    vm: &mut Vm,
    map: &Arc<CloneMap>,
    slot: u32,
    gpa: u64,
    offset: u64,
    size: u64,
) -> Result<(), errno::Error> {
    __vm_map_clone(vm, map, slot, gpa, offset, size, KVM_MEM_PAGE_PROVIDER)
}

/// Installs (or, with `size` 0, deletes) memslot `slot` at `gpa` with
/// memslot flags `flags` on clone bytes `offset..offset + size` as mapped
/// by `map`, returning the raw result: with flags 0 an ordinary memslot,
/// as a VMM that knows nothing of vms makes on a clone mapping. The VM
/// keeps `map` alive.
pub fn __vm_map_clone(
    vm: &mut Vm,
    map: &Arc<CloneMap>,
    slot: u32,
    gpa: u64,
    offset: u64,
    size: u64,
    flags: u32,
) -> Result<(), errno::Error> {
    assert!(
        offset.checked_add(size).is_some_and(|end| end <= map.len()),
        "window {offset:#x}+{size:#x} outside the clone"
    );
    let owner: Arc<dyn Any + Send + Sync> = map.clone();
    // SAFETY: the range lies in `map`, which keeps it mapped or reserved
    // while it lives (CloneMap's type invariant); `owner` is `map`.
    unsafe {
        vm.__add_memory_at(
            slot,
            flags,
            gpa,
            size,
            map.hva() + offset,
            owner,
        )
    }
}

/// Serves memslot `slot` at `gpa` from clone bytes `offset..offset + size`:
/// installs the memslot ([`__vm_add_clone_slot`]), then attaches the clone
/// to it (`VMS_CLONE_ATTACH`), asserting both.
#[track_caller]
pub fn vm_attach_clone(
    vm: &mut Vm,
    clone: &VmsClone,
    map: &Arc<CloneMap>,
    slot: u32,
    gpa: u64,
    offset: u64,
    size: u64,
) {
    check(
        __vm_add_clone_slot(vm, map, slot, gpa, offset, size),
        "KVM_SET_USER_MEMORY_REGION2 (KVM_MEM_PAGE_PROVIDER)",
    );
    clone.attach(vm.fd().as_raw_fd(), slot, offset, size);
}

/// A VM for a clone: [`vm_create_pm32`], the whole clone at [`CLONE_GPA`]
/// in memslot [`CLONE_SLOT`], and `nr_vcpus` protected-mode vCPUs, vCPU
/// `i` starting at [`guest::code_gpa`]`(i)`.
#[track_caller]
pub fn vm_with_clone(kvm: &Kvm, clone: &VmsClone, map: &Arc<CloneMap>, nr_vcpus: usize) -> Vm {
    let mut vm = vm_create_pm32(kvm);
    vm_attach_clone(&mut vm, clone, map, CLONE_SLOT, CLONE_GPA, 0, clone.size());
    for i in 0..nr_vcpus {
        vm.add_vcpu_pm32(i as u64, guest::code_gpa(i));
    }
    vm
}

/// The requirements of a test of clones in guests, checked before its
/// plan so that a missing one skips the whole test: `/dev/vms` opens, and
/// so do `/dev/kvm` and a VM.
pub fn require_vms_and_kvm() {
    drop(vms_open());
    let kvm = crate::kvm::open_kvm();
    drop(crate::kvm::vm_create(&kvm));
}

/// Pipes that hold references to clone pages ([`CloneMap::hold_in_pipes`]).
pub struct PagePipes(Vec<[libc::c_int; 2]>);

impl PagePipes {
    /// Reads the pipes empty (their pages' references go) and closes them.
    #[track_caller]
    pub fn release(self) {
        for fds in &self.0 {
            let mut buf = vec![0u8; 1 << 20];
            // SAFETY: nonblocking reads into our own buffer until empty.
            unsafe { libc::fcntl(fds[0], libc::F_SETFL, libc::O_NONBLOCK) };
            loop {
                // SAFETY: reads into our own buffer.
                let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
                if n <= 0 {
                    break;
                }
            }
        }
    }
}

impl Drop for PagePipes {
    fn drop(&mut self) {
        for fds in &self.0 {
            // SAFETY: our own descriptors, closed once.
            unsafe {
                libc::close(fds[0]);
                libc::close(fds[1]);
            }
        }
    }
}
