// SPDX-License-Identifier: GPL-2.0

//! The one place where vms talks to C.
//!
//! Each C object vms uses is wrapped here once, in a safe type; the rest of
//! the module uses only those types. Every `unsafe` block states why it is
//! sound. Results become errnos only at the `extern "C"` edges below.
//!
//! Objects: [`MiscDevice`] (`/dev/vms`), [`PageRef`] (a referenced
//! `struct page`), [`FileRef`] (a referenced `struct file`, for image
//! files), [`Vm`] (a referenced `struct kvm` with our page provider
//! registered), the clone file ([`new_clone_fd`]) with its mmap and fault
//! handlers, the claimer KVM asks about new memslots ([`claim_slot`]) and
//! the module's workqueue ([`WorkQueue`]).

use crate::clone::{throttle_sleep, MayRead, MmapFault, VmClone};
use crate::{abi, dev};
use core::ptr::{addr_of_mut, null_mut, NonNull};
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicI64, AtomicPtr, AtomicU32, AtomicUsize, Ordering};
use kernel::c_str;
use kernel::bindings;
use kernel::error::{from_err_ptr, from_result, to_result};
use kernel::ffi::{c_int, c_long, c_uint, c_ulong, c_void};
use kernel::init::pin_init_from_closure;
use kernel::prelude::*;
use kernel::sync::{Arc, ArcBorrow};
use kernel::types::{AsBytes, FromBytes, ForeignOwnable, Opaque};

macro_rules! pod {
    ($($t:ty),*) => {$(
        // SAFETY: the ABI structs are `repr(C)` plain old data made of
        // integers and byte arrays with explicit padding (sizes and
        // offsets asserted in `abi`): every bit pattern is valid and no
        // byte is uninitialised.
        unsafe impl FromBytes for $t {}
        // SAFETY: as above.
        unsafe impl AsBytes for $t {}
    )*};
}
pod!(
    abi::VmsVersion,
    abi::VmsImageCreate,
    abi::VmsImageInfo,
    abi::VmsImageList,
    abi::VmsCloneCreate,
    abi::VmsImageSnapshot,
    abi::VmsCloneName,
    abi::VmsCloneAttach,
    abi::VmsCloneStats,
    abi::VmsCloneTouched,
    abi::VmsCloneLimit,
    abi::VmsCloneFootprint
);

pub(crate) const PAGE_SIZE: usize = bindings::PAGE_SIZE;

/// A file operations table that can live in a `static`.
struct FileOps(bindings::file_operations);

// SAFETY: the table is never written after it is built; the C side only
// reads it, from any thread.
unsafe impl Sync for FileOps {}

/// Whether the calling task has `CAP_SYS_ADMIN`.
pub(crate) fn capable_sys_admin() -> bool {
    // SAFETY: `capable` only inspects the current task's credentials.
    unsafe { bindings::capable(bindings::CAP_SYS_ADMIN as c_int) }
}

// ---------------------------------------------------------------------------
// /dev/vms

/// `unlocked_ioctl` of `/dev/vms`.
extern "C" fn vms_ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: misc_open() set `private_data` to our `miscdevice`, which is
    // the `inner` field of a registered, pinned `MiscDevice`; it stays
    // registered (and so alive) while a file of it is open, because the
    // file pins the module (`owner`) and the module owns the registration.
    let dev = unsafe {
        let misc = (*file).private_data as *const bindings::miscdevice;
        &*kernel::container_of!(misc, MiscDevice, inner)
    };
    from_result(|| Ok(dev::ioctl(&dev.registry, cmd, arg as usize)? as c_long))
}

/// The file operations of `/dev/vms`. `owner` pins the module while a file
/// is open, so rmmod waits for the last close.
static VMS_FOPS: FileOps = FileOps(bindings::file_operations {
    // Only the address of the module's own `struct module` is taken.
    owner: addr_of_mut!(bindings::__this_module),
    unlocked_ioctl: Some(vms_ioctl),
    #[cfg(CONFIG_COMPAT)]
    compat_ioctl: Some(bindings::compat_ptr_ioctl),
    // SAFETY: all-zero is a valid `file_operations`: null pointers and
    // `None` callbacks.
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
});

/// A registered misc character device, `/dev/<name>`, mode 0600, with the
/// module's image registry behind it.
///
/// # Invariants
///
/// `inner` is registered with `misc_register()` from construction until
/// drop, and is pinned: the misc core links it into its list.
#[pin_data(PinnedDrop)]
pub(crate) struct MiscDevice {
    #[pin]
    inner: Opaque<bindings::miscdevice>,
    #[pin]
    registry: dev::Registry,
}

// SAFETY: after registration the misc core only reads `inner` under its own
// lock, and `MiscDevice` offers no access to it; `registry` is `Sync`.
unsafe impl Send for MiscDevice {}
// SAFETY: as for `Send`.
unsafe impl Sync for MiscDevice {}

impl MiscDevice {
    /// Register `/dev/<name>`; the registry is ready before the device is
    /// visible.
    pub(crate) fn register(
        name: &'static CStr,
        registry: impl PinInit<dev::Registry, Error>,
    ) -> impl PinInit<Self, Error> {
        let init = move |slot: *mut Self| {
            // SAFETY: `slot` is valid for writes (pin-init contract).
            let reg = unsafe { addr_of_mut!((*slot).registry) };
            // SAFETY: `reg` is valid for writes and pinned in its place.
            unsafe { registry.__pinned_init(reg)? };
            // SAFETY: `Opaque::raw_get` only computes the field's address.
            let misc = unsafe { Opaque::raw_get(addr_of_mut!((*slot).inner)) };
            // SAFETY: `misc` is valid for writes. All-zero is a valid
            // `miscdevice` for the fields not set here.
            unsafe {
                misc.write(bindings::miscdevice {
                    minor: bindings::MISC_DYNAMIC_MINOR as _,
                    name: name.as_char_ptr(),
                    fops: &VMS_FOPS.0,
                    mode: 0o600,
                    ..core::mem::MaybeUninit::zeroed().assume_init()
                })
            };
            // INVARIANT: registered on success.
            // SAFETY: `misc` is initialised and pinned in its final place.
            let r = to_result(unsafe { bindings::misc_register(misc) });
            if r.is_err() {
                // SAFETY: `reg` was initialised above and is not used again.
                unsafe { core::ptr::drop_in_place(reg) };
            }
            r
        };
        // SAFETY: `init` initialises every field of `Self` or fails
        // leaving nothing initialised.
        unsafe { pin_init_from_closure(init) }
    }
}

#[pinned_drop]
impl PinnedDrop for MiscDevice {
    fn drop(self: Pin<&mut Self>) {
        // SAFETY: `inner` is registered (type invariant).
        unsafe { bindings::misc_deregister(self.inner.get()) };
    }
}

// ---------------------------------------------------------------------------
// A mutex that can be tried

/// A static lockdep class, for C objects that lockdep tracks as locks
/// (a timer's callback, a [`TryMutex`]); lockdep wants a static key.
pub(crate) struct LockKey(core::cell::UnsafeCell<bindings::lock_class_key>);
// SAFETY: only lockdep uses it, through the pointer, under its own locks.
unsafe impl Sync for LockKey {}

impl LockKey {
    pub(crate) const fn new() -> Self {
        // SAFETY: all zeroes is a valid `lock_class_key` (a static one is
        // so).
        LockKey(core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() }))
    }
}

/// A mutex (`struct mutex`) that can also be tried: 6.12's
/// `kernel::sync::Mutex` has no `try_lock`, and the reclaim worker must
/// not wait for a lock whose holders allocate memory (they may be in
/// direct reclaim, waiting for what the worker would free).
#[pin_data]
pub(crate) struct TryMutex<T> {
    #[pin]
    mutex: Opaque<bindings::mutex>,
    data: core::cell::UnsafeCell<T>,
}

// SAFETY: the data is reached only through a guard, which the mutex makes
// exclusive; it moves between threads with the mutex.
unsafe impl<T: Send> Send for TryMutex<T> {}
// SAFETY: as for `Send`: `&TryMutex` gives `&mut T` only to the holder.
unsafe impl<T: Send> Sync for TryMutex<T> {}

impl<T> TryMutex<T> {
    /// A mutex over `data`, of lockdep class `key`, named `name`.
    pub(crate) fn new(data: T, name: &'static CStr, key: &'static LockKey) -> impl PinInit<Self> {
        pin_init!(TryMutex {
            // SAFETY: `slot` is the mutex's place, pinned with the rest;
            // the name and the key are static.
            mutex <- Opaque::ffi_init(|slot| unsafe {
                bindings::__mutex_init(slot, name.as_char_ptr(), key.0.get())
            }),
            data: core::cell::UnsafeCell::new(data),
        })
    }

    /// Take the mutex, sleeping until it is free.
    pub(crate) fn lock(&self) -> TryMutexGuard<'_, T> {
        // SAFETY: initialised in `new`; unlocked by the guard's drop, in
        // this task (the guard is not `Send`).
        unsafe { bindings::mutex_lock(self.mutex.get()) };
        TryMutexGuard(self, core::marker::PhantomData)
    }

    /// Take the mutex if it is free; `None` if someone holds it.
    pub(crate) fn try_lock(&self) -> Option<TryMutexGuard<'_, T>> {
        // SAFETY: as in `lock`.
        let got = unsafe { bindings::mutex_trylock(self.mutex.get()) } != 0;
        got.then(|| TryMutexGuard(self, core::marker::PhantomData))
    }
}

/// A held [`TryMutex`]: unlocks when dropped, in the task that locked it.
pub(crate) struct TryMutexGuard<'a, T>(&'a TryMutex<T>, core::marker::PhantomData<*mut ()>);

impl<T> core::ops::Deref for TryMutexGuard<'_, T> {
    type Target = T;
    fn deref(&self) -> &T {
        // SAFETY: the mutex is held, so nobody else reaches the data.
        unsafe { &*self.0.data.get() }
    }
}

impl<T> core::ops::DerefMut for TryMutexGuard<'_, T> {
    fn deref_mut(&mut self) -> &mut T {
        // SAFETY: as in `deref`, and `&mut self` makes this one exclusive.
        unsafe { &mut *self.0.data.get() }
    }
}

impl<T> Drop for TryMutexGuard<'_, T> {
    fn drop(&mut self) {
        // SAFETY: locked by this task when the guard was made.
        unsafe { bindings::mutex_unlock(self.0.mutex.get()) };
    }
}

// ---------------------------------------------------------------------------
// Pages

/// A reference to a `struct page`: a page vms allocated (order 0), or one
/// page of a page-cache folio of an image file
/// ([`FileRef::cached_page`]), on whose folio the reference is held.
///
/// # Invariants
///
/// `0` points to a live page on which this value holds one reference.
pub(crate) struct PageRef(NonNull<bindings::page>);

// SAFETY: page references may be taken and dropped from any thread.
unsafe impl Send for PageRef {}
// SAFETY: `PageRef` gives only raw-copy access through `&self` methods that
// do not rely on exclusive access.
unsafe impl Sync for PageRef {}

impl PageRef {
    /// Allocate a page charged to the caller's memory cgroup; its contents
    /// are undefined until written.
    pub(crate) fn alloc() -> Result<Self> {
        // SAFETY: plain allocation, no preconditions.
        let p = unsafe { bindings::alloc_pages(bindings::GFP_KERNEL_ACCOUNT, 0) };
        // INVARIANT: a fresh page comes with one reference.
        NonNull::new(p).map(PageRef).ok_or(ENOMEM)
    }

    /// Allocate a zeroed page.
    pub(crate) fn alloc_zeroed() -> Result<Self> {
        let gfp = bindings::GFP_KERNEL_ACCOUNT | bindings::__GFP_ZERO;
        // SAFETY: plain allocation, no preconditions.
        let p = unsafe { bindings::alloc_pages(gfp, 0) };
        // INVARIANT: a fresh page comes with one reference.
        NonNull::new(p).map(PageRef).ok_or(ENOMEM)
    }

    /// Allocate a clone's private page (a copy-on-write copy, or a copy
    /// a snapshot makes), zeroed or not, charged to the caller's memory
    /// cgroup.
    ///
    /// With the debug knob `private_movable` set, the page comes from
    /// the movable pageblocks user memory uses (`__GFP_MOVABLE`), not the
    /// kernel's unmovable ones; once freed it tends to be recycled into
    /// user memory rather than into slabs and page tables (pageblocks of
    /// one kind do lend pages to the other under pressure). Not
    /// `__GFP_HIGHMEM` as `GFP_HIGHUSER_MOVABLE` has: that would put the
    /// page in ZONE_MOVABLE where one exists, which memory offlining and
    /// long-term pins require to be migratable. vms cannot migrate it
    /// (compaction skips it; a CMA allocation over it fails with EBUSY),
    /// so this is an instrument for the soak's `movable` arm, not a mode
    /// for hosts.
    pub(crate) fn alloc_private(zeroed: bool) -> Result<Self> {
        let mut gfp = bindings::GFP_KERNEL_ACCOUNT;
        if zeroed {
            gfp |= bindings::__GFP_ZERO;
        }
        if PRIVATE_MOVABLE.load(Ordering::Relaxed) != 0 {
            gfp |= 1 << bindings::___GFP_MOVABLE_BIT;
        }
        // SAFETY: plain allocation, no preconditions.
        let p = unsafe { bindings::alloc_pages(gfp, 0) };
        // INVARIANT: a fresh page comes with one reference.
        NonNull::new(p).map(PageRef).ok_or(ENOMEM)
    }

    pub(crate) fn as_ptr(&self) -> *mut bindings::page {
        self.0.as_ptr()
    }

    /// Give the reference away to C (KVM or the fault handler).
    pub(crate) fn into_raw(self) -> *mut bindings::page {
        let p = self.0.as_ptr();
        core::mem::forget(self);
        p
    }

    /// Run `f` on the page's bytes.
    fn with_bytes<R>(&self, f: impl FnOnce(*mut u8) -> R) -> R {
        // SAFETY: the page is live (invariant); the mapping is released
        // before returning.
        let va = unsafe { bindings::kmap_local_page(self.as_ptr()) } as *mut u8;
        let r = f(va);
        // SAFETY: `va` came from `kmap_local_page` above, in this context.
        unsafe { bindings::kunmap_local(va as *const c_void) };
        r
    }

    /// Copy the contents of `src` into this page.
    pub(crate) fn copy_from(&self, src: &PageRef) {
        src.with_bytes(|s| {
            self.with_bytes(|d| {
                // SAFETY: both are distinct mapped pages of PAGE_SIZE bytes.
                unsafe { core::ptr::copy_nonoverlapping(s, d, PAGE_SIZE) }
            })
        })
    }

    /// Whether every byte of the page is zero.
    pub(crate) fn is_zero(&self) -> bool {
        self.with_bytes(|p| {
            // SAFETY: `p` maps PAGE_SIZE bytes, aligned to 8.
            let words = unsafe { core::slice::from_raw_parts(p as *const u64, PAGE_SIZE / 8) };
            words.iter().all(|&w| w == 0)
        })
    }

