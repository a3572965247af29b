// SPDX-License-Identifier: GPL-2.0

//! `/dev/vms`: the image registry and the ioctls of `uapi/vms.h`, in safe
//! Rust. [`ffi`](crate::ffi) turns the C `unlocked_ioctl` call into
//! [`ioctl`] and the `Result` back into an errno.
//!
//! Lock order: `Registry::images` -> a clone's `state` (snapshot only);
//! `Registry::images` -> the reclaim list -> an image's `cache`, and
//! `Registry::images` -> the reclaim list -> clones' `state` (tried): the
//! reclaim worker, which only tries `images` (see [`reclaim_images`]). An
//! image's `clones` and `children` counts change under `images`, so delete
//! cannot race with clone creation or a snapshot. `Registry::named` ->
//! the misc core's `misc_mtx` (registering and removing a clone's device);
//! the device's `open` runs under `misc_mtx` and takes no lock of ours.

use crate::abi;
use crate::clone::VmClone;
use crate::ffi::{self, FileRef, ImageFile, PageRef, PAGE_SIZE};
use crate::image::{ffi_name, Backing, Image};
use core::sync::atomic::Ordering::Relaxed;
use kernel::new_mutex;
use kernel::c_str;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

/// The module's version, reported by `VMS_GET_VERSION`.
pub(crate) const MODULE_VERSION: &str = "0.4.0";

/// The readahead window image files get at least, in pages: 2 MiB, one
/// guest huge page, instead of the device's default (128 KiB on most block
/// devices), with which a clone's sequential first touch of a cold image
/// waited on the disk for each 128 KiB. The window bounds sequential
/// streams only; a random miss still reads just its page.
const IMAGE_READAHEAD_PAGES: u32 = ((2 << 20) / PAGE_SIZE) as u32;

/// The lockdep class of [`Registry::images`].
static IMAGES_KEY: ffi::LockKey = ffi::LockKey::new();

/// The named images, sorted by name.
#[pin_data]
pub(crate) struct Registry {
    #[pin]
    images: ffi::TryMutex<KVec<Arc<Image>>>,
    /// The named clones (`VMS_CLONE_NAME`); a removed one leaves `None`.
    #[pin]
    named: Mutex<KVec<Option<Pin<KBox<ffi::NamedClone>>>>>,
    /// The one zero page every image serves its all-zero pages with.
    zero: PageRef,
    /// The image the reclaim worker looks at first next time (an index,
    /// modulo the number of images): asks go round the images.
    reclaim_next: core::sync::atomic::AtomicUsize,
}

impl Registry {
    pub(crate) fn new() -> Result<impl PinInit<Self, Error>> {
        let zero = PageRef::alloc_zeroed()?;
        Ok(try_pin_init!(Registry {
            images <- ffi::TryMutex::new(KVec::new(), c_str!("vms_images"), &IMAGES_KEY),
            named <- new_mutex!(KVec::new(), "vms_named_clones"),
            zero,
            reclaim_next: core::sync::atomic::AtomicUsize::new(0),
        }? Error))
    }
}

/// Dispatch one ioctl on `/dev/vms`. Unknown commands are `ENOTTY`.
pub(crate) fn ioctl(reg: &Registry, cmd: u32, arg: UserPtr) -> Result<isize> {
    match cmd {
        abi::VMS_GET_VERSION => get_version(arg),
        abi::VMS_IMAGE_CREATE => image_create(reg, arg),
        abi::VMS_IMAGE_INFO => image_info(reg, arg, false),
        abi::VMS_IMAGE_DELETE => image_info(reg, arg, true),
        abi::VMS_IMAGE_LIST => image_list(reg, arg),
        abi::VMS_CLONE_CREATE => clone_create(reg, arg),
        abi::VMS_IMAGE_SNAPSHOT => image_snapshot(reg, arg),
        abi::VMS_CLONE_NAME => clone_name(reg, arg),
        abi::VMS_CLONE_UNNAME => clone_unname(reg, arg),
        _ => Err(ENOTTY),
    }
}

fn inval<T>(msg: &str) -> Result<T> {
    pr_info!("{}\n", msg);
    Err(EINVAL)
}

fn get_version(arg: UserPtr) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsVersion>()).reader_writer();
    let mut v: abi::VmsVersion = reader.read()?;
    if v.flags != 0 || v.reserved.iter().any(|&r| r != 0) {
        return inval("VMS_GET_VERSION: flags or reserved not zero");
    }
    v.abi_version = abi::VMS_ABI_VERSION;
    v.module_version = [0; abi::VMS_MODULE_VERSION_LEN];
    let ver = MODULE_VERSION.as_bytes();
    v.module_version[..ver.len()].copy_from_slice(ver);
    writer.write(&v)?;
    Ok(0)
}

