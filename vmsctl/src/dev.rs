// SPDX-License-Identifier: GPL-2.0

//! `/dev/vms` and clone file descriptors: opening them, mapping a clone,
//! and every ioctl vmsctl issues, in one place.
//!
//! The ioctl numbers and argument structs come from `vms-uapi` (the mirror
//! of `uapi/vms.h`); this file is the only one that calls `ioctl(2)` or
//! `mmap(2)`. Errors carry the errno; what it means for the operation at
//! hand is for the caller to say.

use std::fmt;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::ptr::NonNull;

use thiserror::Error;
use vms_uapi::{
    VmsCloneFootprint, VmsCloneLimit,
    name_bytes, VmsCloneAttach, VmsCloneCreate, VmsCloneName, VmsCloneStats, VmsCloneTouched, VmsImageCreate, VmsImageInfo,
    VmsImageList, VmsImageSnapshot, VmsImageStats, VmsVersion, VMS_ABI_VERSION, VMS_CLONE_ATTACH,
    VMS_CLONE_CREATE, VMS_CLONE_FOOTPRINT, VMS_CLONE_NAME, VMS_CLONE_RESET, VMS_CLONE_SET_LIMIT, VMS_CLONE_UNNAME,
    VMS_CLONE_STATS, VMS_CLONE_TOUCHED, VMS_GET_VERSION, VMS_IMAGE_CREATE,
    VMS_IMAGE_DELETE, VMS_IMAGE_EMPTY, VMS_IMAGE_INFO, VMS_IMAGE_LIST, VMS_IMAGE_SNAPSHOT,
    VMS_NAME_LEN,
};

/// Where the vms module's device node lives.
pub const VMS_DEV: &str = "/dev/vms";

/// An image name field of `vms.h`: NUL-terminated bytes.
pub type Name = [u8; VMS_NAME_LEN];

/// An errno, shown by its symbolic name (`EINVAL`), as `vms.h` documents
/// it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Errno(pub i32);

impl Errno {
    /// The errno the last failed system call left.
    pub fn last() -> Self {
        Self::of(&io::Error::last_os_error())
    }

    /// The errno of `e`, or 0 if it does not come from the OS.
    pub fn of(e: &io::Error) -> Self {
        Self(e.raw_os_error().unwrap_or(0))
    }

    /// The symbolic name, for the errnos vms and its system calls return.
    pub fn name(self) -> Option<&'static str> {
        vms_uapi::errno_name(self.0)
    }

    /// The C library's description, first letter lowercased to read as
    /// part of a sentence: `no such file or directory`.
    pub fn text(self) -> String {
        let full = io::Error::from_raw_os_error(self.0).to_string();
        // std appends " (os error N)"; the symbolic name replaces it.
        let text = full.split(" (os error").next().unwrap_or(&full);
        let mut chars = text.chars();
        match chars.next() {
            Some(first) => first.to_lowercase().chain(chars).collect(),
            None => format!("errno {}", self.0),
        }
    }
}

impl fmt::Display for Errno {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => f.write_str(name),
            None => write!(f, "errno {}", self.0),
        }
    }
}

/// What can go wrong talking to `/dev/vms` or a clone.
#[derive(Debug, Error)]
pub enum DevError {
    /// The device could not be opened.
    #[error("cannot open {}: {}", path.display(), open_hint(*errno))]
    Open {
        /// The device path.
        path: PathBuf,
        /// Why `open(2)` failed.
        errno: Errno,
    },
    /// `VMS_GET_VERSION` failed when checking the module's ABI.
    #[error("{VMS_DEV}: asking the module's version")]
    Version(#[source] Box<DevError>),
    /// The module speaks another ABI version than vmsctl.
    #[error(
        "{VMS_DEV} speaks ABI {module}, vmsctl ABI {VMS_ABI_VERSION}: load the vms \
         module built with this vmsctl (see `vmsctl version`)"
    )]
    AbiMismatch {
        /// `abi_version` from `VMS_GET_VERSION`.
        module: u32,
    },
    /// An ioctl failed.
    #[error("{name}: {} ({errno})", errno.text())]
    Ioctl {
        /// The ioctl's name, as in vms.h.
        name: &'static str,
        /// The errno.
        errno: Errno,
    },
    /// Mapping a clone failed.
    #[error("mmap of {len} bytes: {} ({errno})", errno.text())]
    Mmap {
        /// The length asked for.
        len: u64,
        /// The errno.
        errno: Errno,
    },
    /// The module answered with something the ABI does not allow.
    #[error("{name}: the module broke the ABI: {what}")]
    Abi {
        /// The ioctl's name, as in vms.h.
        name: &'static str,
        /// What is wrong with the answer.
        what: &'static str,
    },
}

