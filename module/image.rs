// SPDX-License-Identifier: GPL-2.0

//! Images: immutable guest memory, streamed from a file into a cache.
//!
//! An image's pages come from its [`Backing`]: a file, nothing (an empty
//! image: all zero), or a parent image (a live image, made by
//! [`VmClone::snapshot`](crate::clone::VmClone::snapshot), which starts
//! with the clone's private pages in its cache and reads every other page
//! through its parent).
//!
//! Page states (per image page, in `cache`):
//!
//! - absent: never read. The first clone that needs it reads it from the
//!   backing ("streams" it from the file, or looks it up in the parent and
//!   keeps a reference) with `cache` released, then stores it unless a
//!   racing lookup stored it first (then that copy is used);
//! - `Zero`: read and found all zero: served by the module's one zero page,
//!   so it costs no memory;
//! - `Page(page)`: read and kept; every clone maps this one page for
//!   reading;
//! - `File { page, vmm }`: the file's own page-cache page, referenced
//!   instead of copied (when the file had it in its page cache, up to
//!   date): every clone's stage 2 maps it for reading. It is never mapped
//!   into a VMM's mapping (see [`FileRef::cached_page`]): the first VMM
//!   that needs it gets `vmm`, one copy made then and shared by every
//!   clone's VMM mapping. Both hold the same bytes and neither is ever
//!   written, so a guest and its VMM still read the same memory; a write
//!   from either side replaces both with the clone's private copy. A live
//!   image's `File` entries are its parent's, and so is their `vmm`: one
//!   copy per file page across all levels (see `Image::vmm_copy`).
//!
//! A page leaves the cache only while no clone and no live image uses the
//! image, and only if the image has a file to read it from again: memory
//! reclaim drops such pages ([`Image::drop_cached`], under the registry
//! lock, which keeps clones and live images from coming meanwhile). While
//! anything uses the image its entries never change: the image is
//! immutable, and clones map its pages without references of their own.
//!
//! Locking: `cache` is a leaf lock. File reads happen without it (a
//! filesystem's read may take the inode lock, and a task holding that may
//! fault on a clone mapping: lockdep caught the cycle with an image file on
//! 9p). A live image asks its parent with its own `cache` released, so two
//! never nest.

use crate::ffi::{ImageFile, PageRef, PAGE_SIZE};
use crate::table::PageTable;
use crate::abi;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering::{Acquire, Relaxed}};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

pub(crate) enum Cached {
    Zero,
    Page(PageRef),
    File { page: PageRef, vmm: Option<PageRef> },
}

/// Where an image's pages come from.
pub(crate) enum Backing {
    /// Every page is zero.
    Empty,
    /// Page `N` is at `offset + N * PAGE_SIZE` in `file`, which nobody
    /// can write while the image lives.
    File { file: ImageFile, offset: u64 },
    /// Pages not in the cache are the parent's.
    Parent(Arc<Image>),
}

/// Where a page handed out by [`Image::page`] came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The shared zero page.
    Zero,
    /// A cached image page vms owns.
    Cache,
    /// The image file's page-cache page: for stage 2 only.
    File,
}

/// The most entries one pass of [`Image::drop_cached`] looks at (16
/// leaves; a call makes two passes at most): the registry lock is held
/// meanwhile, and a mostly-zero image has few entries to drop among many.
/// A call that stops there drops less than asked; the rest of the ask
/// goes to clones, and the next ask goes on where this one stopped.
const DROP_LOOK: usize = 8192;

/// An image's counters (see `abi::VmsImageStats`).
#[derive(Default)]
struct Counts {
    cached_pages: AtomicU64,
    file_pages: AtomicU64,
    vmm_copies: AtomicU64,
    zero_pages: AtomicU64,
    streamed: AtomicU64,
    read_errors: AtomicU64,
    /// Pages reclaim dropped from the cache ([`Image::drop_cached`]).
    dropped: AtomicU64,
}