/// Check a name from userspace: NUL-terminated, 1..VMS_NAME_LEN-1 bytes
/// of letters, digits, '-', '_', '.'; the bytes after the NUL are zeroed
/// in the returned copy.
fn check_name(name: &[u8; abi::VMS_NAME_LEN]) -> Result<[u8; abi::VMS_NAME_LEN]> {
    let Some(n) = name.iter().position(|&b| b == 0) else {
        return inval("image name is not NUL-terminated");
    };
    let ok = |b: u8| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.';
    if n == 0 || !name[..n].iter().all(|&b| ok(b)) {
        return inval("image name must be 1-31 of [A-Za-z0-9._-]");
    }
    let mut out = [0u8; abi::VMS_NAME_LEN];
    out[..n].copy_from_slice(&name[..n]);
    Ok(out)
}

fn image_create(reg: &Registry, arg: UserPtr) -> Result<isize> {
    if !ffi::capable_sys_admin() {
        return Err(EPERM);
    }
    let c: abi::VmsImageCreate =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsImageCreate>()).reader().read()?;
    let name = check_name(&c.name)?;
    if c.flags & !abi::VMS_IMAGE_EMPTY != 0 || c.reserved.iter().any(|&r| r != 0) {
        return inval("VMS_IMAGE_CREATE: unknown flags or reserved not zero");
    }
    let page = PAGE_SIZE as u64;
    if c.size == 0 || c.size % page != 0 || c.file_offset % page != 0 {
        return inval("VMS_IMAGE_CREATE: size and file_offset must be page multiples, size > 0");
    }
    let backing = if c.flags & abi::VMS_IMAGE_EMPTY != 0 {
        if c.fd != -1 || c.file_offset != 0 {
            return inval("VMS_IMAGE_CREATE: an empty image takes fd -1 and file_offset 0");
        }
        Backing::Empty
    } else {
        let file = FileRef::get_readable(c.fd).inspect_err(|e| {
            pr_info!("VMS_IMAGE_CREATE: fd {}: not a readable regular file (error {})\n", c.fd, e.to_errno());
        })?;
        let end = c.file_offset.checked_add(c.size).ok_or(EINVAL)?;
        if file.size() < end {
            pr_info!(
                "VMS_IMAGE_CREATE {}: file holds {} bytes, needs {}\n",
                ffi_name(&name),
                file.size(),
                end
            );
            return Err(EINVAL);
        }
        // Clones map the file's page-cache pages: nobody may write it while
        // the image lives. Given back when the image (or, on an error
        // below, this value) is dropped.
        let file = ImageFile::deny_write(file).inspect_err(|_| {
            pr_info!(
                "VMS_IMAGE_CREATE {}: fd {}: the file is open for writing\n",
                ffi_name(&name),
                c.fd
            );
        })?;
        file.widen_readahead(IMAGE_READAHEAD_PAGES);
        Backing::File { file, offset: c.file_offset }
    };
    let mut images = reg.images.lock();
    let pos = free_slot(&images, &name)?;
    let image = Arc::pin_init(Image::new(name, backing, c.size, reg.zero.clone())?, GFP_KERNEL)?;
    insert(&mut images, pos, image)
}

/// Where image `name` goes in the sorted list; `EEXIST` if it is taken.
fn free_slot(images: &KVec<Arc<Image>>, name: &[u8; abi::VMS_NAME_LEN]) -> Result<usize> {
    match images.binary_search_by(|i| i.name().cmp(name)) {
        Ok(_) => {
            pr_info!("image {} exists\n", ffi_name(name));
            Err(EEXIST)
        }
        Err(pos) => Ok(pos),
    }
}

fn insert(images: &mut KVec<Arc<Image>>, pos: usize, image: Arc<Image>) -> Result<isize> {
    images.push(image, GFP_KERNEL)?;
    // Keep the vector sorted: move the new image into place.
    let last = images.len() - 1;
    images.as_mut_slice()[pos..=last].rotate_right(1);
    Ok(0)
}

