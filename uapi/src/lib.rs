// SPDX-License-Identifier: GPL-2.0

//! `vms-uapi`: the userspace ABI of `/dev/vms` (`uapi/vms.h`) for Rust.
//!
//! The items live in `abi.rs`, which the kernel module also compiles, as a
//! module, with `#[path = "../uapi/src/abi.rs"] pub mod uapi;`. This crate
//! root only adds what a crate root needs (`no_std`) and the host tests.

#![no_std]

mod abi;
pub use abi::*;

#[cfg(test)]
mod tests {
    use super::*;

    // The expected numbers below come from the C header itself: a small
    // program compiled with `cc` against uapi/vms.h printed them with
    //
    //     printf("0x%08lx\n", (unsigned long)VMS_GET_VERSION);
    //     printf("0x%08lx\n", (unsigned long)_IO(0xB9, 0x7f));
    //     printf("%zu\n", sizeof(struct vms_version));
    //
    // giving 0xc048b900, 0x0000b97f and 72. Recompute them the same way
    // whenever vms.h changes.

    #[test]
    fn get_version_number_matches_c_header() {
        assert_eq!(VMS_GET_VERSION, 0xc048_b900);
    }

    #[test]
    fn io_number_matches_c_header() {
        assert_eq!(_IO(VMS_IOCTL_TYPE, 0x7f), 0x0000_b97f);
    }

    #[test]
    fn encoders_set_direction_bits() {
        assert_eq!(_IOR(0xB9, 1, 8) >> _IOC_DIRSHIFT, _IOC_READ);
        assert_eq!(_IOW(0xB9, 1, 8) >> _IOC_DIRSHIFT, _IOC_WRITE);
        assert_eq!(_IOWR(0xB9, 1, 8) >> _IOC_DIRSHIFT, _IOC_READ | _IOC_WRITE);
        assert_eq!(_IOR(0xB9, 1, 8) & 0x3fff_ffff, (8 << 16) | (0xB9 << 8) | 1);
    }

    #[test]
    fn version_struct_matches_c_header() {
        assert_eq!(core::mem::size_of::<VmsVersion>(), 72);
        assert_eq!(VmsVersion::zeroed(), VmsVersion::default());
    }

    #[test]
    fn module_version_bytes_stops_at_nul() {
        let mut v = VmsVersion::zeroed();
        v.module_version[..5].copy_from_slice(b"0.1.0");
        assert_eq!(v.module_version_bytes(), Some(&b"0.1.0"[..]));
        v.module_version = [b'x'; VMS_MODULE_VERSION_LEN];
        assert_eq!(v.module_version_bytes(), None);
    }

    #[test]
    #[should_panic]
    fn oversized_argument_is_rejected() {
        let size = 1 << _IOC_SIZEBITS;
        let _ = _IOWR(VMS_IOCTL_TYPE, 0, core::hint::black_box(size));
    }
}
