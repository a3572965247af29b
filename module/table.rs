// SPDX-License-Identifier: GPL-2.0

//! [`PageTable`]: a sparse array indexed by page number.
//!
//! A clone of a 64 GiB image that touched a few pages must pay neither for
//! 16M entries nor, when it starts, for anything that grows with the size:
//! the table has three levels, like a page table. The top level has one
//! pointer per [`MID`] x [`LEAF`] pages (1 GiB of guest memory); a middle
//! node of [`MID`] leaf pointers and a leaf of [`LEAF`] entries (2 MiB) are
//! allocated on the first store into their range.

use kernel::prelude::*;

use crate::ffi;

/// Entries per leaf: one leaf covers 2 MiB of guest memory.
const LEAF: usize = 512;
/// Pages per leaf, for callers that skip absent leaves.
pub(crate) const LEAF_PAGES: usize = LEAF;
/// Leaves per middle node: one covers 1 GiB.
const MID: usize = 512;

type Leaf<T> = KVec<Option<T>>;
type Mid<T> = KVec<Option<Leaf<T>>>;

pub(crate) struct PageTable<T> {
    top: KVec<Option<Mid<T>>>,
    len: usize,
    used: usize,
}

/// A vector of `n` `None`s.
fn nones<U>(n: usize) -> Result<KVec<Option<U>>> {
    let mut v = KVec::with_capacity(n, GFP_KERNEL)?;
    for _ in 0..n {
        v.push(None, GFP_KERNEL)?;
    }
    Ok(v)
}

impl<T> PageTable<T> {
    /// A table for `len` pages, all empty.
    pub(crate) fn new(len: usize) -> Result<Self> {
        Ok(PageTable { top: nones(len.div_ceil(LEAF * MID))?, len, used: 0 })
    }

    /// The entry of page `idx`, if any.
    pub(crate) fn get(&self, idx: usize) -> Option<&T> {
        let mid = self.top.get(idx / (LEAF * MID))?.as_ref()?;
        mid[idx / LEAF % MID].as_ref()?[idx % LEAF].as_ref()
    }

    /// The entry of page `idx`, if any, to change in place.
    pub(crate) fn get_mut(&mut self, idx: usize) -> Option<&mut T> {
        let mid = self.top.get_mut(idx / (LEAF * MID))?.as_mut()?;
        mid[idx / LEAF % MID].as_mut()?[idx % LEAF].as_mut()
    }

    /// Store `v` at `idx` (which must be empty or is replaced), allocating
    /// its leaf if needed. Returns the entry it replaced.
    pub(crate) fn set(&mut self, idx: usize, v: T) -> Result<Option<T>> {
        if idx >= self.len {
            return Err(EINVAL);
        }
        let old = self.leaf(idx)?[idx % LEAF].replace(v);
        if old.is_none() {
            self.used += 1;
        }
        Ok(old)
    }

    /// Take the entry of page `idx` out, if any (its leaf stays).
    pub(crate) fn take(&mut self, idx: usize) -> Option<T> {
        let mid = self.top.get_mut(idx / (LEAF * MID))?.as_mut()?;
        let old = mid[idx / LEAF % MID].as_mut()?[idx % LEAF].take();
        if old.is_some() {
            self.used -= 1;
        }
        old
    }

    /// Whether the leaf holding page `idx` exists: if not, none of the
    /// [`LEAF_PAGES`] pages of that leaf (`idx` rounded down) has an entry.
    pub(crate) fn leaf_present(&self, idx: usize) -> bool {
        self.top
            .get(idx / (LEAF * MID))
            .and_then(|m| m.as_ref())
            .is_some_and(|mid| mid[idx / LEAF % MID].is_some())
    }

    /// Number of pages with an entry.
    pub(crate) fn used(&self) -> usize {
        self.used
    }