    /// Lock the page (may sleep), for handing it locked to the fault path.
    ///
    /// A page lock orders the VMM's fault installing a page against
    /// [`Mapping::unmap_page`] of that page: see `clone.rs`.
    pub(crate) fn into_locked(self) -> LockedPage {
        // SAFETY: the page is live (invariant); `lock_page` may sleep,
        // which our callers allow.
        unsafe { bindings::lock_page(self.as_ptr()) };
        // INVARIANT: locked just now.
        LockedPage(self)
    }

    /// Run `f` with the page locked.
    pub(crate) fn locked<R>(&self, f: impl FnOnce() -> R) -> R {
        // SAFETY: the page is live (invariant).
        unsafe { bindings::lock_page(self.as_ptr()) };
        let r = f();
        // SAFETY: locked above by this thread.
        unsafe { bindings::unlock_page(self.as_ptr()) };
        r
    }

    /// Whether `raw` is this page.
    pub(crate) fn is(&self, raw: *mut bindings::page) -> bool {
        self.as_ptr() == raw
    }

    /// The page's reference count, as `page_ref_count()` reads it (ours
    /// included). Meant for the order-0 pages vms allocates: a page of a
    /// large folio keeps its count in the folio's head.
    ///
    /// Every holder counts: page-table mappings, faults in flight,
    /// `FOLL_GET` references (`kvm_vcpu_map()`) and GUP pins, which add
    /// `GUP_PIN_COUNTING_BIAS` (1024) to an order-0 page.
    pub(crate) fn ref_count(&self) -> i32 {
        // SAFETY: the page is live (invariant), so `_refcount` is an
        // aligned `atomic_t` that C only changes with atomic operations;
        // this is the relaxed load of `atomic_read()`.
        let count = unsafe {
            core::sync::atomic::AtomicI32::from_ptr(&raw mut (*self.as_ptr())._refcount.counter)
        };
        count.load(Ordering::Relaxed)
    }

    /// Whether someone holds the page's lock, as `PageLocked()` reads it.
    /// For the order-0 pages vms allocates, whose flags are their own.
    pub(crate) fn is_locked(&self) -> bool {
        // SAFETY: the page is live (invariant); `flags` is an aligned word
        // that C changes only with atomic bit operations, and this is the
        // plain load of `test_bit()`.
        let flags = unsafe {
            core::sync::atomic::AtomicUsize::from_ptr(
                (&raw mut (*self.as_ptr()).flags).cast::<usize>(),
            )
        };
        flags.load(Ordering::Relaxed) & (1 << bindings::pageflags_PG_locked) != 0
    }
}

impl core::clone::Clone for PageRef {
    fn clone(&self) -> Self {
        // SAFETY: the page is live (invariant), so taking a reference is fine.
        unsafe { bindings::get_page(self.as_ptr()) };
        // INVARIANT: the reference just taken belongs to the new value.
        PageRef(self.0)
    }
}

impl Drop for PageRef {
    fn drop(&mut self) {
        // SAFETY: this value owns one reference (invariant).
        unsafe { bindings::put_page(self.as_ptr()) };
    }
}

/// A referenced page that this thread has locked.
///
/// # Invariants
///
/// The page of `0` is locked by us.
pub(crate) struct LockedPage(PageRef);

impl LockedPage {
    /// Give the reference and the lock to the fault path
    /// (`VM_FAULT_LOCKED`), which unlocks and drops them.
    fn into_raw(self) -> *mut bindings::page {
        let me = core::mem::ManuallyDrop::new(self);
        // SAFETY: `me` is never dropped, so the `PageRef` is moved out once.
        unsafe { core::ptr::read(&me.0) }.into_raw()
    }
}

impl Drop for LockedPage {
    fn drop(&mut self) {
        // SAFETY: locked by us (invariant); the reference is dropped after.
        unsafe { bindings::unlock_page(self.0.as_ptr()) };
    }
}

// ---------------------------------------------------------------------------
// Files

// `linux/pagemap.h` is not among the headers the 6.12 bindings are
// generated from; the one function of it vms calls (exported, not inline).
// `improper_ctypes`: the C structs reach an empty one (`sched_statistics`
// without CONFIG_SCHEDSTATS), as the bindings crate, which allows it too.
#[allow(improper_ctypes)]
extern "C" {
    /// Find the folio holding `index` in `mapping`; with `fgp_flags` 0,
    /// only look: a referenced folio, or `ERR_PTR(-ENOENT)`.
    fn __filemap_get_folio(
        mapping: *mut bindings::address_space,
        index: c_ulong, // pgoff_t
        fgp_flags: c_uint,
        gfp: bindings::gfp_t,
    ) -> *mut bindings::folio;
    /// Sleep until bit `bit_nr` of the folio's flags is clear.
    fn folio_wait_bit(folio: *mut bindings::folio, bit_nr: c_int);
}

/// A reference to a `struct file` opened for reading.
///
/// # Invariants
///
/// `0` holds one reference taken with `fget()`.
pub(crate) struct FileRef(NonNull<bindings::file>);

// SAFETY: file references may be used and dropped from any thread.
unsafe impl Send for FileRef {}
// SAFETY: `kernel_read` with a caller-owned position is safe concurrently.
unsafe impl Sync for FileRef {}

impl FileRef {
    /// A new reference to `file`, as `get_file()` takes it (a static
    /// inline, so done with a core atomic on the raw counter).
    ///
    /// # Safety
    ///
    /// `file` is live: the caller holds a reference to it for the call
    /// (e.g. a VMA's `vm_file` under the fault lock).
    pub(crate) unsafe fn get(file: *mut bindings::file) -> Self {
        // SAFETY: `file` is live (the caller's contract); `f_count` is an
        // `atomic_long_t`, whose `long` is 8-byte aligned on x86-64, and C
        // touches it only through atomic operations once the file is
        // published, so a Rust atomic may share it.
        unsafe {
            let count = core::sync::atomic::AtomicI64::from_ptr(&raw mut (*file).f_count.counter);
            // `atomic_long_fetch_inc_relaxed()`.
            count.fetch_add(1, Ordering::Relaxed);
        }
        // INVARIANT: we took a reference, which `Drop` gives back with
        // `fput()`.
        // SAFETY: a live file is not at address 0.
        FileRef(unsafe { NonNull::new_unchecked(file) })
    }

    /// The regular file behind `fd`, which must be open for reading.
    pub(crate) fn get_readable(fd: i32) -> Result<Self> {
        // SAFETY: `fget` accepts any number and returns NULL if not open.
        let f = NonNull::new(unsafe { bindings::fget(fd as c_uint) }).ok_or(EBADF)?;
        // INVARIANT: `fget` took a reference.
        let file = FileRef(f);
        // SAFETY: the file is live while we hold the reference.
        let (mode, imode) = unsafe {
            let f = file.0.as_ptr();
            ((*f).f_mode, (*bindings::file_inode(f)).i_mode)
        };
        // FMODE_READ is `(__force fmode_t)(1 << 0)`, which bindgen cannot
        // evaluate.
        const FMODE_READ: u32 = 1 << 0;
        if mode & FMODE_READ == 0 {
            return Err(EACCES);
        }
        if (imode as u32 & bindings::S_IFMT) != bindings::S_IFREG {
            return Err(EINVAL);
        }
        Ok(file)
    }

    /// Raise the file's readahead window (`file->f_ra.ra_pages`, the
    /// largest read its readahead makes) to at least `pages`, as
    /// `POSIX_FADV_SEQUENTIAL` raises it to twice the device's. The window
    /// only bounds sequential streams: a random miss still reads just its
    /// page. A file whose readahead is off (window 0) keeps it off, and a
    /// larger window stays. This is the open file's state, shared with
    /// whoever else reads through it.
    pub(crate) fn widen_readahead(&self, pages: u32) {
        // SAFETY: the file is live while we hold it. `f_ra.ra_pages` is
        // written without a lock, as `generic_fadvise()` writes it, and
        // readahead reads it without one; a racing fadvise of the same
        // file wins or loses as a whole (an aligned `unsigned int`).
        // `f_ra` is the live member of its union: `f_freeptr` is the slab's
        // only while the file is free.
        unsafe {
            let ra = &raw mut (*self.0.as_ptr()).__bindgen_anon_2.f_ra.ra_pages;
            let now = core::ptr::read_volatile(ra);
            if now != 0 && now < pages {
                core::ptr::write_volatile(ra, pages);
            }
        }
    }

    /// The file's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        // SAFETY: the file and its inode are live while we hold the file.
        unsafe { bindings::i_size_read(bindings::file_inode(self.0.as_ptr())) as u64 }
    }

    /// The file's own page-cache page at byte offset `pos` (a multiple of
    /// `PAGE_SIZE`), referenced, if it is in the page cache and up to
    /// date (waiting for a read in flight, such as readahead); `None`
    /// otherwise (then [`read_through`](Self::read_through) brings it and
    /// its neighbours into the page cache).
    ///
    /// A page that carries the readahead marker starts the next readahead
    /// window, as `filemap_fault()` and `filemap_read()` do on such a
    /// page: this lookup bypasses both, so without it every window would
    /// be read synchronously by the miss at its start.
    ///
    /// An image maps this page into its clones' stage 2 instead of a copy:
    /// no allocation, no copy, and no second copy of the image next to the
    /// page cache. Our reference keeps the page even if the file is
    /// truncated (it then leaves the page cache, not us). It must never be
    /// mapped into a VMM's mapping: mm would count a page-cache page as
    /// mapped in a VMA its file's rmap cannot find, and truncating the file
    /// would then find it "still mapped when deleted".
    pub(crate) fn cached_page(&self, pos: u64) -> Option<PageRef> {
        let index = (pos / PAGE_SIZE as u64) as c_ulong;
        // SAFETY: the file is live while we hold it and its `f_mapping` is
        // set at open; the lookup takes only the RCU read lock, and
        // returns a referenced folio or an error pointer.
        let folio = unsafe { __filemap_get_folio((*self.0.as_ptr()).f_mapping, index, 0, 0) };
        let folio = from_err_ptr(folio).ok().filter(|f| !f.is_null())?;
        // SAFETY: the folio is live: we hold the reference the lookup took,
        // and waiting on its lock bit needs nothing more (we hold no lock,
        // so we may sleep). `flags` and `index` are read as
        // `folio_test_uptodate()` and `folio->index` do; with
        // SPARSEMEM_VMEMMAP (x86-64) the folio's pages are contiguous
        // `struct page`s, so the page of `index` is
        // `folio_page(folio, index - folio->index)`.
        let (page, marked) = unsafe {
            let head = &raw mut (*folio).__bindgen_anon_1.page;
            let fields = &raw const (*folio).__bindgen_anon_1.__bindgen_anon_1;
            let mut flags = core::ptr::read_volatile(&raw const (*fields).flags);
            let uptodate = 1 << bindings::pageflags_PG_uptodate;
            if flags & uptodate == 0 && flags & (1 << bindings::pageflags_PG_locked) != 0 {
                // Being read (readahead in flight): wait for the read, as
                // filemap_fault does, rather than read a copy of our own.
                folio_wait_bit(folio, bindings::pageflags_PG_locked as c_int);
                flags = core::ptr::read_volatile(&raw const (*fields).flags);
            }
            let first = (*fields).index;
            if flags & uptodate == 0 || index < first {
                bindings::put_page(head);
                return None;
            }
            // Order the page's contents after the flag, as smp_rmb() in
            // folio_test_uptodate() does.
            core::sync::atomic::fence(Ordering::Acquire);
            let marked = flags & (1 << bindings::pageflags_PG_readahead) != 0;
            (head.add((index - first) as usize), marked)
        };
        // INVARIANT: the lookup's reference on the folio is this page's.
        let page = PageRef(NonNull::new(page)?);
        if marked {
            // Best effort: a failed readahead leaves the next pages to the
            // misses, which report their own errors.
            let _ = self.read_through(pos);
        }
        Some(page)
    }

    /// Read the last byte of the page at `pos` through the page cache, for
    /// what the read does on the way: on a miss, the page cache reads the
    /// page and its readahead window and waits for the page; on a page
    /// with the readahead marker, it starts the next window without
    /// waiting. The page itself is then [`cached_page`](Self::cached_page)'s
    /// to find (unless the file system keeps no page cache). Reading is
    /// how the page cache's readahead learns the access pattern
    /// (`file->f_ra`), so this uses its policy and window sizes rather
    /// than our own. EIO if the page does not lie wholly inside the file.
    pub(crate) fn read_through(&self, pos: u64) -> Result {
        let mut byte = 0u8;
        let mut off = (pos + PAGE_SIZE as u64 - 1) as bindings::loff_t;
        // SAFETY: `byte` is one writable kernel byte; the file is live;
        // `off` is ours.
        let n = unsafe {
            bindings::kernel_read(self.0.as_ptr(), (&raw mut byte).cast(), 1, &mut off)
        };
        match n {
            1 => Ok(()),
            n if n < 0 => Err(Error::from_errno(n as c_int)),
            _ => Err(EIO),
        }
    }

    /// Read one page at byte offset `pos` into `page`. A short read is EIO.
    pub(crate) fn read_page(&self, pos: u64, page: &PageRef) -> Result {
        let n = page.with_bytes(|p| {
            let mut off = pos as bindings::loff_t;
            // SAFETY: `p` maps PAGE_SIZE writable kernel bytes; the file is
            // live; `off` is ours.
            unsafe {
                bindings::kernel_read(self.0.as_ptr(), p as *mut c_void, PAGE_SIZE, &mut off)
            }
        });
        whole_page(n)
    }
}

/// The result of a `kernel_read()` or `kernel_write()` of one page: its
/// error, or EIO for a short one.
fn whole_page(n: isize) -> Result {
    if n < 0 {
        Err(Error::from_errno(n as c_int))
    } else if n as usize != PAGE_SIZE {
        Err(EIO)
    } else {
        Ok(())
    }
}

impl Drop for FileRef {
    fn drop(&mut self) {
        // SAFETY: we own one reference (invariant).
        unsafe { bindings::fput(self.0.as_ptr()) };
    }
}

impl FileRef {
    /// The inode's `i_writecount`: above 0, the number of writers (opens
    /// for writing, shared writable mappings, a truncate in progress);
    /// below 0, the number of holders that deny writes (a running
    /// executable, an active swap file, an image).
    fn i_writecount(&self) -> &AtomicI32 {
        // SAFETY: the inode lives at least as long as our file reference,
        // hence as long as `&self`. `i_writecount` is an `atomic_t`, whose
        // `int` is 4-byte aligned, and C accesses it only through 32-bit
        // atomic operations (`atomic_read()`, `atomic_inc()`,
        // `atomic_dec_unless_positive()`, ...), never with plain accesses
        // once the inode is published, so Rust's atomics may share it.
        unsafe {
            let inode = bindings::file_inode(self.0.as_ptr());
            AtomicI32::from_ptr(&raw mut (*inode).i_writecount.counter)
        }
    }
}

