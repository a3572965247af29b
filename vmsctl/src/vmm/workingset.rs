// SPDX-License-Identifier: GPL-2.0

//! Working sets: the pages a clone of a live image uses, recorded once and
//! prefetched by later clones of the image (issue 18; REAP, ASPLOS'21,
//! does this for userfaultfd page servers).
//!
//! - **Record** (`vmsctl live-image record VM`): the VM's clone says which
//!   pages it has used since it was made (`VMS_CLONE_TOUCHED`: stage-2 and
//!   VMM-mapping accesses, reads and writes). Recorded from a clone that
//!   has just done the work later clones will do (started, given its
//!   identity, served a request), that is its working set.
//! - **Store**: `$VMS_RUN_DIR/images/IMAGE.wset`, JSON: the page ranges,
//!   keyed to the live image by a hash of its machine state (a new live
//!   image of the same name has another state) and its size; and in
//!   `live-image save` files, from which `load` stores it again.
//! - **Prefetch** (`vmsctl run --image`, `live-image start`), before the
//!   clone's vCPUs run: for an image loaded from a file, one
//!   `readahead(2)` per run of the set's pages, sorted, merged across
//!   small gaps, in a thread (asynchronous: the clone goes on setting up
//!   meanwhile), into the file's page cache, which is the image's cache
//!   (vms takes a page-cache page by reference); then, in mode `map`,
//!   `KVM_PRE_FAULT_MEMORY` over the set, which faults each page into
//!   stage 2 through vms's provider as a read would (it waits for the
//!   readahead), so the guest's first touch of them takes no exit at all.
//!   Mode `cache` stops after the readahead: the guest still faults on
//!   each page, but finds it read.
//!
//! A set that does not match the image (another image's, a damaged file)
//! is ignored with a warning: prefetching only reads the image's own
//! pages through vms, so a wrong set costs reads, never wrong data.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

use super::control;

const PAGE: u64 = 4096;
/// Runs of the set closer than this many pages are read as one
/// (the pages between are read too: cheaper than another request).
const MERGE_GAP: u64 = 16;

/// A recorded working set.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WorkingSet {
    /// The live image it was recorded for.
    pub image: String,
    /// FNV-1a 64 of that image's machine state, in hex.
    pub state_hash: String,
    /// The image's size in bytes.
    pub size: u64,
    /// Pages in the set.
    pub pages: u64,
    /// Sorted, disjoint `[first page, pages]` runs.
    pub ranges: Vec<(u64, u64)>,
}

/// How a clone prefetches its image's working set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Read the set into the image's cache and map it into stage 2 before
    /// the vCPUs run.
    Map,
    /// Only read the set into the image's cache.
    Cache,
}

/// FNV-1a, 64 bits: a stable hash of a state file (no crate in the tree
/// has one; this is not about security, only about telling images apart).
pub fn fnv1a64(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    format!("{h:016x}")
}

impl WorkingSet {
    /// The set of `bitmap` (bit `b` of word `w` is page `64w + b`) for
    /// `image`, whose machine state is `state` and size `size`.
    pub fn from_bitmap(image: &str, state: &[u8], size: u64, bitmap: &[u64]) -> Self {
        let mut ranges: Vec<(u64, u64)> = Vec::new();
        let mut pages = 0;
        for p in pages_of(bitmap) {
            pages += 1;
            match ranges.last_mut() {
                Some((first, n)) if *first + *n == p => *n += 1,
                _ => ranges.push((p, 1)),
            }
        }
        WorkingSet { image: image.to_owned(), state_hash: fnv1a64(state), size, pages, ranges }
    }

    /// Why the set does not fit live image `image` (machine state `state`,
    /// `size` bytes), if it does not.
    pub fn mismatch(&self, image: &str, state: &[u8], size: u64) -> Option<String> {
        if self.state_hash != fnv1a64(state) {
            return Some(format!(
                "it was recorded for another live image {} (its machine state differs)",
                self.image
            ));
        }
        if self.size != size {
            return Some(format!("it was recorded for an image of {} bytes, {image} has {size}", self.size));
        }
        let npages = size / PAGE;
        let mut end = 0;
        let mut pages = 0;
        for &(first, n) in &self.ranges {
            if n == 0 || first < end || first.checked_add(n).is_none_or(|e| e > npages) {
                return Some(format!("its run [{first}, {n}] is empty, unsorted or past the image's {npages} pages"));
            }
            end = first + n;
            pages += n;
        }
        if pages != self.pages {
            return Some(format!("its runs hold {pages} pages, its header says {}", self.pages));
        }
        None
    }

