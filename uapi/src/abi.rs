// SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note

//! The Rust mirror of `uapi/vms.h`, the ABI of `/dev/vms`.
//!
//! `vms.h` is the one definition of the ABI; this file follows it item by
//! item, and the assertions at the end of each struct pin its size and
//! field offsets to the values the C compiler gives for the header.
//!
//! This file is compiled twice: as a module of the `vms-uapi` crate (for
//! `vmsctl` and the selftests), and into the kernel module with
//! `#[path = "../uapi/src/abi.rs"] pub mod uapi;`. It therefore uses only
//! `core`, depends on nothing, and has no inner attributes.

/// The ioctl type code of `/dev/vms` (`VMS_IOCTL_TYPE`).
///
/// `Documentation/userspace-api/ioctl/ioctl-number.rst` lists no user of
/// 0xB9 in 6.12.
pub const VMS_IOCTL_TYPE: u32 = 0xB9;

/// `VMS_ABI_VERSION`: bumped on every incompatible change of `vms.h`.
///
/// Userspace compares it with [`VmsVersion::abi_version`].
pub const VMS_ABI_VERSION: u32 = 3;

/// `VMS_MODULE_VERSION_LEN`: the size of [`VmsVersion::module_version`],
/// including its terminating NUL.
pub const VMS_MODULE_VERSION_LEN: usize = 32;

// ioctl number encoding, as in `include/uapi/asm-generic/ioctl.h` (which x86
// uses): `dir << 30 | size << 16 | type << 8 | nr`.

/// Bits of the command number (`_IOC_NRBITS`).
pub const _IOC_NRBITS: u32 = 8;
/// Bits of the type code (`_IOC_TYPEBITS`).
pub const _IOC_TYPEBITS: u32 = 8;
/// Bits of the argument size (`_IOC_SIZEBITS`).
pub const _IOC_SIZEBITS: u32 = 14;
/// Bits of the direction (`_IOC_DIRBITS`).
pub const _IOC_DIRBITS: u32 = 2;

/// Shift of the command number (`_IOC_NRSHIFT`).
pub const _IOC_NRSHIFT: u32 = 0;
/// Shift of the type code (`_IOC_TYPESHIFT`).
pub const _IOC_TYPESHIFT: u32 = _IOC_NRSHIFT + _IOC_NRBITS;
/// Shift of the argument size (`_IOC_SIZESHIFT`).
pub const _IOC_SIZESHIFT: u32 = _IOC_TYPESHIFT + _IOC_TYPEBITS;
/// Shift of the direction (`_IOC_DIRSHIFT`).
pub const _IOC_DIRSHIFT: u32 = _IOC_SIZESHIFT + _IOC_SIZEBITS;

/// Direction: no argument is transferred (`_IOC_NONE`).
pub const _IOC_NONE: u32 = 0;
/// Direction: userspace writes the argument, the kernel reads it
/// (`_IOC_WRITE`).
pub const _IOC_WRITE: u32 = 1;
/// Direction: the kernel writes the argument, userspace reads it
/// (`_IOC_READ`).
pub const _IOC_READ: u32 = 2;

/// Encodes an ioctl number (`_IOC`).
///
/// Fails to compile (or panics, outside const context) if an argument does
/// not fit its field.
#[expect(non_snake_case, reason = "named after the C macro it mirrors")]
pub const fn _IOC(dir: u32, ty: u32, nr: u32, size: usize) -> u32 {
    assert!(dir < (1 << _IOC_DIRBITS));
    assert!(ty < (1 << _IOC_TYPEBITS));
    assert!(nr < (1 << _IOC_NRBITS));
    assert!(size < (1 << _IOC_SIZEBITS));
    (dir << _IOC_DIRSHIFT)
        | ((size as u32) << _IOC_SIZESHIFT)
        | (ty << _IOC_TYPESHIFT)
        | (nr << _IOC_NRSHIFT)
}

/// Encodes an ioctl number without an argument (`_IO`).
#[expect(non_snake_case, reason = "named after the C macro it mirrors")]
pub const fn _IO(ty: u32, nr: u32) -> u32 {
    _IOC(_IOC_NONE, ty, nr, 0)
}

/// Encodes an ioctl number whose argument of `size` bytes the kernel writes
/// (`_IOR`; C passes the type, Rust passes `size_of::<T>()`).
#[expect(non_snake_case, reason = "named after the C macro it mirrors")]
pub const fn _IOR(ty: u32, nr: u32, size: usize) -> u32 {
    _IOC(_IOC_READ, ty, nr, size)
}

/// Encodes an ioctl number whose argument of `size` bytes the kernel reads
/// (`_IOW`; C passes the type, Rust passes `size_of::<T>()`).
#[expect(non_snake_case, reason = "named after the C macro it mirrors")]
pub const fn _IOW(ty: u32, nr: u32, size: usize) -> u32 {
    _IOC(_IOC_WRITE, ty, nr, size)
}