/// An image's file: a [`FileRef`] whose inode refuses writers while this
/// lives, as a running executable's does. Opening the file for writing
/// and truncating it fail with ETXTBSY. An image maps the file's own
/// page-cache pages into its clones' stage 2 (see
/// [`FileRef::cached_page`]): a write would change memory that guests
/// already read, behind the back of the VMM's copy.
///
/// This is 6.12's `deny_write_access()` and `allow_write_access()`,
/// static inlines in `linux/fs.h` that bindgen cannot wrap. The denial is
/// per inode and counted: two images of one file deny twice, and the file
/// is writable again when both are gone.
///
/// # Invariants
///
/// `0`'s inode counts one write denial (in `i_writecount`) that this value
/// owns.
pub(crate) struct ImageFile(FileRef);

impl ImageFile {
    /// Deny writes to `file`'s inode: ETXTBSY if someone holds the file
    /// open for writing (also through another open file of the same
    /// inode, or a shared writable mapping), as `deny_write_access()`.
    pub(crate) fn deny_write(file: FileRef) -> Result<Self> {
        // `atomic_dec_unless_positive()`: fully ordered when it
        // decrements, relaxed when it does not.
        file.i_writecount()
            .fetch_update(Ordering::SeqCst, Ordering::Relaxed, |n| {
                if n <= 0 {
                    n.checked_sub(1)
                } else {
                    None
                }
            })
            .map_err(|_| ETXTBSY)?;
        // INVARIANT: we lowered `i_writecount` by one: our denial.
        Ok(ImageFile(file))
    }
}

impl core::ops::Deref for ImageFile {
    type Target = FileRef;

    fn deref(&self) -> &FileRef {
        &self.0
    }
}

impl Drop for ImageFile {
    fn drop(&mut self) {
        // `allow_write_access()`: give our denial back (invariant), before
        // the file reference goes.
        self.0.i_writecount().fetch_add(1, Ordering::Relaxed);
    }
}

/// A clone's swap file: an unnamed file the module creates in a directory
/// the caller names (`kernel_tmpfile_open()`, as `O_TMPFILE` does, with
/// the caller's credentials: the caller needs write and search permission
/// on the directory, and owns the file). No process has it open and no
/// name leads to it, so only the module reads and writes it; it goes
/// when the last reference does. Clone page `idx` lives at byte offset
/// `idx * PAGE_SIZE`: no allocator, and a page written again overwrites
/// itself.
///
/// `O_DIRECT` where the file system supports it (ext4, xfs), so an
/// evicted page does not come back as page cache; without it, buffered.
/// Either way each batch's page cache is written back and its errors
/// checked ([`sync`](Self::sync)) before the pages are freed: ext4 falls
/// back to buffered writes under `O_DIRECT` in some configurations
/// (`data=journal`, encryption), and a writeback error must not surface
/// later as a page read back with the wrong bytes. tmpfs accepts
/// `O_DIRECT` but keeps the data in its own pages: a swap file there saves
/// memory only if the host swaps.
pub(crate) struct SwapFile {
    file: FileRef,
}

impl SwapFile {
    /// A new swap file in the directory open as `dir_fd`.
    pub(crate) fn create(dir_fd: i32) -> Result<Self> {
        // SAFETY: `fget` accepts any number and returns NULL if not open
        // (or an O_PATH file, which it does not hand out).
        let dir = NonNull::new(unsafe { bindings::fget(dir_fd as c_uint) }).ok_or(EBADF)?;
        // INVARIANT: `fget` took a reference.
        let dir = FileRef(dir);
        // SAFETY: the file and its inode are live while we hold `dir`.
        let imode = unsafe { (*bindings::file_inode(dir.0.as_ptr())).i_mode };
        if (imode as u32 & bindings::S_IFMT) != bindings::S_IFDIR {
            return Err(ENOTDIR);
        }
        // SAFETY: `dir` is live, so is its `f_path` (mount and dentry
        // referenced by the file).
        let (path, mnt) = unsafe {
            let path = &raw const (*dir.0.as_ptr()).f_path;
            (path, (*path).mnt)
        };
        // Write access to the mount for the creation, as `do_tmpfile()`
        // takes it: EROFS on a read-only mount, and a frozen file system
        // waits here rather than inside its journal.
        // SAFETY: `mnt` is live while `dir` is; balanced below.
        to_result(unsafe { bindings::mnt_want_write(mnt) })?;
        let open = |flags: u32| {
            // SAFETY: `path` and its mount's idmap (what `mnt_idmap()`, a
            // static inline, reads) are live while `dir` is; the current
            // task's `cred` is stable for the task itself, which is how
            // `current_cred()` reads it. `kernel_tmpfile_open` returns a
            // referenced file or an error pointer.
            let f = unsafe {
                bindings::kernel_tmpfile_open(
                    (*mnt).mnt_idmap,
                    path,
                    (bindings::S_IFREG | 0o600) as bindings::umode_t,
                    flags as c_int,
                    (*bindings::get_current()).cred,
                )
            };
            from_err_ptr(f)
        };
        let base = bindings::O_RDWR | bindings::O_LARGEFILE | bindings::O_EXCL;
        // O_DIRECT first; a file system without it refuses the open with
        // EINVAL.
        let r = match open(base | bindings::O_DIRECT) {
            Err(e) if e == EINVAL => open(base),
            r => r,
        };
        // SAFETY: taken above.
        unsafe { bindings::mnt_drop_write(mnt) };
        let f = r?;
        // INVARIANT: `kernel_tmpfile_open` returned a referenced file.
        Ok(SwapFile { file: FileRef(NonNull::new(f).ok_or(EINVAL)?) })
    }

    /// Write back the page cache of clone pages `first..=last`, written
    /// with [`write_page`](Self::write_page), wait for it and report a
    /// writeback error (`file_write_and_wait_range()`, what fsync
    /// implementations start with; no journal commit: the data need only
    /// outlive the clone, not a crash). Nearly free when nothing is dirty
    /// (real `O_DIRECT`).
    pub(crate) fn sync(&self, first: usize, last: usize) -> Result {
        // SAFETY: the file is live; the range is ours.
        to_result(unsafe {
            bindings::file_write_and_wait_range(
                self.file.0.as_ptr(),
                (first * PAGE_SIZE) as bindings::loff_t,
                ((last + 1) * PAGE_SIZE - 1) as bindings::loff_t,
            )
        })
    }

    /// Write `page` as clone page `idx`. A short write is EIO.
    pub(crate) fn write_page(&self, idx: usize, page: &PageRef) -> Result {
        let n = page.with_bytes(|p| {
            let mut off = (idx * PAGE_SIZE) as bindings::loff_t;
            // SAFETY: `p` maps PAGE_SIZE readable kernel bytes, page
            // aligned (as O_DIRECT wants), for the call; the file is live;
            // `off` is ours.
            unsafe {
                bindings::kernel_write(self.file.0.as_ptr(), p as *const c_void, PAGE_SIZE, &mut off)
            }
        });
        whole_page(n)
    }

    /// Read clone page `idx` into `page`. A short read is EIO.
    pub(crate) fn read_page(&self, idx: usize, page: &PageRef) -> Result {
        self.file.read_page((idx * PAGE_SIZE) as u64, page)
    }

    /// The file's size in bytes.
    pub(crate) fn size(&self) -> u64 {
        self.file.size()
    }

    /// Give every block of the file back to its file system (a hole over
    /// the whole file, its size kept): its pages are all dropped (a
    /// reset). The caller makes sure no write to it runs or starts until
    /// this returns: a page written meanwhile could be punched away under
    /// its entry. A file system that cannot punch holes (`EOPNOTSUPP`)
    /// is no error: the file keeps its blocks.
    pub(crate) fn punch_all(&self) -> Result {
        /// `FALLOC_FL_KEEP_SIZE` and `FALLOC_FL_PUNCH_HOLE`
        /// (include/uapi/linux/falloc.h; not in the bindings).
        const KEEP_SIZE_PUNCH_HOLE: c_int = 0x01 | 0x02;
        let size = self.size();
        if size == 0 {
            return Ok(());
        }
        // SAFETY: the file is live and open for writing (`O_RDWR`); no
        // vms lock is held (the file system takes its own, and may
        // allocate).
        let r = unsafe {
            bindings::vfs_fallocate(self.file.0.as_ptr(), KEEP_SIZE_PUNCH_HOLE, 0, size as bindings::loff_t)
        };
        if r == -(bindings::EOPNOTSUPP as c_int) {
            return Ok(());
        }
        to_result(r)
    }

    /// The bytes the file takes on its file system: its allocated blocks,
    /// as stat(2) reports them (the file system's own count: XFS keeps
    /// none in the VFS inode); 0 if the file system cannot say. May sleep
    /// (the file system's `getattr`).
    pub(crate) fn disk_bytes(&self) -> u64 {
        // SAFETY: all-zero is a valid `struct kstat` (integers and
        // `timespec64`s only).
        let mut stat: bindings::kstat = unsafe { core::mem::zeroed() };
        // SAFETY: the file is live while we hold it, and so is its
        // `f_path` (mount and dentry referenced by the file); `stat` is
        // ours to write.
        let r = unsafe {
            bindings::vfs_getattr_nosec(
                &raw const (*self.file.0.as_ptr()).f_path,
                &mut stat,
                bindings::STATX_BLOCKS,
                bindings::AT_STATX_SYNC_AS_STAT,
            )
        };
        if r != 0 {
            return 0;
        }
        stat.blocks.saturating_mul(512)
    }
}

// ---------------------------------------------------------------------------
// KVM

/// A memslot as KVM hands it to the provider.
pub(crate) struct SlotInfo {
    /// `as_id << 16 | id`, as in `kvm_userspace_memory_region.slot`.
    pub(crate) slot: u32,
    pub(crate) base_gfn: u64,
    pub(crate) npages: u64,
    /// Claimed by us (see [`claim_slot`]), not made with
    /// `KVM_MEM_PAGE_PROVIDER`: a fault we cannot serve may go back to
    /// the slot's host address (`ENOENT`).
    pub(crate) claimed: bool,
}

impl SlotInfo {
    /// # Safety
    ///
    /// `slot` is a live memslot (KVM holds `kvm->srcu` or `slots_lock`).
    unsafe fn of(slot: *const bindings::kvm_memory_slot) -> Self {
        // SAFETY: per the function's contract.
        unsafe {
            SlotInfo {
                slot: ((*slot).as_id as u32) << 16 | (*slot).id as u32,
                base_gfn: (*slot).base_gfn,
                npages: (*slot).npages as u64,
                claimed: (*slot).flags & bindings::KVM_MEM_PAGE_PROVIDER == 0,
            }
        }
    }
}

/// The address space a VMA belongs to, as an identity to compare (never
/// dereferenced).
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) struct MmId(*const bindings::mm_struct);

// SAFETY: only compared, never dereferenced.
unsafe impl Send for MmId {}
// SAFETY: as above.
unsafe impl Sync for MmId {}

/// A referenced VM with the clone's page provider registered.
///
/// # Invariants
///
/// `kvm` holds a reference taken by `kvm_get_kvm_from_fd()`; `provider`
/// points to the clone's pinned `kvm_page_provider`, registered with `kvm`
/// until drop, and the clone outlives this value.
pub(crate) struct Vm {
    kvm: NonNull<bindings::kvm>,
    provider: *mut bindings::kvm_page_provider,
}

// SAFETY: the KVM calls used here may be made from any thread.
unsafe impl Send for Vm {}
// SAFETY: as above; nothing is mutated through `&Vm` on our side.
unsafe impl Sync for Vm {}

static PROVIDER_OPS: ProviderOps = ProviderOps(bindings::kvm_page_provider_ops {
    get_page: Some(provider_get_page),
});

struct ProviderOps(bindings::kvm_page_provider_ops);
// SAFETY: never written after it is built; KVM only reads it.
unsafe impl Sync for ProviderOps {}

/// The storage of a clone's page provider, embedded in the clone.
#[repr(transparent)]
pub(crate) struct Provider(Opaque<bindings::kvm_page_provider>);

// SAFETY: written once, in `new`, before the clone is shared; KVM reads it
// (its `ops` pointer to a static table) from any thread.
unsafe impl Send for Provider {}
// SAFETY: as above: nothing writes it through a shared reference.
unsafe impl Sync for Provider {}

impl Provider {
    pub(crate) fn new() -> Self {
        Provider(Opaque::new(bindings::kvm_page_provider {
            ops: &PROVIDER_OPS.0,
        }))
    }
}

/// The VM behind `vm_fd`, with a reference the caller must drop with
/// `kvm_put_kvm()`: EBADF if `vm_fd` is not open, EINVAL if not a VM.
fn get_kvm(vm_fd: i32) -> Result<NonNull<bindings::kvm>> {
    // SAFETY: any fd number is accepted; an ERR_PTR comes back on error.
    let kvm = from_err_ptr(unsafe { bindings::kvm_get_kvm_from_fd(vm_fd) })?;
    NonNull::new(kvm).ok_or(EINVAL)
}

impl Vm {
    /// Take the VM behind `vm_fd` and register `clone`'s provider with it.
    pub(crate) fn attach(vm_fd: i32, clone: &VmClone) -> Result<Self> {
        let kvm = get_kvm(vm_fd)?;
        let provider = clone.provider().0.get();
        // SAFETY: we hold a VM reference; `provider` is pinned inside the
        // clone, which outlives the registration (it unregisters in drop
        // before it is freed).
        let r = unsafe { bindings::kvm_page_provider_register(kvm.as_ptr(), provider) };
        if r != 0 {
            // SAFETY: we own the reference taken above.
            unsafe { bindings::kvm_put_kvm(kvm.as_ptr()) };
            return Err(Error::from_errno(r));
        }
        // INVARIANT: referenced and registered.
        Ok(Vm { kvm, provider })
    }

    /// Register `clone`'s provider with `kvm` from a claim, which holds
    /// `slots_lock`: EBUSY if the VM has another provider.
    ///
    /// # Safety
    ///
    /// `kvm` is live and `slots_lock` is held (KVM's claim). The result
    /// must not be dropped under `slots_lock` (drop unregisters).
    unsafe fn claim_locked(kvm: *mut bindings::kvm, clone: &VmClone) -> Result<Self> {
        let kvm = NonNull::new(kvm).ok_or(EINVAL)?;
        let provider = clone.provider().0.get();
        // SAFETY: `kvm` is live (caller); the reference is ours to drop.
        unsafe { bindings::kvm_get_kvm(kvm.as_ptr()) };
        // SAFETY: as in `attach`; `slots_lock` is held (caller).
        let r = unsafe { bindings::kvm_page_provider_register_locked(kvm.as_ptr(), provider) };
        if r != 0 {
            // SAFETY: we own the reference taken above; the VM is not
            // destroyed by it (KVM's ioctl holds another).
            unsafe { bindings::kvm_put_kvm(kvm.as_ptr()) };
            return Err(Error::from_errno(r));
        }
        // INVARIANT: referenced and registered.
        Ok(Vm { kvm, provider })
    }

    /// Whether this is the VM `kvm`.
    fn is(&self, kvm: *const bindings::kvm) -> bool {
        self.kvm.as_ptr() as *const _ == kvm
    }

    /// The address space of the VM's VMM.
    pub(crate) fn mm(&self) -> MmId {
        // SAFETY: the VM is referenced (invariant); `mm` is set at creation
        // and never changes.
        MmId(unsafe { (*self.kvm.as_ptr()).mm })
    }

