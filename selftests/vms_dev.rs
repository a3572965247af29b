// SPDX-License-Identifier: GPL-2.0

//! vms_dev: `/dev/vms` answers `VMS_GET_VERSION` and rejects bad input.
//!
//! Skips if `/dev/vms` is missing (vms.ko not loaded).

use vms_selftests::ksft::{self, Test};
use vms_selftests::vms::{__vms_get_version, __vms_ioctl, vms_get_version, vms_open};
use vms_selftests::{test_assert, test_assert_eq, test_assert_errno};
use vms_uapi::{VmsVersion, _IO, VMS_ABI_VERSION, VMS_GET_VERSION, VMS_IOCTL_TYPE};

/// VMS_GET_VERSION reports our ABI and a NUL-terminated, non-empty module
/// version.
fn get_version() {
    let dev = vms_open();
    let v = vms_get_version(&dev);
    test_assert_eq!(v.abi_version, VMS_ABI_VERSION);
    let name = v.module_version_bytes();
    test_assert!(
        name.is_some(),
        "module_version has no NUL: {:?}",
        v.module_version
    );
    test_assert!(
        name.is_some_and(|n| !n.is_empty()),
        "module_version is empty"
    );
    ksft::ksft_print_msg(&format!(
        "module {} (abi {})",
        String::from_utf8_lossy(name.unwrap_or_default()),
        v.abi_version
    ));
}

/// A non-zero `flags` is EINVAL.
fn get_version_flags_einval() {
    let dev = vms_open();
    let mut v = VmsVersion {
        flags: 1,
        ..VmsVersion::zeroed()
    };
    test_assert_errno!(__vms_get_version(&dev, &mut v), libc::EINVAL);
}

/// A non-zero `reserved[0]` is EINVAL.
fn get_version_reserved_einval() {
    let dev = vms_open();
    let mut v = VmsVersion::zeroed();
    v.reserved[0] = 1;
    test_assert_errno!(__vms_get_version(&dev, &mut v), libc::EINVAL);
}

/// An ioctl number the module does not know is ENOTTY.
fn unknown_ioctl_enotty() {
    let dev = vms_open();
    // SAFETY: a `_IO` number carries no argument; 0 is not dereferenced.
    let r = unsafe { __vms_ioctl(&dev, _IO(VMS_IOCTL_TYPE, 0x7f), 0) };
    test_assert_errno!(r, libc::ENOTTY);
}

/// An argument address the process does not map is EFAULT.
fn get_version_bad_pointer_efault() {
    let dev = vms_open();
    // SAFETY: address 8 is in the never-mapped first page
    // (vm.mmap_min_addr), so the kernel's copy fails and nothing of ours
    // is touched.
    let r = unsafe { __vms_ioctl(&dev, VMS_GET_VERSION, 8) };
    test_assert_errno!(r, libc::EFAULT);
}

fn main() {
    ksft::init();
    // Requirement, checked before the plan: a host without the module
    // skips the whole test.
    drop(vms_open());

    ksft::run(&[
        Test::new("get_version", get_version),
        Test::new("get_version_flags_einval", get_version_flags_einval),
        Test::new("get_version_reserved_einval", get_version_reserved_einval),
        Test::new("unknown_ioctl_enotty", unknown_ioctl_enotty),
        Test::new(
            "get_version_bad_pointer_efault",
            get_version_bad_pointer_efault,
        ),
    ]);
}
