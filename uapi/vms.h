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
#define VMS_ABI_VERSION		3

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

/*
 * Images and clones.
 *
 * An image is an immutable guest memory image: a raw dump of guest-physical
 * memory in a file (page N of the image is at file offset
 * file_offset + N * 4096; holes read as zero). Images are named and live in
 * the module until deleted. A page is read from the file the first time a
 * clone needs it and is then kept in the image's cache and shared by every
 * clone: the file's own page-cache page where the file has it, else a copy.
 * All-zero pages share one zero page and cost no memory. Clones map the
 * file's page-cache pages, so nobody can write the file while an image uses
 * it: as for a running executable, opening it for writing and truncating it
 * fail with ETXTBSY until the last image of it is deleted.
 *
 * An image can also be empty (every page reads as zero: the memory of a VM
 * booted from scratch), or a live image: VMS_IMAGE_SNAPSHOT turns the
 * current memory of a running clone into a new image without copying. The
 * clone's private pages move into the new image, which is layered on the
 * clone's image for every other page, and the clone continues as a clone of
 * the new image: its next write to such a page makes a private copy again.
 * A private page that someone else holds (pinned for I/O by O_DIRECT,
 * process_vm_writev() or a device, or referenced by KVM) may still be
 * written behind the page tables: the new image gets a copy of it, taken at
 * the snapshot, and the clone keeps the page, so the image never changes.
 * Images form a tree: each has a generation (0 for a base image, parent's +
 * 1 for a live image) and counts the live images made on it (children).
 *
 * A clone is a VM's memory, created from an image. Its file descriptor is
 * mmap()ed by the VMM (MAP_SHARED, offset 0 = image page 0) and attached to
 * one or more memslots of one KVM VM that the VMM creates with
 * KVM_MEM_PAGE_PROVIDER and userspace_addr inside that mapping. A VMM that
 * knows nothing of vms may instead create ordinary memslots on a writable
 * mapping of the clone: the module claims them as KVM creates them (one
 * clone per VM), with the same effect, and leaves a memslot to its host
 * address once the mapping under it goes. Reads see the image's page; the
 * first write, from the guest or through the mapping, gives the clone a
 * private copy of the page.
 */

#define VMS_NAME_LEN		32

/**
 * struct vms_image_create - argument of VMS_IMAGE_CREATE
 * @name:	(in) NUL-terminated name, unique in the module: letters,
 *		digits, '-', '_' and '.', at least one character.
 * @fd:		(in) file to read pages from, open for reading, and by
 *		nobody for writing; -1 with VMS_IMAGE_EMPTY.
 * @flags:	(in) 0, or VMS_IMAGE_EMPTY: no file, every page reads as
 *		zero (@file_offset must be 0).
 * @size:	(in) size of guest memory in bytes, a non-zero multiple of
 *		4096; the file must hold @file_offset + @size bytes.
 * @file_offset: (in) offset of guest-physical address 0 in the file,
 *		a multiple of 4096.
 * @reserved:	(in) must be 0.
 */
#define VMS_IMAGE_EMPTY		(1U << 0)

struct vms_image_create {
	__u8 name[VMS_NAME_LEN];
	__s32 fd;
	__u32 flags;
	__u64 size;
	__u64 file_offset;
	__u64 reserved[4];
};

