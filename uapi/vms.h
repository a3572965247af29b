/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * vms: virtual memory streaming for KVM - the userspace ABI of /dev/vms.
 *
 * This header is the one definition of the ABI. The module (module/) and
 * every userspace user (uapi/src/abi.rs, mirrored with size and offset
 * assertions) follow it.
 *
 * Conventions:
 *  - addresses, lengths and pointers are __u64;
 *  - every struct has explicit padding, a flags field that must be zero
 *    until a flag is defined, and reserved space that must be zero;
 *  - a non-zero flag or reserved field is rejected with EINVAL, an unknown
 *    ioctl with ENOTTY.
 *
 * ioctl type code: 0xB9. Documentation/userspace-api/ioctl/ioctl-number.rst
 * lists no user of 0xB9 in 6.12 (DRM uses it only as a command number
 * under its own type 'd').
 */
#ifndef _UAPI_LINUX_VMS_H
#define _UAPI_LINUX_VMS_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define VMS_IOCTL_TYPE		0xB9

/*
 * VMS_ABI_VERSION - bumped on every incompatible change of this header.
 * Userspace compares it with vms_version.abi_version.
 */
#define VMS_ABI_VERSION		1

#define VMS_MODULE_VERSION_LEN	32

/**
 * struct vms_version - argument of VMS_GET_VERSION
 * @abi_version:	(out) VMS_ABI_VERSION of the loaded module.
 * @flags:		(in) must be 0.
 * @module_version:	(out) the module's version, NUL-terminated.
 * @reserved:		(in) must be 0.
 */
struct vms_version {
	__u32 abi_version;
	__u32 flags;
	__u8 module_version[VMS_MODULE_VERSION_LEN];
	__u64 reserved[4];
};

/**
 * VMS_GET_VERSION - report the ABI and module versions
 *
 * Context: any process that can open /dev/vms.
 * Return: 0, or
 *  - EFAULT: the argument is not readable and writable;
 *  - EINVAL: @flags or @reserved is not zero.
 */
#define VMS_GET_VERSION		_IOWR(VMS_IOCTL_TYPE, 0x00, struct vms_version)

#endif /* _UAPI_LINUX_VMS_H */
