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
pub const VMS_ABI_VERSION: u32 = 1;

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