/**
 * struct vms_image_stats - image counters
 * @size:	bytes of guest memory in the image.
 * @clones:	clones that use the image now.
 * @cached_pages: pages read from the file and held in the image's cache.
 * @zero_pages:	pages found all-zero, served by the shared zero page.
 * @streamed:	pages read from the file (cached or zero) since creation.
 * @read_errors: failed reads of the file.
 * @generation:	0 for an image made from a file or empty; parent's + 1 for
 *		a live image.
 * @children:	live images made on this image that still exist.
 * @parent:	NUL-terminated name of the image a live image is layered on;
 *		empty for generation 0. For a live image, @cached_pages counts
 *		the pages it took from its clone.
 * @file_pages:	of @cached_pages, those that are the image file's own
 *		page-cache pages, mapped by clones instead of a copy (they cost
 *		no memory beyond the page cache).
 * @vmm_copies:	copies of such pages that the cache holds for VMMs'
 *		mappings of clones (a VMM never maps a page-cache page itself);
 *		each costs a page.
 * @dropped:	pages the image's cache gave back under host memory pressure
 *		(the "vms-clones" shrinker): pages of an image made from a file
 *		with no live image on it, which no clone mapped then; a later
 *		fault streams them again (@streamed). It was reserved[0] until
 *		2026-12-05 (same ABI version): older modules report 0 here.
 *		Until 2026-12-06 only images no clone used gave pages back.
 * @unmapped:	pages the image's cache took back from clones that mapped
 *		them, under the same pressure: zapped from those clones' stage
 *		2, and dropped if no clone mapped them again before reclaim
 *		came back to them. Counted once per clone. It was the last
 *		reserved word until 2026-12-06 (same ABI version): older
 *		modules report 0 here.
 */
struct vms_image_stats {
	__u64 size;
	__u64 clones;
	__u64 cached_pages;
	__u64 zero_pages;
	__u64 streamed;
	__u64 read_errors;
	__u64 generation;
	__u64 children;
	__u8 parent[VMS_NAME_LEN];
	__u64 file_pages;
	__u64 vmm_copies;
	__u64 dropped;
	__u64 unmapped;
};

/**
 * struct vms_image_info - argument of VMS_IMAGE_INFO and VMS_IMAGE_DELETE
 * @name:	(in) the image's name.
 * @flags:	(in) must be 0.
 * @pad:	(in) must be 0.
 * @stats:	(out) counters, VMS_IMAGE_INFO only.
 */
struct vms_image_info {
	__u8 name[VMS_NAME_LEN];
	__u32 flags;
	__u32 pad;
	struct vms_image_stats stats;
};

/**
 * struct vms_image_list - argument of VMS_IMAGE_LIST
 * @index:	(in) which image, from 0, in name order.
 * @flags:	(in) must be 0.
 * @name:	(out) its name.
 * @reserved:	(in) must be 0.
 */
struct vms_image_list {
	__u32 index;
	__u32 flags;
	__u8 name[VMS_NAME_LEN];
	__u64 reserved[2];
};

/**
 * struct vms_clone_create - argument of VMS_CLONE_CREATE
 * @name:	(in) the image to clone.
 * @flags:	(in) must be 0.
 * @pad:	(in) must be 0.
 * @reserved:	(in) must be 0.
 */
struct vms_clone_create {
	__u8 name[VMS_NAME_LEN];
	__u32 flags;
	__u32 pad;
	__u64 reserved[4];
};

/**
 * struct vms_image_snapshot - argument of VMS_IMAGE_SNAPSHOT
 * @name:	(in) name of the new live image (rules of vms_image_create).
 * @clone_fd:	(in) clone file descriptor whose current memory it takes.
 * @flags:	(in) must be 0.
 * @reserved:	(in) must be 0.
 */
struct vms_image_snapshot {
	__u8 name[VMS_NAME_LEN];
	__s32 clone_fd;
	__u32 flags;
	__u64 reserved[4];
};

/**
 * struct vms_clone_name - argument of VMS_CLONE_NAME and VMS_CLONE_UNNAME
 * @name:	(in) the clone's name (rules of vms_image_create's name).
 * @clone_fd:	(in) VMS_CLONE_NAME: the clone file descriptor to name;
 *		VMS_CLONE_UNNAME: must be -1.
 * @flags:	(in) must be 0.
 * @reserved:	(in) must be 0.
 */
struct vms_clone_name {
	__u8 name[VMS_NAME_LEN];
	__s32 clone_fd;
	__u32 flags;
	__u64 reserved[4];
};

/**
 * struct vms_clone_attach - argument of VMS_CLONE_ATTACH
 * @vm_fd:	(in) a KVM VM file descriptor (KVM_CREATE_VM); the VM must
 *		use TDP (EPT or NPT).
 * @slot:	(in) the memslot, as in kvm_userspace_memory_region.slot
 *		(address space << 16 | id).
 * @offset:	(in) byte offset in the clone where the memslot starts, a
 *		multiple of 4096.
 * @size:	(in) bytes, a non-zero multiple of 4096; @offset + @size must
 *		not exceed the clone.
 * @flags:	(in) must be 0.
 * @pad:	(in) must be 0.
 * @reserved:	(in) must be 0.
 *
 * The VMM creates the memslot with KVM_MEM_PAGE_PROVIDER, the same size,
 * and userspace_addr = (its mapping of the clone) + @offset. A clone
 * serves one VM; its memslots must not overlap in the clone.
 */
