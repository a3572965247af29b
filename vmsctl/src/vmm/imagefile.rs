// SPDX-License-Identifier: GPL-2.0

//! Live images on disk: `vmsctl live-image save` and `load`.
//!
//! One file holds a live image's machine state and its memory:
//!
//! ```text
//! 0       "VMSIMAGE 1\n", then a JSON header line, zero padded to 4 KiB
//! 4096    the machine state (JSON, see state.rs), state_len bytes
//! wset_offset  the recorded working set, if any (JSON, see
//!         workingset.rs), wset_len bytes; absent (0) in older files
//! mem_offset (4 KiB aligned)  guest memory, mem_size bytes, page N at
//!         mem_offset + N * 4096; all-zero pages are holes (sparse)
//! ```
//!
//! A loaded image is an ordinary file-backed vms image at `mem_offset`:
//! clones stream its pages from the file on demand, so a clone on another
//! host that shares the storage starts without copying memory.

use std::fs::File;
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

const MAGIC: &[u8] = b"VMSIMAGE 1\n";
const PAGE: u64 = 4096;
const STATE_OFFSET: u64 = PAGE;

/// The JSON header line.
#[derive(Debug, Serialize, Deserialize)]
pub struct Header {
    /// The image's name when it was saved.
    pub name: String,
    pub state_offset: u64,
    pub state_len: u64,
    pub mem_offset: u64,
    pub mem_size: u64,
    /// Non-zero pages written (the rest are holes).
    pub data_pages: u64,
    /// The working set stored with the image (`vmsctl live-image
    /// record`), if any: where and how long (0: none).
    #[serde(default)]
    pub wset_offset: u64,
    #[serde(default)]
    pub wset_len: u64,
}

/// Write `state`, the working set `wset` if any, and `mem_size` bytes of
/// memory read by `read_page(n, buf)` to `path`, calling
/// `progress(done, total)` every 1/20th.
#[allow(clippy::too_many_arguments)]
pub fn save(
    path: &Path,
    name: &str,
    state: &[u8],
    wset: Option<&[u8]>,
    mem_size: u64,
    mut read_page: impl FnMut(u64, &mut [u8]),
    mut progress: impl FnMut(u64, u64),
) -> Result<Header> {
    let tmp = path.with_extension("partial");
    let file = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    let state_len = state.len() as u64;
    let wset_offset = STATE_OFFSET + state_len;
    let wset_len = wset.map_or(0, |w| w.len() as u64);
    let mem_offset = (wset_offset + wset_len).div_ceil(PAGE) * PAGE;
    file.set_len(mem_offset + mem_size)
        .with_context(|| format!("sizing {}", tmp.display()))?;
    file.write_all_at(state, STATE_OFFSET).context("writing the machine state")?;
    if let Some(w) = wset {
        file.write_all_at(w, wset_offset).context("writing the working set")?;
    }
    let pages = mem_size / PAGE;
    let mut buf = vec![0u8; PAGE as usize];
    let mut data_pages = 0;
    let step = (pages / 20).max(1);
    for n in 0..pages {
        read_page(n, &mut buf);
        if buf.iter().any(|&b| b != 0) {
            file.write_all_at(&buf, mem_offset + n * PAGE)
                .with_context(|| format!("writing page {n}"))?;
            data_pages += 1;
        }
        if n % step == step - 1 || n + 1 == pages {
            progress(n + 1, pages);
        }
    }
    let header = Header {
        name: name.to_owned(),
        state_offset: STATE_OFFSET,
        state_len,
        mem_offset,
        mem_size,
        data_pages,
        wset_offset: if wset.is_some() { wset_offset } else { 0 },
        wset_len,
    };
    let mut head = MAGIC.to_vec();
    serde_json::to_writer(&mut head, &header)?;
    head.push(b'\n');
    if head.len() as u64 > STATE_OFFSET {
        bail!("image header too long ({} bytes)", head.len());
    }
    file.write_all_at(&head, 0).context("writing the header")?;
    file.sync_all().context("syncing the file")?;
    // Closed before it takes its name: `load` registers the file as an
    // image, which vms refuses while anyone holds it open for writing.
    drop(file);
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(header)
}