/// Encodes an ioctl number whose argument of `size` bytes the kernel reads
/// and writes (`_IOWR`; C passes the type, Rust passes `size_of::<T>()`).
#[expect(non_snake_case, reason = "named after the C macro it mirrors")]
pub const fn _IOWR(ty: u32, nr: u32, size: usize) -> u32 {
    _IOC(_IOC_READ | _IOC_WRITE, ty, nr, size)
}

/// `struct vms_version`: the argument of [`VMS_GET_VERSION`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsVersion {
    /// (out) [`VMS_ABI_VERSION`] of the loaded module.
    pub abi_version: u32,
    /// (in) Must be 0.
    pub flags: u32,
    /// (out) The module's version, NUL-terminated.
    pub module_version: [u8; VMS_MODULE_VERSION_LEN],
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsVersion>() == 72);
const _: () = assert!(core::mem::align_of::<VmsVersion>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsVersion, abi_version) == 0);
const _: () = assert!(core::mem::offset_of!(VmsVersion, flags) == 4);
const _: () = assert!(core::mem::offset_of!(VmsVersion, module_version) == 8);
const _: () = assert!(core::mem::offset_of!(VmsVersion, reserved) == 40);

impl VmsVersion {
    /// An all-zero argument: what userspace passes to [`VMS_GET_VERSION`].
    pub const fn zeroed() -> Self {
        Self {
            abi_version: 0,
            flags: 0,
            module_version: [0; VMS_MODULE_VERSION_LEN],
            reserved: [0; 4],
        }
    }

    /// The bytes of [`Self::module_version`] before its first NUL, or
    /// `None` if it has no NUL (which the ABI does not allow).
    pub fn module_version_bytes(&self) -> Option<&[u8]> {
        let len = self.module_version.iter().position(|&b| b == 0)?;
        Some(&self.module_version[..len])
    }
}

/// `VMS_GET_VERSION`: reports the ABI and module versions.
///
/// Argument: [`VmsVersion`], read and written.
///
/// Context: any process that can open `/dev/vms`.
///
/// Return: 0, or
///  - `EFAULT`: the argument is not readable and writable;
///  - `EINVAL`: `flags` or `reserved` is not zero.
pub const VMS_GET_VERSION: u32 = _IOWR(VMS_IOCTL_TYPE, 0x00, core::mem::size_of::<VmsVersion>());

// Images and clones.
//
// An image is an immutable guest memory image: a raw dump of guest-physical
// memory in a file (page N of the image is at file offset
// `file_offset + N * 4096`; holes read as zero). Images are named and live
// in the module until deleted. A page is read from the file the first time
// a clone needs it and is then kept in the image's cache and shared by
// every clone. All-zero pages share one zero page and cost no memory.
//
// A clone is a VM's memory, created from an image. Its file descriptor is
// mmap()ed by the VMM (`MAP_SHARED`, offset 0 = image page 0) and attached
// to one or more memslots of one KVM VM that the VMM creates with
// [`KVM_MEM_PAGE_PROVIDER`] and `userspace_addr` inside that mapping. Reads
// see the image's page; the first write, from the guest or through the
// mapping, gives the clone a private copy of the page.

/// `VMS_NAME_LEN`: the size of an image name field, including its
/// terminating NUL (so a name has at most 31 bytes).
pub const VMS_NAME_LEN: usize = 32;

/// The bytes of a name field before its first NUL, or `None` if it has no
/// NUL (which the ABI does not allow).
pub fn name_bytes(name: &[u8; VMS_NAME_LEN]) -> Option<&[u8]> {
    let len = name.iter().position(|&b| b == 0)?;
    Some(&name[..len])
}

/// Stores `name` in the name field `dst`, NUL-terminated and zero-filled.
///
/// Returns `false`, leaving `dst` unchanged, if `name` does not fit with
/// its NUL (more than `VMS_NAME_LEN - 1` bytes) or contains a NUL itself.
/// It does not check the characters: the module does (`EINVAL`).
pub fn set_name(dst: &mut [u8; VMS_NAME_LEN], name: &[u8]) -> bool {
    if name.len() >= VMS_NAME_LEN || name.contains(&0) {
        return false;
    }
    *dst = [0; VMS_NAME_LEN];
    dst[..name.len()].copy_from_slice(name);
    true
}

/// [`VmsImageCreate::flags`]: an image with no file whose every page reads
/// as zero (`fd` must be -1 and `file_offset` 0): the memory of a VM booted
/// from scratch.
pub const VMS_IMAGE_EMPTY: u32 = 1 << 0;

/// `struct vms_image_create`: the argument of [`VMS_IMAGE_CREATE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsImageCreate {
    /// (in) NUL-terminated name, unique in the module: letters, digits,
    /// `-`, `_` and `.`, at least one character.
    pub name: [u8; VMS_NAME_LEN],
    /// (in) File to read pages from, open for reading; -1 with
    /// [`VMS_IMAGE_EMPTY`].
    pub fd: i32,
    /// (in) 0, or [`VMS_IMAGE_EMPTY`].
    pub flags: u32,
    /// (in) Size of guest memory in bytes, a non-zero multiple of 4096; the
    /// file must hold `file_offset + size` bytes.
    pub size: u64,
    /// (in) Offset of guest-physical address 0 in the file, a multiple of
    /// 4096.
    pub file_offset: u64,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsImageCreate>() == 88);