    /// A table of `self`'s length with a leaf wherever `self` has one, so
    /// that [`set`](Self::set) of an index `self` has an entry for cannot
    /// fail.
    ///
    /// May sleep, as [`drain`](Self::drain): it gives the CPU up after each
    /// leaf it makes.
    pub(crate) fn with_leaves_of<U>(other: &PageTable<U>) -> Result<Self> {
        let mut t = Self::new(other.len)?;
        for (i, mid) in other.top.iter().enumerate() {
            let Some(mid) = mid else { continue };
            for (j, leaf) in mid.iter().enumerate() {
                if leaf.is_some() {
                    t.leaf((i * MID + j) * LEAF)?;
                    ffi::cond_resched();
                }
            }
        }
        Ok(t)
    }

    /// Take every entry out, in index order, and free the leaves.
    ///
    /// May sleep: a table can hold millions of entries, and the kernels
    /// vms runs on are often not preemptible, so it gives the CPU up
    /// (`cond_resched()`) after each leaf. Callers hold no spinlock.
    pub(crate) fn drain(&mut self, mut f: impl FnMut(usize, T)) {
        for (i, mid) in self.top.iter_mut().enumerate() {
            let Some(mid) = mid.take() else { continue };
            for (j, leaf) in mid.into_iter().enumerate() {
                let Some(leaf) = leaf else { continue };
                for (k, v) in leaf.into_iter().enumerate() {
                    if let Some(v) = v {
                        f((i * MID + j) * LEAF + k, v);
                    }
                }
                ffi::cond_resched();
            }
        }
        self.used = 0;
    }

    /// Take out up to `max` entries of `from..end` for which `pick` says
    /// so (it may change an entry it leaves), in index order, passing each
    /// to `f`; frees every leaf (and middle node) that this leaves empty.
    /// Looks at `look` entries at most (an absent leaf counts as one, an
    /// absent middle node as none) and gives the CPU up after each leaf, as
    /// [`drain`](Self::drain) does. Returns where a next call should go on
    /// from (`end` once it got there).
    pub(crate) fn take_where(
        &mut self,
        from: usize,
        end: usize,
        max: usize,
        look: usize,
        mut pick: impl FnMut(usize, &mut T) -> bool,
        mut f: impl FnMut(usize, T),
    ) -> usize {
        let end = end.min(self.len);
        let mut idx = from;
        let (mut taken, mut looked) = (0, 0);
        while idx < end && taken < max && looked < look {
            let (i, j) = (idx / (LEAF * MID), idx / LEAF % MID);
            let Some(mid) = self.top[i].as_mut() else {
                idx = (i + 1) * LEAF * MID;
                continue;
            };
            let Some(leaf) = mid[j].as_mut() else {
                // An absent leaf counts as one entry looked at.
                looked += 1;
                idx = (idx / LEAF + 1) * LEAF;
                continue;
            };
            let stop = ((idx / LEAF + 1) * LEAF).min(end);
            while idx < stop && taken < max && looked < look {
                looked += 1;
                let slot = &mut leaf[idx % LEAF];
                if slot.as_mut().is_some_and(|v| pick(idx, v)) {
                    if let Some(v) = slot.take() {
                        self.used -= 1;
                        taken += 1;
                        f(idx, v);
                    }
                }
                idx += 1;
            }
            if leaf.iter().all(|e| e.is_none()) {
                mid[j] = None;
                if mid.iter().all(|l| l.is_none()) {
                    self.top[i] = None;
                }
            }
            ffi::cond_resched();
        }
        idx.min(end)
    }

    /// The leaf holding `idx` (< `len`), allocated if missing.
    fn leaf(&mut self, idx: usize) -> Result<&mut Leaf<T>> {
        let mid = &mut self.top[idx / (LEAF * MID)];
        if mid.is_none() {
            *mid = Some(nones(MID)?);
        }
        let leaf = &mut mid.as_mut().ok_or(EINVAL)?[idx / LEAF % MID];
        if leaf.is_none() {
            *leaf = Some(nones(LEAF)?);
        }
        leaf.as_mut().ok_or(EINVAL)
    }
}

/// Dropping a table drops its entries as [`PageTable::drain`] does,
/// giving the CPU up between leaves: an image's cache can hold millions of
/// pages. So a table is dropped only where sleeping is allowed.
impl<T> Drop for PageTable<T> {
    fn drop(&mut self) {
        self.drain(|_, v| drop(v));
    }
}