#[pin_data]
pub(crate) struct Image {
    name: [u8; abi::VMS_NAME_LEN],
    backing: Backing,
    generation: u64,
    npages: usize,
    zero: PageRef,
    #[pin]
    cache: Mutex<PageTable<Cached>>,
    /// Clones that use the image (changed under the registry lock).
    pub(crate) clones: AtomicU64,
    /// Live images layered on this one (changed under the registry lock).
    pub(crate) children: AtomicU64,
    n: Counts,
    /// Where the next [`Image::drop_cached`] goes on from.
    drop_from: AtomicUsize,
    /// The error of the last attempt to bring each page into the cache,
    /// for pages whose last attempt failed and that are not cached: a
    /// retried VMM fault returns it instead of reading again (see
    /// [`failure`](Self::failure)). Changed only with `cache` held (taken
    /// first), so a page is never both cached and marked here.
    #[pin]
    failed: Mutex<PageTable<Error>>,
}

impl Image {
    /// An image of `size` bytes served from `backing` (not a parent: see
    /// [`Image::layer`]).
    pub(crate) fn new(
        name: [u8; abi::VMS_NAME_LEN],
        backing: Backing,
        size: u64,
        zero: PageRef,
    ) -> Result<impl PinInit<Self, Error>> {
        let npages = (size / PAGE_SIZE as u64) as usize;
        Self::build(name, backing, 0, npages, PageTable::new(npages)?, 0, zero)
    }

    /// A live image on `parent` whose cache starts as `cache`, holding
    /// `pages` pages. `cache` must have `parent`'s length.
    pub(crate) fn layer(
        name: [u8; abi::VMS_NAME_LEN],
        parent: Arc<Image>,
        cache: PageTable<Cached>,
        pages: u64,
        zero: PageRef,
    ) -> Result<impl PinInit<Self, Error>> {
        let (npages, generation) = (parent.npages, parent.generation + 1);
        Self::build(name, Backing::Parent(parent), generation, npages, cache, pages, zero)
    }

    fn build(
        name: [u8; abi::VMS_NAME_LEN],
        backing: Backing,
        generation: u64,
        npages: usize,
        table: PageTable<Cached>,
        pages: u64,
        zero: PageRef,
    ) -> Result<impl PinInit<Self, Error>> {
        let failed = PageTable::new(npages)?;
        Ok(try_pin_init!(Image {
            name,
            backing,
            generation,
            npages,
            zero,
            cache <- new_mutex!(table, "vms_image_cache"),
            clones: AtomicU64::new(0),
            children: AtomicU64::new(0),
            n: Counts { cached_pages: AtomicU64::new(pages), ..Counts::default() },
            drop_from: AtomicUsize::new(0),
            failed <- new_mutex!(failed, "vms_image_failed"),
        }? Error))
    }

    pub(crate) fn name(&self) -> &[u8; abi::VMS_NAME_LEN] {
        &self.name
    }

    pub(crate) fn npages(&self) -> usize {
        self.npages
    }

    pub(crate) fn parent(&self) -> Option<&Arc<Image>> {
        match &self.backing {
            Backing::Parent(p) => Some(p),
            _ => None,
        }
    }