fn image_snapshot(reg: &Registry, arg: UserPtr) -> Result<isize> {
    if !ffi::capable_sys_admin() {
        return Err(EPERM);
    }
    let c: abi::VmsImageSnapshot =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsImageSnapshot>()).reader().read()?;
    let name = check_name(&c.name)?;
    if c.flags != 0 || c.reserved.iter().any(|&r| r != 0) {
        return inval("VMS_IMAGE_SNAPSHOT: flags or reserved not zero");
    }
    let clone = ffi::clone_from_fd(c.clone_fd).inspect_err(|e| {
        pr_info!("VMS_IMAGE_SNAPSHOT: fd {} is not a clone (error {})\n", c.clone_fd, e.to_errno());
    })?;
    // Every swapped page back in memory, before the registry lock: the
    // reads take the file system's locks.
    let _resident = clone.hold_resident().inspect_err(|e| {
        pr_info!("VMS_IMAGE_SNAPSHOT: cannot read the clone's swapped pages back: error {}\n", e.to_errno());
    })?;
    let mut images = reg.images.lock();
    let pos = free_slot(&images, &name)?;
    // Room first: once the snapshot is taken, naming it must not fail.
    images.reserve(1, GFP_KERNEL)?;
    let image = clone.snapshot(name, reg.zero.clone())?;
    insert(&mut images, pos, image)
}

/// The reclaim worker's share for images: if memory reclaim asked for
/// `want` pages, drop up to that many from the caches of images made from
/// a file (see [`crate::clone::reclaim_image`], which also unmaps pages
/// from clones for a later call to drop), going round the images from
/// where the last call stopped. Returns the pages dropped and
/// how many of them were freed (see [`Image::reclaim_pass`]). `None` if the
/// registry was busy: its holders allocate memory, and may be in direct
/// reclaim, waiting for what the worker frees from clones (which it then
/// goes on to do).
pub(crate) fn reclaim_images(reg: &Registry, r: &ffi::Reclaim, want: usize) -> Option<(usize, usize)> {
    let images = reg.images.try_lock()?;
    let (mut n, mut freed) = (0, 0);
    let count = images.len();
    let first = reg.reclaim_next.load(Relaxed);
    // Round the images: the next call starts after the first one this
    // one looked at (or where it stopped, if it stopped before that).
    reg.reclaim_next.store(first.wrapping_add(1), Relaxed);
    for k in 0..count {
        let i = (first + k) % count;
        if n >= want {
            reg.reclaim_next.store(i, Relaxed);
            break;
        }
        let image = &images[i];
        if !image.may_drop() {
            continue;
        }
        // A clone of it being made or dropped: the next image, and the
        // next ask.
        if let Some((d, f)) = crate::clone::reclaim_image(r, image, want - n) {
            n += d;
            freed += f;
        }
    }
    Some((n, freed))
}

fn find(images: &KVec<Arc<Image>>, name: &[u8; abi::VMS_NAME_LEN]) -> Result<usize> {
    images.binary_search_by(|i| i.name().cmp(name)).map_err(|_| ENOENT)
}

fn image_info(reg: &Registry, arg: UserPtr, delete: bool) -> Result<isize> {
    if delete && !ffi::capable_sys_admin() {
        return Err(EPERM);
    }
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsImageInfo>()).reader_writer();
    let mut info: abi::VmsImageInfo = reader.read()?;
    let name = check_name(&info.name)?;
    if info.flags != 0 || info.pad != 0 {
        return inval("VMS_IMAGE_INFO/DELETE: flags or pad not zero");
    }
    let mut images = reg.images.lock();
    let i = find(&images, &name)?;
    if delete {
        let clones = images[i].clones.load(Relaxed);
        if clones != 0 {
            pr_info!("VMS_IMAGE_DELETE: image {} is used by {} clones\n", ffi_name(&name), clones);
            return Err(EBUSY);
        }
        let children = images[i].children.load(Relaxed);
        if children != 0 {
            pr_info!(
                "VMS_IMAGE_DELETE: {} live images are layered on image {}\n",
                children,
                ffi_name(&name)
            );
            return Err(EBUSY);
        }
        // 6.12's KVec has no remove(): build the list without it. Only
        // then, when nothing can fail any more, does the parent lose a
        // child: an ENOMEM here leaves the image and every count as they
        // were.
        let mut kept = KVec::with_capacity(images.len() - 1, GFP_KERNEL)?;
        for (j, image) in images.iter().enumerate() {
            if j != i {
                kept.push(image.clone(), GFP_KERNEL)?;
            }
        }
        if let Some(parent) = images[i].parent() {
            parent.children.fetch_sub(1, Relaxed);
        }
        let old = core::mem::replace(&mut *images, kept);
        drop(images);
        drop(old);
        return Ok(0);
    }
    info.stats = images[i].stats();
    drop(images);
    writer.write(&info)?;
    Ok(0)
}

fn image_list(reg: &Registry, arg: UserPtr) -> Result<isize> {
    let (mut reader, mut writer) =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsImageList>()).reader_writer();
    let mut l: abi::VmsImageList = reader.read()?;
    if l.flags != 0 || l.reserved.iter().any(|&r| r != 0) {
        return inval("VMS_IMAGE_LIST: flags or reserved not zero");
    }
    let images = reg.images.lock();
    let image = images.get(l.index as usize).ok_or(ENOENT)?;
    l.name = *image.name();
    drop(images);
    writer.write(&l)?;
    Ok(0)
}