    /// Where live image `image` keeps its working set.
    pub fn path(image: &str) -> PathBuf {
        control::run_dir().join("images").join(format!("{image}.wset"))
    }

    /// Live image `image`'s stored working set, if it has one.
    pub fn load(image: &str) -> Result<Option<Self>> {
        let path = Self::path(image);
        match std::fs::read(&path) {
            Ok(b) => Self::from_bytes(&b).map(Some).with_context(|| format!("{}", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    /// Parses a stored set.
    pub fn from_bytes(b: &[u8]) -> Result<Self> {
        serde_json::from_slice(b).context("not a working set (JSON)")
    }

    /// The stored form.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        Ok(serde_json::to_vec(self)?)
    }

    /// Stores it as live image `image`'s working set.
    pub fn store(&self, image: &str) -> Result<()> {
        super::imagefile::write_atomic(&Self::path(image), &self.to_bytes()?)
    }

    /// The runs to read: the set's, merged across gaps of fewer than
    /// [`MERGE_GAP`] pages.
    pub fn read_runs(&self) -> Vec<(u64, u64)> {
        let mut runs: Vec<(u64, u64)> = Vec::new();
        for &(first, n) in &self.ranges {
            match runs.last_mut() {
                Some((f, m)) if first - (*f + *m) < MERGE_GAP => *m = first + n - *f,
                _ => runs.push((first, n)),
            }
        }
        runs
    }

    /// Whether page `p` is in the set.
    pub fn contains(&self, p: u64) -> bool {
        let i = self.ranges.partition_point(|&(first, _)| first <= p);
        i > 0 && {
            let (first, n) = self.ranges[i - 1];
            p < first + n
        }
    }
}

/// The pages set in `bitmap` (bit `b` of word `w` is page `64w + b`), in
/// order.
pub fn pages_of(bitmap: &[u64]) -> impl Iterator<Item = u64> + '_ {
    bitmap.iter().enumerate().flat_map(|(w, &word)| {
        let mut word = word;
        std::iter::from_fn(move || {
            (word != 0).then(|| {
                let b = u64::from(word.trailing_zeros());
                word &= word - 1;
                w as u64 * 64 + b
            })
        })
    })
}

/// Where a live image loaded from a file (`live-image load`) streams its
/// pages from: the file and the offset of page 0 in it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Source {
    pub path: PathBuf,
    pub mem_offset: u64,
    /// The file's device and inode when it was loaded: a file renamed
    /// over it since is not the image's.
    pub dev: u64,
    pub ino: u64,
}

impl Source {
    /// Where live image `image` keeps its source.
    pub fn path(image: &str) -> PathBuf {
        control::run_dir().join("images").join(format!("{image}.source"))
    }

    /// Records that live image `image` streams from `file` (at `path`),
    /// page 0 at `mem_offset`.
    pub fn store(image: &str, path: &Path, file: &File, mem_offset: u64) -> Result<()> {
        use std::os::unix::fs::MetadataExt;
        let m = file.metadata()?;
        let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
        let s = Source { path, mem_offset, dev: m.dev(), ino: m.ino() };
        super::imagefile::write_atomic(&Self::path(image), &serde_json::to_vec(&s)?)
    }

    /// Live image `image`'s source, if it was loaded from a file.
    pub fn load(image: &str) -> Option<Self> {
        serde_json::from_slice(&std::fs::read(Self::path(image)).ok()?).ok()
    }

