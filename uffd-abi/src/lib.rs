// SPDX-License-Identifier: GPL-2.0

//! userfaultfd's ABI, from `include/uapi/linux/userfaultfd.h` (Linux
//! 6.12): the structs and ioctl numbers the `libc` crate lacks (it has
//! the syscall number only).
//!
//! Written by hand rather than taken from the `userfaultfd-sys` crate,
//! which generates its bindings with bindgen at build time (it needs
//! libclang) for a handful of structs. Used by the benchmarks' page
//! servers (bench/src/uffd.rs, `vmsctl run --baseline uffd`) and by
//! selftests/pin_snapshot.rs; the sizes and numbers are checked against
//! the kernel header's below.

#![no_std]

/// `UFFD_API`: the API version asked for in [`UffdioApi::api`].
pub const UFFD_API: u64 = 0xaa;
/// `UFFD_FEATURE_MINOR_SHMEM`: MINOR faults on shmem mappings.
pub const UFFD_FEATURE_MINOR_SHMEM: u64 = 1 << 10;
/// `UFFDIO_REGISTER_MODE_MISSING`: faults on pages not there.
pub const UFFDIO_REGISTER_MODE_MISSING: u64 = 1 << 0;
/// `UFFDIO_REGISTER_MODE_MINOR`: faults on pages in the page cache but not
/// in the page table.
pub const UFFDIO_REGISTER_MODE_MINOR: u64 = 1 << 2;
/// `1 << _UFFDIO_COPY`: a bit of [`UffdioRegister::ioctls`].
pub const UFFDIO_COPY_BIT: u64 = 1 << 0x03;
/// `1 << _UFFDIO_CONTINUE`: a bit of [`UffdioRegister::ioctls`].
pub const UFFDIO_CONTINUE_BIT: u64 = 1 << 0x07;
/// `UFFD_EVENT_PAGEFAULT`: [`UffdMsg::event`] of a page fault.
pub const UFFD_EVENT_PAGEFAULT: u8 = 0x12;

/// `struct uffdio_api`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioApi {
    pub api: u64,
    pub features: u64,
    pub ioctls: u64,
}

/// `struct uffdio_range`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioRange {
    pub start: u64,
    pub len: u64,
}

/// `struct uffdio_register`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioRegister {
    pub range: UffdioRange,
    pub mode: u64,
    pub ioctls: u64,
}

/// `struct uffdio_copy`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioCopy {
    pub dst: u64,
    pub src: u64,
    pub len: u64,
    pub mode: u64,
    pub copy: i64,
}

/// `struct uffdio_continue`.
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdioContinue {
    pub range: UffdioRange,
    pub mode: u64,
    pub mapped: i64,
}

/// `struct uffd_msg` (packed in the header, but naturally aligned):
/// `event`, three reserved fields, then for a page fault `flags`,
/// `address` and `ptid` (in `arg`).
#[repr(C)]
#[derive(Debug, Clone, Copy, Default)]
pub struct UffdMsg {
    pub event: u8,
    pub reserved1: u8,
    pub reserved2: u16,
    pub reserved3: u32,
    pub arg: [u64; 3],
}

impl UffdMsg {
    /// The faulting address of a [`UFFD_EVENT_PAGEFAULT`].
    pub fn address(&self) -> u64 {
        self.arg[1]
    }
}

const _: () = assert!(core::mem::size_of::<UffdioApi>() == 24);
const _: () = assert!(core::mem::size_of::<UffdioRegister>() == 32);
const _: () = assert!(core::mem::size_of::<UffdioCopy>() == 40);
const _: () = assert!(core::mem::size_of::<UffdioContinue>() == 32);
const _: () = assert!(core::mem::size_of::<UffdMsg>() == 32);

/// `_IOWR(UFFDIO, nr, size)`, `UFFDIO` being 0xAA.
const fn iowr(nr: u32, size: usize) -> u32 {
    (3 << 30) | ((size as u32) << 16) | (0xaa << 8) | nr
}

/// `UFFDIO_API`.
pub const UFFDIO_API: u32 = iowr(0x3f, core::mem::size_of::<UffdioApi>());
/// `UFFDIO_REGISTER`.
pub const UFFDIO_REGISTER: u32 = iowr(0x00, core::mem::size_of::<UffdioRegister>());
/// `UFFDIO_COPY`.
pub const UFFDIO_COPY: u32 = iowr(0x03, core::mem::size_of::<UffdioCopy>());
/// `UFFDIO_CONTINUE`.
pub const UFFDIO_CONTINUE: u32 = iowr(0x07, core::mem::size_of::<UffdioContinue>());

// The numbers of the 6.12 header, as a C compiler gives them.
const _: () = assert!(UFFDIO_API == 0xc018_aa3f);
const _: () = assert!(UFFDIO_REGISTER == 0xc020_aa00);
const _: () = assert!(UFFDIO_COPY == 0xc028_aa03);
const _: () = assert!(UFFDIO_CONTINUE == 0xc020_aa07);
const _: () = assert!(core::mem::offset_of!(UffdMsg, arg) == 8);
