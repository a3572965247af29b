// SPDX-License-Identifier: GPL-2.0

//! `vms-uapi`: the userspace ABI of `/dev/vms` (`uapi/vms.h`) for Rust.
//!
//! The items live in `abi.rs`, which the kernel module also compiles, as a
//! module, with `#[path = "../uapi/src/abi.rs"] pub mod uapi;`. This crate
//! root only adds what a crate root needs (`no_std`) and the host tests.

#![no_std]

mod abi;
pub use abi::*;

/// The symbolic name of a Linux errno that vms and the system calls around
/// it return (the ABI documents its errors by these names), for messages:
/// `errno_name(22) == Some("EINVAL")`. Not in `abi.rs`: the module does not
/// need it. The numbers are the kernel's (asm-generic/errno-base.h and
/// errno.h), checked against libc in the tests below.
pub fn errno_name(errno: i32) -> Option<&'static str> {
    Some(match errno {
        1 => "EPERM",
        2 => "ENOENT",
        4 => "EINTR",
        5 => "EIO",
        6 => "ENXIO",
        9 => "EBADF",
        11 => "EAGAIN",
        12 => "ENOMEM",
        13 => "EACCES",
        14 => "EFAULT",
        16 => "EBUSY",
        17 => "EEXIST",
        19 => "ENODEV",
        21 => "EISDIR",
        22 => "EINVAL",
        23 => "ENFILE",
        24 => "EMFILE",
        25 => "ENOTTY",
        26 => "ETXTBSY",
        27 => "EFBIG",
        28 => "ENOSPC",
        30 => "EROFS",
        34 => "ERANGE",
        75 => "EOVERFLOW",
        95 => "EOPNOTSUPP",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_names_match_libc() {
        for (e, name) in [
            (libc::EPERM, "EPERM"),
            (libc::ENOENT, "ENOENT"),
            (libc::EINTR, "EINTR"),
            (libc::EIO, "EIO"),
            (libc::ENXIO, "ENXIO"),
            (libc::EBADF, "EBADF"),
            (libc::EAGAIN, "EAGAIN"),
            (libc::ENOMEM, "ENOMEM"),
            (libc::EACCES, "EACCES"),
            (libc::EFAULT, "EFAULT"),
            (libc::EBUSY, "EBUSY"),
            (libc::EEXIST, "EEXIST"),
            (libc::ENODEV, "ENODEV"),
            (libc::EISDIR, "EISDIR"),
            (libc::EINVAL, "EINVAL"),
            (libc::ENFILE, "ENFILE"),
            (libc::EMFILE, "EMFILE"),
            (libc::ENOTTY, "ENOTTY"),
            (libc::ETXTBSY, "ETXTBSY"),
            (libc::EFBIG, "EFBIG"),
            (libc::ENOSPC, "ENOSPC"),
            (libc::EROFS, "EROFS"),
            (libc::ERANGE, "ERANGE"),
            (libc::EOVERFLOW, "EOVERFLOW"),
            (libc::EOPNOTSUPP, "EOPNOTSUPP"),
        ] {
            assert_eq!(errno_name(e), Some(name), "errno {e}");
        }
        assert_eq!(errno_name(0), None);
        assert_eq!(errno_name(-22), None);
    }

    // The expected numbers below come from the C header itself: a small
    // program compiled with `cc` against uapi/vms.h printed them with
    //
    //     printf("0x%08lx\n", (unsigned long)VMS_GET_VERSION);
    //     printf("0x%08lx\n", (unsigned long)_IO(0xB9, 0x7f));
    //     printf("%zu\n", sizeof(struct vms_version));
    //     printf("%zu\n", offsetof(struct vms_image_create, fd));
    //
    // and so on for every ioctl, struct and field. Recompute them the same
    // way whenever vms.h changes.

    /// `offset_of!` for a list of fields, compared with the C offsets.
    macro_rules! assert_layout {
        ($t:ty, $size:expr, { $($field:ident: $off:expr),* $(,)? }) => {
            assert_eq!(core::mem::size_of::<$t>(), $size, "sizeof {}", stringify!($t));
            assert_eq!(core::mem::align_of::<$t>(), 8, "alignof {}", stringify!($t));
            $(
                assert_eq!(
                    core::mem::offset_of!($t, $field),
                    $off,
                    "offsetof {}.{}",
                    stringify!($t),
                    stringify!($field)
                );
            )*
        };
    }

    #[test]
    fn constants_match_c_header() {
        assert_eq!(VMS_IOCTL_TYPE, 0xB9);
        assert_eq!(VMS_ABI_VERSION, 3);
        assert_eq!(VMS_IMAGE_EMPTY, 1);
        assert_eq!(VMS_MODULE_VERSION_LEN, 32);
        assert_eq!(VMS_NAME_LEN, 32);
    }

    #[test]
    fn ioctl_numbers_match_c_header() {
        assert_eq!(VMS_GET_VERSION, 0xc048_b900);
        assert_eq!(VMS_IMAGE_CREATE, 0x4058_b901);
        assert_eq!(VMS_IMAGE_INFO, 0xc0a8_b902);
        assert_eq!(VMS_IMAGE_DELETE, 0x40a8_b903);
        assert_eq!(VMS_IMAGE_LIST, 0xc038_b904);
        assert_eq!(VMS_CLONE_CREATE, 0x4048_b905);
        assert_eq!(VMS_IMAGE_SNAPSHOT, 0x4048_b906);
        assert_eq!(VMS_CLONE_NAME, 0x4048_b907);
        assert_eq!(VMS_CLONE_UNNAME, 0x4048_b908);
        assert_eq!(VMS_CLONE_ATTACH, 0x4040_b910);
        assert_eq!(VMS_CLONE_STATS, 0x8080_b911);
        assert_eq!(VMS_CLONE_RESET, 0x0000_b912);
        assert_eq!(VMS_CLONE_TOUCHED, 0xc048_b913);
        assert_eq!(VMS_CLONE_SET_LIMIT, 0x4030_b914);
        assert_eq!(VMS_CLONE_FOOTPRINT, 0x8080_b915);
    }

    #[test]
    fn page_provider_flag_matches_kvm_patch() {
        // patches/0003: #define KVM_MEM_PAGE_PROVIDER (1UL << 3)
        assert_eq!(KVM_MEM_PAGE_PROVIDER, 0x8);
    }

    #[test]
    fn struct_layouts_match_c_header() {
        assert_layout!(VmsVersion, 72, {
            abi_version: 0, flags: 4, module_version: 8, reserved: 40,
        });
        assert_layout!(VmsImageCreate, 88, {
            name: 0, fd: 32, flags: 36, size: 40, file_offset: 48, reserved: 56,
        });
        assert_layout!(VmsImageStats, 128, {
            size: 0, clones: 8, cached_pages: 16, zero_pages: 24, streamed: 32,
            read_errors: 40, generation: 48, children: 56, parent: 64, file_pages: 96,
            vmm_copies: 104, dropped: 112, unmapped: 120,
        });
        assert_layout!(VmsImageInfo, 168, { name: 0, flags: 32, pad: 36, stats: 40 });
        assert_layout!(VmsImageList, 56, { index: 0, flags: 4, name: 8, reserved: 40 });
        assert_layout!(VmsCloneCreate, 72, { name: 0, flags: 32, pad: 36, reserved: 40 });
        assert_layout!(VmsImageSnapshot, 72, { name: 0, clone_fd: 32, flags: 36, reserved: 40 });
        assert_layout!(VmsCloneName, 72, { name: 0, clone_fd: 32, flags: 36, reserved: 40 });
        assert_layout!(VmsCloneAttach, 64, {
            vm_fd: 0, slot: 4, offset: 8, size: 16, flags: 24, pad: 28, reserved: 32,
        });
        assert_layout!(VmsCloneStats, 128, {
            size: 0, faults: 8, mmap_faults: 16, shared_maps: 24, zero_maps: 32,
            streamed: 40, cow_copies: 48, private_pages: 56, io_errors: 64, image: 72,
            resets: 104, reserved: 112,
        });
        assert_layout!(VmsCloneTouched, 72, {
            bitmap: 0, first: 8, npages: 16, touched: 24, flags: 32, pad: 36, reserved: 40,
        });
        assert_layout!(VmsCloneLimit, 48, { limit: 0, swap_dir_fd: 8, flags: 12, reserved: 16 });
        assert_layout!(VmsCloneFootprint, 128, {
            limit: 0, resident: 8, swapped: 16, evicted: 24, read_back: 32, evict_errors: 40,
            evict_held: 48, swap_bytes: 56, shrunk: 64, swap_disk_bytes: 72, throttled: 80,
            reserved: 88,
        });
    }

    #[test]
    fn zeroed_is_default() {
        assert_eq!(VmsVersion::zeroed(), VmsVersion::default());
        assert_eq!(VmsImageCreate::zeroed(), VmsImageCreate::default());
        assert_eq!(VmsImageStats::zeroed(), VmsImageStats::default());
        assert_eq!(VmsImageInfo::zeroed(), VmsImageInfo::default());
        assert_eq!(VmsImageList::zeroed(), VmsImageList::default());
        assert_eq!(VmsCloneCreate::zeroed(), VmsCloneCreate::default());
        assert_eq!(VmsImageSnapshot::zeroed(), VmsImageSnapshot::default());
        assert_eq!(VmsCloneAttach::zeroed(), VmsCloneAttach::default());
        assert_eq!(VmsCloneStats::zeroed(), VmsCloneStats::default());
        assert_eq!(VmsCloneLimit::zeroed(), VmsCloneLimit::default());
        assert_eq!(VmsCloneFootprint::zeroed(), VmsCloneFootprint::default());
    }

    #[test]
    fn set_name_round_trips_and_zero_fills() {
        let mut name = [0xffu8; VMS_NAME_LEN];
        assert!(set_name(&mut name, b"base-1.img"));
        assert_eq!(name_bytes(&name), Some(&b"base-1.img"[..]));
        assert!(name[10..].iter().all(|&b| b == 0));
    }

    #[test]
    fn set_name_takes_31_bytes_at_most() {
        let mut name = [0u8; VMS_NAME_LEN];
        let longest = [b'a'; VMS_NAME_LEN - 1];
        assert!(set_name(&mut name, &longest));
        assert_eq!(name_bytes(&name), Some(&longest[..]));
        assert_eq!(name[VMS_NAME_LEN - 1], 0);

        let before = name;
        assert!(!set_name(&mut name, &[b'b'; VMS_NAME_LEN]));
        assert!(!set_name(&mut name, b"a\0b"));
        assert_eq!(name, before, "a rejected name leaves the field alone");
    }

    #[test]
    fn set_name_accepts_empty() {
        // The module, not the mirror, rejects an empty name (EINVAL).
        let mut name = [b'x'; VMS_NAME_LEN];
        assert!(set_name(&mut name, b""));
        assert_eq!(name_bytes(&name), Some(&b""[..]));
    }

    #[test]
    fn name_bytes_needs_a_nul() {
        assert_eq!(name_bytes(&[b'x'; VMS_NAME_LEN]), None);
        assert_eq!(name_bytes(&[0; VMS_NAME_LEN]), Some(&b""[..]));
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