/// The words for a failed `open(2)` of the device.
fn open_hint(errno: Errno) -> String {
    match errno.0 {
        libc::ENOENT | libc::ENODEV | libc::ENXIO => {
            format!("{} ({errno}): is the vms module loaded?", errno.text())
        }
        libc::EACCES | libc::EPERM => format!(
            "{} ({errno}): vmsctl needs read-write access to it (run as root?)",
            errno.text()
        ),
        _ => format!("{} ({errno})", errno.text()),
    }
}

impl DevError {
    /// Whether this error means the module is not loaded: no device node,
    /// or a node with no driver behind it.
    pub fn is_not_loaded(&self) -> bool {
        matches!(
            self,
            DevError::Open { errno, .. }
                if matches!(errno.0, libc::ENOENT | libc::ENODEV | libc::ENXIO)
        )
    }

    /// The errno of a failed ioctl or mmap: the ones whose meaning depends
    /// on the operation.
    pub fn errno(&self) -> Option<Errno> {
        match self {
            DevError::Ioctl { errno, .. } | DevError::Mmap { errno, .. } => Some(*errno),
            _ => None,
        }
    }
}

/// The result of a `/dev/vms` operation.
pub type Result<T> = std::result::Result<T, DevError>;

/// An argument struct of a `/dev/vms` ioctl.
///
/// # Safety
///
/// The type is `#[repr(C)]` plain data, mirrors a struct of `vms.h`, and
/// every bit pattern is a valid value (the kernel may write any).
unsafe trait IoctlArg {}

// SAFETY: each is `#[repr(C)]` of integers, integer arrays and (for
// `VmsImageInfo`) another such struct, mirroring `vms.h` with asserted
// layout.
unsafe impl IoctlArg for VmsVersion {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsImageCreate {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsImageInfo {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsImageList {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsCloneCreate {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsCloneStats {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsCloneAttach {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsImageSnapshot {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsCloneName {}
// SAFETY: as above. Its `bitmap` address is checked by the kernel, and
// `CloneFd::touched` points it at a buffer of the right length.
unsafe impl IoctlArg for VmsCloneTouched {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsCloneLimit {}
// SAFETY: as above.
unsafe impl IoctlArg for VmsCloneFootprint {}

/// Issues ioctl `request` on `fd` with `arg` as its argument, read and/or
/// written by the kernel; returns the ioctl's non-negative result.
///
/// Panics if the argument size encoded in `request` is not the size of
/// `T`: that is a bug in the table of ioctls, not a runtime error.
fn ioctl<T: IoctlArg>(
    fd: BorrowedFd<'_>,
    name: &'static str,
    request: u32,
    arg: &mut T,
) -> Result<i32> {
    let size = (request >> vms_uapi::_IOC_SIZESHIFT) & ((1 << vms_uapi::_IOC_SIZEBITS) - 1);
    assert_eq!(size as usize, size_of::<T>(), "{name}: argument size");
    // SAFETY: `arg` is an exclusive reference to a `T` whose size is the
    // one `request` encodes, so the kernel reads and writes only within it;
    // `T: IoctlArg` makes whatever it writes a valid `T`. `fd` is open for
    // the duration of the call.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::Ioctl::from(request), arg as *mut T) };
    if r < 0 {
        Err(DevError::Ioctl {
            name,
            errno: Errno::last(),
        })
    } else {
        Ok(r)
    }
}

/// Checks that a name field the module filled in is NUL-terminated.
fn check_name(name: &'static str, field: &Name) -> Result<()> {
    match name_bytes(field) {
        Some(_) => Ok(()),
        None => Err(DevError::Abi {
            name,
            what: "a name is not NUL-terminated",
        }),
    }
}

/// An open `/dev/vms`.
pub struct Vms {
    file: File,
}

impl Vms {
    /// Opens [`VMS_DEV`].
    pub fn open() -> Result<Self> {
        Self::open_path(Path::new(VMS_DEV))
    }

