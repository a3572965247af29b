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
//! - `Page { page, .. }`: read and kept; every clone maps this one page for
//!   reading;
//! - `File { page, vmm, .. }`: the file's own page-cache page, referenced
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
//! A page leaves the cache only under memory reclaim, only if the image
//! has a file to read it from again and no live image on it (whose
//! entries would share the page), never once a VMM was given it, and only
//! if no clone resolved it since reclaim last came by
//! ([`Image::reclaim_pass`], with the registry lock held, which keeps
//! clones and live images from coming; the caller then zaps it from every
//! clone's stage 2 before the page goes: see
//! [`crate::clone::reclaim_image`]). Otherwise the entries' pages never
//! change (only their reclaim flags do): the image is immutable, and
//! clones map its pages without references of their own.
//!
//! Locking: under `cache` only `failed` is taken, which is a leaf. File
//! reads happen without it (a filesystem's read may take the inode lock,
//! and a task holding that may fault on a clone mapping: lockdep caught
//! the cycle with an image file on 9p). A live image asks its parent with
//! its own `cache` released, so two never nest.

use crate::ffi::{self, ImageFile, PageRef, PAGE_SIZE};
use crate::table::PageTable;
use crate::abi;
use core::sync::atomic::{AtomicI64, AtomicU64, AtomicUsize, Ordering::{Acquire, Relaxed}};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};

/// An entry of an image's cache. `flags` ([`REF`], [`VMM`]) are for
/// memory reclaim ([`Image::reclaim_pass`]); they live in the entry, so a
/// fault that finds a page marks it under the one lock it takes, and
/// marking cannot fail. (They fit in the tag's word: the entry stays 24
/// bytes.)
pub(crate) enum Cached {
    Zero,
    Page { page: PageRef, flags: u8 },
    File { page: PageRef, vmm: Option<PageRef>, flags: u8 },
}

impl Cached {
    /// A page of ours, young (see [`REF`]): the fault that stores it
    /// resolves it next.
    pub(crate) fn page(page: PageRef) -> Self {
        Cached::Page { page, flags: REF }
    }

    /// A page of the image file's page cache, young.
    fn file(page: PageRef) -> Self {
        Cached::File { page, vmm: None, flags: REF }
    }

    /// The entry's reclaim flags (none for a zero entry, which reclaim
    /// leaves alone).
    fn flags_mut(&mut self) -> Option<&mut u8> {
        match self {
            Cached::Zero => None,
            Cached::Page { flags, .. } | Cached::File { flags, .. } => Some(flags),
        }
    }

    /// The page as [`Image::page`] returns it (`zero` for a zero entry).
    fn found(&self, zero: &PageRef) -> (PageRef, Source, bool) {
        match self {
            Cached::Zero => (zero.clone(), Source::Zero, false),
            Cached::Page { page, .. } => (page.clone(), Source::Cache, false),
            Cached::File { page, .. } => (page.clone(), Source::File, false),
        }
    }