struct vms_clone_attach {
	__s32 vm_fd;
	__u32 slot;
	__u64 offset;
	__u64 size;
	__u32 flags;
	__u32 pad;
	__u64 reserved[4];
};

/**
 * struct vms_clone_stats - argument of VMS_CLONE_STATS (all out)
 * @size:	bytes of guest memory.
 * @faults:	stage-2 (EPT/NPT) faults served.
 * @mmap_faults: faults of the VMM's mapping served.
 * @shared_maps: faults answered with the image's shared page.
 * @zero_maps:	faults answered with the shared zero page.
 * @streamed:	image pages this clone caused to be read from the file.
 * @cow_copies:	private copies made on first write.
 * @private_pages: private pages the clone holds now.
 * @io_errors:	faults that failed because the image could not be read.
 * @image:	NUL-terminated name of the clone's image (after
 *		VMS_IMAGE_SNAPSHOT, the live image it became a clone of).
 * @resets:	VMS_CLONE_RESET calls that succeeded on this clone.
 * @reserved:	0.
 */
struct vms_clone_stats {
	__u64 size;
	__u64 faults;
	__u64 mmap_faults;
	__u64 shared_maps;
	__u64 zero_maps;
	__u64 streamed;
	__u64 cow_copies;
	__u64 private_pages;
	__u64 io_errors;
	__u8 image[VMS_NAME_LEN];
	__u64 resets;
	__u64 reserved[2];
};

/**
 * struct vms_clone_touched - argument of VMS_CLONE_TOUCHED
 * @bitmap:	in: user address of a bitmap of @npages bits, in __u64
 *		words: bit b of word w is clone page @first + 64 * w + b;
 *		DIV_ROUND_UP(@npages, 64) words are written, bits past
 *		@npages are 0.
 * @first:	in: the first clone page, a multiple of 64.
 * @npages:	in: how many pages; @first + @npages must not exceed the
 *		clone.
 * @touched:	out: how many bits were set.
 * @flags:	in: 0.
 * @pad:	in: 0.
 * @reserved:	in: 0.
 */
struct vms_clone_touched {
	__u64 bitmap;
	__u64 first;
	__u64 npages;
	__u64 touched;
	__u32 flags;
	__u32 pad;
	__u64 reserved[4];
};

/**
 * struct vms_clone_limit - argument of VMS_CLONE_SET_LIMIT
 * @limit:	(in) the most private pages the clone keeps in memory; 0: no
 *		limit (pages already in the swap file stay there until used).
 * @swap_dir_fd: (in) a directory, open for reading, on the file system
 *		that is to hold the clone's swap file, or -1 to keep the
 *		clone's swap file. The module creates the file there, unnamed
 *		(as O_TMPFILE), owned by the caller, with O_DIRECT where the
 *		file system has it; it goes when the clone goes. The first
 *		nonzero @limit needs one; a clone has one swap file for life.
 * @flags:	(in) must be 0.
 * @reserved:	(in) must be 0.
 */
struct vms_clone_limit {
	__u64 limit;
	__s32 swap_dir_fd;
	__u32 flags;
	__u64 reserved[4];
};