    /// Opens [`VMS_DEV`] and checks that the module speaks vmsctl's ABI;
    /// returns the module's version too.
    pub fn open_checked() -> Result<(Self, VmsVersion)> {
        let vms = Self::open()?;
        let version = vms
            .get_version()
            .map_err(|e| DevError::Version(Box::new(e)))?;
        if version.abi_version != VMS_ABI_VERSION {
            return Err(DevError::AbiMismatch {
                module: version.abi_version,
            });
        }
        Ok((vms, version))
    }

    /// Opens the vms device at `path`.
    pub fn open_path(path: &Path) -> Result<Self> {
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .map(|file| Self { file })
            .map_err(|e| DevError::Open {
                path: path.to_owned(),
                errno: Errno::of(&e),
            })
    }

    /// `VMS_GET_VERSION`: the ABI and module versions of the loaded module.
    pub fn get_version(&self) -> Result<VmsVersion> {
        const NAME: &str = "VMS_GET_VERSION";
        let mut v = VmsVersion::zeroed();
        ioctl(self.file.as_fd(), NAME, VMS_GET_VERSION, &mut v)?;
        if v.module_version_bytes().is_none() {
            return Err(DevError::Abi {
                name: NAME,
                what: "module_version is not NUL-terminated",
            });
        }
        Ok(v)
    }

    /// `VMS_IMAGE_CREATE`: creates image `name` from `size` bytes of `file`
    /// at `file_offset`.
    pub fn image_create(
        &self,
        name: &Name,
        file: BorrowedFd<'_>,
        size: u64,
        file_offset: u64,
    ) -> Result<()> {
        let mut arg = VmsImageCreate {
            name: *name,
            fd: file.as_raw_fd(),
            size,
            file_offset,
            ..VmsImageCreate::zeroed()
        };
        ioctl(
            self.file.as_fd(),
            "VMS_IMAGE_CREATE",
            VMS_IMAGE_CREATE,
            &mut arg,
        )?;
        Ok(())
    }

    /// `VMS_IMAGE_CREATE` with `VMS_IMAGE_EMPTY`: image `name` of `size`
    /// bytes that all read as zero (the memory of a VM booted from scratch).
    pub fn image_create_empty(&self, name: &Name, size: u64) -> Result<()> {
        let mut arg = VmsImageCreate {
            name: *name,
            fd: -1,
            flags: VMS_IMAGE_EMPTY,
            size,
            ..VmsImageCreate::zeroed()
        };
        ioctl(self.file.as_fd(), "VMS_IMAGE_CREATE", VMS_IMAGE_CREATE, &mut arg)?;
        Ok(())
    }

    /// `VMS_IMAGE_SNAPSHOT`: makes the live image `name` of `clone`'s
    /// current memory, without copying; `clone` continues on it.
    pub fn image_snapshot(&self, name: &Name, clone: &CloneFd) -> Result<()> {
        let mut arg = VmsImageSnapshot {
            name: *name,
            clone_fd: clone.fd.as_raw_fd(),
            ..VmsImageSnapshot::zeroed()
        };
        ioctl(self.file.as_fd(), "VMS_IMAGE_SNAPSHOT", VMS_IMAGE_SNAPSHOT, &mut arg)?;
        Ok(())
    }

    /// `VMS_IMAGE_INFO`: the counters of image `name`.
    pub fn image_info(&self, name: &Name) -> Result<VmsImageStats> {
        let mut arg = VmsImageInfo {
            name: *name,
            ..VmsImageInfo::zeroed()
        };
        ioctl(
            self.file.as_fd(),
            "VMS_IMAGE_INFO",
            VMS_IMAGE_INFO,
            &mut arg,
        )?;
        Ok(arg.stats)
    }