const _: () = assert!(core::mem::align_of::<VmsImageCreate>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageCreate, name) == 0);
const _: () = assert!(core::mem::offset_of!(VmsImageCreate, fd) == 32);
const _: () = assert!(core::mem::offset_of!(VmsImageCreate, flags) == 36);
const _: () = assert!(core::mem::offset_of!(VmsImageCreate, size) == 40);
const _: () = assert!(core::mem::offset_of!(VmsImageCreate, file_offset) == 48);
const _: () = assert!(core::mem::offset_of!(VmsImageCreate, reserved) == 56);

impl VmsImageCreate {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            name: [0; VMS_NAME_LEN],
            fd: 0,
            flags: 0,
            size: 0,
            file_offset: 0,
            reserved: [0; 4],
        }
    }
}

/// `struct vms_image_stats`: an image's counters, in [`VmsImageInfo`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsImageStats {
    /// Bytes of guest memory in the image.
    pub size: u64,
    /// Clones that use the image now.
    pub clones: u64,
    /// Pages read from the file and held in the image's cache.
    pub cached_pages: u64,
    /// Pages found all-zero, served by the shared zero page.
    pub zero_pages: u64,
    /// Pages read from the file (cached or zero) since creation.
    pub streamed: u64,
    /// Failed reads of the file.
    pub read_errors: u64,
    /// 0 for an image made from a file or empty; parent's + 1 for a live
    /// image.
    pub generation: u64,
    /// Live images made on this image that still exist.
    pub children: u64,
    /// NUL-terminated name of the image a live image is layered on; empty
    /// for generation 0. For a live image, `cached_pages` counts the pages
    /// it took from its clone.
    pub parent: [u8; VMS_NAME_LEN],
    /// Of `cached_pages`, those that are the image file's own page-cache
    /// pages, mapped by clones instead of a copy (they cost no memory
    /// beyond the page cache).
    pub file_pages: u64,
    /// Copies of such pages that the cache holds for VMMs' mappings of
    /// clones (a VMM never maps a page-cache page itself); each costs a
    /// page.
    pub vmm_copies: u64,
    /// Pages the image's cache gave back under host memory pressure (the
    /// `vms-clones` shrinker): pages of an image made from a file with no
    /// live image on it, which no clone mapped then; a later fault
    /// streams them again (`streamed`). It was `reserved[0]` until
    /// 2026-12-05 (same ABI version): older modules report 0 here. Until
    /// 2026-12-06 only images no clone used gave pages back.
    pub dropped: u64,
    /// Pages the image's cache took back from clones that mapped them,
    /// under the same pressure: zapped from those clones' stage 2, and
    /// dropped if no clone mapped them again before reclaim came back to
    /// them. Counted once per clone. It was the last reserved word until
    /// 2026-12-06 (same ABI version): older modules report 0 here.
    pub unmapped: u64,
}

const _: () = assert!(core::mem::size_of::<VmsImageStats>() == 128);
const _: () = assert!(core::mem::align_of::<VmsImageStats>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, size) == 0);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, clones) == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, cached_pages) == 16);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, zero_pages) == 24);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, streamed) == 32);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, read_errors) == 40);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, generation) == 48);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, children) == 56);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, parent) == 64);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, file_pages) == 96);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, vmm_copies) == 104);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, dropped) == 112);
const _: () = assert!(core::mem::offset_of!(VmsImageStats, unmapped) == 120);

impl VmsImageStats {
    /// All counters zero.
    pub const fn zeroed() -> Self {
        Self {
            size: 0,
            clones: 0,
            cached_pages: 0,
            zero_pages: 0,
            streamed: 0,
            read_errors: 0,
            generation: 0,
            children: 0,
            parent: [0; VMS_NAME_LEN],
            file_pages: 0,
            vmm_copies: 0,
            dropped: 0,
            unmapped: 0,
        }
    }
}

/// `struct vms_image_info`: the argument of [`VMS_IMAGE_INFO`] and
/// [`VMS_IMAGE_DELETE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsImageInfo {
    /// (in) The image's name.
    pub name: [u8; VMS_NAME_LEN],
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub pad: u32,
    /// (out) Counters, [`VMS_IMAGE_INFO`] only.
    pub stats: VmsImageStats,
}

const _: () = assert!(core::mem::size_of::<VmsImageInfo>() == 168);
const _: () = assert!(core::mem::align_of::<VmsImageInfo>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageInfo, name) == 0);
const _: () = assert!(core::mem::offset_of!(VmsImageInfo, flags) == 32);
const _: () = assert!(core::mem::offset_of!(VmsImageInfo, pad) == 36);
const _: () = assert!(core::mem::offset_of!(VmsImageInfo, stats) == 40);

impl VmsImageInfo {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            name: [0; VMS_NAME_LEN],
            flags: 0,
            pad: 0,
            stats: VmsImageStats::zeroed(),
        }
    }
}