/**
 * struct vms_clone_footprint - argument of VMS_CLONE_FOOTPRINT (all out)
 * @limit:	the clone's limit of private pages in memory (0: none).
 * @resident:	private pages in memory now (vms_clone_stats.private_pages).
 * @swapped:	private pages in the swap file now.
 * @evicted:	pages written to the swap file and freed, in total.
 * @read_back:	pages read back from the swap file, in total.
 * @evict_errors: pages whose write to the swap file failed; they stayed
 *		in memory.
 * @evict_held: pages eviction passed over because someone held them (a
 *		pin for I/O, KVM's kvm_vcpu_map(), a fault in flight).
 * @swap_bytes:	the swap file's size in bytes (its highest page written).
 * @shrunk:	of @evicted, the pages the kernel's memory reclaim asked
 *		for (the "vms-clones" shrinker), in total: under host memory
 *		pressure any clone with a swap file gives its cold private
 *		pages to it, whatever its limit.
 * @swap_disk_bytes: the bytes the swap file takes on its file system
 *		(its allocated blocks, as stat(2) reports them): the pages
 *		written to it and not yet given back. VMS_CLONE_RESET gives
 *		them back (on a file system that can punch holes).
 * @throttled:	times the clone's stage-2 faults were turned back (the vCPU
 *		retried them, each time after a sleep of 0.5 to 1 ms), and,
 *		since 2026-12-06, its VMM mapping's faults (retried with the
 *		fault lock released, after the same sleep), in total, because
 *		they would have taken a private page while the clone was over
 *		its limit and an eviction was writing to the swap file: the
 *		guest or the VMM waited for the swap disk. A count that
 *		grows fast means a swap disk too slow for the guest's writes
 *		at this limit. It was reserved[0] until 2026-12-06 (same ABI
 *		version): older modules report 0.
 * @reserved:	0.
 */
struct vms_clone_footprint {
	__u64 limit;
	__u64 resident;
	__u64 swapped;
	__u64 evicted;
	__u64 read_back;
	__u64 evict_errors;
	__u64 evict_held;
	__u64 swap_bytes;
	__u64 shrunk;
	__u64 swap_disk_bytes;
	__u64 throttled;
	__u64 reserved[5];
};

/*
 * On /dev/vms. Creating and deleting images needs CAP_SYS_ADMIN (EPERM).
 *
 * VMS_IMAGE_CREATE - create an image from a file. The image reads the
 * file through its page cache and raises the readahead window of @fd's
 * open file to 2 MiB (as POSIX_FADV_SEQUENTIAL raises it, to twice the
 * device's), unless it is larger already or readahead is off for it;
 * other users of that open file see the wider window too. While the image
 * lives, writes to the file are denied (its inode's i_writecount, as exec
 * and swapon deny them): opening it for writing or truncating it fails with
 * ETXTBSY. Deleting the image gives write access back.
 * Return: 0, or EBADF (@fd not open), EACCES (@fd not open for reading),
 * EINVAL (bad name, size, offset, flags or reserved; a file that is not a
 * regular file or is shorter than @file_offset + @size), ETXTBSY (the file
 * is open for writing: @fd itself, another open file, or a shared writable
 * mapping), EEXIST (name taken), ENOMEM.
 *
 * VMS_IMAGE_INFO - read an image's counters. Return: 0, ENOENT, EINVAL.
 *
 * VMS_IMAGE_DELETE - delete an image. Return: 0, ENOENT, EBUSY (clones
 * use it, or live images are layered on it), EINVAL.
 *
 * VMS_IMAGE_LIST - name the @index-th image. Return: 0, ENOENT past the
 * last one, EINVAL.
 *
 * VMS_CLONE_CREATE - create a clone of an image.
 * Return: a new clone file descriptor (O_RDWR | O_CLOEXEC), or ENOENT (no
 * such image), EINVAL, ENOMEM, EMFILE.
 *
 * VMS_IMAGE_SNAPSHOT - make a live image of a clone's current memory
 * without copying what nobody else holds (see above). The VMM pauses the vCPUs around it so the
 * image is consistent with the vCPU state it saves; the module stays
 * correct if it does not (a racing write gets a private copy either before
 * or after the snapshot). Return: 0, or EBADF / EINVAL (@clone_fd is not a
 * clone), EEXIST (name taken), EINVAL (bad name, flags or reserved),
 * ENOMEM.
 *
 * VMS_CLONE_NAME - give a clone a name: a character device
 * /dev/vms-clone/NAME (misc device "vms-clone!NAME", mode 0600) whose
 * open(2) returns a file of the clone, as a clone file descriptor is (its
 * mmap, its ioctls), for VMMs that take guest memory by path, such as
 * QEMU's memory-backend-file mem-path. The name holds a reference to the
 * clone: the clone lives on after its file descriptors close, until
 * VMS_CLONE_UNNAME and the last file and mapping of it are gone. A clone
 * has at most one name. Needs CAP_SYS_ADMIN. Return: 0, or EPERM, EBADF /
 * EINVAL (@clone_fd is not a clone), EBUSY (the clone has a name),
 * EEXIST (name taken), EINVAL (bad name, flags or reserved), ENOSPC (no
 * device minor free), ENOMEM.
 *
 * VMS_CLONE_UNNAME - remove a clone's name and its device; files and
 * mappings of it that are open keep the clone. Needs CAP_SYS_ADMIN.
 * Return: 0, or EPERM, ENOENT (no clone of that name), EINVAL (bad name,
 * @clone_fd not -1, flags or reserved).
 */