    /// Whether `vm_fd` is this VM.
    pub(crate) fn is_fd(&self, vm_fd: i32) -> Result<bool> {
        let kvm = get_kvm(vm_fd)?;
        let same = kvm == self.kvm;
        // SAFETY: we own the reference `get_kvm` took.
        unsafe { bindings::kvm_put_kvm(kvm.as_ptr()) };
        Ok(same)
    }

    /// Zap stage-2 mappings of `[start, end)` after their page changed.
    pub(crate) fn invalidate(&self, start: u64, end: u64) {
        // SAFETY: the VM is referenced (invariant); the call may sleep and
        // takes its own locks.
        unsafe { bindings::kvm_page_provider_invalidate(self.kvm.as_ptr(), start, end) };
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        // SAFETY: registered and referenced (invariant). Unregistering
        // waits for faults in flight and zaps the provider's slots, so no
        // stage-2 mapping of the clone's pages survives it.
        unsafe {
            bindings::kvm_page_provider_unregister(self.kvm.as_ptr(), self.provider);
            bindings::kvm_put_kvm(self.kvm.as_ptr());
        }
    }
}

/// `kvm_page_provider_ops.get_page`.
extern "C" fn provider_get_page(
    pp: *mut bindings::kvm_page_provider,
    slot: *const bindings::kvm_memory_slot,
    gfn: bindings::gfn_t,
    write: bool,
    page: *mut *mut bindings::page,
    writable: *mut bool,
) -> c_int {
    // SAFETY: `pp` is the `Provider` inside a live clone: the clone
    // unregisters (which waits for this call) before it is freed.
    // `Provider` and `Opaque` are `repr(transparent)`, so the C struct is
    // at the field's offset.
    let clone = unsafe { &*kernel::container_of!(pp, VmClone, provider) };
    // SAFETY: KVM passes a live memslot under kvm->srcu.
    let info = unsafe { SlotInfo::of(slot) };
    match clone.stage2_fault(&info, gfn, write) {
        Ok((p, w)) => {
            // SAFETY: KVM passes valid out pointers.
            unsafe {
                *page = p.into_raw();
                *writable = w;
            }
            0
        }
        Err(e) => e.to_errno(),
    }
}

// ---------------------------------------------------------------------------
// Claiming ordinary memslots: KVM asks, for every new memslot, whether its
// host address range is a clone's memory (patches/0010).

/// A claim in progress: KVM asks whether a new memslot of `kvm` maps a
/// clone.
///
/// # Invariants
///
/// Made only by [`claim_slot`] and borrowed for that call: `kvm` is live
/// and KVM holds its `slots_lock` and its VMM's `mmap_lock`.
pub(crate) struct Claim {
    kvm: *mut bindings::kvm,
    /// The VMM's address space, which the slot's VMA belongs to.
    pub(crate) mm: MmId,
    /// The memslot's host address.
    pub(crate) hva: u64,
}

impl Claim {
    /// Whether `vm` is the VM that asks.
    pub(crate) fn is_vm(&self, vm: &Vm) -> bool {
        vm.is(self.kvm)
    }

    /// Make `clone`'s provider the asking VM's provider. The result must
    /// be kept (dropping it unregisters, which takes `slots_lock`).
    pub(crate) fn register(&self, clone: &VmClone) -> Result<Vm> {
        // SAFETY: `kvm` is live and `slots_lock` held (invariant).
        unsafe { Vm::claim_locked(self.kvm, clone) }
    }
}

/// Debug knob `claim_slots`: non-zero (the default) claims memslots whose
/// host address range is a shared mapping of a clone, so that KVM serves
/// them from the clone at stage-2 fault time; 0 leaves new memslots to
/// their host address (the VMM's mapping), for comparisons.
static CLAIM_SLOTS: AtomicU32 = AtomicU32::new(1);
/// Debug counter `claimed_slots` (read-only): memslots claimed since load.
static CLAIMED_SLOTS: AtomicU32 = AtomicU32::new(0);

struct Claimer(bindings::kvm_page_provider_claimer);
// SAFETY: never written after it is built; KVM only reads it.
unsafe impl Sync for Claimer {}

static CLAIMER: Claimer = Claimer(bindings::kvm_page_provider_claimer {
    claim: Some(claim_slot),
});

/// `kvm_page_provider_claimer.claim`: a new memslot of `kvm` whose host
/// range `vma` maps entirely.
extern "C" fn claim_slot(
    kvm: *mut bindings::kvm,
    slot: *const bindings::kvm_memory_slot,
    vma: *mut bindings::vm_area_struct,
) -> bool {
    if CLAIM_SLOTS.load(Ordering::Relaxed) == 0 {
        return false;
    }
    // SAFETY: KVM holds the VMA's `mmap_lock` for the call, so the VMA and
    // its file are live; the slot is not yet visible and is KVM's to read.
    unsafe {
        // Only our mappings, which are all shared (`clone_mmap`), and
        // writable ones: KVM maps the clone's pages writable where the
        // host address path would fail a write.
        if !core::ptr::eq((*vma).vm_ops, &CLONE_VM_OPS.0)
            || (*vma).__bindgen_anon_2.vm_flags & bindings::VM_WRITE as c_ulong == 0
        {
            return false;
        }
        let start = (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_start;
        let hva = (*slot).userspace_addr;
        let first = (*vma).vm_pgoff as usize + (hva - start) as usize / PAGE_SIZE;
        let info = SlotInfo::of(slot);
        // INVARIANT: for this call only, under KVM's locks.
        let claim = Claim { kvm, mm: MmId((*vma).vm_mm), hva: hva as u64 };
        let claimed = clone_of((*vma).vm_file).claim(&claim, &info, first);
        if claimed {
            CLAIMED_SLOTS.fetch_add(1, Ordering::Relaxed);
        }
        claimed
    }
}

/// Our claimer, registered with KVM until drop (the module's life).
pub(crate) struct ClaimerRegistration(());

impl ClaimerRegistration {
    pub(crate) fn register() -> Result<Self> {
        // SAFETY: `CLAIMER` is static; it is cleared in drop, which waits
        // for a claim in progress.
        to_result(unsafe { bindings::kvm_page_provider_set_claimer(&CLAIMER.0) })?;
        Ok(ClaimerRegistration(()))
    }
}

impl Drop for ClaimerRegistration {
    fn drop(&mut self) {
        // SAFETY: registered in `register`.
        unsafe { bindings::kvm_page_provider_clear_claimer(&CLAIMER.0) };
    }
}

/// The module's workqueue, for what must not run where it is decided:
/// a clone whose claimed memslots all lost their mapping (a VMA closed
/// under `mmap_lock`) leaves its VM from here, since unregistering waits
/// for vCPUs that may wait for that `mmap_lock`.
static QUEUE: AtomicPtr<bindings::workqueue_struct> = AtomicPtr::new(null_mut());

/// [`QUEUE`], alive until drop, which waits for the work queued on it.
pub(crate) struct WorkQueue(());

impl WorkQueue {
    pub(crate) fn create() -> Result<Self> {
        // SAFETY: a constant format without arguments.
        let q = unsafe { bindings::alloc_workqueue(c"vms".as_ptr().cast(), 0, 0) };
        if q.is_null() {
            return Err(ENOMEM);
        }
        QUEUE.store(q, Ordering::Release);
        Ok(WorkQueue(()))
    }
}

impl Drop for WorkQueue {
    fn drop(&mut self) {
        let q = QUEUE.swap(null_mut(), Ordering::AcqRel);
        // SAFETY: made in `create`; destroying drains the queued work. No
        // more is queued: work is queued only from a clone mapping's close,
        // and a mapping holds the module.
        unsafe { bindings::destroy_workqueue(q) };
    }
}

/// Run `f` on the module's workqueue.
pub(crate) fn spawn(f: impl FnOnce() + Send + 'static) -> Result {
    let q = QUEUE.load(Ordering::Acquire);
    if q.is_null() {
        return Err(ENODEV);
    }
    // SAFETY: the queue lives until the module's drop (see `WorkQueue`).
    let q = unsafe { kernel::workqueue::Queue::from_raw(q) };
    q.try_spawn(GFP_KERNEL, f).map_err(|_| ENOMEM)
}

// ---------------------------------------------------------------------------
// Reclaim: memory back from clones under host memory pressure

/// Private pages in memory of clones that have a swap file and may evict
/// them now (each clone adds its own through [`reclaimable_set`]): the
/// shrinker's count. A hint: the worker checks each clone under its lock.
static RECLAIMABLE: AtomicUsize = AtomicUsize::new(0);
/// Cached pages of images made from a file, which the worker may drop
/// where no clone maps them ([`crate::dev::reclaim_images`]): the rest of
/// the shrinker's count. A hint: it includes the pages of images with a
/// live image on them, which stay ([`crate::image::Image::may_drop`]).
static IMAGE_PAGES: AtomicUsize = AtomicUsize::new(0);
/// The image registry, for the worker: published once the module's
/// device is registered, withdrawn (and the worker flushed) before it
/// goes.
static REGISTRY: AtomicPtr<dev::Registry> = AtomicPtr::new(null_mut());
/// Pages the shrinker asked for that the worker has not yet looked at.
static RECLAIM_WANT: AtomicUsize = AtomicUsize::new(0);
/// Pages the worker freed that no reclaimer has been credited with yet.
static RECLAIM_FREED: AtomicUsize = AtomicUsize::new(0);
/// When the shrinker was last asked ([`now_ms`]): an ask that no scan
/// renewed within [`ASK_TTL_MS`] is forgotten, with the credit.
static RECLAIM_ASKED: AtomicI64 = AtomicI64::new(0);
/// How long an ask of the shrinker stands without another scan. Reclaim
/// that still needs memory scans again (kswapd on each pass of its loop,
/// direct reclaim on each retry); one that stopped has found memory or
/// given up, and evicting on for it would only empty clones after the
/// pressure is gone.
const ASK_TTL_MS: i64 = 1000;
/// The most the shrinker's asks add up to (4 eviction batches): under
/// pressure the worker falls behind (it writes files, reclaim only counts),
/// and an ask that piled up while it did would be evicted on after the
/// pressure went. Reclaim that still needs memory keeps it topped up.
const ASK_MAX: usize = 256;
/// A VMM fault took a clone over its limit: the worker evicts clones down
/// to their limits ([`reclaim_kick`]).
static RECLAIM_OVER: AtomicBool = AtomicBool::new(false);
/// The module's [`Reclaim`], from its start to its stop; clones that go
/// leave its list through it.
static RECLAIM: AtomicPtr<Reclaim> = AtomicPtr::new(null_mut());

/// A place in [`Reclaim`]'s list. A pointer, not a reference: the list
/// must not keep a clone alive (nothing would then drop it), and must not
/// drop the last reference either (that unregisters the clone from KVM,
/// which may not happen where the worker is called from).
struct Slot {
    /// Null where a clone left (6.12's `KVec` has no `remove`, and a
    /// clone's drop cannot fail): reused by the next, once not `busy`.
    clone: *const VmClone,
    /// The worker evicts from the clone without the list's lock held.
    busy: bool,
}

// SAFETY: the clone is `Sync`; the pointer is followed only with the
// list's lock held or while the slot is busy, and a clone leaves the list
// at the start of its drop (`reclaim_forget`), which then waits until the
// slot is not busy, before any of it goes.
unsafe impl Send for Slot {}

struct ReclaimList {
    slots: KVec<Slot>,
    /// The slot the worker looks at next (modulo the list's length).
    next: usize,
}

/// The shrinker through which the kernel's memory reclaim (kswapd, direct
/// reclaim, `drop_caches`) asks clones with a swap file for memory, and
/// the worker that evicts their cold private pages to their swap files.
///
/// Reclaim itself does no I/O and takes no lock of ours: its context may
/// hold anything (a vCPU inside KVM's SRCU and our `state`, a file system
/// in the middle of a transaction) and writing to a file from there
/// closes lock cycles through the file system (`fs_reclaim`). The scan
/// only records how many pages were asked for and queues the worker on a
/// `WQ_MEM_RECLAIM` queue, which has a rescuer thread, so the worker runs
/// even when no new worker thread can be made. What the worker freed is
/// credited to the next scans (their `reclaim_state`), so that a reclaimer
/// sees the progress it asked for.
///
/// The worker holds no lock of the list while it evicts (a swap file on a
/// stalled file system must not hold up every other clone's drop): it marks
/// the clone's slot busy, and only that clone's drop waits for it.
#[pin_data]
pub(crate) struct Reclaim {
    #[pin]
    list: kernel::sync::Mutex<ReclaimList>,
    /// Signalled when a slot stops being busy.
    #[pin]
    idle: kernel::sync::CondVar,
    #[pin]
    work: kernel::workqueue::Work<Reclaim>,
    /// Kicks the worker when a back-off from a clone over its limit ends
    /// ([`reclaim_retry_at`]).
    #[pin]
    retry: Opaque<bindings::timer_list>,
    queue: *mut bindings::workqueue_struct,
    shrinker: *mut bindings::shrinker,
}

/// The lockdep class of [`Reclaim::retry`] (a timer's callback is tracked
/// as a lock); lockdep wants a static key.
static RETRY_KEY: LockKey = LockKey::new();

/// The retry timer's callback (softirq): kick the worker.
unsafe extern "C" fn reclaim_retry_fire(_t: *mut bindings::timer_list) {
    reclaim_kick();
}

// SAFETY: the queue and the shrinker are C objects made for use from any
// thread; they are freed only in `ReclaimRegistration::drop`, after which
// nothing uses them.
unsafe impl Send for Reclaim {}
// SAFETY: as for `Send`.
unsafe impl Sync for Reclaim {}

kernel::impl_has_work! {
    impl HasWork<Self> for Reclaim { self.work }
}

impl kernel::workqueue::WorkItem for Reclaim {
    type Pointer = Arc<Reclaim>;

    fn run(this: Arc<Reclaim>) {
        crate::clone::reclaim(&this);
    }
}

/// The module's [`Reclaim`], registered until this goes: its drop stops the
/// shrinker, then drains the worker. Dropped after every clone.
pub(crate) struct ReclaimRegistration(Arc<Reclaim>);

impl Reclaim {
    /// Make the queue and the shrinker and register the shrinker.
    pub(crate) fn start() -> Result<ReclaimRegistration> {
        let flags = bindings::wq_flags_WQ_MEM_RECLAIM | bindings::wq_flags_WQ_UNBOUND;
        // SAFETY: a constant format without arguments.
        let queue = unsafe { bindings::alloc_workqueue(c"vms_reclaim".as_ptr().cast(), flags, 1) };
        if queue.is_null() {
            return Err(ENOMEM);
        }
        // SAFETY: a constant format without arguments.
        let shrinker = unsafe { bindings::shrinker_alloc(0, c"vms-clones".as_ptr().cast()) };
        if shrinker.is_null() {
            // SAFETY: made above, nothing queued.
            unsafe { bindings::destroy_workqueue(queue) };
            return Err(ENOMEM);
        }
        let r = Arc::pin_init(
            pin_init!(Reclaim {
                list <- kernel::new_mutex!(ReclaimList { slots: KVec::new(), next: 0 }, "vms_reclaim_list"),
                idle <- kernel::new_condvar!("vms_reclaim_idle"),
                work <- kernel::new_work!("vms_reclaim"),
                // SAFETY: `slot` is the timer's place, pinned with the
                // rest; the name and the key are static.
                retry <- Opaque::ffi_init(|slot| unsafe {
                    bindings::init_timer_key(
                        slot,
                        Some(reclaim_retry_fire),
                        0,
                        c"vms_reclaim_retry".as_ptr().cast(),
                        RETRY_KEY.0.get(),
                    )
                }),
                queue,
                shrinker,
            }),
            GFP_KERNEL,
        );
        let r = match r {
            Ok(r) => r,
            Err(e) => {
                // SAFETY: made above, never registered or used.
                unsafe {
                    bindings::shrinker_free(shrinker);
                    bindings::destroy_workqueue(queue);
                }
                return Err(e);
            }
        };
        // A reference of its own, given back in the registration's drop.
        RECLAIM.store(Arc::into_raw(r.clone()).cast_mut(), Ordering::Release);
        // SAFETY: `shrinker` is allocated and not yet registered; the
        // callbacks use only the statics above and `RECLAIM`, valid until
        // `shrinker_free` has waited for them (in the registration's drop).
        // Eviction needs a write to a file: costlier to undo than a page
        // of the page cache (`DEFAULT_SEEKS`, 2): half the pressure.
        unsafe {
            (*shrinker).count_objects = Some(reclaim_count);
            (*shrinker).scan_objects = Some(reclaim_scan);
            (*shrinker).seeks = 4;
            bindings::shrinker_register(shrinker);
        }
        Ok(ReclaimRegistration(r))
    }

    /// Call `f` on the next clone of the list, round-robin, with its slot
    /// busy (which keeps the clone from going) and the list's lock
    /// released; also returns how many clones the list has. `None` if it
    /// has none.
    pub(crate) fn with_next<R>(&self, f: impl FnOnce(&VmClone) -> R) -> Option<(R, usize)> {
        let (clone, i, live) = {
            let mut l = self.list.lock();
            let n = l.slots.len();
            let live = l.slots.iter().filter(|s| !s.clone.is_null()).count();
            // Busy: only if another worker ran (there is one work item).
            let i = (0..n)
                .map(|k| (l.next + k) % n)
                .find(|&i| !l.slots[i].clone.is_null() && !l.slots[i].busy)?;
            l.next = i + 1;
            l.slots[i].busy = true;
            (l.slots[i].clone, i, live)
        };
        // SAFETY: a clone in the list is live until it leaves the list and
        // its slot is not busy (`reclaim_forget`, at the start of its drop).
        let r = f(unsafe { &*clone });
        // Slots never move: `i` is still this one, even if the clone left.
        self.list.lock().slots[i].busy = false;
        self.idle.notify_all();
        Some((r, live))
    }
}

impl Reclaim {
    /// Call `f` with every clone of the list, with the list's lock held,
    /// which keeps them from going (a clone's drop leaves the list first).
    /// For the worker, which looks at an image's clones together
    /// ([`crate::clone::reclaim_image`]).
    pub(crate) fn with_all<R>(&self, f: impl FnOnce(&mut dyn Iterator<Item = &VmClone>) -> R) -> R {
        let l = self.list.lock();
        // SAFETY: a clone in the list is live until it leaves the list,
        // which takes the lock held here.
        let mut clones = l.slots.iter().filter(|s| !s.clone.is_null()).map(|s| unsafe { &*s.clone });
        f(&mut clones)
    }
}

impl Drop for ReclaimRegistration {
    fn drop(&mut self) {
        let r = &self.0;
        // SAFETY: registered in `start`; this waits for running callbacks,
        // and none is called after it.
        unsafe { bindings::shrinker_free(r.shrinker) };
        // SAFETY: initialised in `start`; this waits for a running
        // callback, and arming it after (the worker, still draining below)
        // does nothing.
        unsafe { bindings::timer_shutdown_sync(r.retry.get()) };
        // SAFETY: made in `start`; nothing queues work any more (the
        // shrinker and the timer are gone, and so is every clone, whose
        // faults and the worker itself queue it); this waits for the
        // queued work, and its reference.
        unsafe { bindings::destroy_workqueue(r.queue) };
        let own = RECLAIM.swap(null_mut(), Ordering::AcqRel);
        forget_ask();
        if !own.is_null() {
            // SAFETY: from `Arc::into_raw` in `start`; nothing uses the
            // pointer any more (no clone is left, the shrinker is gone).
            drop(unsafe { Arc::from_raw(own) });
        }
    }
}

/// Put `clone` on the reclaim list, once: every clone is on it from its
/// creation (`VMS_CLONE_CREATE`) until its drop, so that the worker finds
/// the clones of an image, and those with a swap file.
pub(crate) fn reclaim_add(clone: &VmClone) -> Result {
    let r = RECLAIM.load(Ordering::Acquire);
    if r.is_null() {
        return Ok(());
    }
    // SAFETY: `RECLAIM` is live until the registration's drop, which comes
    // after every clone's (and so after every ioctl's).
    let mut l = unsafe { &*r }.list.lock();
    if l.slots.iter().any(|s| core::ptr::eq(s.clone, clone)) {
        return Ok(());
    }
    match l.slots.iter_mut().find(|s| s.clone.is_null() && !s.busy) {
        Some(s) => s.clone = clone,
        None => l.slots.push(Slot { clone, busy: false }, GFP_KERNEL)?,
    }
    Ok(())
}

/// Take `clone` off the reclaim list, waiting for the worker to be done
/// with it: the first thing the drop of a clone that was added does.
pub(crate) fn reclaim_forget(clone: &VmClone) {
    let r = RECLAIM.load(Ordering::Acquire);
    if r.is_null() {
        return;
    }
    // SAFETY: as in `reclaim_add`.
    let r = unsafe { &*r };
    let mut l = r.list.lock();
    if let Some(i) = l.slots.iter().position(|s| core::ptr::eq(s.clone, clone)) {
        l.slots[i].clone = core::ptr::null();
        while l.slots[i].busy {
            r.idle.wait(&mut l);
        }
    }
}

/// Images made from a file cached `n` more pages (see [`IMAGE_PAGES`]).
pub(crate) fn image_pages_add(n: usize) {
    IMAGE_PAGES.fetch_add(n, Ordering::Relaxed);
}

/// Images made from a file dropped `n` cached pages, or went with them.
pub(crate) fn image_pages_sub(n: usize) {
    IMAGE_PAGES.fetch_sub(n, Ordering::Relaxed);
}

/// Whether the worker should look at images: reclaim asked for `want`
/// pages and images made from a file cache some.
pub(crate) fn images_to_reclaim(want: usize) -> bool {
    want > 0 && IMAGE_PAGES.load(Ordering::Relaxed) > 0
}

/// Let the worker reach the registry of `dev` (registered, and pinned
/// until [`registry_withdraw`]).
pub(crate) fn registry_publish(dev: &MiscDevice) {
    REGISTRY.store(core::ptr::from_ref(&dev.registry).cast_mut(), Ordering::Release);
}

/// Before the registry goes: the worker stops using it. Flushes the
/// worker, so that a run that found it published has ended; a later run
/// (queued by the timer, or a clone's drop) finds it withdrawn.
pub(crate) fn registry_withdraw() {
    REGISTRY.swap(null_mut(), Ordering::SeqCst);
    // Against a run queued just now: `flush_work` reads the work's state
    // without a lock when it was never queued, and that read must not
    // pass the store above (a run it then misses reads the pointer after
    // it).
    core::sync::atomic::fence(Ordering::SeqCst);
    let r = RECLAIM.load(Ordering::Acquire);
    if !r.is_null() {
        // SAFETY: `RECLAIM` is live until the registration's drop, which
        // comes after this (the module's drop); its work item was
        // initialised in `start`. `flush_work` waits for a running
        // instance and may sleep, as the module's drop may.
        unsafe {
            bindings::flush_work(kernel::workqueue::Work::<Reclaim>::raw_get(core::ptr::addr_of!((*r).work)));
        }
    }
}

/// Call `f` on the registry, if it is published. For the worker only
/// (which [`registry_withdraw`] flushes).
pub(crate) fn with_registry<R>(f: impl FnOnce(&dev::Registry) -> R) -> Option<R> {
    let reg = REGISTRY.load(Ordering::Acquire);
    // SAFETY: published from a pinned, live registry; withdrawn before it
    // goes, and the withdrawal waits for the worker, the only caller.
    (!reg.is_null()).then(|| f(unsafe { &*reg }))
}

/// A clone that held `old` reclaimable pages holds `new` now.
pub(crate) fn reclaimable_set(old: usize, new: usize) {
    if new >= old {
        RECLAIMABLE.fetch_add(new - old, Ordering::Relaxed);
    } else {
        RECLAIMABLE.fetch_sub(old - new, Ordering::Relaxed);
    }
}

/// Pages the shrinker asked for that the worker has not looked at yet; 0
/// once no scan renewed the ask for [`ASK_TTL_MS`], which then forgets it
/// and what was freed for it. (A scan racing with that loses its ask, not
/// its memory: a reclaimer that still needs some scans again.)
pub(crate) fn reclaim_wanted() -> usize {
    if now_ms() - RECLAIM_ASKED.load(Ordering::Relaxed) > ASK_TTL_MS {
        forget_ask();
        return 0;
    }
    RECLAIM_WANT.load(Ordering::Relaxed)
}

/// Forget the shrinker's ask and what was freed for it: stale (no scan
/// renewed it for [`ASK_TTL_MS`]), or the registration is going.
fn forget_ask() {
    RECLAIM_WANT.store(0, Ordering::Relaxed);
    RECLAIM_FREED.store(0, Ordering::Relaxed);
}

/// The worker looked at `n` pages of what was asked, and freed `freed`.
pub(crate) fn reclaim_done(n: usize, freed: usize) {
    let _ = RECLAIM_WANT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(w.saturating_sub(n)));
    if freed > 0 {
        RECLAIM_FREED.fetch_add(freed, Ordering::Relaxed);
    }
}