/// `struct vms_image_list`: the argument of [`VMS_IMAGE_LIST`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsImageList {
    /// (in) Which image, from 0, in name order.
    pub index: u32,
    /// (in) Must be 0.
    pub flags: u32,
    /// (out) Its name.
    pub name: [u8; VMS_NAME_LEN],
    /// (in) Must be 0.
    pub reserved: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<VmsImageList>() == 56);
const _: () = assert!(core::mem::align_of::<VmsImageList>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageList, index) == 0);
const _: () = assert!(core::mem::offset_of!(VmsImageList, flags) == 4);
const _: () = assert!(core::mem::offset_of!(VmsImageList, name) == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageList, reserved) == 40);

impl VmsImageList {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            index: 0,
            flags: 0,
            name: [0; VMS_NAME_LEN],
            reserved: [0; 2],
        }
    }
}

/// `struct vms_clone_create`: the argument of [`VMS_CLONE_CREATE`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneCreate {
    /// (in) The image to clone.
    pub name: [u8; VMS_NAME_LEN],
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub pad: u32,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsCloneCreate>() == 72);
const _: () = assert!(core::mem::align_of::<VmsCloneCreate>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneCreate, name) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneCreate, flags) == 32);
const _: () = assert!(core::mem::offset_of!(VmsCloneCreate, pad) == 36);
const _: () = assert!(core::mem::offset_of!(VmsCloneCreate, reserved) == 40);

impl VmsCloneCreate {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            name: [0; VMS_NAME_LEN],
            flags: 0,
            pad: 0,
            reserved: [0; 4],
        }
    }
}

/// `struct vms_image_snapshot`: the argument of [`VMS_IMAGE_SNAPSHOT`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsImageSnapshot {
    /// (in) Name of the new live image (rules of [`VmsImageCreate::name`]).
    pub name: [u8; VMS_NAME_LEN],
    /// (in) Clone file descriptor whose current memory it takes.
    pub clone_fd: i32,
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsImageSnapshot>() == 72);
const _: () = assert!(core::mem::align_of::<VmsImageSnapshot>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsImageSnapshot, name) == 0);
const _: () = assert!(core::mem::offset_of!(VmsImageSnapshot, clone_fd) == 32);
const _: () = assert!(core::mem::offset_of!(VmsImageSnapshot, flags) == 36);
const _: () = assert!(core::mem::offset_of!(VmsImageSnapshot, reserved) == 40);

impl VmsImageSnapshot {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            name: [0; VMS_NAME_LEN],
            clone_fd: 0,
            flags: 0,
            reserved: [0; 4],
        }
    }
}

/// `struct vms_clone_name`: the argument of [`VMS_CLONE_NAME`] and
/// [`VMS_CLONE_UNNAME`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneName {
    /// (in) The clone's name (rules of [`VmsImageCreate::name`]).
    pub name: [u8; VMS_NAME_LEN],
    /// (in) [`VMS_CLONE_NAME`]: the clone file descriptor to name;
    /// [`VMS_CLONE_UNNAME`]: must be -1.
    pub clone_fd: i32,
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsCloneName>() == 72);
const _: () = assert!(core::mem::align_of::<VmsCloneName>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneName, name) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneName, clone_fd) == 32);
const _: () = assert!(core::mem::offset_of!(VmsCloneName, flags) == 36);
const _: () = assert!(core::mem::offset_of!(VmsCloneName, reserved) == 40);

impl VmsCloneName {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            name: [0; VMS_NAME_LEN],
            clone_fd: 0,
            flags: 0,
            reserved: [0; 4],
        }
    }
}

/// `struct vms_clone_attach`: the argument of [`VMS_CLONE_ATTACH`].
///
/// The VMM creates the memslot with [`KVM_MEM_PAGE_PROVIDER`], the same
/// size, and `userspace_addr` = (its mapping of the clone) + `offset`. A
/// clone serves one VM; its memslots must not overlap in the clone.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneAttach {
    /// (in) A KVM VM file descriptor (`KVM_CREATE_VM`); the VM must use TDP
    /// (EPT or NPT).
    pub vm_fd: i32,
    /// (in) The memslot, as in `kvm_userspace_memory_region.slot`
    /// (address space << 16 | id).
    pub slot: u32,
    /// (in) Byte offset in the clone where the memslot starts, a multiple
    /// of 4096.
    pub offset: u64,
    /// (in) Bytes, a non-zero multiple of 4096; `offset + size` must not
    /// exceed the clone.
    pub size: u64,
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub pad: u32,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsCloneAttach>() == 64);
const _: () = assert!(core::mem::align_of::<VmsCloneAttach>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, vm_fd) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, slot) == 4);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, offset) == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, size) == 16);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, flags) == 24);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, pad) == 28);
const _: () = assert!(core::mem::offset_of!(VmsCloneAttach, reserved) == 32);

impl VmsCloneAttach {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            vm_fd: 0,
            slot: 0,
            offset: 0,
            size: 0,
            flags: 0,
            pad: 0,
            reserved: [0; 4],
        }
    }
}