/// Read the header and machine state of the live image file `file`.
pub fn read(file: &File, path: &Path) -> Result<(Header, Vec<u8>)> {
    let mut head = vec![0u8; STATE_OFFSET as usize];
    let n = file.read_at(&mut head, 0).with_context(|| format!("reading {}", path.display()))?;
    if n < MAGIC.len() || &head[..MAGIC.len()] != MAGIC {
        bail!("{} is not a vms live image file (no {:?} magic)", path.display(), "VMSIMAGE 1");
    }
    let rest = &head[MAGIC.len()..n];
    let end = rest.iter().position(|&b| b == b'\n').context("header line has no end")?;
    let header: Header = serde_json::from_slice(&rest[..end])
        .with_context(|| format!("{}: bad header", path.display()))?;
    let len = file.metadata()?.len();
    if !header.mem_offset.is_multiple_of(PAGE)
        || !header.mem_size.is_multiple_of(PAGE)
        || header.mem_offset.checked_add(header.mem_size).is_none_or(|e| e > len)
        || header.state_offset.checked_add(header.state_len).is_none_or(|e| e > header.mem_offset)
        || (header.wset_len > 0
            && (header.wset_offset < header.state_offset + header.state_len
                || header.wset_offset.checked_add(header.wset_len).is_none_or(|e| e > header.mem_offset)))
    {
        bail!("{}: header does not fit the file ({len} bytes): {header:?}", path.display());
    }
    let mut state = vec![0u8; header.state_len as usize];
    file.read_exact_at(&mut state, header.state_offset)
        .with_context(|| format!("{}: reading the machine state", path.display()))?;
    Ok((header, state))
}

/// The working set stored in the live image file `file`, if it has one.
pub fn read_wset(file: &File, path: &Path, header: &Header) -> Result<Option<Vec<u8>>> {
    if header.wset_len == 0 {
        return Ok(None);
    }
    let mut w = vec![0u8; header.wset_len as usize];
    file.read_exact_at(&mut w, header.wset_offset)
        .with_context(|| format!("{}: reading the working set", path.display()))?;
    Ok(Some(w))
}

/// Write `bytes` to `path` atomically (temporary file, then rename).
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
    f.write_all(bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("renaming to {}", path.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(wset: Option<&[u8]>) -> (Header, Vec<u8>, Option<Vec<u8>>, Vec<u8>) {
        let dir = std::env::temp_dir().join(format!("vms-imagefile-{}-{}", std::process::id(), wset.is_some()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("x.img");
        let state = b"{\"state\": 1}".repeat(500);
        save(&path, "x", &state, wset, 4 * PAGE, |n, buf| buf.fill(n as u8), |_, _| {}).unwrap();
        let file = File::open(&path).unwrap();
        let (header, got_state) = read(&file, &path).unwrap();
        let got_wset = read_wset(&file, &path, &header).unwrap();
        let mut page1 = vec![0u8; PAGE as usize];
        file.read_exact_at(&mut page1, header.mem_offset + PAGE).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        (header, got_state, got_wset, page1)
    }

    #[test]
    fn the_working_set_goes_between_state_and_memory() {
        let wset = b"{\"ranges\": []}".repeat(400);
        let (h, state, got, page1) = roundtrip(Some(&wset));
        assert_eq!(state, b"{\"state\": 1}".repeat(500));
        assert_eq!(got.as_deref(), Some(&wset[..]));
        assert_eq!(h.wset_offset, STATE_OFFSET + h.state_len);
        assert!(h.mem_offset >= h.wset_offset + h.wset_len && h.mem_offset % PAGE == 0);
        // Page 0 is all zero (a hole); page 1 holds 1s.
        assert_eq!(h.data_pages, 3);
        assert!(page1.iter().all(|&b| b == 1));
        let (h, _, got, _) = roundtrip(None);
        assert_eq!((h.wset_offset, h.wset_len, got), (0, 0, None));
    }

    #[test]
    fn a_file_without_the_fields_reads_as_before() {
        // A header written by a vmsctl from before working sets.
        let h: Header = serde_json::from_str(
            r#"{"name":"x","state_offset":4096,"state_len":10,"mem_offset":8192,"mem_size":4096,"data_pages":1}"#,
        )
        .unwrap();
        assert_eq!((h.wset_offset, h.wset_len), (0, 0));
    }
}
