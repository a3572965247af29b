// SPDX-License-Identifier: GPL-2.0

//! Images: immutable guest memory, streamed from a file into a cache.
//!
//! Page states (per image page, in `cache`):
//!
//! - absent: never read. The first clone that needs it reads it from the
//!   file ("streams" it), under `cache`'s lock;
//! - `Zero`: read and found all zero: served by the module's one zero page,
//!   so it costs no memory;
//! - `Cached(page)`: read and kept; every clone maps this one page for
//!   reading.
//!
//! A page never leaves the cache while the image lives: the image is
//! immutable, so there is nothing to invalidate.
//!
//! Locking: `cache` is a leaf lock except for the file read done under it
//! (a read of a regular file does not take any vms lock).

use crate::ffi::{FileRef, PageRef, PAGE_SIZE};
use crate::table::PageTable;
use crate::abi;
use core::sync::atomic::{AtomicU64, Ordering::Relaxed};
use kernel::new_mutex;
use kernel::prelude::*;
use kernel::sync::Mutex;

enum Cached {
    Zero,
    Page(PageRef),
}

/// Where a page handed out by [`Image::page`] came from.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Source {
    /// The shared zero page.
    Zero,
    /// A cached image page.
    Cache,
}

#[pin_data]
pub(crate) struct Image {
    name: [u8; abi::VMS_NAME_LEN],
    file: FileRef,
    file_offset: u64,
    npages: usize,
    zero: PageRef,
    #[pin]
    cache: Mutex<PageTable<Cached>>,
    /// Clones that use the image (changed under the registry lock).
    pub(crate) clones: AtomicU64,
    cached_pages: AtomicU64,
    zero_pages: AtomicU64,
    streamed: AtomicU64,
    read_errors: AtomicU64,
}

impl Image {
    /// An image of `size` bytes read from `file` at `file_offset`.
    pub(crate) fn new(
        name: [u8; abi::VMS_NAME_LEN],
        file: FileRef,
        file_offset: u64,
        size: u64,
        zero: PageRef,
    ) -> Result<impl PinInit<Self, Error>> {
        let npages = (size / PAGE_SIZE as u64) as usize;
        let table = PageTable::new(npages)?;
        Ok(try_pin_init!(Image {
            name,
            file,
            file_offset,
            npages,
            zero,
            cache <- new_mutex!(table, "vms_image_cache"),
            clones: AtomicU64::new(0),
            cached_pages: AtomicU64::new(0),
            zero_pages: AtomicU64::new(0),
            streamed: AtomicU64::new(0),
            read_errors: AtomicU64::new(0),
        }? Error))
    }

    pub(crate) fn name(&self) -> &[u8; abi::VMS_NAME_LEN] {
        &self.name
    }

    pub(crate) fn npages(&self) -> usize {
        self.npages
    }

    /// The page `idx`, streamed from the file if it is not cached. The
    /// `bool` says whether this call read it from the file.
    pub(crate) fn page(&self, idx: usize) -> Result<(PageRef, Source, bool)> {
        let mut cache = self.cache.lock();
        match cache.get(idx) {
            Some(Cached::Zero) => return Ok((self.zero.clone(), Source::Zero, false)),
            Some(Cached::Page(p)) => return Ok((p.clone(), Source::Cache, false)),
            None => {}
        }
        if idx >= self.npages {
            return Err(EINVAL);
        }
        let page = PageRef::alloc()?;
        let pos = self.file_offset + (idx * PAGE_SIZE) as u64;
        if let Err(e) = self.file.read_page(pos, &page) {
            self.read_errors.fetch_add(1, Relaxed);
            pr_warn!(
                "image {}: reading page {} at file offset {}: error {}\n",
                ffi_name(&self.name),
                idx,
                pos,
                e.to_errno()
            );
            return Err(EIO);
        }
        self.streamed.fetch_add(1, Relaxed);
        if page.is_zero() {
            cache.set(idx, Cached::Zero)?;
            self.zero_pages.fetch_add(1, Relaxed);
            return Ok((self.zero.clone(), Source::Zero, true));
        }
        cache.set(idx, Cached::Page(page.clone()))?;
        self.cached_pages.fetch_add(1, Relaxed);
        Ok((page, Source::Cache, true))
    }

    pub(crate) fn stats(&self) -> abi::VmsImageStats {
        abi::VmsImageStats {
            size: (self.npages * PAGE_SIZE) as u64,
            clones: self.clones.load(Relaxed),
            cached_pages: self.cached_pages.load(Relaxed),
            zero_pages: self.zero_pages.load(Relaxed),
            streamed: self.streamed.load(Relaxed),
            read_errors: self.read_errors.load(Relaxed),
            ..abi::VmsImageStats::zeroed()
        }
    }
}

/// The printable part of a validated name.
pub(crate) fn ffi_name(name: &[u8; abi::VMS_NAME_LEN]) -> &str {
    let n = name.iter().position(|&b| b == 0).unwrap_or(name.len());
    core::str::from_utf8(&name[..n]).unwrap_or("?")
}