/// `struct vms_clone_stats`: the argument of [`VMS_CLONE_STATS`] (all out).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneStats {
    /// Bytes of guest memory.
    pub size: u64,
    /// Stage-2 (EPT/NPT) faults served.
    pub faults: u64,
    /// Faults of the VMM's mapping served.
    pub mmap_faults: u64,
    /// Faults answered with the image's shared page.
    pub shared_maps: u64,
    /// Faults answered with the shared zero page.
    pub zero_maps: u64,
    /// Image pages this clone caused to be read from the file.
    pub streamed: u64,
    /// Private copies made on first write.
    pub cow_copies: u64,
    /// Private pages the clone holds now.
    pub private_pages: u64,
    /// Faults that failed because the image could not be read.
    pub io_errors: u64,
    /// NUL-terminated name of the clone's image (after
    /// [`VMS_IMAGE_SNAPSHOT`], the live image it became a clone of).
    pub image: [u8; VMS_NAME_LEN],
    /// [`VMS_CLONE_RESET`] calls that succeeded on this clone.
    pub resets: u64,
    /// 0.
    pub reserved: [u64; 2],
}

const _: () = assert!(core::mem::size_of::<VmsCloneStats>() == 128);
const _: () = assert!(core::mem::align_of::<VmsCloneStats>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, size) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, faults) == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, mmap_faults) == 16);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, shared_maps) == 24);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, zero_maps) == 32);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, streamed) == 40);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, cow_copies) == 48);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, private_pages) == 56);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, io_errors) == 64);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, image) == 72);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, resets) == 104);
const _: () = assert!(core::mem::offset_of!(VmsCloneStats, reserved) == 112);

impl VmsCloneStats {
    /// All counters zero.
    pub const fn zeroed() -> Self {
        Self {
            size: 0,
            faults: 0,
            mmap_faults: 0,
            shared_maps: 0,
            zero_maps: 0,
            streamed: 0,
            cow_copies: 0,
            private_pages: 0,
            io_errors: 0,
            image: [0; VMS_NAME_LEN],
            resets: 0,
            reserved: [0; 2],
        }
    }
}

/// `struct vms_clone_touched`: the argument of [`VMS_CLONE_TOUCHED`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneTouched {
    /// (in) User address of a bitmap of `npages` bits in `u64` words: bit
    /// `b` of word `w` is clone page `first + 64 * w + b`;
    /// `npages.div_ceil(64)` words are written, bits past `npages` are 0.
    pub bitmap: u64,
    /// (in) The first clone page, a multiple of 64.
    pub first: u64,
    /// (in) How many pages; `first + npages` must not exceed the clone.
    pub npages: u64,
    /// (out) How many bits were set.
    pub touched: u64,
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub pad: u32,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsCloneTouched>() == 72);
const _: () = assert!(core::mem::align_of::<VmsCloneTouched>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, bitmap) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, first) == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, npages) == 16);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, touched) == 24);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, flags) == 32);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, pad) == 36);
const _: () = assert!(core::mem::offset_of!(VmsCloneTouched, reserved) == 40);

impl VmsCloneTouched {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self {
            bitmap: 0,
            first: 0,
            npages: 0,
            touched: 0,
            flags: 0,
            pad: 0,
            reserved: [0; 4],
        }
    }
}

/// `struct vms_clone_limit`: the argument of [`VMS_CLONE_SET_LIMIT`].
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneLimit {
    /// (in) The most private pages the clone keeps in memory; 0: no limit
    /// (pages already in the swap file stay there until used).
    pub limit: u64,
    /// (in) A directory, open for reading, on the file system that is to
    /// hold the clone's swap file, or -1 to keep the clone's swap file.
    /// The module creates the file there, unnamed (as `O_TMPFILE`), owned
    /// by the caller, with `O_DIRECT` where the file system has it; it
    /// goes when the clone goes. The first nonzero `limit` needs one; a
    /// clone has one swap file for life.
    pub swap_dir_fd: i32,
    /// (in) Must be 0.
    pub flags: u32,
    /// (in) Must be 0.
    pub reserved: [u64; 4],
}

const _: () = assert!(core::mem::size_of::<VmsCloneLimit>() == 48);
const _: () = assert!(core::mem::align_of::<VmsCloneLimit>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneLimit, limit) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneLimit, swap_dir_fd) == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneLimit, flags) == 12);
const _: () = assert!(core::mem::offset_of!(VmsCloneLimit, reserved) == 16);

impl VmsCloneLimit {
    /// An all-zero argument.
    pub const fn zeroed() -> Self {
        Self { limit: 0, swap_dir_fd: 0, flags: 0, reserved: [0; 4] }
    }
}

