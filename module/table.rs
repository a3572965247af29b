// SPDX-License-Identifier: GPL-2.0

//! [`PageTable`]: a sparse array indexed by page number.
//!
//! A clone of a 64 GiB image that touched a few pages must not pay for 16M
//! entries, so the table is two levels: a vector of leaf pointers (8 bytes
//! per 2 MiB of guest memory) and leaves of [`LEAF`] entries allocated on
//! the first store into their range.

use kernel::prelude::*;

/// Entries per leaf: one leaf covers 2 MiB of guest memory.
const LEAF: usize = 512;

pub(crate) struct PageTable<T> {
    leaves: KVVec<Option<KVec<Option<T>>>>,
    len: usize,
    used: usize,
}

impl<T> PageTable<T> {
    /// A table for `len` pages, all empty.
    pub(crate) fn new(len: usize) -> Result<Self> {
        let mut leaves = KVVec::with_capacity(len.div_ceil(LEAF), GFP_KERNEL)?;
        for _ in 0..len.div_ceil(LEAF) {
            leaves.push(None, GFP_KERNEL)?;
        }
        Ok(PageTable { leaves, len, used: 0 })
    }

    /// The entry of page `idx`, if any.
    pub(crate) fn get(&self, idx: usize) -> Option<&T> {
        self.leaves.get(idx / LEAF)?.as_ref()?.get(idx % LEAF)?.as_ref()
    }

    /// Store `v` at `idx` (which must be empty or is replaced), allocating
    /// its leaf if needed. Returns the entry it replaced.
    pub(crate) fn set(&mut self, idx: usize, v: T) -> Result<Option<T>> {
        if idx >= self.len {
            return Err(EINVAL);
        }
        if self.leaves[idx / LEAF].is_none() {
            self.alloc_leaf(idx / LEAF)?;
        }
        let slot = &mut self.leaves[idx / LEAF];
        let old = slot.as_mut().map(|l| l[idx % LEAF].replace(v)).flatten();
        if old.is_none() {
            self.used += 1;
        }
        Ok(old)
    }

    /// Number of pages with an entry.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// A table of `self`'s length with a leaf wherever `self` has one, so
    /// that [`set`](Self::set) of an index `self` has an entry for cannot
    /// fail.
    pub(crate) fn with_leaves_of<U>(other: &PageTable<U>) -> Result<Self> {
        let mut t = Self::new(other.len)?;
        for (i, leaf) in other.leaves.iter().enumerate() {
            if leaf.is_some() {
                t.alloc_leaf(i)?;
            }
        }
        Ok(t)
    }

    /// Take every entry out, in index order, and free the leaves.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(usize, T)) {
        for (i, slot) in self.leaves.iter_mut().enumerate() {
            if let Some(leaf) = slot.take() {
                for (j, v) in leaf.into_iter().enumerate() {
                    if let Some(v) = v {
                        f(i * LEAF + j, v);
                    }
                }
            }
        }
        self.used = 0;
    }

    fn alloc_leaf(&mut self, i: usize) -> Result {
        let mut leaf = KVec::with_capacity(LEAF, GFP_KERNEL)?;
        for _ in 0..LEAF {
            leaf.push(None, GFP_KERNEL)?;
        }
        self.leaves[i] = Some(leaf);
        Ok(())
    }
}
