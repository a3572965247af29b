// SPDX-License-Identifier: GPL-2.0

//! virtio-blk (virtio 1.2, section 5.2) backed by a raw file or a qcow2
//! image ([`super::disk`]): reads, writes, flush and the device ID, on
//! one request queue.
//!
//! A request is a chain: a 16-byte header the device reads (type, I/O
//! priority, first 512-byte sector), the data (read by the device for a
//! write, written by it for a read), and one status byte the device
//! writes last. Requests are served in order, one at a time, in the
//! thread that serves the queue: the disk's I/O thread
//! ([`super::super::devices`]), woken by an ioeventfd, never a vCPU.
//!
//! What a request may not do: reach past the disk's end, write a
//! read-only disk, or come as a chain without room for its status. The
//! first two end with `VIRTIO_BLK_S_IOERR` (one line on the VMM's
//! stderr for each kind, the first time), the third is completed with
//! nothing written, as the specification leaves a device no better way.
//! Unknown request types get `VIRTIO_BLK_S_UNSUPP`.

use std::io::{Read, Write};
use std::path::Path;

use anyhow::{ensure, Context, Result};
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_F_FLUSH, VIRTIO_BLK_F_RO, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_ids::VIRTIO_ID_BLOCK;
use virtio_queue::{Queue, QueueT};
use vm_memory::GuestMemoryMmap;

use super::disk::{DiskFile, SECTOR};
use super::VirtioDevice;

/// Descriptors in the queue, at most.
pub const QUEUE_SIZE: u16 = 256;
/// The header every request starts with.
const HEADER: usize = 16;
/// The most bytes moved per step of one request: a guest's chain may
/// describe gigabytes; the device copies it in pieces of this size.
const CHUNK: usize = 1 << 20;

pub use super::disk::DiskConfig;

/// `rename(2)` that never replaces an existing `to` (EEXIST): a layer
/// left by an earlier live image of the same name may back a running
/// clone.
fn rename_noreplace(from: &Path, to: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = |p: &Path| std::ffi::CString::new(p.as_os_str().as_bytes()).map_err(std::io::Error::other);
    let (f, t) = (c(from)?, c(to)?);
    // SAFETY: two NUL-terminated paths that outlive the call.
    let r = unsafe { libc::renameat2(libc::AT_FDCWD, f.as_ptr(), libc::AT_FDCWD, t.as_ptr(), libc::RENAME_NOREPLACE) };
    if r == 0 { Ok(()) } else { Err(std::io::Error::last_os_error()) }
}

/// Requests of each outcome, for statistics and tests.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BlkCounters {
    pub reads: u64,
    pub writes: u64,
    pub flushes: u64,
    pub errors: u64,
    pub unsupported: u64,
}

/// The virtio-blk device.
pub struct Blk {
    file: DiskFile,
    /// The file it serves now (after a live image froze the disk, a new
    /// overlay on the frozen layer).
    config: DiskConfig,
    /// A clone's overlay not made yet: `file` reads this frozen layer
    /// (held shared), and the first write makes the overlay, at
    /// `config.path`, on it. A clone's start then makes no file, and a
    /// clone that never writes its disk never has one.
    unmade: Option<DiskConfig>,
    /// The device ID string (`VIRTIO_BLK_T_GET_ID`): the file's name,
    /// cut to 20 bytes (Linux shows it as /sys/block/vda/serial).
    id: Vec<u8>,
    counters: BlkCounters,
    /// Kinds of errors already reported on stderr (bit per kind).
    reported: u8,
}

/// Why a request failed with `VIRTIO_BLK_S_IOERR`.
#[derive(Clone, Copy)]
enum Fault {
    OutOfRange = 1,
    ReadOnly = 2,
    Io = 4,
    Short = 8,
    /// A clone's overlay could not be made at its first write.
    Overlay = 16,
}

impl Blk {
    /// Opens the disk `config` names; fails if its size changed since
    /// `config` was made, or, for a read-only disk or a live image's
    /// frozen layer, if it was modified since (a live image's disk must
    /// be the one it saw).
    pub fn open(config: &DiskConfig) -> Result<Self> {
        let file = DiskFile::open(config)?;
        config.check_frozen(false)?;
        let now = DiskConfig::new(&config.path, config.format, config.read_only)?;
        ensure!(
            now.size == config.size,
            "disk {}: {} bytes now, {} when the VM got it",
            config.path.display(),
            now.size,
            config.size
        );
        ensure!(
            !config.read_only || now.modified == config.modified,
            "disk {} was modified since the VM got it (a read-only disk must stay as its live image saw it)",
            config.path.display()
        );
        Ok(Self::with(file, config.clone()))
    }