/// `struct vms_clone_footprint`: the argument of [`VMS_CLONE_FOOTPRINT`]
/// (all out).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct VmsCloneFootprint {
    /// The clone's limit of private pages in memory (0: none).
    pub limit: u64,
    /// Private pages in memory now ([`VmsCloneStats::private_pages`]).
    pub resident: u64,
    /// Private pages in the swap file now.
    pub swapped: u64,
    /// Pages written to the swap file and freed, in total.
    pub evicted: u64,
    /// Pages read back from the swap file, in total.
    pub read_back: u64,
    /// Pages whose write to the swap file failed; they stayed in memory.
    pub evict_errors: u64,
    /// Pages eviction passed over because someone held them (a pin for
    /// I/O, KVM's `kvm_vcpu_map()`, a fault in flight).
    pub evict_held: u64,
    /// The swap file's size in bytes (its highest page written).
    pub swap_bytes: u64,
    /// Of `evicted`, the pages the kernel's memory reclaim asked for (the
    /// `vms-clones` shrinker), in total: under host memory pressure any
    /// clone with a swap file gives its cold private pages to it, whatever
    /// its limit.
    pub shrunk: u64,
    /// The bytes the swap file takes on its file system (its allocated
    /// blocks, as stat(2) reports them): the pages written to it and not
    /// yet given back.
    /// [`VMS_CLONE_RESET`] gives them back (on a file system that can
    /// punch holes).
    pub swap_disk_bytes: u64,
    /// Times the clone's stage-2 faults were turned back (the vCPU retried
    /// them, each time after a sleep of 0.5 to 1 ms), and, since
    /// 2026-12-06, its VMM mapping's faults (retried with the fault lock
    /// released, after the same sleep), in total, because they would have
    /// taken a private page while the clone was over its limit and an
    /// eviction was writing to the swap file: the guest or the VMM waited
    /// for the swap disk. A count that grows fast means a swap disk
    /// too slow for the guest's writes at this limit. It was `reserved[0]`
    /// until 2026-12-06 (same ABI version): older modules report 0.
    pub throttled: u64,
    /// 0.
    pub reserved: [u64; 5],
}

const _: () = assert!(core::mem::size_of::<VmsCloneFootprint>() == 128);
const _: () = assert!(core::mem::align_of::<VmsCloneFootprint>() == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, limit) == 0);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, resident) == 8);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, swapped) == 16);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, evicted) == 24);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, read_back) == 32);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, evict_errors) == 40);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, evict_held) == 48);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, swap_bytes) == 56);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, shrunk) == 64);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, swap_disk_bytes) == 72);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, throttled) == 80);
const _: () = assert!(core::mem::offset_of!(VmsCloneFootprint, reserved) == 88);

impl VmsCloneFootprint {
    /// All counters zero.
    pub const fn zeroed() -> Self {
        Self {
            limit: 0,
            resident: 0,
            swapped: 0,
            evicted: 0,
            read_back: 0,
            evict_errors: 0,
            evict_held: 0,
            swap_bytes: 0,
            shrunk: 0,
            swap_disk_bytes: 0,
            throttled: 0,
            reserved: [0; 5],
        }
    }
}

// On /dev/vms. Creating and deleting images needs CAP_SYS_ADMIN (EPERM).

/// `VMS_IMAGE_CREATE`: creates an image from a file.
///
/// The image reads the file through its page cache and raises the
/// readahead window of `fd`'s open file to 2 MiB (as
/// `POSIX_FADV_SEQUENTIAL` raises it, to twice the device's), unless it is
/// larger already or readahead is off for it; other users of that open
/// file see the wider window too.
///
/// Argument: [`VmsImageCreate`], read. Needs `CAP_SYS_ADMIN`.
///
/// Return: 0, or
///  - `EPERM`: the caller lacks `CAP_SYS_ADMIN`;
///  - `EBADF`: `fd` is not open;
///  - `EACCES`: `fd` is not open for reading;
///  - `EINVAL`: bad name, size, offset, flags or reserved; a file that is
///    not a regular file or is shorter than `file_offset + size`;
///  - `EEXIST`: the name is taken;
///  - `ENOMEM`.
pub const VMS_IMAGE_CREATE: u32 =
    _IOW(VMS_IOCTL_TYPE, 0x01, core::mem::size_of::<VmsImageCreate>());

/// `VMS_IMAGE_INFO`: reads an image's counters.
///
/// Argument: [`VmsImageInfo`], read and written.
///
/// Return: 0, `ENOENT` (no such image), `EINVAL`.
pub const VMS_IMAGE_INFO: u32 = _IOWR(VMS_IOCTL_TYPE, 0x02, core::mem::size_of::<VmsImageInfo>());

/// `VMS_IMAGE_DELETE`: deletes an image.
///
/// Argument: [`VmsImageInfo`], read (`stats` is ignored). Needs
/// `CAP_SYS_ADMIN` (`EPERM`).
///
/// Return: 0, `ENOENT`, `EBUSY` (clones use it, or live images are layered
/// on it), `EINVAL`.
pub const VMS_IMAGE_DELETE: u32 = _IOW(VMS_IOCTL_TYPE, 0x03, core::mem::size_of::<VmsImageInfo>());

/// `VMS_IMAGE_LIST`: names the `index`-th image.
///
/// Argument: [`VmsImageList`], read and written.
///
/// Return: 0, `ENOENT` past the last one, `EINVAL`.
pub const VMS_IMAGE_LIST: u32 = _IOWR(VMS_IOCTL_TYPE, 0x04, core::mem::size_of::<VmsImageList>());