/// What clones with a swap file and images made from a file could give
/// back.
fn reclaimable() -> usize {
    RECLAIMABLE.load(Ordering::Relaxed).saturating_add(IMAGE_PAGES.load(Ordering::Relaxed))
}

unsafe extern "C" fn reclaim_count(_s: *mut bindings::shrinker, _sc: *mut bindings::shrink_control) -> c_ulong {
    reclaimable() as c_ulong
}

/// `struct reclaim_state` (include/linux/swap.h), which the bindings leave
/// opaque: `mm_account_reclaimed_pages()`, a static inline, adds to its
/// first field.
#[repr(C)]
struct ReclaimState {
    reclaimed: c_ulong,
}

/// Record the ask, queue the worker, and report what the worker freed
/// since the last scans (up to the ask), crediting it to this reclaimer
/// if it counts what it reclaimed (`drop_caches` does not, and leaves the
/// credit to one that does): see [`Reclaim`].
///
/// Never `SHRINK_STOP`: `do_shrink_slab()` defers what a stopped scan left
/// (up to twice the count) to the next reclaim, which would ask for it
/// again on top of its own; each call here is cheap, and the ask stays
/// capped at what clones hold and at [`ASK_MAX`].
unsafe extern "C" fn reclaim_scan(_s: *mut bindings::shrinker, sc: *mut bindings::shrink_control) -> c_ulong {
    // SAFETY: the kernel passes a live control for the call.
    let nr = unsafe { (*sc).nr_to_scan } as usize;
    let cap = reclaimable().min(ASK_MAX);
    let now = now_ms();
    if now - RECLAIM_ASKED.swap(now, Ordering::Relaxed) > ASK_TTL_MS {
        // The first scan of new pressure: what the last left (an ask, or
        // a credit nobody took) is stale.
        forget_ask();
    }
    let ask = |w: usize| w.saturating_add(nr).min(cap);
    let (Ok(w) | Err(w)) = RECLAIM_WANT.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |w| Some(ask(w)));
    if ask(w) > 0 {
        queue_reclaim();
    }
    // SAFETY: `current` is live; its `reclaim_state` is null or the
    // reclaimer's own, live for the reclaim this scan is part of.
    let rs = unsafe { (*bindings::get_current()).reclaim_state.cast::<ReclaimState>() };
    let mut credit = 0;
    if !rs.is_null() {
        let _ = RECLAIM_FREED.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |f| {
            credit = f.min(nr);
            Some(f - credit)
        });
    }
    // SAFETY: as above; the kernel passes a live control for the call.
    unsafe {
        if credit > 0 {
            (*rs).reclaimed += credit as c_ulong;
        }
        (*sc).nr_scanned = nr as c_ulong;
    }
    credit as c_ulong
}

/// Queue the worker, unless it is queued already. From the shrinker's
/// callbacks, or from a clone's fault.
fn queue_reclaim() {
    let r = RECLAIM.load(Ordering::Acquire);
    if r.is_null() {
        return;
    }
    // SAFETY: from `Arc::into_raw`, given back only after `shrinker_free`
    // has waited for the callbacks and every clone is gone (so no clone
    // fault runs either).
    let r = unsafe { ArcBorrow::from_raw(r) };
    let work: Arc<Reclaim> = r.into();
    // SAFETY: the queue lives as long (as above).
    let q = unsafe { kernel::workqueue::Queue::from_raw(r.queue) };
    // Already queued: the reference comes back and goes (not the last: the
    // registration holds one).
    let _ = q.enqueue(work);
}

/// Have the worker evict clones down to their limits: a fault of the
/// VMM's mapping took one over it, and may not evict itself (it holds
/// `mmap_lock`, which a swap file's writers take under their inode lock
/// when they fault on user memory).
pub(crate) fn reclaim_kick() {
    // A load first: a fault of an over-limit clone kicks at every fault
    // until the worker has run.
    if !RECLAIM_OVER.load(Ordering::Relaxed) && !RECLAIM_OVER.swap(true, Ordering::AcqRel) {
        queue_reclaim();
    }
}

/// Kick the worker at `when` ([`now_ms`]), or sooner if the timer is set
/// sooner already: a clone over its limit is backing off (its pages were
/// all held, or all used again before the clock came back), and no fault
/// may come to kick it once that ends. From process context, with any
/// lock of ours held (the timer's base lock only).
pub(crate) fn reclaim_retry_at(when: i64) {
    let r = RECLAIM.load(Ordering::Acquire);
    if r.is_null() {
        return;
    }
    let ms = (when - now_ms()).clamp(1, 3_600_000) as c_uint;
    // SAFETY: `RECLAIM` and its timer live until the registration's drop,
    // which shuts the timer down first (after which this does nothing);
    // `jiffies` is read once, as `READ_ONCE` would.
    unsafe {
        let expires = core::ptr::read_volatile(core::ptr::addr_of!(bindings::jiffies))
            .wrapping_add(bindings::__msecs_to_jiffies(ms));
        bindings::timer_reduce((*r).retry.get(), expires);
    }
}

/// Whether a fault asked the worker to bring clones down to their limits
/// since the last call.
pub(crate) fn reclaim_kicked() -> bool {
    RECLAIM_OVER.swap(false, Ordering::AcqRel)
}