    /// A clone's disk: the live image's disk `image` as it is if it is
    /// read-only, else a copy-on-write overlay of it at `overlay` (which
    /// must not exist), made by the clone's first write: until then the
    /// clone reads `image`'s layers, held shared. Refuses a frozen layer
    /// that changed since the live image was made.
    pub fn open_clone(image: &DiskConfig, overlay: &Path) -> Result<Self> {
        if image.read_only {
            return Self::open(image);
        }
        ensure!(
            std::fs::symlink_metadata(overlay).is_err(),
            "disk overlay {} exists (a clone's overlay is new)",
            overlay.display()
        );
        // The overlay is made later, at the first write: a directory it
        // cannot go in is refused now, not as a guest I/O error then.
        let dir = overlay.parent().unwrap_or(Path::new("."));
        let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes()).context("a path with a NUL")?;
        // SAFETY: a NUL-terminated path that outlives the call.
        if unsafe { libc::access(c.as_ptr(), libc::W_OK | libc::X_OK) } != 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("the directory of disk overlay {}", overlay.display()));
        }
        // Checked once every layer is locked: nothing can change them
        // between the check and the clone's first read.
        let file = DiskFile::open_deferred(&DiskConfig { read_only: true, ..image.clone() })?;
        image.check_frozen(true).context("the live image's disk")?;
        let mut blk = Self::with(file, DiskConfig::overlay_of(image, overlay));
        blk.unmade = Some(image.clone());
        Ok(blk)
    }

    fn with(file: DiskFile, config: DiskConfig) -> Self {
        // (the guest sees the top file's name as the disk's serial)
        let name = config.path.file_name().map(|n| n.as_encoded_bytes()).unwrap_or(b"disk");
        let id = name[..name.len().min(VIRTIO_BLK_ID_BYTES as usize)].to_vec();
        Self { file, config, unmade: None, id, counters: BlkCounters::default(), reported: 0 }
    }

    /// The file to write: a clone's overlay, made now if it was not yet
    /// (in the disk's I/O thread, at the guest's first write).
    fn writable(&mut self) -> Result<&DiskFile> {
        if let Some(base) = &self.unmade {
            // The new overlay takes over the lock `file` holds on `base`.
            let (file, config) = self
                .file
                .freeze_into(base, &self.config.path)
                .with_context(|| format!("making the clone's disk overlay {}", self.config.path.display()))?;
            self.file = file;
            self.config = config;
            self.unmade = None;
        }
        Ok(&self.file)
    }

    /// Freezes the writable disk for a live image (the VM is paused and
    /// the queue quiet): flushes it, moves its file to `move_to` if given
    /// (a clone's overlay, which would go when the clone stops), and goes
    /// on in a new qcow2 overlay at `new_top` on it. Returns the frozen
    /// layer, which nothing writes again: the live image's disk.
    pub fn freeze(&mut self, new_top: &Path, move_to: Option<&Path>) -> Result<DiskConfig> {
        ensure!(!self.config.read_only, "a read-only disk needs no freezing");
        if let Some(base) = &self.unmade {
            // Never written: the disk is its frozen layer as it is. No
            // file is moved or made; the VM's overlay goes to `new_top`.
            let base = base.clone();
            self.config = DiskConfig::overlay_of(&base, new_top);
            return Ok(base);
        }
        self.file.flush().with_context(|| format!("flushing disk {}", self.config.path.display()))?;
        let mut frozen = self.config.clone();
        if let Some(to) = move_to {
            rename_noreplace(&self.config.path, to)
                .with_context(|| format!("moving disk layer {} to {}", self.config.path.display(), to.display()))?;
            frozen.path = to.to_path_buf();
        }
        let made = DiskConfig::new(&frozen.path, frozen.format, true).and_then(|now| {
            frozen.modified = now.modified;
            self.file.freeze_into(&frozen, new_top)
        });
        let (file, config) = match made {
            Ok(made) => made,
            Err(e) => {
                if let Some(to) = move_to {
                    let _ = rename_noreplace(to, &self.config.path);
                }
                return Err(e);
            }
        };
        // The old handle (and its exclusive lock) goes; the new top holds
        // the frozen layer shared.
        self.file = file;
        self.config = config;
        Ok(frozen)
    }

    /// Goes back to the live image's disk `image` (a reset, with the VM
    /// paused and the queue quiet): the VM's writes since the image was
    /// made, its overlay at the top's path, are dropped, and its next
    /// write makes a new overlay on `image` there. A read-only disk, or
    /// an overlay never made, is the image's disk already. On an error
    /// the disk is as it was.
    pub fn reset_to(&mut self, image: &DiskConfig) -> Result<()> {
        if image.read_only || self.unmade.is_some() {
            return Ok(());
        }
        let top = self.config.path.clone();
        ensure!(
            self.config.backing.first().map(|l| &l.path) == Some(&image.path),
            "the VM's disk {} is not an overlay of the live image's disk {}",
            top.display(),
            image.path.display()
        );
        // Moved aside, not removed, until the new disk is open.
        let mut aside = top.clone().into_os_string();
        aside.push(format!(".reset-{}", std::process::id()));
        let aside = std::path::PathBuf::from(aside);
        rename_noreplace(&top, &aside)
            .with_context(|| format!("moving the VM's disk overlay {} aside", top.display()))?;
        match Self::open_clone(image, &top) {
            Ok(fresh) => {
                let counters = self.counters;
                *self = fresh;
                self.counters = counters;
                let _ = std::fs::remove_file(&aside);
                Ok(())
            }
            Err(e) => {
                let _ = rename_noreplace(&aside, &top);
                Err(e)
            }
        }
    }

    /// The disk it serves.
    pub fn config(&self) -> &DiskConfig {
        &self.config
    }

    /// What it has done so far.
    #[cfg(test)]
    pub fn counters(&self) -> BlkCounters {
        self.counters
    }

    fn fault(&mut self, fault: Fault, what: &str) -> u8 {
        self.counters.errors += 1;
        if self.reported & fault as u8 == 0 {
            self.reported |= fault as u8;
            eprintln!(
                "vmsctl: virtio-blk {}: {what} (the guest gets an I/O error; reported once)",
                self.config.path.display()
            );
        }
        VIRTIO_BLK_S_IOERR as u8
    }

    /// Whether `len` bytes from sector `sector` lie on the disk.
    fn in_range(&self, sector: u64, len: usize) -> bool {
        sector
            .checked_mul(SECTOR)
            .and_then(|off| off.checked_add(len as u64))
            .is_some_and(|end| end <= self.config.size)
    }

    /// Serves one request: returns its status and the bytes the device
    /// wrote into the chain before the status byte.
    fn serve(&mut self, header: &mut impl Read, out: &mut impl Read, out_len: usize, data: &mut impl Write, in_len: usize) -> (u8, usize) {
        let mut h = [0u8; HEADER];
        if header.read_exact(&mut h).is_err() {
            return (self.fault(Fault::Short, "a request without its 16-byte header"), 0);
        }
        let kind = u32::from_le_bytes(h[0..4].try_into().unwrap());
        let sector = u64::from_le_bytes(h[8..16].try_into().unwrap());
        match kind {
            VIRTIO_BLK_T_IN => {
                if !self.in_range(sector, in_len) {
                    return (self.fault(Fault::OutOfRange, "a read past the disk's end"), 0);
                }
                let mut buf = vec![0u8; in_len.min(CHUNK)];
                let mut done = 0;
                while done < in_len {
                    let n = (in_len - done).min(CHUNK);
                    let off = sector * SECTOR + done as u64;
                    if let Err(e) = self.file.read_at(&mut buf[..n], off) {
                        return (self.fault(Fault::Io, &format!("reading at {off}: {e}")), done);
                    }
                    if data.write_all(&buf[..n]).is_err() {
                        return (self.fault(Fault::Short, "a read into memory the guest does not have"), done);
                    }
                    done += n;
                }
                self.counters.reads += 1;
                (VIRTIO_BLK_S_OK as u8, in_len)
            }
            VIRTIO_BLK_T_OUT => {
                if self.config.read_only {
                    return (self.fault(Fault::ReadOnly, "a write to a read-only disk"), 0);
                }
                if !self.in_range(sector, out_len) {
                    return (self.fault(Fault::OutOfRange, "a write past the disk's end"), 0);
                }
                if let Err(e) = self.writable() {
                    return (self.fault(Fault::Overlay, &format!("{e:#}")), 0);
                }
                let mut buf = vec![0u8; out_len.min(CHUNK)];
                let mut done = 0;
                while done < out_len {
                    let n = (out_len - done).min(CHUNK);
                    if out.read_exact(&mut buf[..n]).is_err() {
                        return (self.fault(Fault::Short, "a write from memory the guest does not have"), 0);
                    }
                    let off = sector * SECTOR + done as u64;
                    if let Err(e) = self.file.write_at(&buf[..n], off) {
                        return (self.fault(Fault::Io, &format!("writing at {off}: {e}")), 0);
                    }
                    done += n;
                }
                self.counters.writes += 1;
                (VIRTIO_BLK_S_OK as u8, 0)
            }
            VIRTIO_BLK_T_FLUSH => {
                // (an overlay not made yet holds nothing to flush)
                if !self.config.read_only && self.unmade.is_none() {
                    if let Err(e) = self.file.flush() {
                        return (self.fault(Fault::Io, &format!("flushing: {e}")), 0);
                    }
                }
                self.counters.flushes += 1;
                (VIRTIO_BLK_S_OK as u8, 0)
            }
            VIRTIO_BLK_T_GET_ID => {
                // The ID, NUL-padded to 20 bytes (virtio 1.2, 5.2.6.1),
                // as much of it as the driver's buffer takes.
                let mut id = self.id.clone();
                id.resize(VIRTIO_BLK_ID_BYTES as usize, 0);
                let n = in_len.min(id.len());
                id.truncate(n);
                if data.write_all(&id).is_err() {
                    return (self.fault(Fault::Short, "an ID request into memory the guest does not have"), 0);
                }
                (VIRTIO_BLK_S_OK as u8, n)
            }
            _ => {
                self.counters.unsupported += 1;
                (VIRTIO_BLK_S_UNSUPP as u8, 0)
            }
        }
    }
}