    /// The cache, locked: [`VmClone::snapshot`](crate::clone::VmClone)
    /// fills a new live image's cache through it before anyone can use it.
    pub(crate) fn lock_cache(&self) -> kernel::sync::lock::Guard<'_, PageTable<Cached>, kernel::sync::lock::mutex::MutexBackend> {
        self.cache.lock()
    }

    /// The page `idx` if it is there without reading anything: cached, or
    /// a page of an empty image. `None`: [`page`](Self::page) must bring it
    /// in first (it reads, so it is called without clone locks held).
    /// `for_vmm`: the page goes to a VMM's mapping, which must not map the
    /// file's page-cache page: a `File` entry then gives the VMM copy of
    /// it (see `vmm_copy`), made now if no VMM needed it
    /// before (which can fail with ENOMEM).
    pub(crate) fn cached(&self, idx: usize, for_vmm: bool) -> Result<Option<(PageRef, Source)>> {
        let cache = self.cache.lock();
        if for_vmm && matches!(cache.get(idx), Some(Cached::File { .. })) {
            drop(cache);
            return Ok(Some((self.vmm_copy(idx)?, Source::Cache)));
        }
        Ok(match Self::lookup(&cache, idx, &self.zero) {
            Some((page, source, _)) => Some((page, source)),
            None if idx < self.npages && matches!(self.backing, Backing::Empty) => {
                Some((self.zero.clone(), Source::Zero))
            }
            None => None,
        })
    }

    /// The VMM copy of page `idx`, which the cache holds as a `File` entry.
    ///
    /// There is one such copy per file page, however many images are
    /// layered on the one that read it: that image makes it, and a live
    /// image's `File` entry (always its parent's, see
    /// [`page_from`](Self::page_from)) takes its parent's, asked with our
    /// `cache` released. A copy-on-write retires the copy under its page
    /// lock, which waits for a VMM fault that returned it and has not
    /// mapped it yet (see `clone.rs`). Were a live image to make a copy of
    /// its own, a fault that resolved the parent's copy before a snapshot
    /// would not be waited for, and would map the parent's copy after the
    /// copy-on-write: a stale view of a page the guest has written.
    fn vmm_copy(&self, idx: usize) -> Result<PageRef> {
        let parent = {
            let mut cache = self.cache.lock();
            // Entries do not change while a clone or a live image uses
            // the image (the caller's does): only a `File` entry gets
            // here.
            let Some(Cached::File { page, vmm }) = cache.get_mut(idx) else {
                return Err(EINVAL);
            };
            if let Some(copy) = vmm {
                return Ok(copy.clone());
            }
            match self.parent() {
                Some(parent) => parent,
                None => {
                    let copy = PageRef::alloc()?;
                    copy.copy_from(page);
                    *vmm = Some(copy.clone());
                    self.n.vmm_copies.fetch_add(1, Relaxed);
                    return Ok(copy);
                }
            }
        };
        // The parent holds a `File` entry for the page too (ours came from
        // it, and a parent with a live image on it keeps its entries), so
        // it gives its copy.
        let Some((copy, _)) = parent.cached(idx, true)? else {
            return Err(EINVAL);
        };
        let mut cache = self.cache.lock();
        if let Some(Cached::File { vmm, .. }) = cache.get_mut(idx) {
            // A racing lookup may have stored it first: the same page.
            if vmm.is_none() {
                *vmm = Some(copy.clone());
            }
        }
        Ok(copy)
    }

    /// The page `idx` (for stage 2), streamed from the file if it is not
    /// cached. The `bool` says whether this call read it from the file.
    pub(crate) fn page(&self, idx: usize) -> Result<(PageRef, Source, bool)> {
        let cache = self.cache.lock();
        if let Some(found) = Self::lookup(&cache, idx, &self.zero) {
            return Ok(found);
        }
        if idx >= self.npages {
            return Err(EINVAL);
        }
        let (file, offset) = match &self.backing {
            Backing::Empty => return Ok((self.zero.clone(), Source::Zero, false)),
            Backing::Parent(parent) => {
                drop(cache);
                return self.page_from(parent, idx);
            }
            Backing::File { file, offset } => (file, *offset),
        };
        // Read without `cache` held: a filesystem's read may take the
        // inode lock, under which another task can fault on a clone
        // mapping (inode lock -> mmap_lock -> clone state -> cache).
        drop(cache);
        let pos = offset + (idx * PAGE_SIZE) as u64;
        // The file's page-cache page: found, or brought in (with its
        // readahead window) by reading through the page cache. A file
        // without page cache (a file system that keeps none, O_DIRECT)
        // leaves us to read a copy, which also reports a read error.
        let found = file
            .cached_page(pos)
            .or_else(|| file.read_through(pos).ok().and_then(|()| file.cached_page(pos)));
        let (page, source) = match found {
            Some(page) => (page, Source::File),
            None => {
                let page = PageRef::alloc()?;
                if let Err(e) = file.read_page(pos, &page) {
                    return Err(self.read_error(idx, pos, e));
                }
                (page, Source::Cache)
            }
        };
        let zero = page.is_zero();
        let mut cache = self.cache.lock();
        // A racing lookup may have read and stored the page meanwhile:
        // keep the first, so every clone maps the same page.
        if let Some(found) = Self::lookup(&cache, idx, &self.zero) {
            return Ok(found);
        }
        self.n.streamed.fetch_add(1, Relaxed);
        self.forget_failure(&cache, idx);
        if zero {
            cache.set(idx, Cached::Zero)?;
            self.n.zero_pages.fetch_add(1, Relaxed);
            return Ok((self.zero.clone(), Source::Zero, true));
        }
        if source == Source::File {
            cache.set(idx, Cached::File { page: page.clone(), vmm: None })?;
            self.n.file_pages.fetch_add(1, Relaxed);
        } else {
            cache.set(idx, Cached::Page(page.clone()))?;
        }
        self.n.cached_pages.fetch_add(1, Relaxed);
        Ok((page, source, true))
    }

    /// A cached entry of `cache` as [`page`](Self::page) returns it.
    fn lookup(
        cache: &PageTable<Cached>,
        idx: usize,
        zero: &PageRef,
    ) -> Option<(PageRef, Source, bool)> {
        match cache.get(idx)? {
            Cached::Zero => Some((zero.clone(), Source::Zero, false)),
            Cached::Page(p) => Some((p.clone(), Source::Cache, false)),
            Cached::File { page, .. } => Some((page.clone(), Source::File, false)),
        }
    }

    /// Count and log a failed read of page `idx`; the error for the fault.
    fn read_error(&self, idx: usize, pos: u64, e: Error) -> Error {
        self.n.read_errors.fetch_add(1, Relaxed);
        pr_warn!(
            "image {}: reading page {} at file offset {}: error {}\n",
            ffi_name(&self.name),
            idx,
            pos,
            e.to_errno()
        );
        EIO
    }

    /// Remember that bringing page `idx` into the cache failed with `e`,
    /// unless it is cached (by a racing attempt that succeeded). Best
    /// effort: without memory for the mark, a retried VMM fault reads
    /// again (with the fault lock released, as the first attempt did).
    pub(crate) fn mark_failure(&self, idx: usize, e: Error) {
        let cache = self.cache.lock();
        if cache.get(idx).is_none() {
            let _ = self.failed.lock().set(idx, e);
        }
    }

    /// A page stored in `cache` (held) no longer counts as failed.
    fn forget_failure(&self, _cache: &PageTable<Cached>, idx: usize) {
        self.failed.lock().take(idx);
    }

    /// The error of the last failed attempt to bring page `idx` into this
    /// image's cache, or its parents' (a live image's pages come from its
    /// parent), if no level from here down caches it since.
    pub(crate) fn failure(&self, idx: usize) -> Option<Error> {
        let mut level = self;
        loop {
            {
                let cache = level.cache.lock();
                if cache.get(idx).is_some() {
                    return None;
                }
                if let Some(e) = level.failed.lock().get(idx) {
                    return Some(*e);
                }
            }
            level = level.parent()?;
        }
    }

    /// Page `idx` of a live image, not in its cache: the parent's. Keeps
    /// a reference so the next lookup stops here. The parent is asked
    /// without our `cache` held (the locks of a chain would nest without
    /// bound); a racing lookup that stored the page first stored the same
    /// page, since the parent is immutable too.
    fn page_from(&self, parent: &Image, idx: usize) -> Result<(PageRef, Source, bool)> {
        let (page, source, streamed) = parent.page(idx)?;
        let mut cache = self.cache.lock();
        if cache.get(idx).is_none() {
            self.forget_failure(&cache, idx);
            let entry = match source {
                Source::Zero => Cached::Zero,
                Source::Cache => Cached::Page(page.clone()),
                Source::File => Cached::File { page: page.clone(), vmm: None },
            };
            cache.set(idx, entry)?;
        }
        Ok((page, source, streamed))
    }

    /// Whether no clone and no live image uses the image. Read under the
    /// registry lock, under which both counts go up; they go down under
    /// it too, except a clone's `clones`, which its drop gives back once
    /// KVM and every VMM mapping stopped mapping its pages (`Acquire`
    /// pairs with that `Release`).
    fn idle(&self) -> bool {
        self.clones.load(Acquire) == 0 && self.children.load(Acquire) == 0
    }

    /// Pages [`drop_cached`](Self::drop_cached) would drop now: every
    /// cached page of an idle image made from a file. (Zero entries take
    /// no page, only their share of the table, which stays; a live
    /// image's own pages are in no file, and its other entries are its
    /// parent's pages, which the parent keeps.)
    pub(crate) fn droppable(&self) -> usize {
        match self.backing {
            Backing::File { .. } if self.idle() => self.n.cached_pages.load(Relaxed) as usize,
            _ => 0,
        }
    }

    /// Memory reclaim: drop up to `max` cached pages of an idle image made
    /// from a file (nothing if it is not), going on from where the last
    /// call stopped; a later clone streams them again. Returns how many
    /// entries went, and how many pages that freed: ours that nobody
    /// else held (a live image being deleted may still hold some; a `File`
    /// entry's page is the page cache's, which reclaim then takes as any
    /// other, and its VMM copy is ours).
    ///
    /// Called with the registry lock held, under which the image is idle
    /// (`droppable`) and stays so: no clone or live image comes, and none
    /// maps these pages (a clone's stage 2 and VMM mappings went before
    /// its count did), so the pages go with their last mapping gone. A
    /// read for a clone that has gone (a VMM fault's, with its lock
    /// released) may still store a page meanwhile, under `cache`; nothing
    /// maps it. May sleep (between leaves).
    pub(crate) fn drop_cached(&self, max: usize) -> (usize, usize) {
        if self.droppable() == 0 {
            return (0, 0);
        }
        let n = core::cell::Cell::new(0);
        let (mut freed, mut files, mut copies) = (0, 0, 0);
        let mut drop_entry = |_, e: Cached| {
            n.set(n.get() + 1);
            let ours = match &e {
                Cached::File { vmm, .. } => {
                    files += 1;
                    copies += u64::from(vmm.is_some());
                    vmm.as_ref()
                }
                Cached::Page(p) => Some(p),
                Cached::Zero => None,
            };
            freed += usize::from(ours.is_some_and(|p| p.ref_count() == 1));
        };
        let keep = |e: &Cached| !matches!(e, Cached::Zero);
        let mut cache = self.cache.lock();
        let start = self.drop_from.load(Relaxed).min(self.npages);
        // From the last stop to the end, then from the start to it.
        let mut next = cache.take_where(start, self.npages, max, DROP_LOOK, keep, &mut drop_entry);
        if next == self.npages {
            next = cache.take_where(0, start, max - n.get(), DROP_LOOK, keep, &mut drop_entry);
        }
        self.drop_from.store(next, Relaxed);
        drop(cache);
        let n = n.get();
        self.n.cached_pages.fetch_sub(n as u64, Relaxed);
        self.n.file_pages.fetch_sub(files, Relaxed);
        self.n.vmm_copies.fetch_sub(copies, Relaxed);
        self.n.dropped.fetch_add(n as u64, Relaxed);
        (n, freed)
    }

    pub(crate) fn stats(&self) -> abi::VmsImageStats {
        abi::VmsImageStats {
            size: (self.npages * PAGE_SIZE) as u64,
            clones: self.clones.load(Relaxed),
            cached_pages: self.n.cached_pages.load(Relaxed),
            zero_pages: self.n.zero_pages.load(Relaxed),
            streamed: self.n.streamed.load(Relaxed),
            read_errors: self.n.read_errors.load(Relaxed),
            generation: self.generation,
            children: self.children.load(Relaxed),
            parent: self.parent().map_or([0; abi::VMS_NAME_LEN], |p| p.name),
            file_pages: self.n.file_pages.load(Relaxed),
            vmm_copies: self.n.vmm_copies.load(Relaxed),
            dropped: self.n.dropped.load(Relaxed),
            ..abi::VmsImageStats::zeroed()
        }
    }
}

/// The printable part of a validated name.
pub(crate) fn ffi_name(name: &[u8; abi::VMS_NAME_LEN]) -> &str {
    let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    core::str::from_utf8(&name[..n]).unwrap_or("?")
}