// ---------------------------------------------------------------------------
// Clone files: ioctl, mmap and the VMM's page faults

/// The clone behind a clone file.
///
/// # Safety
///
/// `file` must be a live clone file (its `private_data` an
/// `Arc<VmClone>::into_foreign` pointer, dropped only in `clone_release`)
/// and stay live for `'a`.
unsafe fn clone_of<'a>(file: *mut bindings::file) -> ArcBorrow<'a, VmClone> {
    // SAFETY: per the function's contract.
    unsafe { <Arc<VmClone> as ForeignOwnable>::borrow((*file).private_data) }
}

extern "C" fn clone_ioctl(file: *mut bindings::file, cmd: c_uint, arg: c_ulong) -> c_long {
    // SAFETY: called on a live clone file.
    let clone = unsafe { clone_of(file) };
    from_result(|| Ok(clone.ioctl(cmd, arg as usize)? as c_long))
}

extern "C" fn clone_release(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    // SAFETY: `private_data` came from `Arc::into_foreign` in
    // `new_clone_fd`, and this is the last use of it.
    let clone = unsafe { <Arc<VmClone> as ForeignOwnable>::from_foreign((*file).private_data) };
    // Work leaving a VM may hold a reference (see `queue_leave`): let it
    // go first, so that this one is the last where it was before.
    if clone.leave_queued.load(Ordering::Relaxed) {
        flush_queue();
    }
    drop(clone);
    0
}

extern "C" fn clone_mmap(file: *mut bindings::file, vma: *mut bindings::vm_area_struct) -> c_int {
    // SAFETY: the VMA is being set up by mmap() with mmap_lock held for
    // writing; `file` is a live clone file.
    unsafe {
        let flags = (*vma).__bindgen_anon_2.vm_flags;
        // A private mapping would copy pages into anonymous memory the
        // guest never sees: only shared mappings are coherent.
        if flags & bindings::VM_SHARED as c_ulong == 0 {
            pr_info!("clone mmap: only MAP_SHARED mappings are allowed\n");
            return EINVAL.to_errno();
        }
        let clone = clone_of(file);
        let pages = ((*vma).__bindgen_anon_1.__bindgen_anon_1.vm_end
            - (*vma).__bindgen_anon_1.__bindgen_anon_1.vm_start) as usize / PAGE_SIZE;
        if (*vma).vm_pgoff as usize + pages > clone.npages() {
            pr_info!(
                "clone mmap: pages {}+{} past the end of the clone ({} pages)\n",
                (*vma).vm_pgoff,
                pages,
                clone.npages()
            );
            return EINVAL.to_errno();
        }
        bindings::vm_flags_set(vma, (bindings::VM_DONTEXPAND | bindings::VM_DONTDUMP) as _);
        (*vma).vm_ops = &CLONE_VM_OPS.0;
    }
    0
}

/// The `vm_fault_t` of a failed fault.
fn fault_error(e: Error) -> bindings::vm_fault_t {
    if e == ENOMEM {
        bindings::vm_fault_reason_VM_FAULT_OOM as _
    } else {
        bindings::vm_fault_reason_VM_FAULT_SIGBUS as _
    }
}

extern "C" fn clone_vm_fault(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: the VMA of a fault is live while the fault holds its lock.
    let (file, idx, flags) = unsafe {
        let vma = (*vmf).__bindgen_anon_1.vma;
        ((*vma).vm_file, (*vmf).__bindgen_anon_1.pgoff as usize, (*vmf).flags)
    };
    let write = flags & bindings::fault_flag_FAULT_FLAG_WRITE != 0;
    // Reading the image drops the fault lock and retries, as filemap_fault
    // does for I/O, where the caller allows it (see `MayRead`).
    let how = if flags & bindings::fault_flag_FAULT_FLAG_ALLOW_RETRY == 0 {
        MayRead::Locked
    } else if flags & bindings::fault_flag_FAULT_FLAG_RETRY_NOWAIT != 0 {
        MayRead::NoWait
    } else if flags & bindings::fault_flag_FAULT_FLAG_TRIED != 0 {
        MayRead::Again
    } else {
        MayRead::First
    };
    // SAFETY: the VMA is a clone mapping (we set `vm_ops` only on those),
    // so its file is a live clone file while the fault holds its lock.
    // The borrow of the clone ends with this statement, before any path
    // below releases the lock.
    let found = unsafe { clone_of(file) }.mmap_fault(idx, write, how);
    match found {
        Ok(MmapFault::Page(page)) => {
            // SAFETY: `vmf` is the fault in progress; the locked reference
            // moves to the fault path, which maps it, unlocks and drops it.
            unsafe { (*vmf).page = page.into_raw() };
            bindings::vm_fault_reason_VM_FAULT_LOCKED as _
        }
        Ok(MmapFault::Read(warm)) => {
            // Once the lock is released the VMA, and with it the clone
            // file's reference to the clone, may go. `warm` holds what the
            // read needs (the image and the clone's counters), never the
            // clone, whose last reference must not be dropped here: this
            // thread may be a vCPU inside KVM's SRCU read section, which
            // the clone's drop waits for (see `Warm`).
            // The clone file is what holds vms.ko (its `owner`): once the
            // lock is released, another thread may unmap and close it,
            // and rmmod could free the code this thread runs. Hold the
            // file over the read, as filemap_fault pins `vm_file` when it
            // drops the lock for I/O. Its last `fput` is deferred (task
            // work or a worker), never run inside this fault, so it cannot
            // drop the clone in KVM's SRCU read section either.
            // SAFETY: `file` is the VMA's `vm_file`, live under the lock.
            let pin = unsafe { FileRef::get(file) };
            // SAFETY: the fault holds its lock and may release it
            // (ALLOW_RETRY without NOWAIT), after which we touch neither the
            // VMA nor the mm, and return VM_FAULT_RETRY as required.
            unsafe { bindings::release_fault_lock(vmf) };
            debug_delay(Delay::Read);
            // An error is counted, logged and marked in the image: the
            // retry (`MayRead::Again`) then fails with it.
            let _ = warm.read();
            drop(warm);
            drop(pin);
            // MAJOR, as filemap_fault reports a fault that waited for I/O.
            (bindings::vm_fault_reason_VM_FAULT_RETRY | bindings::vm_fault_reason_VM_FAULT_MAJOR) as _
        }
        Ok(MmapFault::ReadBack(idx)) => {
            // As for `Read`: hold the clone file, whose reference keeps
            // the clone (and vms.ko), over the read; its last `fput` is
            // deferred, never run inside this fault.
            // SAFETY: `file` is the VMA's `vm_file`, live under the lock.
            let pin = unsafe { FileRef::get(file) };
            // SAFETY: as for `Read`.
            unsafe { bindings::release_fault_lock(vmf) };
            // SAFETY: `pin` keeps `file`, a clone file, and with it its
            // reference to the clone, for the borrow.
            // An error is counted, logged and kept: the retry
            // (`MayRead::Again`) then fails with it.
            let _ = unsafe { clone_of(file) }.read_back_idx(idx);
            drop(pin);
            (bindings::vm_fault_reason_VM_FAULT_RETRY | bindings::vm_fault_reason_VM_FAULT_MAJOR) as _
        }
        Ok(MmapFault::Throttled) => {
            // As for `Read`: hold the clone file, and with it vms.ko, over
            // the sleep; its last `fput` is deferred.
            // SAFETY: `file` is the VMA's `vm_file`, live under the lock.
            let pin = unsafe { FileRef::get(file) };
            // SAFETY: as for `Read` (`Throttled` comes only with
            // ALLOW_RETRY and without NOWAIT).
            unsafe { bindings::release_fault_lock(vmf) };
            throttle_sleep();
            drop(pin);
            bindings::vm_fault_reason_VM_FAULT_RETRY as _
        }
        // RETRY_NOWAIT: retry, with the lock held, as filemap_fault does
        // when it would have to wait.
        Ok(MmapFault::Busy) => bindings::vm_fault_reason_VM_FAULT_RETRY as _,
        Err(e) => fault_error(e),
    }
}

extern "C" fn clone_vm_mkwrite(vmf: *mut bindings::vm_fault) -> bindings::vm_fault_t {
    // SAFETY: as in `clone_vm_fault`; `page` is the page mapped read-only.
    let (clone, idx, page) = unsafe {
        let vma = (*vmf).__bindgen_anon_1.vma;
        (clone_of((*vma).vm_file), (*vmf).__bindgen_anon_1.pgoff as usize, (*vmf).page)
    };
    // SAFETY: `page` is referenced by the fault path; the core unlocks it
    // after making the PTE writable.
    let lock = || unsafe { bindings::lock_page(page) };
    match clone.mmap_mkwrite(idx, page, lock) {
        // The page is the clone's private page, locked: make the PTE
        // writable.
        Ok(true) => bindings::vm_fault_reason_VM_FAULT_LOCKED as _,
        // The shared page was replaced and unmapped: retry the access.
        Ok(false) => bindings::vm_fault_reason_VM_FAULT_NOPAGE as _,
        Err(e) => fault_error(e),
    }
}

extern "C" fn clone_vm_close(vma: *mut bindings::vm_area_struct) {
    // SAFETY: mm closes the VMA with its `mmap_lock` held (munmap may have
    // downgraded it to read after detaching the VMA) and drops the file
    // reference after this returns: the clone is live.
    let (clone, mm, start, end) = unsafe {
        let r = &(*vma).__bindgen_anon_1.__bindgen_anon_1;
        (clone_of((*vma).vm_file), MmId((*vma).vm_mm), r.vm_start as u64, r.vm_end as u64)
    };
    if clone.mapping_closed(mm, start, end) {
        // Every memslot the clone served was claimed and has lost its
        // mapping: leave the VM, which waits for vCPUs, outside this lock.
        queue_leave(&clone);
    }
}

extern "C" fn clone_vm_mprotect(
    vma: *mut bindings::vm_area_struct,
    start: c_ulong,
    end: c_ulong,
    newflags: c_ulong,
) -> c_int {
    // A claim is for a writable mapping: one that loses write access is
    // as good as gone (see `claim_slot`).
    if newflags & bindings::VM_WRITE as c_ulong == 0 {
        // SAFETY: mprotect holds `mmap_lock` for writing; the VMA and its
        // file are live.
        let (clone, mm) = unsafe { (clone_of((*vma).vm_file), MmId((*vma).vm_mm)) };
        if clone.mapping_closed(mm, start as u64, end as u64) {
            queue_leave(&clone);
        }
    }
    0
}

/// Have `clone` leave its VM from the module's workqueue
/// ([`VmClone::leave_lapsed_vm`]). The work holds a reference to the
/// clone, which could be the last: the clone would then outlive its files
/// and mappings for a moment, long enough for an image delete that follows
/// the VMM's exit to fail (`EBUSY`). So what drops a lasting reference (a
/// clone file's release, a name's removal) first waits for the queue
/// ([`flush_queue`]) once this has run.
fn queue_leave(clone: &ArcBorrow<'_, VmClone>) {
    // Before queueing: a release racing the work must wait for it.
    clone.leave_queued.store(true, Ordering::Relaxed);
    let clone: Arc<VmClone> = (*clone).into();
    if spawn(move || clone.leave_lapsed_vm()).is_err() {
        pr_warn!("cannot queue the release of a VM; it is released with the clone\n");
    }
}

/// Wait for the work queued on the module's workqueue so far. Not from
/// that queue's work, nor with a lock its work takes (a clone's `attach`
/// or `state`, KVM's `slots_lock`).
pub(crate) fn flush_queue() {
    let q = QUEUE.load(Ordering::Acquire);
    if !q.is_null() {
        // SAFETY: the queue lives until the module's drop (`WorkQueue`);
        // a clone that calls this exists before that drop runs.
        unsafe { bindings::__flush_workqueue(q) };
    }
}

struct VmOps(bindings::vm_operations_struct);
// SAFETY: never written after it is built; mm only reads it.
unsafe impl Sync for VmOps {}

static CLONE_VM_OPS: VmOps = VmOps(bindings::vm_operations_struct {
    // A claimed memslot must stop being served from the clone once the
    // mapping it was claimed for goes.
    close: Some(clone_vm_close),
    mprotect: Some(clone_vm_mprotect),
    fault: Some(clone_vm_fault),
    // With page_mkwrite, mm maps pages read-only first and asks before
    // the first write, which is where a shared page is replaced.
    page_mkwrite: Some(clone_vm_mkwrite),
    // SAFETY: all-zero is a valid `vm_operations_struct`.
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
});

static CLONE_FOPS: FileOps = FileOps(bindings::file_operations {
    owner: addr_of_mut!(bindings::__this_module),
    unlocked_ioctl: Some(clone_ioctl),
    #[cfg(CONFIG_COMPAT)]
    compat_ioctl: Some(bindings::compat_ptr_ioctl),
    mmap: Some(clone_mmap),
    release: Some(clone_release),
    // SAFETY: all-zero is a valid `file_operations`.
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
});

/// The page cache mapping of a clone file, through which the VMM's
/// mappings of the clone are found and unmapped.
///
/// # Invariants
///
/// `0` is null or the `f_mapping` of the clone file made for the clone
/// this value is part of, whose inode this value holds a reference to:
/// the clone can outlive its file (an ioctl that holds the clone while
/// another thread closes the file), and may still unmap.
pub(crate) struct Mapping(AtomicPtr<bindings::address_space>);

impl Mapping {
    pub(crate) const fn none() -> Self {
        Mapping(AtomicPtr::new(null_mut()))
    }

    /// Remember `file`'s mapping, holding a reference to its inode.
    ///
    /// # Safety
    ///
    /// `file` is the live clone file just made for this clone; called
    /// once, before anyone can fault on the file.
    unsafe fn set(&self, file: *mut bindings::file) {
        // SAFETY: `file` is live (caller), so are its inode and mapping.
        let mapping = unsafe {
            bindings::ihold((*file).f_inode);
            (*file).f_mapping
        };
        // INVARIANT: the mapping of the clone's file; its inode is held.
        self.0.store(mapping, Ordering::Release);
    }

    /// The mapping, null before [`set`](Self::set).
    fn get(&self) -> *mut bindings::address_space {
        self.0.load(Ordering::Acquire)
    }

    /// Unmap page `idx` from every VMM mapping of the clone.
    pub(crate) fn unmap_page(&self, idx: usize) {
        self.unmap((idx * PAGE_SIZE) as bindings::loff_t, PAGE_SIZE as _);
    }

    /// Unmap pages `idx..idx + n` from every VMM mapping of the clone.
    pub(crate) fn unmap_pages(&self, idx: usize, n: usize) {
        self.unmap((idx * PAGE_SIZE) as bindings::loff_t, (n * PAGE_SIZE) as _);
    }

    /// Unmap the whole clone from every VMM mapping.
    pub(crate) fn unmap_all(&self) {
        // A length of 0 means "to the end of the file".
        self.unmap(0, 0);
    }