impl VirtioDevice for Blk {
    fn device_type(&self) -> u32 {
        VIRTIO_ID_BLOCK
    }

    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }

    fn features(&self) -> u64 {
        let ro = if self.config.read_only { 1 << VIRTIO_BLK_F_RO } else { 0 };
        (1 << VIRTIO_BLK_F_FLUSH) | ro
    }

    /// The configuration space: only `capacity` (le64 at offset 0, in
    /// 512-byte sectors) is offered; the rest reads as zero.
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        let capacity = (self.config.size / SECTOR).to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            *b = usize::try_from(offset)
                .ok()
                .and_then(|o| o.checked_add(i))
                .and_then(|o| capacity.get(o))
                .copied()
                .unwrap_or(0);
        }
    }

    fn process_queue(&mut self, _index: usize, queue: &mut Queue, mem: &GuestMemoryMmap) -> Result<bool> {
        let mut used = false;
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = match (chain.clone().reader(mem), chain.writer(mem)) {
                (Ok(mut r), Ok(mut w)) if w.available_bytes() >= 1 => {
                    let in_len = w.available_bytes() - 1;
                    let mut status = w.split_at(in_len).expect("in_len < available bytes");
                    let out_len = r.available_bytes().saturating_sub(HEADER);
                    let mut out = r.split_at(HEADER.min(r.available_bytes())).expect("within available bytes");
                    let (st, written) = self.serve(&mut r, &mut out, out_len, &mut w, in_len);
                    match status.write_all(&[st]) {
                        Ok(()) => written + 1,
                        Err(_) => written,
                    }
                }
                // No room for a status byte, or descriptors outside
                // memory: nothing the driver could read back.
                _ => {
                    self.fault(Fault::Short, "a request without room for its status byte");
                    0
                }
            };
            queue
                .add_used(mem, head, len as u32)
                .map_err(|e| anyhow::anyhow!("virtio-blk: adding to the used ring: {e:?}"))?;
            used = true;
        }
        Ok(used)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vmm::virtio::disk::DiskFormat;
    use std::os::unix::fs::FileExt;
    use std::fs::File;
    use std::path::PathBuf;
    use virtio_bindings::virtio_ring::{VRING_DESC_F_NEXT, VRING_DESC_F_WRITE};
    use virtio_queue::desc::{split::Descriptor, RawDescriptor};
    use virtio_queue::mock::MockSplitQueue;
    use vm_memory::{Bytes, GuestAddress};

    const RING: GuestAddress = GuestAddress(0x1_0000);
    const HDR: u64 = 0x8_0000;
    const DATA: u64 = 0x9_0000;
    const STATUS: u64 = 0xf_0000;
    const W: u16 = VRING_DESC_F_WRITE as u16;

    /// A scratch disk of `sectors` sectors, sector `i` filled with byte
    /// `i`, removed when dropped.
    struct Scratch(PathBuf);

    impl Scratch {
        fn new(name: &str, sectors: u64) -> Self {
            let path = std::env::temp_dir().join(format!("vms-blk-{}-{name}", std::process::id()));
            let bytes: Vec<u8> = (0..sectors).flat_map(|i| vec![i as u8; SECTOR as usize]).collect();
            std::fs::write(&path, bytes).unwrap();
            Self(path)
        }
        fn bytes(&self) -> Vec<u8> {
            std::fs::read(&self.0).unwrap()
        }
    }

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    fn memory() -> GuestMemoryMmap {
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).unwrap()
    }

    fn header(mem: &GuestMemoryMmap, kind: u32, sector: u64) {
        let mut h = [0u8; 16];
        h[0..4].copy_from_slice(&kind.to_le_bytes());
        h[8..16].copy_from_slice(&sector.to_le_bytes());
        mem.write_slice(&h, GuestAddress(HDR)).unwrap();
        mem.write_slice(&[0xee], GuestAddress(STATUS)).unwrap();
    }

    /// Makes the chain `descs` (address, length, flags) available and lets
    /// `blk` serve it; returns the used length and the status byte.
    fn request(blk: &mut Blk, mem: &GuestMemoryMmap, descs: &[(u64, u32, u16)]) -> (u32, u8) {
        let q = MockSplitQueue::create(mem, RING, 16);
        let n = descs.len();
        let raw: Vec<RawDescriptor> = descs
            .iter()
            .enumerate()
            .map(|(i, &(addr, len, flags))| {
                let (flags, next) = if i + 1 < n { (flags | VRING_DESC_F_NEXT as u16, i as u16 + 1) } else { (flags, 0) };
                RawDescriptor::from(Descriptor::new(addr, len, flags, next))
            })
            .collect();
        q.add_desc_chains(&raw, 0).unwrap();
        let mut queue: Queue = q.create_queue().unwrap();
        assert!(blk.process_queue(0, &mut queue, mem).unwrap());
        assert_eq!(q.used().idx().load(), 1);
        let e = q.used().ring().ref_at(0).unwrap().load();
        let mut st = [0u8];
        mem.read_slice(&mut st, GuestAddress(STATUS)).unwrap();
        (e.len(), st[0])
    }

    fn open(disk: &Scratch, read_only: bool) -> Blk {
        Blk::open(&DiskConfig::new(&disk.0, DiskFormat::Raw, read_only).unwrap()).unwrap()
    }

    const OK: u8 = VIRTIO_BLK_S_OK as u8;
    const IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;

    #[test]
    fn reads_the_sectors_asked_for() {
        let disk = Scratch::new("read", 8);
        let mut blk = open(&disk, false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_IN, 2);
        // Two data descriptors: a read may be scattered.
        let (len, st) = request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, W), (DATA + 0x1000, 512, W), (STATUS, 1, W)]);
        assert_eq!((len, st), (1025, OK));
        let mut got = vec![0u8; 512];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, vec![2u8; 512]);
        mem.read_slice(&mut got, GuestAddress(DATA + 0x1000)).unwrap();
        assert_eq!(got, vec![3u8; 512]);
        assert_eq!(blk.counters().reads, 1);
    }

    #[test]
    fn writes_and_flushes() {
        let disk = Scratch::new("write", 8);
        let mut blk = open(&disk, false);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_OUT, 5);
        mem.write_slice(&[0xabu8; 1024], GuestAddress(DATA)).unwrap();
        let (len, st) = request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 1024, 0), (STATUS, 1, W)]);
        assert_eq!((len, st), (1, OK));
        let bytes = disk.bytes();
        assert_eq!(&bytes[5 * 512..7 * 512], &[0xab; 1024][..]);
        assert_eq!(&bytes[4 * 512..5 * 512], &[4u8; 512][..]);
        assert_eq!(&bytes[7 * 512..], &[7u8; 512][..]);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (STATUS, 1, W)]), (1, OK));
        let c = blk.counters();
        assert_eq!((c.writes, c.flushes, c.errors), (1, 1, 0));
    }

    #[test]
    fn nothing_past_the_end() {
        let disk = Scratch::new("end", 8);
        let before = disk.bytes();
        let mut blk = open(&disk, false);
        let mem = memory();
        // The last sector reads; one more does not.
        header(&mem, VIRTIO_BLK_T_IN, 7);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]).1, OK);
        header(&mem, VIRTIO_BLK_T_IN, 7);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 1024, W), (STATUS, 1, W)]).1, IOERR);
        // A sector number whose byte offset overflows.
        header(&mem, VIRTIO_BLK_T_OUT, u64::MAX / 256);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]).1, IOERR);
        header(&mem, VIRTIO_BLK_T_OUT, 8);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]).1, IOERR);
        assert_eq!(disk.bytes(), before);
        assert_eq!(blk.counters().errors, 3);
    }

    #[test]
    fn a_read_only_disk_is_not_written() {
        let disk = Scratch::new("ro", 4);
        let before = disk.bytes();
        let mut blk = open(&disk, true);
        assert_ne!(blk.features() & (1 << VIRTIO_BLK_F_RO), 0);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        mem.write_slice(&[0xcdu8; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]), (1, IOERR));
        assert_eq!(disk.bytes(), before);
        // Reads and flushes still work.
        header(&mem, VIRTIO_BLK_T_IN, 1);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]), (513, OK));
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (STATUS, 1, W)]), (1, OK));
    }

    #[test]
    fn id_capacity_and_unknown_requests() {
        let disk = Scratch::new("id", 6);
        let mut blk = open(&disk, false);
        let mut cap = [0u8; 8];
        blk.read_config(0, &mut cap);
        assert_eq!(u64::from_le_bytes(cap), 6);
        let mut hi = [0xffu8; 4];
        blk.read_config(4, &mut hi);
        assert_eq!(hi, [0; 4]);
        blk.read_config(u64::MAX, &mut hi);
        assert_eq!(hi, [0; 4]);
        let mem = memory();
        header(&mem, VIRTIO_BLK_T_GET_ID, 0);
        let (len, st) = request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 20, W), (STATUS, 1, W)]);
        assert_eq!(st, OK);
        // The file's name, NUL-padded to 20 bytes.
        let mut name = disk.0.file_name().unwrap().as_encoded_bytes().to_vec();
        name.resize(20, 0);
        assert_eq!(len, 21);
        let mut got = vec![0xffu8; 20];
        mem.read_slice(&mut got, GuestAddress(DATA)).unwrap();
        assert_eq!(got, name);
        header(&mem, 11, 0); // VIRTIO_BLK_T_DISCARD: not offered
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (STATUS, 1, W)]), (1, VIRTIO_BLK_S_UNSUPP as u8));
    }

    #[test]
    fn broken_chains_complete_without_harm() {
        let disk = Scratch::new("broken", 4);
        let before = disk.bytes();
        let mut blk = open(&disk, false);
        let mem = memory();
        // No writable descriptor: no room for a status.
        header(&mem, VIRTIO_BLK_T_OUT, 0);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (DATA, 512, 0)]).0, 0);
        // A header cut short.
        assert_eq!(request(&mut blk, &mem, &[(HDR, 8, 0), (STATUS, 1, W)]), (1, IOERR));
        // Data outside guest memory.
        header(&mem, VIRTIO_BLK_T_IN, 0);
        assert_eq!(request(&mut blk, &mem, &[(HDR, 16, 0), (0x100_0000, 512, W), (STATUS, 1, W)]).0, 0);
        assert_eq!(disk.bytes(), before);
    }

    #[test]
    fn disks_of_odd_or_changed_sizes_are_refused() {
        let path = std::env::temp_dir().join(format!("vms-blk-{}-odd", std::process::id()));
        std::fs::write(&path, [0u8; 1000]).unwrap();
        let e = DiskConfig::new(&path, DiskFormat::Raw, false).unwrap_err();
        assert!(format!("{e:#}").contains("multiple of 512"), "{e:#}");
        std::fs::write(&path, []).unwrap();
        assert!(DiskConfig::new(&path, DiskFormat::Raw, false).is_err());
        std::fs::write(&path, [0u8; 1024]).unwrap();
        let config = DiskConfig::new(&path, DiskFormat::Raw, false).unwrap();
        std::fs::write(&path, [0u8; 2048]).unwrap();
        let e = Blk::open(&config).err().unwrap();
        assert!(format!("{e:#}").contains("2048 bytes now, 1024"), "{e:#}");
        // A read-only disk rewritten at the same size is refused too; a
        // writable one is the VM's to change.
        let config = DiskConfig::new(&path, DiskFormat::Raw, true).unwrap();
        assert!(config.path.is_absolute());
        Blk::open(&config).unwrap();
        let later = std::time::SystemTime::now() + std::time::Duration::from_secs(5);
        File::options().write(true).open(&path).unwrap().set_modified(later).unwrap();
        let e = Blk::open(&config).err().unwrap();
        assert!(format!("{e:#}").contains("was modified"), "{e:#}");
        Blk::open(&DiskConfig { read_only: false, ..config }).unwrap();
        std::fs::remove_file(&path).unwrap();
        assert!(DiskConfig::new(&path, DiskFormat::Raw, false).is_err());
    }

    #[test]
    fn a_frozen_disk_keeps_its_bytes_and_clones_get_overlays() {
        let s = Scratch::new("freeze", 64);
        let cfg = DiskConfig::new(&s.0, DiskFormat::Raw, false).unwrap();
        let mut b = Blk::open(&cfg).unwrap();
        b.file.write_at(&[0xaa; 512], 0).unwrap();
        let top = s.0.with_extension("top.qcow2");
        let frozen = b.freeze(&top, None).unwrap();
        assert_eq!(frozen.path, cfg.path);
        assert!(!frozen.read_only);
        assert_eq!(b.config().path, top);
        b.file.write_at(&[0xbb; 512], 0).unwrap();
        let mut buf = [0u8; 512];
        b.file.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf[0], 0xbb, "the VM reads its write after the freeze");
        b.file.read_at(&mut buf, 512).unwrap();
        assert_eq!(buf[0], 1, "and the layer's bytes under it");
        assert_eq!(s.bytes()[0], 0xaa, "the frozen file keeps the image's bytes");
        // Two clones of the image: the layer's bytes, each its own writes.
        let mut c1 = Blk::open_clone(&frozen, &s.0.with_extension("c1.qcow2")).unwrap();
        let c2 = Blk::open_clone(&frozen, &s.0.with_extension("c2.qcow2")).unwrap();
        c1.writable().unwrap().write_at(&[0xcc; 512], 0).unwrap();
        c2.file.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf[0], 0xaa);
        c1.file.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf[0], 0xcc);
        // Nobody may open the frozen layer for writing meanwhile.
        assert!(Blk::open(&cfg).is_err());
        drop((b, c1, c2));
        // A layer changed behind the image's back is refused.
        std::fs::OpenOptions::new().write(true).open(&s.0).unwrap().write_all_at(&[1], 0).unwrap();
        let e = Blk::open_clone(&frozen, &s.0.with_extension("c3.qcow2")).err().expect("refused");
        assert!(format!("{e:#}").contains("modified"), "{e:#}");
        for x in ["top.qcow2", "c1.qcow2", "c2.qcow2", "c3.qcow2"] {
            let _ = std::fs::remove_file(s.0.with_extension(x));
        }
    }

    /// A clone's overlay is made by its first write, not before; a live
    /// image of a clone that never wrote its disk keeps its image's
    /// layer as it is; a write request that cannot make the overlay fails
    /// with an I/O error and changes nothing.
    #[test]
    fn a_clone_makes_its_overlay_at_its_first_write() {
        let s = Scratch::new("lazy", 64);
        let cfg = DiskConfig::new(&s.0, DiskFormat::Raw, false).unwrap();
        let mut b = Blk::open(&cfg).unwrap();
        let frozen = b.freeze(&s.0.with_extension("top.qcow2"), None).unwrap();
        drop(b);
        let mem = memory();
        let over = s.0.with_extension("o1.qcow2");
        let mut c = Blk::open_clone(&frozen, &over).unwrap();
        assert!(!over.exists(), "no overlay before a write");
        assert_eq!(c.config().path, over);
        assert!(!c.config().read_only);
        // Reads and flushes need no overlay.
        header(&mem, VIRTIO_BLK_T_IN, 3);
        assert_eq!(request(&mut c, &mem, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]), (513, OK));
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 3);
        header(&mem, VIRTIO_BLK_T_FLUSH, 0);
        assert_eq!(request(&mut c, &mem, &[(HDR, 16, 0), (STATUS, 1, W)]).1, OK);
        assert!(!over.exists());
        // The frozen layer stays held: nobody writes it meanwhile.
        assert!(Blk::open(&cfg).is_err(), "the layer is locked");
        // A live image of the untouched clone: the same layer, no file.
        let again = c.freeze(&s.0.with_extension("o2.qcow2"), Some(&s.0.with_extension("moved"))).unwrap();
        assert_eq!(again, frozen);
        assert!(!s.0.with_extension("moved").exists());
        assert_eq!(c.config().path, s.0.with_extension("o2.qcow2"));
        // The first write makes the overlay; the layer keeps its bytes.
        mem.write_slice(&[0x5a; 512], GuestAddress(DATA)).unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        assert_eq!(request(&mut c, &mem, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]).1, OK);
        assert!(s.0.with_extension("o2.qcow2").exists());
        assert_eq!(c.config().format, DiskFormat::Qcow2);
        assert_ne!(c.config().modified, 0);
        assert_eq!(s.bytes()[3 * 512], 3, "the frozen layer is unchanged");
        header(&mem, VIRTIO_BLK_T_IN, 3);
        mem.write_slice(&[0u8; 512], GuestAddress(DATA)).unwrap();
        assert_eq!(request(&mut c, &mem, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]).1, OK);
        assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), 0x5a, "it reads its write");
        drop(c);
        // An overlay that cannot be made: the write fails, nothing moves.
        let blocked = s.0.with_extension("o3.qcow2");
        let mut d = Blk::open_clone(&frozen, &blocked).unwrap();
        std::fs::write(&blocked, b"someone else's").unwrap();
        header(&mem, VIRTIO_BLK_T_OUT, 3);
        assert_eq!(request(&mut d, &mem, &[(HDR, 16, 0), (DATA, 512, 0), (STATUS, 1, W)]).1, IOERR);
        assert_eq!(std::fs::read(&blocked).unwrap(), b"someone else's");
        assert_eq!(s.bytes()[3 * 512], 3);
        // An existing overlay path, or one in no directory, is refused at
        // the start.
        assert!(Blk::open_clone(&frozen, &blocked).is_err());
        let nowhere = s.0.with_extension("no-such-dir").join("o.qcow2");
        let e = Blk::open_clone(&frozen, &nowhere).err().expect("refused");
        assert!(format!("{e:#}").contains("directory"), "{e:#}");
        drop(d);
        for x in ["top.qcow2", "o1.qcow2", "o2.qcow2", "o3.qcow2"] {
            let _ = std::fs::remove_file(s.0.with_extension(x));
        }
    }

    /// A reset drops the VM's overlay and goes back to the image's
    /// bytes; its next write makes a new overlay at the same path; a
    /// clone that never wrote, or a read-only disk, is left as it is; a
    /// disk that is not an overlay of the image is refused, unchanged.
    #[test]
    fn a_reset_goes_back_to_the_image_disk() {
        let s = Scratch::new("reset", 64);
        let cfg = DiskConfig::new(&s.0, DiskFormat::Raw, false).unwrap();
        let mut b = Blk::open(&cfg).unwrap();
        let frozen = b.freeze(&s.0.with_extension("top.qcow2"), None).unwrap();
        drop(b);
        let over = s.0.with_extension("r1.qcow2");
        let mut c = Blk::open_clone(&frozen, &over).unwrap();
        c.reset_to(&frozen).unwrap();
        assert!(!over.exists(), "a clone that never wrote has nothing to drop");
        c.writable().unwrap().write_at(&[0x77; 512], 0).unwrap();
        assert!(over.exists());
        c.reset_to(&frozen).unwrap();
        assert!(!over.exists(), "the overlay went");
        let mut buf = [0u8; 512];
        c.file.read_at(&mut buf, 0).unwrap();
        assert_eq!(buf[0], 0, "the image's byte again");
        assert_eq!(c.config().path, over);
        c.writable().unwrap().write_at(&[0x78; 512], 512).unwrap();
        assert!(over.exists(), "the next write makes a new overlay there");
        c.file.read_at(&mut buf, 512).unwrap();
        assert_eq!(buf[0], 0x78);
        assert_eq!(s.bytes()[512], 1, "the image's layer is unchanged");
        let leftovers = std::fs::read_dir(std::env::temp_dir())
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().contains("r1.qcow2.reset-"))
            .count();
        assert_eq!(leftovers, 0, "nothing left aside");
        // Another image's disk: refused, the overlay kept.
        let other = Scratch::new("reset-other", 64);
        let ocfg = DiskConfig::new(&other.0, DiskFormat::Raw, true).unwrap();
        let not_ro = DiskConfig { read_only: false, ..ocfg.clone() };
        let e = c.reset_to(&not_ro).expect_err("refused");
        assert!(format!("{e:#}").contains("not an overlay"), "{e:#}");
        c.file.read_at(&mut buf, 512).unwrap();
        assert_eq!(buf[0], 0x78, "unchanged");
        // A read-only disk is the image's disk already.
        let mut r = Blk::open(&ocfg).unwrap();
        r.reset_to(&ocfg).unwrap();
        drop(c);
        for x in ["top.qcow2", "r1.qcow2"] {
            let _ = std::fs::remove_file(s.0.with_extension(x));
        }
    }

    /// A clone of a qcow2 layer reads it through its chain; the qcow2
    /// file is opened at the first read, and one that cannot be opened
    /// then fails that read with an I/O error, not the start.
    #[test]
    fn a_clone_opens_a_qcow2_layer_at_its_first_read() {
        let s = Scratch::new("deferred", 64);
        let cfg = DiskConfig::new(&s.0, DiskFormat::Raw, false).unwrap();
        let mut b = Blk::open(&cfg).unwrap();
        b.freeze(&s.0.with_extension("t1.qcow2"), None).unwrap();
        b.file.write_at(&[0x77; 512], 5 * 512).unwrap();
        let second = b.freeze(&s.0.with_extension("t2.qcow2"), None).unwrap();
        drop(b);
        assert_eq!(second.format, DiskFormat::Qcow2);
        let mem = memory();
        let mut c = Blk::open_clone(&second, &s.0.with_extension("c.qcow2")).unwrap();
        for (sector, want) in [(5, 0x77), (6, 6)] {
            header(&mem, VIRTIO_BLK_T_IN, sector);
            assert_eq!(request(&mut c, &mem, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]).1, OK);
            assert_eq!(mem.read_obj::<u8>(GuestAddress(DATA)).unwrap(), want, "sector {sector}");
        }
        drop(c);
        // The layer's header broken behind the image's back, its
        // modification time put back: the start cannot tell, the read can.
        let top = s.0.with_extension("t1.qcow2");
        let when = std::fs::metadata(&top).unwrap().modified().unwrap();
        let f = std::fs::OpenOptions::new().write(true).open(&top).unwrap();
        f.write_all_at(&[0u8; 8], 0).unwrap();
        f.set_modified(when).unwrap();
        drop(f);
        let mut d = Blk::open_clone(&second, &s.0.with_extension("d.qcow2")).unwrap();
        header(&mem, VIRTIO_BLK_T_IN, 5);
        assert_eq!(request(&mut d, &mem, &[(HDR, 16, 0), (DATA, 512, W), (STATUS, 1, W)]).1, IOERR);
        drop(d);
        for x in ["t1.qcow2", "t2.qcow2", "c.qcow2", "d.qcow2"] {
            let _ = std::fs::remove_file(s.0.with_extension(x));
        }
    }

    /// Two live images of one VM: the first image's layer is held and
    /// checked through the second's overlays too, and a freeze never
    /// replaces an existing file.
    #[test]
    fn every_layer_of_a_chain_is_held_and_checked() {
        let s = Scratch::new("chain", 64);
        let cfg = DiskConfig::new(&s.0, DiskFormat::Raw, false).unwrap();
        let mut b = Blk::open(&cfg).unwrap();
        let first = b.freeze(&s.0.with_extension("t1.qcow2"), None).unwrap();
        let second = b.freeze(&s.0.with_extension("t2.qcow2"), None).unwrap();
        assert_eq!(second.backing.len(), 1);
        assert_eq!(second.backing[0].path, first.path);
        assert_eq!(b.config().backing.len(), 2);
        // The bottom file is held while the VM runs on the chain.
        assert!(Blk::open(&cfg).is_err(), "the bottom layer is locked");
        let c = Blk::open_clone(&second, &s.0.with_extension("c.qcow2")).unwrap();
        drop((b, c));
        // Changed while nobody held it: a clone of the second image refuses.
        std::fs::OpenOptions::new().write(true).open(&s.0).unwrap().write_all_at(&[9], 0).unwrap();
        let e = Blk::open_clone(&second, &s.0.with_extension("d.qcow2")).err().expect("refused");
        assert!(format!("{e:#}").contains("modified"), "{e:#}");
        assert!(!s.0.with_extension("d.qcow2").exists(), "the refused clone's overlay is removed");
        // A freeze that would move its file onto an existing one fails and
        // leaves both as they were.
        let cfg = DiskConfig::new(&s.0, DiskFormat::Raw, false).unwrap();
        let mut b = Blk::open(&cfg).unwrap();
        let taken = s.0.with_extension("taken");
        std::fs::write(&taken, b"keep").unwrap();
        assert!(b.freeze(&s.0.with_extension("t3.qcow2"), Some(&taken)).is_err());
        assert_eq!(std::fs::read(&taken).unwrap(), b"keep");
        assert_eq!(b.config().path, cfg.path, "the VM goes on on its disk");
        b.file.write_at(&[1], 0).unwrap();
        drop(b);
        for x in ["t1.qcow2", "t2.qcow2", "t3.qcow2", "c.qcow2", "taken"] {
            let _ = std::fs::remove_file(s.0.with_extension(x));
        }
    }
}