    /// `VMS_IMAGE_DELETE`: deletes image `name`.
    pub fn image_delete(&self, name: &Name) -> Result<()> {
        let mut arg = VmsImageInfo {
            name: *name,
            ..VmsImageInfo::zeroed()
        };
        ioctl(
            self.file.as_fd(),
            "VMS_IMAGE_DELETE",
            VMS_IMAGE_DELETE,
            &mut arg,
        )?;
        Ok(())
    }

    /// `VMS_IMAGE_LIST`: the name of the `index`-th image in name order, or
    /// `None` past the last one (`ENOENT`).
    pub fn image_list(&self, index: u32) -> Result<Option<Name>> {
        const NAME: &str = "VMS_IMAGE_LIST";
        let mut arg = VmsImageList {
            index,
            ..VmsImageList::zeroed()
        };
        match ioctl(self.file.as_fd(), NAME, VMS_IMAGE_LIST, &mut arg) {
            Ok(_) => {
                check_name(NAME, &arg.name)?;
                Ok(Some(arg.name))
            }
            Err(DevError::Ioctl {
                errno: Errno(libc::ENOENT),
                ..
            }) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// `VMS_CLONE_CREATE`: a new clone of image `name`.
    pub fn clone_create(&self, name: &Name) -> Result<CloneFd> {
        const NAME: &str = "VMS_CLONE_CREATE";
        let mut arg = VmsCloneCreate {
            name: *name,
            ..VmsCloneCreate::zeroed()
        };
        let fd = ioctl(self.file.as_fd(), NAME, VMS_CLONE_CREATE, &mut arg)?;
        // SAFETY: the ioctl succeeded, so `fd` is a new descriptor that the
        // kernel opened for us and that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(CloneFd { fd })
    }

    /// `VMS_CLONE_NAME`: names `clone` `name`, a device
    /// [`NAMED_CLONE_DIR`]`/NAME` that keeps the clone until
    /// [`clone_unname`](Self::clone_unname).
    pub fn clone_name(&self, name: &Name, clone: &CloneFd) -> Result<()> {
        let mut arg = VmsCloneName { name: *name, clone_fd: clone.fd.as_raw_fd(), ..VmsCloneName::zeroed() };
        ioctl(self.file.as_fd(), "VMS_CLONE_NAME", VMS_CLONE_NAME, &mut arg)?;
        Ok(())
    }

    /// `VMS_CLONE_UNNAME`: removes the name `name` and its device.
    pub fn clone_unname(&self, name: &Name) -> Result<()> {
        let mut arg = VmsCloneName { name: *name, clone_fd: -1, ..VmsCloneName::zeroed() };
        ioctl(self.file.as_fd(), "VMS_CLONE_UNNAME", VMS_CLONE_UNNAME, &mut arg)?;
        Ok(())
    }
}

/// Where named clones appear (`VMS_CLONE_NAME`): devtmpfs makes the misc
/// device `vms-clone!NAME` there.
pub const NAMED_CLONE_DIR: &str = "/dev/vms-clone";

/// Makes [`NAMED_CLONE_DIR`] a read-only bind mount of itself, unless
/// it is a mount point already; call it once a name exists (devtmpfs
/// makes the directory with its first node).
///
/// QEMU creates its `mem-path` when nothing has that name and runs the
/// guest on that file, ordinary memory without vms: a mistyped clone
/// name would be no error. On a read-only mount the create fails
/// (`EROFS`), so QEMU stops with "can't open backing store"; opening the
/// clones' device nodes for writing is not affected (a read-only mount
/// refuses writes to files, not to devices), nor is devtmpfs adding and
/// removing nodes (through its own mount). When the last name goes,
/// devtmpfs removes the directory, and the mount with it; the next name
/// makes it again. Best effort: without CAP_SYS_ADMIN it only warns.
pub fn guard_named_dir() {
    let dir = NAMED_CLONE_DIR;
    if named_dir_mounted() {
        return;
    }
    let path = std::ffi::CString::new(dir).expect("no NUL");
    // SAFETY: mount(2) with a NUL-terminated path that outlives the call
    // and no data.
    let bound = unsafe { libc::mount(path.as_ptr(), path.as_ptr(), std::ptr::null(), libc::MS_BIND, std::ptr::null()) } == 0;
    let r = match bound {
        true => remount_named_dir(true),
        false => Err(std::io::Error::last_os_error()),
    };
    if let Err(e) = r {
        if bound {
            // A writable bind mount guards nothing: take it away again.
            // SAFETY: umount2(2) of the mount we just made.
            unsafe { libc::umount2(path.as_ptr(), libc::MNT_DETACH) };
        }
        eprintln!(
            "vmsctl: cannot make {dir} a read-only mount ({e}): a program given a mem-path that names no \
             clone there will create a file and run on ordinary memory"
        );
    }
}

/// Whether [`NAMED_CLONE_DIR`] is a mount point (our bind mount).
fn named_dir_mounted() -> bool {
    std::fs::read_to_string("/proc/self/mountinfo")
        .map(|m| m.lines().any(|l| l.split(' ').nth(4) == Some(NAMED_CLONE_DIR)))
        .unwrap_or(false)
}

/// Remounts the bind mount of [`NAMED_CLONE_DIR`] read-only or writable,
/// keeping its other flags (a bind remount sets all of them: `/dev`'s
/// `nosuid`, say, would otherwise be dropped).
fn remount_named_dir(read_only: bool) -> std::io::Result<()> {
    let dir = std::ffi::CString::new(NAMED_CLONE_DIR).expect("no NUL");
    // SAFETY: statvfs(3) into a zeroed struct it fills.
    let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: a NUL-terminated path and a struct to fill.
    if unsafe { libc::statvfs(dir.as_ptr(), &mut st) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    let keep = [
        (libc::ST_NOSUID, libc::MS_NOSUID),
        (libc::ST_NODEV, libc::MS_NODEV),
        (libc::ST_NOEXEC, libc::MS_NOEXEC),
        (libc::ST_NOATIME, libc::MS_NOATIME),
        (libc::ST_NODIRATIME, libc::MS_NODIRATIME),
        (libc::ST_RELATIME, libc::MS_RELATIME),
    ]
    .iter()
    .filter(|(st_flag, _)| st.f_flag & st_flag != 0)
    .fold(0, |acc, (_, ms)| acc | ms);
    let flags = libc::MS_BIND | libc::MS_REMOUNT | keep | if read_only { libc::MS_RDONLY } else { 0 };
    let none = std::ffi::CString::new("none").expect("no NUL");
    // SAFETY: mount(2) with NUL-terminated strings that outlive it.
    let r = unsafe { libc::mount(none.as_ptr(), dir.as_ptr(), std::ptr::null(), flags, std::ptr::null()) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Gives the device of named clone `name` to `owner` (a user name or
/// uid, with that user's group): remounts [`NAMED_CLONE_DIR`] writable
/// for the chown, then read-only again (see [`guard_named_dir`]).
pub fn chown_named(name: &str, owner: &str) -> anyhow::Result<()> {
    use anyhow::{bail, Context};
    let (uid, gid) = match owner.parse::<u32>() {
        Ok(uid) => (uid, None),
        Err(_) => {
            let c = std::ffi::CString::new(owner).context("user name")?;
            // SAFETY: getpwnam with a NUL-terminated name; the record is
            // read at once, before any other call could reuse it.
            let pw = unsafe { libc::getpwnam(c.as_ptr()) };
            if pw.is_null() {
                bail!("no user named {owner}");
            }
            // SAFETY: `pw` is a valid record (checked above).
            unsafe { ((*pw).pw_uid, Some((*pw).pw_gid)) }
        }
    };
    // Only our own bind mount: a remount of the directory where it is no
    // mount point would remount the mount it is in (/dev).
    let guarded = named_dir_mounted() && remount_named_dir(false).is_ok();
    let path = std::path::Path::new(NAMED_CLONE_DIR).join(name);
    let r = std::os::unix::fs::chown(&path, Some(uid), gid);
    if guarded {
        if let Err(e) = remount_named_dir(true) {
            eprintln!("vmsctl: {NAMED_CLONE_DIR} stays writable: remounting it read-only: {e}");
        }
    }
    r.with_context(|| format!("chown {}", path.display()))
}

/// The named clones, from sysfs (`/sys/class/misc/vms-clone!NAME`), in
/// name order.
pub fn named_clones() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/sys/class/misc")
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.strip_prefix("vms-clone!").map(str::to_owned))
        .collect();
    names.sort();
    names
}

/// A clone's file descriptor. The clone lives as long as this descriptor
/// or a mapping of it.
pub struct CloneFd {
    fd: OwnedFd,
}

impl CloneFd {
    /// Opens the clone named `name` ([`NAMED_CLONE_DIR`]`/NAME`).
    pub fn open_named(name: &str) -> Result<Self> {
        let path = Path::new(NAMED_CLONE_DIR).join(name);
        OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map(|f| CloneFd { fd: f.into() })
            .map_err(|e| DevError::Open { path, errno: Errno::of(&e) })
    }

    /// `VMS_CLONE_ATTACH`: serve memslot `slot` of the VM `vm_fd` from
    /// clone bytes `offset..offset + size`.
    pub fn attach(&self, vm_fd: std::os::fd::RawFd, slot: u32, offset: u64, size: u64) -> Result<()> {
        let mut arg = VmsCloneAttach {
            vm_fd,
            slot,
            offset,
            size,
            ..VmsCloneAttach::zeroed()
        };
        ioctl(self.fd.as_fd(), "VMS_CLONE_ATTACH", VMS_CLONE_ATTACH, &mut arg)?;
        Ok(())
    }

    /// `VMS_CLONE_STATS`: the clone's counters.
    pub fn stats(&self) -> Result<VmsCloneStats> {
        let mut arg = VmsCloneStats::zeroed();
        ioctl(
            self.fd.as_fd(),
            "VMS_CLONE_STATS",
            VMS_CLONE_STATS,
            &mut arg,
        )?;
        Ok(arg)
    }

    /// `VMS_CLONE_RESET`: drop every private page; the clone reads its
    /// image again.
    pub fn reset(&self) -> Result<()> {
        // SAFETY: VMS_CLONE_RESET takes no argument and reads no memory.
        let r = unsafe { libc::ioctl(self.fd.as_raw_fd(), libc::Ioctl::from(VMS_CLONE_RESET), 0u64) };
        if r < 0 {
            return Err(DevError::Ioctl { name: "VMS_CLONE_RESET", errno: Errno::last() });
        }
        Ok(())
    }

    /// `VMS_CLONE_SET_LIMIT`: keep at most `pages` private pages in
    /// memory (0: no limit), the rest in a swap file the module makes in
    /// the directory open as `dir` (`None`: the clone's swap file, made by
    /// an earlier call).
    pub fn set_limit(&self, pages: u64, dir: Option<BorrowedFd<'_>>) -> Result<()> {
        let mut arg = VmsCloneLimit {
            limit: pages,
            swap_dir_fd: dir.map_or(-1, |d| d.as_raw_fd()),
            ..VmsCloneLimit::zeroed()
        };
        ioctl(self.fd.as_fd(), "VMS_CLONE_SET_LIMIT", VMS_CLONE_SET_LIMIT, &mut arg)?;
        Ok(())
    }

    /// `VMS_CLONE_FOOTPRINT`: the clone's limit and swap counters. A
    /// module from before the ioctl says ENOTTY.
    pub fn footprint(&self) -> Result<VmsCloneFootprint> {
        let mut arg = VmsCloneFootprint::zeroed();
        ioctl(self.fd.as_fd(), "VMS_CLONE_FOOTPRINT", VMS_CLONE_FOOTPRINT, &mut arg)?;
        Ok(arg)
    }

    /// `VMS_CLONE_TOUCHED`: the pages of `0..npages` the clone has used
    /// since it was made, one bit each (bit `b` of word `w` is page
    /// `64 * w + b`). A module from before the ioctl says ENOTTY.
    pub fn touched(&self, npages: u64) -> Result<Vec<u64>> {
        let mut bitmap = vec![0u64; npages.div_ceil(64) as usize];
        let mut arg = VmsCloneTouched { bitmap: bitmap.as_mut_ptr() as u64, npages, ..VmsCloneTouched::zeroed() };
        ioctl(self.fd.as_fd(), "VMS_CLONE_TOUCHED", VMS_CLONE_TOUCHED, &mut arg)?;
        let set: u64 = bitmap.iter().map(|w| u64::from(w.count_ones())).sum();
        if set != arg.touched {
            return Err(DevError::Abi { name: "VMS_CLONE_TOUCHED", what: "its count disagrees with its bitmap" });
        }
        Ok(bitmap)
    }

    /// Maps the first `len` bytes of the clone, shared, readable and
    /// writable, as a VMM does.
    pub fn map(&self, len: u64) -> Result<CloneMap> {
        let mmap_err = |errno| DevError::Mmap { len, errno };
        let size = usize::try_from(len).map_err(|_| mmap_err(Errno(libc::ENOMEM)))?;
        if size == 0 {
            return Err(mmap_err(Errno(libc::EINVAL)));
        }
        // SAFETY: a new mapping at an address the kernel picks (no
        // MAP_FIXED) cannot overlap memory Rust owns; `self.fd` is open for
        // the call.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                self.fd.as_raw_fd(),
                0,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(mmap_err(Errno::last()));
        }
        let addr = NonNull::new(addr.cast::<u8>()).ok_or(DevError::Abi {
            name: "mmap",
            what: "mapped the clone at address 0",
        })?;
        // INVARIANT: `addr..addr + size` is a mapping that only this value
        // unmaps.
        Ok(CloneMap { addr, len: size })
    }
}

// SAFETY: the mapping is plain shared memory; accessors are volatile.
unsafe impl Send for CloneMap {}
// SAFETY: as above.
unsafe impl Sync for CloneMap {}

/// A shared mapping of a clone, unmapped on drop.
///
/// Accesses may fault the page in from the module; if the module cannot
/// produce it, the access raises `SIGBUS`.
///
/// # Invariants
///
/// `addr..addr + len` is a readable and writable mapping, made by
/// [`CloneFd::map`], that nothing else unmaps.
pub struct CloneMap {
    addr: NonNull<u8>,
    len: usize,
}

impl CloneMap {
    /// The address of the first byte.
    pub fn as_ptr(&self) -> *mut u8 {
        self.addr.as_ptr()
    }

    /// Copies `buf.len()` bytes at `offset` into `buf`. Panics if the
    /// range is out of the mapping.
    pub fn read_into(&self, offset: usize, buf: &mut [u8]) {
        assert!(
            offset.checked_add(buf.len()).is_some_and(|end| end <= self.len),
            "range {offset}+{} out of the mapping",
            buf.len()
        );
        // SAFETY: by the type invariant and the check above, the source is
        // readable mapped memory that no Rust reference covers; `buf` is
        // ours and cannot overlap a mapping made by mmap.
        unsafe {
            std::ptr::copy_nonoverlapping(self.addr.as_ptr().add(offset), buf.as_mut_ptr(), buf.len())
        }
    }

    /// Reads the byte at `offset`. Panics if `offset` is out of the
    /// mapping.
    pub fn read_byte(&self, offset: usize) -> u8 {
        assert!(offset < self.len, "offset {offset} out of the mapping");
        // SAFETY: by the type invariant and the check above, the address is
        // in a readable mapping. The kernel may change the byte at any time
        // (it is shared memory), hence a volatile read through a raw
        // pointer and no reference.
        unsafe { self.addr.as_ptr().add(offset).read_volatile() }
    }

    /// Writes `value` at `offset`. Panics if `offset` is out of the
    /// mapping.
    pub fn write_byte(&self, offset: usize, value: u8) {
        assert!(offset < self.len, "offset {offset} out of the mapping");
        // SAFETY: by the type invariant and the check above, the address is
        // in a writable mapping that no Rust reference covers.
        unsafe { self.addr.as_ptr().add(offset).write_volatile(value) }
    }
}

impl Drop for CloneMap {
    fn drop(&mut self) {
        // SAFETY: by the type invariant, this is our mapping and nothing
        // else unmaps it; no reference into it outlives `self`.
        unsafe { libc::munmap(self.addr.as_ptr().cast(), self.len) };
    }
}