    fn unmap(&self, off: bindings::loff_t, len: bindings::loff_t) {
        let m = self.0.load(Ordering::Acquire);
        if m.is_null() {
            return;
        }
        // SAFETY: the mapping is live (invariant); this takes its own locks.
        unsafe { bindings::unmap_mapping_range(m, off, len, 0) };
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        let m = *self.0.get_mut();
        if !m.is_null() {
            // SAFETY: we hold a reference to the mapping's inode (invariant),
            // its `host`; nothing uses the mapping after this.
            unsafe { bindings::iput((*m).host) };
        }
    }
}

/// The clone behind clone file descriptor `fd`: `EBADF` if `fd` is not
/// open, `EINVAL` if it is not a clone file.
pub(crate) fn clone_from_fd(fd: i32) -> Result<Arc<VmClone>> {
    // SAFETY: `fget` accepts any number and returns NULL if not open.
    let file = NonNull::new(unsafe { bindings::fget(fd as c_uint) }).ok_or(EBADF)?;
    let file = file.as_ptr();
    // SAFETY: we hold a reference to `file`, so it is live; a file whose
    // `f_op` is `CLONE_FOPS` is a clone file, live until the `fput` below.
    let clone = unsafe {
        if (*file).f_op == &CLONE_FOPS.0 as *const _ || (*file).f_op == &NAMED_FOPS.0 as *const _ {
            Some(Arc::<VmClone>::from(clone_of(file)))
        } else {
            None
        }
    };
    // SAFETY: drops the reference taken by `fget` above.
    unsafe { bindings::fput(file) };
    clone.ok_or(EINVAL)
}

/// Create a clone file for `clone` and install it as a new fd.
pub(crate) fn new_clone_fd(clone: Arc<VmClone>) -> Result<i32> {
    let flags = (bindings::O_RDWR | bindings::O_CLOEXEC) as c_int;
    // SAFETY: reserving an fd has no preconditions.
    let fd = unsafe { bindings::get_unused_fd_flags(flags as _) };
    if fd < 0 {
        return Err(Error::from_errno(fd));
    }
    let raw = clone.into_foreign() as *mut c_void;
    // SAFETY: `raw` came from `into_foreign` and is released only below
    // on error or in `clone_release`, after this borrow ends.
    let clone = unsafe { <Arc<VmClone> as ForeignOwnable>::borrow(raw) };
    // SAFETY: the name is a static C string; `CLONE_FOPS` is static; `raw`
    // is owned by the file from here on (released in `clone_release`). A
    // new inode per clone gives each clone its own mapping.
    let file = from_err_ptr(unsafe {
        bindings::anon_inode_create_getfile(
            c_str!("[vms-clone]").as_char_ptr(),
            &CLONE_FOPS.0,
            raw,
            flags,
            null_mut(),
        )
    });
    let file = match file {
        Ok(f) => f,
        Err(e) => {
            // SAFETY: the file was not created, so `raw` is still ours, and
            // the fd was reserved above.
            unsafe {
                drop(<Arc<VmClone> as ForeignOwnable>::from_foreign(raw));
                bindings::put_unused_fd(fd as c_uint);
            }
            return Err(e);
        }
    };
    // SAFETY: the file was just made for this clone; nobody can fault on
    // it before fd_install.
    unsafe { clone.mapping.set(file) };
    // SAFETY: `fd` is reserved and `file` is ours to give away.
    unsafe { bindings::fd_install(fd as c_uint, file) };
    Ok(fd)
}

// ---------------------------------------------------------------------------
// Named clones: /dev/vms-clone/NAME

/// `open` of `/dev/vms-clone/NAME`: the file becomes a file of the clone,
/// as one of `new_clone_fd` is: `private_data` holds a reference to the
/// clone, and `f_mapping` is the clone file's mapping, so that the VMAs
/// of this file are found and unmapped with the clone's others.
extern "C" fn named_open(_inode: *mut bindings::inode, file: *mut bindings::file) -> c_int {
    // SAFETY: misc_open() set `private_data` to our `miscdevice`, the
    // `inner` of a registered `NamedClone`, and calls us with `misc_mtx`
    // held; `misc_deregister()` takes that mutex, and a `NamedClone` is
    // freed only after it returns, so the `NamedClone` is live here.
    let named = unsafe {
        let misc = (*file).private_data as *const bindings::miscdevice;
        &*kernel::container_of!(misc, NamedClone, inner)
    };
    // A clone file is read-write; a read-only one could still reset or
    // attach the clone (its ioctls), which a reader must not.
    // SAFETY: `file` is being opened; `f_mode` is set.
    if unsafe { (*file).f_mode } & FMODE_WRITE == 0 {
        return EACCES.to_errno();
    }
    let mapping = named.clone.mapping.get();
    if mapping.is_null() {
        // (a clone gets its mapping when its first file is made, before
        // anyone can name it)
        return ENXIO.to_errno();
    }
    let raw = named.clone.clone().into_foreign() as *mut c_void;
    // SAFETY: `file` is being opened and is ours until `open` returns.
    // `raw` is released in `clone_release`. The mapping's inode is held
    // by the clone (`Mapping`), which this file now holds too.
    unsafe {
        (*file).private_data = raw;
        (*file).f_mapping = mapping;
    }
    0
}

/// `FMODE_WRITE` of `include/linux/fs.h` (a `__force` cast bindgen skips).
const FMODE_WRITE: u32 = 1 << 1;

/// The minors named clones take, the top half of the misc minors, handed
/// out in turn ([`NEXT_MINOR`], from a random point at each load) instead
/// of the lowest free one: a device node or a file that outlived its name
/// (a bind mount, `mknod`, a reopen through /proc, across a reload too)
/// must not open the next clone named, which the lowest free minor would
/// give it at once. One comes back only after 2^19 names. (A kernel whose
/// misc core refuses fixed minors above 255, as a 2025 patch proposes,
/// gets dynamic ones: EINVAL falls back, see `NamedClone::register`.)
const NAMED_MINORS: core::ops::RangeInclusive<u32> = (1 << 19)..=bindings::MINORMASK;
static NEXT_MINOR: AtomicU32 = AtomicU32::new(0);

/// Starts [`NEXT_MINOR`] at a random point of [`NAMED_MINORS`]; called
/// once, at load.
pub(crate) fn seed_named_minors() {
    // SAFETY: get_random_u32 has no preconditions.
    let r = unsafe { bindings::get_random_u32() };
    NEXT_MINOR.store(bindings::MINORMASK - r % (1 << 19), Ordering::Relaxed);
}

/// The next minor to try for a named clone.
fn next_minor() -> u32 {
    let m = NEXT_MINOR.fetch_sub(1, Ordering::Relaxed);
    if NAMED_MINORS.contains(&m) {
        m
    } else {
        // Wrapped: start again from the top (racing callers may both do
        // this; a minor taken twice fails the second registration with
        // EBUSY, which retries).
        NEXT_MINOR.store(bindings::MINORMASK - 1, Ordering::Relaxed);
        bindings::MINORMASK
    }
}

/// The file operations of `/dev/vms-clone/NAME`: a clone file's, opened
/// by path. `owner` is the module: `misc_open()` takes a reference with
/// `fops_get()`, dropped at the last `fput`.
static NAMED_FOPS: FileOps = FileOps(bindings::file_operations {
    owner: addr_of_mut!(bindings::__this_module),
    open: Some(named_open),
    unlocked_ioctl: Some(clone_ioctl),
    #[cfg(CONFIG_COMPAT)]
    compat_ioctl: Some(bindings::compat_ptr_ioctl),
    mmap: Some(clone_mmap),
    release: Some(clone_release),
    // SAFETY: all-zero is a valid `file_operations`.
    ..unsafe { core::mem::MaybeUninit::zeroed().assume_init() }
});

/// A clone's name: the misc device `vms-clone!NAME`, which devtmpfs shows
/// as `/dev/vms-clone/NAME` (mode 0600), and whose files are files of the
/// clone. It holds a reference to the clone, and one to the module: a
/// named clone may serve a running VM with no file of it open, so rmmod
/// waits (EBUSY) until every name is removed.
///
/// # Invariants
///
/// `inner` is registered with `misc_register()` from construction until
/// drop, and pinned; its `name` points into `devname`, which is never
/// changed and lives as long.
#[pin_data(PinnedDrop)]
pub(crate) struct NamedClone {
    #[pin]
    inner: Opaque<bindings::miscdevice>,
    /// `vms-clone!NAME`, NUL-terminated.
    devname: KVec<u8>,
    name: [u8; abi::VMS_NAME_LEN],
    clone: Arc<VmClone>,
}

// SAFETY: after registration the misc core only reads `inner` under its own
// lock; the other fields are `Send` and `Sync` or never changed.
unsafe impl Send for NamedClone {}
// SAFETY: as for `Send`.
unsafe impl Sync for NamedClone {}

impl NamedClone {
    /// Names `clone` `name` (checked: NUL-terminated, NUL-padded) and
    /// makes its device.
    pub(crate) fn register(name: &[u8; abi::VMS_NAME_LEN], clone: Arc<VmClone>) -> Result<Pin<KBox<Self>>> {
        let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
        let mut devname = KVec::with_capacity(10 + n + 1, GFP_KERNEL)?;
        devname.extend_from_slice(b"vms-clone!", GFP_KERNEL)?;
        devname.extend_from_slice(&name[..n], GFP_KERNEL)?;
        devname.push(0, GFP_KERNEL)?;
        let name = *name;
        let init = move |slot: *mut Self| {
            // SAFETY: `slot` is valid for writes (pin-init contract); the
            // fields are written once, before the device is registered.
            let devname_ptr = unsafe {
                addr_of_mut!((*slot).devname).write(devname);
                addr_of_mut!((*slot).name).write(name);
                addr_of_mut!((*slot).clone).write(clone);
                (*slot).devname.as_ptr()
            };
            // SAFETY: `Opaque::raw_get` only computes the field's address.
            let misc = unsafe { Opaque::raw_get(addr_of_mut!((*slot).inner)) };
            // A minor another device took meanwhile is EBUSY: the next.
            // After 64 taken in a row, ENOSPC (not EBUSY, which says the
            // clone has a name). A misc core that refuses fixed minors
            // above 255 (EINVAL) gets a dynamic one.
            let mut r = Err(ENOSPC);
            let mut fixed = true;
            for _ in 0..64 {
                // SAFETY: `misc` is valid for writes and not registered
                // (a failed misc_register links nothing). All-zero is a
                // valid `miscdevice` for the fields not set here.
                unsafe {
                    misc.write(bindings::miscdevice {
                        minor: if fixed { next_minor() as _ } else { bindings::MISC_DYNAMIC_MINOR as _ },
                        name: devname_ptr as *const kernel::ffi::c_char,
                        fops: &NAMED_FOPS.0,
                        mode: 0o600,
                        ..core::mem::MaybeUninit::zeroed().assume_init()
                    })
                };
                // INVARIANT: registered on success.
                // SAFETY: `misc` is initialised and pinned in its final
                // place.
                r = to_result(unsafe { bindings::misc_register(misc) });
                match r {
                    Err(e) if e == EBUSY => r = Err(ENOSPC),
                    Err(e) if e == EINVAL && fixed => {
                        pr_info!("named clones: fixed misc minors refused; dynamic ones are reused at once\n");
                        fixed = false;
                    }
                    _ => break,
                }
            }
            if r.is_ok() {
                // SAFETY: our own module, live while its code runs; the
                // reference goes in `drop`.
                unsafe { bindings::__module_get(addr_of_mut!(bindings::__this_module)) };
            } else {
                // SAFETY: written above, not used again.
                unsafe {
                    core::ptr::drop_in_place(addr_of_mut!((*slot).devname));
                    core::ptr::drop_in_place(addr_of_mut!((*slot).clone));
                }
            }
            r
        };
        // SAFETY: `init` initialises every field of `Self` or fails
        // leaving nothing initialised.
        KBox::try_pin_init(unsafe { pin_init_from_closure(init) }, GFP_KERNEL)
    }

    /// The name (NUL-padded).
    pub(crate) fn name(&self) -> &[u8; abi::VMS_NAME_LEN] {
        &self.name
    }

    /// Whether this is the name of `clone`.
    pub(crate) fn names(&self, clone: &VmClone) -> bool {
        core::ptr::eq(&*self.clone, clone)
    }

    /// Another reference to the clone: to drop the clone's last one after
    /// the name, out of a lock the name's removal holds.
    pub(crate) fn clone_ref(&self) -> Arc<VmClone> {
        self.clone.clone()
    }
}

#[pinned_drop]
impl PinnedDrop for NamedClone {
    fn drop(self: Pin<&mut Self>) {
        // After this no `open` can find the device, and any that did has
        // returned (`misc_mtx`); the fields (the clone's reference) go
        // after it.
        // SAFETY: `inner` is registered (type invariant).
        unsafe { bindings::misc_deregister(self.inner.get()) };
        // As in `clone_release`: work leaving a VM may hold the clone.
        if self.clone.leave_queued.load(Ordering::Relaxed) {
            flush_queue();
        }
        // SAFETY: the reference `register` took; this is not the module's
        // own exit (which waits for it), so the module stays while this
        // code runs: its caller holds a file of /dev/vms.
        unsafe { bindings::module_put(addr_of_mut!(bindings::__this_module)) };
    }
}

// ---------------------------------------------------------------------------
// Debug instruments: /sys/kernel/debug/vms

// Rust-for-Linux 6.12 has no debugfs abstraction and `linux/debugfs.h` is
// not among the headers its bindings are generated from: the three
// functions vms calls (exported GPL). `improper_ctypes`: as for
// `__filemap_get_folio` above.
#[cfg(CONFIG_DEBUG_FS)]
#[allow(improper_ctypes)]
extern "C" {
    /// A directory `name` in `parent` (NULL: the debugfs root): its
    /// dentry, or an `ERR_PTR` on failure.
    fn debugfs_create_dir(
        name: *const kernel::ffi::c_char,
        parent: *mut bindings::dentry,
    ) -> *mut bindings::dentry;
    /// A file `name` in `parent` that reads and writes the `u32` at
    /// `value` in decimal, with plain loads and stores; failures are
    /// silent (the file is just missing).
    fn debugfs_create_u32(
        name: *const kernel::ffi::c_char,
        mode: bindings::umode_t,
        parent: *mut bindings::dentry,
        value: *mut u32,
    );
    /// Remove `dentry` and everything in it, after waiting for the
    /// accesses in flight; NULL and `ERR_PTR` values are ignored.
    fn debugfs_remove(dentry: *mut bindings::dentry);
}

// Without CONFIG_DEBUG_FS the C functions are inline stubs, not symbols:
// these do what the stubs do (no directory, no files).
#[cfg(not(CONFIG_DEBUG_FS))]
unsafe fn debugfs_create_dir(
    _name: *const kernel::ffi::c_char,
    _parent: *mut bindings::dentry,
) -> *mut bindings::dentry {
    null_mut()
}
#[cfg(not(CONFIG_DEBUG_FS))]
unsafe fn debugfs_create_u32(
    _name: *const kernel::ffi::c_char,
    _mode: bindings::umode_t,
    _parent: *mut bindings::dentry,
    _value: *mut u32,
) {
}
#[cfg(not(CONFIG_DEBUG_FS))]
unsafe fn debugfs_remove(_dentry: *mut bindings::dentry) {}