#define VMS_IMAGE_CREATE	_IOW(VMS_IOCTL_TYPE, 0x01, struct vms_image_create)
#define VMS_IMAGE_INFO		_IOWR(VMS_IOCTL_TYPE, 0x02, struct vms_image_info)
#define VMS_IMAGE_DELETE	_IOW(VMS_IOCTL_TYPE, 0x03, struct vms_image_info)
#define VMS_IMAGE_LIST		_IOWR(VMS_IOCTL_TYPE, 0x04, struct vms_image_list)
#define VMS_CLONE_CREATE	_IOW(VMS_IOCTL_TYPE, 0x05, struct vms_clone_create)
#define VMS_IMAGE_SNAPSHOT	_IOW(VMS_IOCTL_TYPE, 0x06, struct vms_image_snapshot)
#define VMS_CLONE_NAME		_IOW(VMS_IOCTL_TYPE, 0x07, struct vms_clone_name)
#define VMS_CLONE_UNNAME	_IOW(VMS_IOCTL_TYPE, 0x08, struct vms_clone_name)

/*
 * On a clone file descriptor.
 *
 * VMS_CLONE_ATTACH - serve a memslot of a VM from the clone.
 * Return: 0, or EBADF (@vm_fd not open), EINVAL (@vm_fd not a KVM VM;
 * unaligned, empty or out-of-range @offset/@size; overlap with an attached
 * range; flags, pad or reserved not 0), EBUSY (the clone serves another VM,
 * or the VM already has a page provider), EEXIST (@slot already attached),
 * EOPNOTSUPP (the VM does not use TDP).
 *
 * VMS_CLONE_STATS - read the clone's counters. Return: 0 or EFAULT.
 *
 * VMS_CLONE_RESET - drop every private page: the clone reads its image
 * again (the image it was made from, or the live image of its last
 * VMS_IMAGE_SNAPSHOT) and its next writes copy again. Its stage-2
 * mappings and the VMM's mappings of the clone are removed first, so no
 * mapping of a dropped page remains. A VMM resets a paused VM, and
 * restores the vCPU and device state of the image with it; the module
 * stays correct if it does not (an access racing the reset sees the page
 * before or after it). I/O that pinned a private page before the reset
 * (O_DIRECT, io_uring, vhost) finishes into the dropped page, which is
 * freed when unpinned; so does a page KVM holds with kvm_vcpu_map()
 * (nested virtualization's pages) until KVM unmaps it. Swapped pages go
 * too, and the swap file's blocks are given back (a hole punched over
 * it, on a file system that can). The call waits for an eviction that
 * runs, and none starts until it returns. The argument must be 0.
 * Return: 0, or EINVAL (a nonzero argument), EINTR (a signal came while
 * it waited for an eviction; nothing was dropped).
 *
 * VMS_CLONE_TOUCHED - which pages the clone has used since it was made:
 * a page is set if the guest (stage 2) or the VMM's mapping read or wrote
 * it. Resets and snapshots do not clear it. It is what a VMM records as a
 * clone's working set, to prefetch in later clones of the image. If the
 * module once had no memory to record an access, every page is set (it
 * may say too much, never too little). The bitmap is built and copied
 * 32,768 pages at a time: each part is consistent in itself, not with
 * the others (the clone runs on meanwhile). On an error the bitmap's
 * contents are undefined and @touched is not written. Return: 0, or
 * EINVAL (@first not a multiple of 64, the range past the end of the
 * clone, flags, pad or reserved not 0), EFAULT (@bitmap or the argument
 * not writable), EINTR (a signal came during a long range), ENOMEM.
 *
 * VMS_CLONE_SET_LIMIT - limit the private pages the clone keeps in memory.
 * Above the limit, the clone's coldest private pages are written to its
 * swap file (see vms_clone_limit) and freed; the next access by the guest
 * or through the VMM's mapping reads the page back. Cold: not used since
 * the module last looked (a clock over the private pages, which zaps a
 * page's stage-2 and VMM mappings to see whether it is used again). The
 * limit holds at the guest's stage-2 faults, which evict before they
 * allocate, and this call evicts down to a lowered limit before it
 * returns; faults of the VMM's mapping never wait for a write (one that
 * takes the clone past its limit has the module's worker evict it back
 * down, moments later). A page that someone holds (a pin for I/O,
 * kvm_vcpu_map(), a pipe) is not evicted, and a failed write keeps the
 * page: the clone may stay above its limit, but never fails for it (after
 * an eviction that could not evict, the next 1024 stage-2 faults do not
 * try, and the module's worker tries again 1 s later, then 2, 4, ... up
 * to 32 s while nothing can go). If this call stops above the limit (a
 * signal: EINTR, not restarted even under SA_RESTART; pages held: 0; pages brought back from a slow swap file
 * as fast as they go, after twice the batches the clone's pages in memory
 * fill: 0), the limit stays and the worker goes on. While an eviction
 * writes, the guest's faults that would take the clone further over its
 * limit wait (the vCPU retries them, for at most 2 s in a row: see
 * vms_clone_footprint.throttled), and so do the VMM mapping's (with the
 * fault lock released; not an access that may not release it, such as
 * ptrace's, nor one with a signal pending).
 * A page that cannot be read back fails the access (the vCPU exits with
 * EFAULT, the VMM gets SIGBUS), never a wrong page; so does an access
 * that cannot wait for the read (ptrace, /proc/PID/mem) to a swapped
 * page.
 * A clone with a swap file, whatever its limit (0 too: a swap file and
 * no limit), also gives cold private pages to the host's memory reclaim
 * (the "vms-clones" shrinker, vms_clone_footprint.shrunk): kswapd and
 * direct reclaim ask for a share, and "echo 2 > /proc/sys/vm/drop_caches"
 * for all of them (an ask stands for a second unless renewed). Its
 * swapped pages are then as above (EIO to ptrace).
 * VMS_IMAGE_SNAPSHOT reads every swapped page back first; VMS_CLONE_RESET
 * drops them. Return: 0, or EINVAL (flags or reserved not 0; a
 * nonzero @limit and no swap file), EBADF (@swap_dir_fd not open),
 * ENOTDIR, EEXIST (the clone has a swap file already), an error of
 * creating the file (EACCES, EROFS, EOPNOTSUPP: the file system cannot
 * make unnamed files), EINTR (a signal while evicting down to the new
 * limit; the limit is set).
 *
 * VMS_CLONE_FOOTPRINT - read the clone's limit and swap counters.
 * Return: 0 or EFAULT.
 */
#define VMS_CLONE_ATTACH	_IOW(VMS_IOCTL_TYPE, 0x10, struct vms_clone_attach)
#define VMS_CLONE_STATS		_IOR(VMS_IOCTL_TYPE, 0x11, struct vms_clone_stats)
#define VMS_CLONE_RESET		_IO(VMS_IOCTL_TYPE, 0x12)
#define VMS_CLONE_TOUCHED	_IOWR(VMS_IOCTL_TYPE, 0x13, struct vms_clone_touched)
#define VMS_CLONE_SET_LIMIT	_IOW(VMS_IOCTL_TYPE, 0x14, struct vms_clone_limit)
#define VMS_CLONE_FOOTPRINT	_IOR(VMS_IOCTL_TYPE, 0x15, struct vms_clone_footprint)

#endif /* _UAPI_LINUX_VMS_H */