    /// Whether letting go of the entry frees a page: ours, that nobody
    /// else holds (a `File` entry's page is the page cache's, which
    /// reclaim then takes as any other; its VMM copy is ours).
    pub(crate) fn frees(&self) -> bool {
        let ours = match self {
            Cached::File { vmm, .. } => vmm.as_ref(),
            Cached::Page { page, .. } => Some(page),
            Cached::Zero => None,
        };
        ours.is_some_and(|p| p.ref_count() == 1)
    }
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


/// An image's counters (see `abi::VmsImageStats`).
#[derive(Default)]
struct Counts {
    cached_pages: AtomicU64,
    file_pages: AtomicU64,
    vmm_copies: AtomicU64,
    zero_pages: AtomicU64,
    streamed: AtomicU64,
    read_errors: AtomicU64,
    /// Pages reclaim dropped from the cache ([`Image::reclaim_pass`]).
    dropped: AtomicU64,
    /// Pages reclaim unmapped from clones so that it could drop them.
    unmapped: AtomicU64,
}

/// In a [`Cached`] entry's flags: a clone resolved the page since reclaim
/// last came by (or it was stored since).
const REF: u8 = 1;
/// In a [`Cached`] entry's flags: the page (or, for a `File` entry, its
/// VMM copy) went to a VMM's mapping, which holds it without our knowing
/// when it lets go: the entry stays.
const VMM: u8 = 2;

/// Milliseconds between two passes of reclaim over an image that clones
/// use: a page goes only once it went unreferenced that long at least, and
/// clones pay for a pass's zaps (a fault for each page they use again) at
/// most that often.
const PASS_MS: i64 = 250;

/// What one [`Image::reclaim_pass`] found.
pub(crate) struct Pass {
    /// Entries referenced since the last pass: they stay, and lose the
    /// reference; the caller zaps them from the clones' stage 2, so that
    /// the next access faults and references them again.
    pub(crate) zap: KVec<usize>,
    /// Entries that left the cache (not referenced since the last pass):
    /// the caller zaps them from the clones' stage 2, then lets them go.
    pub(crate) gone: KVec<(usize, Cached)>,
}

#[pin_data(PinnedDrop)]
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
    /// Where the next [`Image::reclaim_pass`] goes on from.
    drop_from: AtomicUsize,
    /// The error of the last attempt to bring each page into the cache,
    /// for pages whose last attempt failed and that are not cached: a
    /// retried VMM fault returns it instead of reading again (see
    /// [`failure`](Self::failure)). Changed only with `cache` held (taken
    /// first), so a page is never both cached and marked here.
    #[pin]
    failed: Mutex<PageTable<Error>>,
    /// When ([`ffi::now_ms`]) reclaim last passed over the cache.
    last_pass: AtomicI64,
    /// Pages reclaim took out of the cache whose zaps did not reach every
    /// clone (see [`retire`](Self::retire)).
    #[pin]
    retired: Mutex<KVec<(usize, Cached)>>,
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
            last_pass: AtomicI64::new(0),
            retired <- new_mutex!(KVec::new(), "vms_image_retired"),
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
    /// `maps_vmm`: the page goes to a VMM's mapping now (not a copy-on-write
    /// source), which keeps it in the cache for good ([`VMM`]).
    pub(crate) fn cached(&self, idx: usize, for_vmm: bool, maps_vmm: bool) -> Result<Option<(PageRef, Source)>> {
        let mut cache = self.cache.lock();
        let Some(entry) = cache.get_mut(idx) else {
            let empty = idx < self.npages && matches!(self.backing, Backing::Empty);
            return Ok(empty.then(|| (self.zero.clone(), Source::Zero)));
        };
        if let Some(flags) = entry.flags_mut() {
            // Under `cache`, before a VMM can get the page: reclaim, which
            // looks at the flag under `cache`, sees it.
            *flags |= if maps_vmm { REF | VMM } else { REF };
        }
        if for_vmm && matches!(entry, Cached::File { .. }) {
            drop(cache);
            return Ok(self.vmm_copy(idx)?.map(|copy| (copy, Source::Cache)));
        }
        let (page, source, _) = entry.found(&self.zero);
        Ok(Some((page, source)))
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
    ///
    /// `None` if the entry went meanwhile (`cached` found it and set its
    /// `REF`, which keeps it for a pass of reclaim at least; a copy-on-write
    /// source of a clone whose marks are lost has no `VMM` to keep it for
    /// good): the caller reads it again.
    fn vmm_copy(&self, idx: usize) -> Result<Option<PageRef>> {
        let parent = {
            let mut cache = self.cache.lock();
            let Some(Cached::File { page, vmm, .. }) = cache.get_mut(idx) else {
                return Ok(None);
            };
            if let Some(copy) = vmm {
                return Ok(Some(copy.clone()));
            }
            match self.parent() {
                Some(parent) => parent,
                None => {
                    let copy = PageRef::alloc()?;
                    copy.copy_from(page);
                    *vmm = Some(copy.clone());
                    self.n.vmm_copies.fetch_add(1, Relaxed);
                    return Ok(Some(copy));
                }
            }
        };
        // The parent holds a `File` entry for the page too (ours came from
        // it, and a parent with a live image on it keeps its entries), so
        // it gives its copy.
        let Some((copy, _)) = parent.cached(idx, true, true)? else {
            return Err(EINVAL);
        };
        let mut cache = self.cache.lock();
        if let Some(Cached::File { vmm, .. }) = cache.get_mut(idx) {
            // A racing lookup may have stored it first: the same page.
            if vmm.is_none() {
                *vmm = Some(copy.clone());
            }
        }
        Ok(Some(copy))
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
            cache.set(idx, Cached::file(page.clone()))?;
            self.n.file_pages.fetch_add(1, Relaxed);
        } else {
            cache.set(idx, Cached::page(page.clone()))?;
        }
        self.n.cached_pages.fetch_add(1, Relaxed);
        ffi::image_pages_add(1);
        Ok((page, source, true))
    }