/// Debug knob `vmm_read_delay_ms`: a VMM fault that reads the image with
/// the fault lock released sleeps this long first ([`Delay::Read`]).
static VMM_READ_DELAY_MS: AtomicU32 = AtomicU32::new(0);
/// Debug knob `vmm_map_delay_ms`: a VMM fault that returns a page sleeps
/// this long with the page locked ([`Delay::Map`]).
static VMM_MAP_DELAY_MS: AtomicU32 = AtomicU32::new(0);
/// Debug knob `reset_punch_delay_ms`: a reset sleeps this long before it
/// punches the swap file, with eviction held off ([`Delay::Punch`]).
static RESET_PUNCH_DELAY_MS: AtomicU32 = AtomicU32::new(0);
/// Debug knob `swap_write_delay_ms`: an eviction sleeps this long with its
/// pages picked and in writeback, before it writes them
/// ([`Delay::SwapWrite`]): a swap disk that hangs.
static SWAP_WRITE_DELAY_MS: AtomicU32 = AtomicU32::new(0);
/// Debug knob `image_read_fail`: the next this many reads of an image
/// page for a clone (a stage-2 or VMM fault's) fail with `EIO` without
/// reading, as a read error would ([`debug_fail_read`]).
static IMAGE_READ_FAIL: AtomicU32 = AtomicU32::new(0);
/// Debug counter `vmm_delays` (read-only): sleeps begun at either VMM
/// point or before an eviction's writes, so that a test knows when a
/// fault (or an eviction) is inside its window.
static VMM_DELAYS: AtomicU32 = AtomicU32::new(0);

/// Debug knob `quarantine_pages`: how many freed private pages to keep
/// out of circulation, filled with a sentinel ([`release_private`]); 0,
/// the default, frees them at once. At most [`QUARANTINE_MAX`].
static QUARANTINE_PAGES: AtomicU32 = AtomicU32::new(0);
/// Debug counter `quarantine_checked` (read-only): quarantined pages whose
/// sentinel was checked on release.
static QUARANTINE_CHECKED: AtomicU32 = AtomicU32::new(0);
/// Debug counter `quarantine_bad` (read-only): of those, pages that
/// something wrote to while they sat in quarantine.
static QUARANTINE_BAD: AtomicU32 = AtomicU32::new(0);

/// Debug knob `private_movable`: non-zero allocates clones' private
/// pages movable ([`PageRef::alloc_private`]).
static PRIVATE_MOVABLE: AtomicU32 = AtomicU32::new(0);

/// The files of `/sys/kernel/debug/vms`: name, mode, value.
static DEBUG_FILES: [(&CStr, bindings::umode_t, &AtomicU32); 12] = [
    (c_str!("vmm_read_delay_ms"), 0o600, &VMM_READ_DELAY_MS),
    (c_str!("vmm_map_delay_ms"), 0o600, &VMM_MAP_DELAY_MS),
    (c_str!("reset_punch_delay_ms"), 0o600, &RESET_PUNCH_DELAY_MS),
    (c_str!("swap_write_delay_ms"), 0o600, &SWAP_WRITE_DELAY_MS),
    (c_str!("image_read_fail"), 0o600, &IMAGE_READ_FAIL),
    (c_str!("vmm_delays"), 0o400, &VMM_DELAYS),
    (c_str!("quarantine_pages"), 0o600, &QUARANTINE_PAGES),
    (c_str!("quarantine_checked"), 0o400, &QUARANTINE_CHECKED),
    (c_str!("quarantine_bad"), 0o400, &QUARANTINE_BAD),
    (c_str!("private_movable"), 0o600, &PRIVATE_MOVABLE),
    (c_str!("claim_slots"), 0o600, &CLAIM_SLOTS),
    (c_str!("claimed_slots"), 0o400, &CLAIMED_SLOTS),
];

/// The quarantine's capacity: 64 MiB of pages.
const QUARANTINE_MAX: usize = 16384;
/// The quarantine, a ring of page references (null: empty slot).
static QUARANTINE: [AtomicPtr<bindings::page>; QUARANTINE_MAX] =
    [const { AtomicPtr::new(null_mut()) }; QUARANTINE_MAX];
/// The ring's next slot (modulo the knob's capacity).
static QUARANTINE_NEXT: AtomicUsize = AtomicUsize::new(0);

/// The sentinel of word `i` of a quarantined page.
fn sentinel(i: usize) -> u64 {
    0x5e17_1e1f_0000_0000 | i as u64
}

/// Milliseconds on the monotonic clock (`ktime_get()`).
pub(crate) fn now_ms() -> i64 {
    kernel::time::Ktime::ktime_get().to_ms()
}

/// Sleep for about `ms` milliseconds (`msleep()`); callers hold no lock.
pub(crate) fn msleep(ms: u32) {
    // SAFETY: sleeping is allowed: callers hold no spinlock and are not in
    // atomic context.
    unsafe { bindings::msleep(ms) };
}

/// Sleep for `min` to `max` microseconds, uninterruptibly and not counted
/// as load (`usleep_idle_range()`); callers hold no lock of ours and no
/// spinlock.
pub(crate) fn usleep_idle_range(min: u64, max: u64) {
    // SAFETY: sleeping is allowed: callers hold no spinlock and are not in
    // atomic context. `TASK_IDLE` is what C's `usleep_idle_range()` passes.
    unsafe { bindings::usleep_range_state(min as _, max as _, bindings::TASK_IDLE) };
}

/// Whether the current task has a signal pending: a long loop for a
/// system call stops there (`-ERESTARTSYS`), as the kernel's own do.
pub(crate) fn signal_pending() -> bool {
    kernel::current!().signal_pending()
}

/// The current thread, as a number that no other live thread has (its
/// `task_struct`'s address; never 0). Not `Task::pid()`: in this tree's
/// debug kernel it read 0 for vCPU threads in a stage-2 fault (seen
/// 2026-12-06; why was not found), which made every thread the same.
pub(crate) fn current_task_id() -> usize {
    // SAFETY: no requirement: `current` is valid on any thread.
    unsafe { bindings::get_current() as usize }
}

/// Give the CPU to another task that needs it (`cond_resched()`), in a long
/// loop that holds no spinlock. A no-op on a preemptible kernel (without
/// `PREEMPT_DYNAMIC`), which has no `__cond_resched`. With
/// `CONFIG_DEBUG_ATOMIC_SLEEP` it checks, as C's `cond_resched()` does,
/// that the caller may sleep, on every kernel: a caller in atomic context
/// is reported even where this would not reschedule.
#[track_caller]
pub(crate) fn cond_resched() {
    #[cfg(CONFIG_DEBUG_ATOMIC_SLEEP)]
    {
        let loc = core::panic::Location::caller();
        // SAFETY: a check only; `file` is a NUL-terminated string that
        // outlives the call (the kernel prints it, does not keep it).
        unsafe {
            bindings::__might_resched(
                c"vms".as_ptr().cast(),
                loc.line() as core::ffi::c_int,
                0,
            );
        }
    }
    #[cfg(any(not(CONFIG_PREEMPTION), CONFIG_PREEMPT_DYNAMIC))]
    // SAFETY: callers hold no spinlock and are not in atomic context.
    unsafe {
        bindings::__cond_resched();
    }
}

/// Release a clone's private page once nothing of the clone can reach it
/// (KVM has unregistered the clone, its mappings are gone).
///
/// With the `quarantine_pages` knob set, a page only we hold is instead
/// filled with a sentinel and kept in a ring of that many pages; the page
/// it displaces from the ring is checked and freed. A write to a page
/// after vms let it go (a stale stage-2 or VMM mapping, a pin we missed)
/// then changes its sentinel instead of whatever the kernel reused the
/// page for, and the check reports it ("BUG: vms: quarantined page"),
/// dumping the changed bytes of the first such page. The page stays in
/// the direct map: this catches writes through other mappings (a guest's
/// stage 2, a user mapping, a device), not stray kernel pointers, which
/// KASAN and page poisoning cover.
pub(crate) fn release_private(page: PageRef) {
    let cap = (QUARANTINE_PAGES.load(Ordering::Relaxed) as usize).min(QUARANTINE_MAX);
    if cap == 0 || page.ref_count() != 1 {
        return;
    }
    page.with_bytes(|p| {
        // SAFETY: `p` maps PAGE_SIZE bytes, aligned to 8, that only we
        // hold (reference count 1).
        let words = unsafe { core::slice::from_raw_parts_mut(p as *mut u64, PAGE_SIZE / 8) };
        for (i, w) in words.iter_mut().enumerate() {
            *w = sentinel(i);
        }
    });
    let slot = QUARANTINE_NEXT.fetch_add(1, Ordering::Relaxed) % cap;
    let old = QUARANTINE[slot].swap(page.into_raw(), Ordering::AcqRel);
    if let Some(old) = NonNull::new(old) {
        // INVARIANT: the ring held this reference, which the swap took.
        check_quarantined(PageRef(old));
    }
}

/// Empty the quarantine (module unload), checking every page.
pub(crate) fn drain_quarantine() {
    for slot in QUARANTINE.iter() {
        if let Some(p) = NonNull::new(slot.swap(null_mut(), Ordering::AcqRel)) {
            // INVARIANT: the ring held this reference, which the swap took.
            check_quarantined(PageRef(p));
        }
    }
    let (checked, bad) = (QUARANTINE_CHECKED.load(Ordering::Relaxed), QUARANTINE_BAD.load(Ordering::Relaxed));
    if checked != 0 {
        pr_info!("quarantine: {} pages checked, {} changed while free\n", checked, bad);
    }
}

/// Check a quarantined page's sentinel, report any change, free the page.
fn check_quarantined(page: PageRef) {
    QUARANTINE_CHECKED.fetch_add(1, Ordering::Relaxed);
    page.with_bytes(|p| {
        // SAFETY: `p` maps PAGE_SIZE bytes, aligned to 8.
        let words = unsafe { core::slice::from_raw_parts(p as *const u64, PAGE_SIZE / 8) };
        let changed = words.iter().enumerate().filter(|&(i, &w)| w != sentinel(i)).count();
        if changed == 0 {
            return;
        }
        let first = words.iter().enumerate().position(|(i, &w)| w != sentinel(i)).unwrap_or(0);
        let nth = QUARANTINE_BAD.fetch_add(1, Ordering::Relaxed);
        pr_err!(
            "BUG: vms: quarantined page {:p} changed while free: {} of {} words, the first at offset {:#x}\n",
            page.as_ptr(),
            changed,
            words.len(),
            first * 8
        );
        if nth == 0 {
            // The whole page's changed rows, once per boot.
            for (row, ws) in words.chunks(4).enumerate() {
                if ws.iter().enumerate().any(|(k, &w)| w != sentinel(row * 4 + k)) {
                    pr_err!(
                        "vms:   {:#05x}: {:016x} {:016x} {:016x} {:016x}\n",
                        row * 32,
                        ws[0],
                        ws[1],
                        ws[2],
                        ws[3]
                    );
                }
            }
        }
    });
}

/// A point in the VMM's fault path where a test can hold a race window
/// open (docs/ARCHITECTURE.md, "Debug instruments").
pub(crate) enum Delay {
    /// The fault lock is released and the page is about to be read from
    /// the image; no clone lock is held (`vmm_read_delay_ms`).
    Read,
    /// The page to map is locked and the clone's `state` released; mm
    /// has not mapped it yet (`vmm_map_delay_ms`).
    Map,
    /// A reset dropped the clone's pages and released `state`, and is
    /// about to punch its swap file; no eviction may start
    /// (`reset_punch_delay_ms`; not counted in `vmm_delays`).
    Punch,
    /// An eviction holds `evicting` and has its pages in writeback, with
    /// no clone lock, and is about to write them to the swap file
    /// (`swap_write_delay_ms`; counted in `vmm_delays`).
    SwapWrite,
}

/// Whether this read of an image page is to fail (`image_read_fail`,
/// counted down).
pub(crate) fn debug_fail_read() -> bool {
    IMAGE_READ_FAIL.load(Ordering::Relaxed) != 0
        && IMAGE_READ_FAIL
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1))
            .is_ok()
}

/// Sleep at `at` for as long as its knob says (0, the default: not at
/// all). Only where the caller may sleep; a signal ends the sleep early.
pub(crate) fn debug_delay(at: Delay) {
    let knob = match at {
        Delay::Read => &VMM_READ_DELAY_MS,
        Delay::Map => &VMM_MAP_DELAY_MS,
        Delay::Punch => &RESET_PUNCH_DELAY_MS,
        Delay::SwapWrite => &SWAP_WRITE_DELAY_MS,
    };
    let ms = knob.load(Ordering::Relaxed);
    if ms != 0 {
        if !matches!(at, Delay::Punch) {
            VMM_DELAYS.fetch_add(1, Ordering::Relaxed);
        }
        // SAFETY: only sleeps; our callers are fault handlers, a reset and
        // evictions (a fault's, the limit ioctl's, the worker's), in
        // process context that may sleep (they take mutexes and page
        // locks, and evictions write files).
        unsafe { bindings::msleep_interruptible(ms) };
    }
}

/// The module's debugfs directory, `/sys/kernel/debug/vms`, with the
/// files of [`DEBUG_FILES`]; removed on drop.
///
/// # Invariants
///
/// `0` is null (no directory) or a debugfs directory this value created,
/// whose files point at `'static` atomics; it stays until drop.
pub(crate) struct DebugFs(*mut bindings::dentry);

// SAFETY: the dentry is only passed to `debugfs_remove`, once, in drop,
// which may run on any thread.
unsafe impl Send for DebugFs {}
// SAFETY: `&DebugFs` gives no access to the dentry.
unsafe impl Sync for DebugFs {}

impl DebugFs {
    /// Create `/sys/kernel/debug/vms`. Never fails: without it (no
    /// debugfs, or an error) the knobs stay 0 and nothing is delayed; a
    /// test that needs a knob skips when its file is missing.
    pub(crate) fn create() -> Self {
        // SAFETY: the name is a static C string; a NULL parent is the
        // debugfs root. An error comes back as an ERR_PTR (or NULL).
        let dir = unsafe { debugfs_create_dir(c_str!("vms").as_char_ptr(), null_mut()) };
        if dir.is_null() || from_err_ptr(dir).is_err() {
            pr_info!("no /sys/kernel/debug/vms: the debug knobs are unavailable\n");
            return DebugFs(null_mut());
        }
        for (name, mode, value) in DEBUG_FILES.iter() {
            // SAFETY: `dir` is our live directory; the name is static;
            // `value` is a `'static` atomic, whose `u32` debugfs reads and
            // writes with aligned plain loads and stores, as for the
            // kernel's own debugfs u32s (we use atomic accesses); the file
            // goes with `dir`, in drop, before the module's statics do.
            unsafe { debugfs_create_u32(name.as_char_ptr(), *mode, dir, value.as_ptr()) };
        }
        // INVARIANT: created above; its files point at statics.
        DebugFs(dir)
    }
}

impl Drop for DebugFs {
    fn drop(&mut self) {
        // SAFETY: null or our directory (invariant), removed once; this
        // waits for reads and writes of its files in flight, so none
        // touches the knobs after the module is gone.
        unsafe { debugfs_remove(self.0) };
    }
}