/// `VMS_CLONE_CREATE`: creates a clone of an image.
///
/// Argument: [`VmsCloneCreate`], read.
///
/// Return: a new clone file descriptor (`O_RDWR | O_CLOEXEC`), or `ENOENT`
/// (no such image), `EINVAL`, `ENOMEM`, `EMFILE`.
pub const VMS_CLONE_CREATE: u32 =
    _IOW(VMS_IOCTL_TYPE, 0x05, core::mem::size_of::<VmsCloneCreate>());

/// `VMS_IMAGE_SNAPSHOT`: makes a live image of a clone's current memory
/// without copying: the clone's private pages move into the new image,
/// layered on the clone's image, and the clone continues as a clone of the
/// new image (its next write to such a page copies it again).
///
/// Argument: [`VmsImageSnapshot`], read. Needs `CAP_SYS_ADMIN`.
///
/// Return: 0, or `EPERM`, `EBADF` / `EINVAL` (`clone_fd` is not a clone),
/// `EEXIST` (name taken), `EINVAL` (bad name, flags or reserved),
/// `ENOMEM`.
pub const VMS_IMAGE_SNAPSHOT: u32 =
    _IOW(VMS_IOCTL_TYPE, 0x06, core::mem::size_of::<VmsImageSnapshot>());

/// `VMS_CLONE_NAME`: gives a clone a name, a character device
/// `/dev/vms-clone/NAME` (misc device `vms-clone!NAME`, mode 0600) whose
/// `open(2)` returns a file of the clone, as a clone file descriptor is,
/// for VMMs that take guest memory by path (QEMU's `memory-backend-file`).
/// The name holds a reference to the clone until [`VMS_CLONE_UNNAME`]. A
/// clone has at most one name.
///
/// Argument: [`VmsCloneName`], read. Needs `CAP_SYS_ADMIN`.
///
/// Return: 0, or `EPERM`, `EBADF` / `EINVAL` (`clone_fd` is not a clone),
/// `EBUSY` (the clone has a name), `EEXIST` (name taken), `EINVAL` (bad
/// name, flags or reserved), `ENOSPC` (no device minor free), `ENOMEM`.
pub const VMS_CLONE_NAME: u32 = _IOW(VMS_IOCTL_TYPE, 0x07, core::mem::size_of::<VmsCloneName>());

/// `VMS_CLONE_UNNAME`: removes a clone's name and its device; open files
/// and mappings of it keep the clone.
///
/// Argument: [`VmsCloneName`] with `clone_fd` -1, read. Needs
/// `CAP_SYS_ADMIN`.
///
/// Return: 0, or `EPERM`, `ENOENT` (no clone of that name), `EINVAL` (bad
/// name, `clone_fd` not -1, flags or reserved).
pub const VMS_CLONE_UNNAME: u32 = _IOW(VMS_IOCTL_TYPE, 0x08, core::mem::size_of::<VmsCloneName>());

// On a clone file descriptor.

/// `VMS_CLONE_ATTACH`: serves a memslot of a VM from the clone.
///
/// Argument: [`VmsCloneAttach`], read. Issued on a clone file descriptor.
///
/// Return: 0, or
///  - `EBADF`: `vm_fd` is not open;
///  - `EINVAL`: `vm_fd` is not a KVM VM; unaligned, empty or out-of-range
///    `offset`/`size`; overlap with an attached range; flags, pad or
///    reserved not 0;
///  - `EBUSY`: the clone serves another VM, or the VM already has a page
///    provider;
///  - `EEXIST`: `slot` is already attached;
///  - `EOPNOTSUPP`: the VM does not use TDP.
pub const VMS_CLONE_ATTACH: u32 =
    _IOW(VMS_IOCTL_TYPE, 0x10, core::mem::size_of::<VmsCloneAttach>());

/// `VMS_CLONE_STATS`: reads the clone's counters.
///
/// Argument: [`VmsCloneStats`], written. Issued on a clone file descriptor.
///
/// Return: 0 or `EFAULT`.
pub const VMS_CLONE_STATS: u32 = _IOR(VMS_IOCTL_TYPE, 0x11, core::mem::size_of::<VmsCloneStats>());

/// `VMS_CLONE_RESET`: drops every private page; the clone reads its image
/// again (the one it was made from, or the live image of its last
/// [`VMS_IMAGE_SNAPSHOT`]).
///
/// No argument (it must be 0). Issued on a clone file descriptor. Its
/// stage-2 mappings and the VMM's mappings are removed first, so no mapping
/// of a dropped page remains; a page pinned before the reset (O_DIRECT,
/// io_uring, vhost, `kvm_vcpu_map()`) is written into by its pin holder
/// until it is unpinned, then freed. A VMM resets a paused VM and restores
/// the image's vCPU and device state with it. Swapped pages go too, and
/// the swap file's blocks are given back (a hole punched over it, on a
/// file system that can); the call waits for an eviction that runs, and
/// none starts until it returns.
///
/// Return: 0, or `EINVAL` (a nonzero argument), `EINTR` (a signal came
/// while it waited for an eviction; nothing was dropped).
pub const VMS_CLONE_RESET: u32 = _IO(VMS_IOCTL_TYPE, 0x12);

