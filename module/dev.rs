// SPDX-License-Identifier: GPL-2.0

//! `/dev/vms`: the ioctl interface of `uapi/vms.h`, in safe Rust.
//!
//! [`ffi`](crate::ffi) turns the C `unlocked_ioctl` call into
//! [`ioctl`] and the `Result` back into an errno; nothing here is unsafe.

use crate::abi;
use kernel::prelude::*;
use kernel::uaccess::{UserPtr, UserSlice};

/// The module's version, reported by `VMS_GET_VERSION`.
pub(crate) const MODULE_VERSION: &str = "0.1.0";

/// Dispatch one ioctl on `/dev/vms`. Unknown commands are `ENOTTY`.
pub(crate) fn ioctl(cmd: u32, arg: UserPtr) -> Result<isize> {
    match cmd {
        abi::VMS_GET_VERSION => get_version(arg),
        _ => Err(ENOTTY),
    }
}

fn get_version(arg: UserPtr) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsVersion>()).reader_writer();
    let mut v: abi::VmsVersion = reader.read()?;
    if v.flags != 0 || v.reserved.iter().any(|&r| r != 0) {
        pr_info!("VMS_GET_VERSION: flags or reserved not zero\n");
        return Err(EINVAL);
    }
    v.abi_version = abi::VMS_ABI_VERSION;
    v.module_version = [0; abi::VMS_MODULE_VERSION_LEN];
    let ver = MODULE_VERSION.as_bytes();
    v.module_version[..ver.len()].copy_from_slice(ver);
    writer.write(&v)?;
    Ok(0)
}