fn clone_create(reg: &Registry, arg: UserPtr) -> Result<isize> {
    let c: abi::VmsCloneCreate =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsCloneCreate>()).reader().read()?;
    let name = check_name(&c.name)?;
    if c.flags != 0 || c.pad != 0 || c.reserved.iter().any(|&r| r != 0) {
        return inval("VMS_CLONE_CREATE: flags, pad or reserved not zero");
    }
    let image = {
        let images = reg.images.lock();
        let image = images[find(&images, &name)?].clone();
        // Counted under the registry lock, so delete sees it, and so does
        // reclaim, which leaves the image's cache alone until it finds the
        // clone on its list.
        image.clones.fetch_add(1, Relaxed);
        image
    };
    let clone = match VmClone::new(image.clone()) {
        Ok(c) => c,
        Err(e) => {
            image.clones.fetch_sub(1, Relaxed);
            return Err(e);
        }
    };
    // From here the clone's drop gives the count back (and leaves the
    // list).
    ffi::reclaim_add(&clone)?;
    Ok(ffi::new_clone_fd(clone)? as isize)
}

fn read_clone_name(arg: UserPtr, what: &str) -> Result<abi::VmsCloneName> {
    if !ffi::capable_sys_admin() {
        return Err(EPERM);
    }
    let c: abi::VmsCloneName =
        UserSlice::new(arg, core::mem::size_of::<abi::VmsCloneName>()).reader().read()?;
    if c.flags != 0 || c.reserved.iter().any(|&r| r != 0) {
        pr_info!("{}: flags or reserved not zero\n", what);
        return Err(EINVAL);
    }
    Ok(c)
}

/// `VMS_CLONE_NAME`: the clone behind `clone_fd` gets a device,
/// `/dev/vms-clone/NAME`, which holds it until `VMS_CLONE_UNNAME`.
fn clone_name(reg: &Registry, arg: UserPtr) -> Result<isize> {
    let c = read_clone_name(arg, "VMS_CLONE_NAME")?;
    let name = check_name(&c.name)?;
    if name[0] == b'.' {
        // ("." and ".." would be no device node's name)
        return inval("VMS_CLONE_NAME: a clone's name may not start with '.'");
    }
    let clone = ffi::clone_from_fd(c.clone_fd).inspect_err(|_| {
        pr_info!("VMS_CLONE_NAME: clone_fd {} is not a clone\n", c.clone_fd);
    })?;
    let mut named = reg.named.lock();
    let live = || named.iter().flatten();
    if live().any(|n| n.name() == &name) {
        pr_info!("VMS_CLONE_NAME: a clone has that name already\n");
        return Err(EEXIST);
    }
    if live().any(|n| n.names(&clone)) {
        pr_info!("VMS_CLONE_NAME: the clone has a name already\n");
        return Err(EBUSY);
    }
    // Room first: once the device exists, keeping it cannot fail.
    let free = named.iter().position(|n| n.is_none());
    if free.is_none() {
        named.reserve(1, GFP_KERNEL)?;
    }
    // (`clone`, declared before the lock, outlives it: if the caller's fd
    // closed meanwhile, a failed registration does not drop the clone's
    // last reference, which waits for its VM, under the lock)
    let dev = ffi::NamedClone::register(&name, clone.clone())?;
    match free {
        Some(i) => named[i] = Some(dev),
        None => named.push(Some(dev), GFP_KERNEL)?,
    }
    Ok(0)
}

/// `VMS_CLONE_UNNAME`: the clone's device goes; files and mappings of it
/// keep the clone.
fn clone_unname(reg: &Registry, arg: UserPtr) -> Result<isize> {
    let c = read_clone_name(arg, "VMS_CLONE_UNNAME")?;
    let name = check_name(&c.name)?;
    if c.clone_fd != -1 {
        return inval("VMS_CLONE_UNNAME: clone_fd must be -1");
    }
    let clone = {
        let mut named = reg.named.lock();
        let Some(i) = named.iter().position(|n| n.as_ref().is_some_and(|n| n.name() == &name)) else {
            return Err(ENOENT);
        };
        // The device goes under the lock (misc_deregister waits for an
        // `open` in flight, which takes no lock of ours): a VMS_CLONE_NAME
        // of the same name after the lock finds it gone from sysfs too.
        let gone = named[i].take();
        let clone = gone.as_ref().map(|n| n.clone_ref());
        drop(gone);
        clone
    };
    // Outside the lock: this may be the clone's last reference, whose drop
    // unregisters it from its VM.
    drop(clone);
    Ok(0)
}