    /// Opens the file, if it is still the image's.
    pub fn open(&self) -> Result<File> {
        use std::os::unix::fs::MetadataExt;
        let f = File::open(&self.path).with_context(|| format!("opening {}", self.path.display()))?;
        let m = f.metadata()?;
        if (m.dev(), m.ino()) != (self.dev, self.ino) {
            bail!("{} is another file than the one the image was loaded from", self.path.display());
        }
        Ok(f)
    }
}

/// What a readahead came to, once it ended: the bytes asked for, or why
/// it failed.
pub type ReadaheadResult = std::sync::Arc<std::sync::OnceLock<std::result::Result<u64, String>>>;

/// Starts reading `set`'s pages of `file` (page 0 at `mem_offset`) into
/// the page cache, in sorted runs, from a thread, which puts its outcome
/// in the returned cell.
pub fn readahead(file: File, mem_offset: u64, set: &WorkingSet) -> Result<ReadaheadResult> {
    let runs = set.read_runs();
    let done = ReadaheadResult::default();
    let out = done.clone();
    std::thread::Builder::new()
        .name("vms-prefetch".into())
        .spawn(move || {
            let mut bytes = 0;
            for (first, n) in runs {
                let (off, len) = (mem_offset + first * PAGE, n * PAGE);
                // SAFETY: readahead(2) on a descriptor we own; it only
                // reads the file into the page cache.
                if unsafe { libc::readahead(file.as_raw_fd(), off as i64, len as usize) } != 0 {
                    let e = std::io::Error::last_os_error();
                    let _ = out.set(Err(format!("readahead(2) of the image file: {e}")));
                    return;
                }
                bytes += len;
            }
            let _ = out.set(Ok(bytes));
        })
        .context("starting the readahead thread")?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bitmap_to_runs_and_back() {
        let mut bitmap = vec![0u64; 4];
        for p in [0u64, 1, 2, 63, 64, 65, 130, 255] {
            bitmap[(p / 64) as usize] |= 1 << (p % 64);
        }
        let s = WorkingSet::from_bitmap("img", b"state", 256 * PAGE, &bitmap);
        assert_eq!(s.ranges, vec![(0, 3), (63, 3), (130, 1), (255, 1)]);
        assert_eq!(s.pages, 8);
        assert_eq!(s.mismatch("img", b"state", 256 * PAGE), None);
        for p in 0..256 {
            assert_eq!(s.contains(p), [0, 1, 2, 63, 64, 65, 130, 255].contains(&p), "page {p}");
        }
        // Merged across gaps under MERGE_GAP pages: 3..63 is 60 pages.
        assert_eq!(s.read_runs(), vec![(0, 3), (63, 3), (130, 1), (255, 1)]);
        let near = WorkingSet { ranges: vec![(0, 3), (10, 2), (100, 1)], pages: 6, ..s.clone() };
        assert_eq!(near.read_runs(), vec![(0, 12), (100, 1)]);
    }

    #[test]
    fn a_set_of_another_image_is_refused() {
        let s = WorkingSet::from_bitmap("img", b"state", 256 * PAGE, &[1, 0, 0, 0]);
        assert!(s.mismatch("img", b"other state", 256 * PAGE).unwrap().contains("another live image"));
        assert!(s.mismatch("img", b"state", 512 * PAGE).unwrap().contains("bytes"));
        let past = WorkingSet { ranges: vec![(250, 10)], pages: 10, ..s.clone() };
        assert!(past.mismatch("img", b"state", 256 * PAGE).unwrap().contains("past"));
        let unsorted = WorkingSet { ranges: vec![(5, 1), (2, 1)], pages: 2, ..s.clone() };
        assert!(unsorted.mismatch("img", b"state", 256 * PAGE).is_some());
        let count = WorkingSet { pages: 7, ..s.clone() };
        assert!(count.mismatch("img", b"state", 256 * PAGE).unwrap().contains("header"));
        let round = WorkingSet::from_bytes(&s.to_bytes().unwrap()).unwrap();
        assert_eq!(round, s);
        assert!(WorkingSet::from_bytes(b"{\"image\": 3}").is_err());
    }

    #[test]
    fn fnv_is_stable() {
        // FNV-1a 64 test vectors.
        assert_eq!(fnv1a64(b""), "cbf29ce484222325");
        assert_eq!(fnv1a64(b"a"), "af63dc4c8601ec8c");
    }
}