/// `VMS_CLONE_TOUCHED`: which pages the clone has used since it was made.
///
/// Argument: [`VmsCloneTouched`], read and written. Issued on a clone file
/// descriptor. A page is set if the guest (stage 2) or the VMM's mapping
/// read or wrote it; resets and snapshots do not clear it. A VMM records
/// it as a clone's working set, to prefetch in later clones of the image.
/// If the module once had no memory to record an access, every page is
/// set (it may say too much, never too little). The bitmap is built and
/// copied 32,768 pages at a time: each part is consistent in itself, not
/// with the others. On an error the bitmap's contents are undefined and
/// `touched` is not written.
///
/// Return: 0, or `EINVAL` (`first` not a multiple of 64, the range past
/// the end of the clone, flags, pad or reserved not 0), `EFAULT` (`bitmap`
/// or the argument not writable), `EINTR` (a signal came during a long
/// range), `ENOMEM`.
pub const VMS_CLONE_TOUCHED: u32 = _IOWR(
    VMS_IOCTL_TYPE,
    0x13,
    core::mem::size_of::<VmsCloneTouched>(),
);

/// `VMS_CLONE_SET_LIMIT`: limits the private pages the clone keeps in
/// memory.
///
/// Argument: [`VmsCloneLimit`], read. Issued on a clone file descriptor.
/// Above the limit, the clone's coldest private pages are written to its
/// swap file and freed; the next access by the guest or through the VMM's
/// mapping reads the page back. Cold: not used since the module last
/// looked (a clock over the private pages, which zaps a page's stage-2 and
/// VMM mappings to see whether it is used again). The limit holds at the
/// guest's stage-2 faults, which evict before they allocate, and this call
/// evicts down to a lowered limit before it returns; faults of the VMM's
/// mapping never wait for a write (they may take the clone past its limit
/// until the next stage-2 fault). A page someone holds (a pin for I/O,
/// `kvm_vcpu_map()`) is not evicted, and a failed write keeps the page:
/// the clone may stay above its limit, but never fails for it (after an
/// eviction that could not evict, the next 1024 stage-2 faults do not
/// try). If this call stops above the limit (a signal: `EINTR`, not
/// restarted even under `SA_RESTART`; pages held;
/// pages brought back from a slow swap file as fast as they go, after twice
/// the batches the clone's pages in memory fill), the limit stays and the
/// module's worker goes on. While an eviction writes, the guest's faults
/// that would take the clone further over its limit wait (the vCPU retries
/// them, for at most 2 s in a row: [`VmsCloneFootprint::throttled`]), and
/// so do the VMM mapping's (with the fault lock released; not an access
/// that may not release it, such as ptrace's, nor one with a signal
/// pending). A
/// page that cannot be read back fails the access (the vCPU exits with
/// `EFAULT`, the VMM gets `SIGBUS`), never a wrong page; so does an access
/// that cannot wait for the read (ptrace, `/proc/PID/mem`) to a
/// swapped page. [`VMS_IMAGE_SNAPSHOT`] reads
/// every swapped page back first; [`VMS_CLONE_RESET`] drops them.
///
/// Return: 0, or `EINVAL` (flags or reserved not 0; a nonzero `limit` and
/// no swap file), `EBADF` (`swap_dir_fd` not open), `ENOTDIR`, `EEXIST`
/// (the clone has a swap file already), an error of creating the file
/// (`EACCES`, `EROFS`, `EOPNOTSUPP`: the file system cannot make unnamed
/// files), `EINTR` (a signal while evicting down to the new limit; the
/// limit is set).
pub const VMS_CLONE_SET_LIMIT: u32 = _IOW(
    VMS_IOCTL_TYPE,
    0x14,
    core::mem::size_of::<VmsCloneLimit>(),
);

/// `VMS_CLONE_FOOTPRINT`: reads the clone's limit and swap counters.
///
/// Argument: [`VmsCloneFootprint`], written. Issued on a clone file
/// descriptor.
///
/// Return: 0 or `EFAULT`.
pub const VMS_CLONE_FOOTPRINT: u32 = _IOR(
    VMS_IOCTL_TYPE,
    0x15,
    core::mem::size_of::<VmsCloneFootprint>(),
);

/// `KVM_MEM_PAGE_PROVIDER`: the `kvm_userspace_memory_region(2).flags` bit
/// that makes KVM ask the VM's page provider (here: the clone attached with
/// [`VMS_CLONE_ATTACH`]) for the memslot's pages at TDP fault time.
///
/// Not part of `vms.h`: the KVM patch in
/// `patches/0003-KVM-x86-mmu-Add-a-page-provider-hook-for-TDP-faults.patch`
/// adds it to `include/uapi/linux/kvm.h` next to `KVM_MEM_GUEST_MEMFD`
/// (`1 << 2`). x86 with TDP only; rejected with `EINVAL` without TDP and
/// together with `KVM_MEM_GUEST_MEMFD`.
pub const KVM_MEM_PAGE_PROVIDER: u32 = 1 << 3;