    /// A cached entry of `cache` as [`page`](Self::page) returns it.
    fn lookup(
        cache: &PageTable<Cached>,
        idx: usize,
        zero: &PageRef,
    ) -> Option<(PageRef, Source, bool)> {
        Some(cache.get(idx)?.found(zero))
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
                Source::Cache => Cached::page(page.clone()),
                Source::File => Cached::file(page.clone()),
            };
            cache.set(idx, entry)?;
        }
        Ok((page, source, streamed))
    }

    /// Whether memory reclaim may drop pages of the cache
    /// ([`reclaim_pass`](Self::reclaim_pass)): the image is made from a file
    /// (a live image's own pages are in no file; its other entries are its
    /// parent's pages) and no live image is layered on it (whose entries
    /// share its pages). Read under the registry lock, under which
    /// `children` changes.
    pub(crate) fn may_drop(&self) -> bool {
        matches!(self.backing, Backing::File { .. }) && self.children.load(Acquire) == 0
    }

    /// Memory reclaim, the image's half of a pass (see
    /// [`crate::clone::reclaim_image`]): look at up to `look` entries of
    /// the cache (in each of at most two runs: from where the last pass
    /// stopped to the end, then from the start), and take out of the cache
    /// up to `max` pages no clone resolved since the last pass (nor since
    /// they were stored); pages resolved since lose their [`REF`] and are
    /// listed to be zapped from the clones' stage 2, so that the next
    /// access faults and references them again. Zero entries (no page)
    /// and entries a VMM was given ([`VMM`]) stay. `idle`: no clone uses
    /// the image (none maps its pages: a clone's VMM mappings and stage 2
    /// went before its count did), so every page goes, flags or not. A
    /// later fault streams a page that went again. An image that clones
    /// use gets a pass every [`PASS_MS`] at most (an empty one otherwise).
    ///
    /// Only where [`may_drop`](Self::may_drop) says so, with the registry
    /// lock held (no clone and no live image comes). A page taken out can
    /// no longer be found (by `cached` or `page`), but clones may still
    /// map it in stage 2 (a fault resolved it before the last pass, or
    /// resolved it before this one and is installing it now): the caller
    /// holds the pages in [`Pass::gone`] until it has zapped them from
    /// every clone, or [`retire`](Self::retire)s them. `Err` only without
    /// memory for the lists, or to retire what goes (allocated without
    /// waiting: the worker that calls this is memory reclaim's). May
    /// sleep.
    pub(crate) fn reclaim_pass(&self, max: usize, look: usize, idle: bool) -> Result<Pass> {
        if !self.pass_due(idle) {
            return Ok(Pass { zap: KVec::new(), gone: KVec::new() });
        }
        let gfp = GFP_NOWAIT | __GFP_NOWARN;
        let mut pass = Pass { zap: KVec::with_capacity(look, gfp)?, gone: KVec::with_capacity(max, gfp)? };
        // Room to retire what goes: `retire` cannot fail.
        self.retired.lock().reserve(max, gfp)?;
        let mut cache = self.cache.lock();
        self.last_pass.store(ffi::now_ms(), Relaxed);
        let zap = &mut pass.zap;
        let mut pick = |idx: usize, e: &mut Cached| {
            let Some(flags) = e.flags_mut() else {
                // A zero entry: no page to give.
                return false;
            };
            if idle {
                // No VMM maps a page of the image any more.
                return true;
            }
            if *flags & VMM != 0 {
                return false;
            }
            if *flags & REF != 0 {
                // Within its capacity: no allocation.
                if zap.len() < zap.capacity() && zap.push(idx, GFP_KERNEL).is_ok() {
                    *flags &= !REF;
                }
                return false;
            }
            true
        };
        let gone = &mut pass.gone;
        let taken = core::cell::Cell::new(0);
        let mut take = |idx, e| {
            taken.set(taken.get() + 1);
            // Within its capacity (`max`, which `take_where` keeps to): no
            // allocation. Were it full, the page would be leaked, never
            // freed while a clone may map it.
            if gone.len() < gone.capacity() {
                let _ = gone.push((idx, e), GFP_KERNEL);
            } else {
                core::mem::forget(e);
            }
        };
        let start = self.drop_from.load(Relaxed).min(self.npages);
        // From the last stop to the end, then from the start to it.
        let mut next = cache.take_where(start, self.npages, max, look, &mut pick, &mut take);
        let n = taken.get();
        if next == self.npages && n < max {
            next = cache.take_where(0, start, max - n, look, &mut pick, &mut take);
        }
        self.drop_from.store(next, Relaxed);
        drop(cache);
        let (mut files, mut copies) = (0, 0);
        for (_, e) in pass.gone.iter() {
            if let Cached::File { vmm, .. } = e {
                files += 1;
                copies += u64::from(vmm.is_some());
            }
        }
        let n = pass.gone.len();
        self.n.cached_pages.fetch_sub(n as u64, Relaxed);
        self.n.file_pages.fetch_sub(files, Relaxed);
        self.n.vmm_copies.fetch_sub(copies, Relaxed);
        self.n.dropped.fetch_add(n as u64, Relaxed);
        // `IMAGE_PAGES` still counts them: they go with
        // [`forget_gone`](Self::forget_gone), or wait in `retired`.
        Ok(pass)
    }

    /// Whether a [`reclaim_pass`](Self::reclaim_pass) would look at the
    /// cache now: reclaim may drop from it, and no clone uses it (`idle`)
    /// or the last pass was [`PASS_MS`] ago at least. Called by the worker
    /// only, with the registry lock held.
    pub(crate) fn pass_due(&self, idle: bool) -> bool {
        self.may_drop() && (idle || ffi::now_ms() - self.last_pass.load(Relaxed) >= PASS_MS)
    }

    /// Reclaim unmapped `n` pages of the image from clones.
    pub(crate) fn count_unmapped(&self, n: usize) {
        self.n.unmapped.fetch_add(n as u64, Relaxed);
    }

    /// Keep pages a pass took out of the cache that clones may still map,
    /// until a later pass has zapped every clone
    /// ([`forget_gone`](Self::forget_gone)). They stay in the shrinker's
    /// count meanwhile, so that reclaim comes back for them.
    /// `gone` is the list of the last [`reclaim_pass`](Self::reclaim_pass),
    /// which made room for it.
    pub(crate) fn retire(&self, gone: KVec<(usize, Cached)>) {
        let mut retired = self.retired.lock();
        for g in gone {
            if retired.len() < retired.capacity() {
                // Within the room made: no allocation, cannot fail.
                let _ = retired.push(g, GFP_KERNEL);
            } else {
                // Never: leaked rather than freed while a clone may map it.
                core::mem::forget(g);
            }
        }
    }

    /// How many pages [`retire`](Self::retire) kept.
    pub(crate) fn retired(&self) -> usize {
        self.retired.lock().len()
    }

    /// Append the indices of the pages [`retire`](Self::retire) kept to
    /// `idxs`; `false` if they did not all fit in its capacity.
    pub(crate) fn retired_idxs(&self, idxs: &mut KVec<usize>) -> bool {
        let retired = self.retired.lock();
        for &(idx, _) in retired.iter() {
            if idxs.len() == idxs.capacity() {
                return false;
            }
            // Within the capacity: no allocation.
            let _ = idxs.push(idx, GFP_KERNEL);
        }
        true
    }

    /// Let go of the pages a pass took out (`gone`) and of the retired
    /// ones: the pass (of the worker, the only one to retire pages) zapped
    /// them all from every clone. How many of them that frees.
    pub(crate) fn forget_gone(&self, gone: KVec<(usize, Cached)>) -> usize {
        let old = core::mem::replace(&mut *self.retired.lock(), KVec::new());
        ffi::image_pages_sub(gone.len() + old.len());
        Iterator::chain(gone.iter(), old.iter()).filter(|g| g.1.frees()).count()
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
            unmapped: self.n.unmapped.load(Relaxed),
            ..abi::VmsImageStats::zeroed()
        }
    }
}

#[pinned_drop]
impl PinnedDrop for Image {
    fn drop(self: Pin<&mut Self>) {
        // What the shrinker counts goes with the image (its retired
        // pages too: no clone is left to map them).
        if matches!(self.backing, Backing::File { .. }) {
            let retired = self.retired.lock().len();
            ffi::image_pages_sub(self.n.cached_pages.load(Relaxed) as usize + retired);
        }
    }
}

/// The printable part of a validated name.
pub(crate) fn ffi_name(name: &[u8; abi::VMS_NAME_LEN]) -> &str {
    let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    core::str::from_utf8(&name[..n]).unwrap_or("?")
}
