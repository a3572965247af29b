// SPDX-License-Identifier: GPL-2.0

//! The storage behind a virtio-blk device: a raw file (or block device),
//! or a qcow2 image, possibly a copy-on-write overlay of a frozen layer.
//!
//! Live images with a writable disk work by layers, as QEMU's external
//! snapshots do: in the pause that makes a live image, the disk's file is
//! flushed and *frozen* (nothing writes it again: it is the image's disk),
//! and the running VM goes on in a new qcow2 overlay whose backing file
//! is the frozen layer. Each clone of the image gets an overlay of its
//! own on the same frozen layer: blocks it has not written are read from
//! the shared layer, blocks it writes are its own. qcow2 through rust-vmm's
//! neighbour `imago` (sync mode, no async runtime) rather than a format
//! of our own, because QEMU and `qemu-img` read the same files (a clone's
//! disk can be inspected, committed or converted with them) and because
//! its backing chains are exactly the sharing this needs; reflinks would
//! tie vms to btrfs or XFS, device-mapper snapshots to block devices.
//!
//! Locks (`flock(2)`, as QEMU's image locking does with OFD locks): the
//! file a VM writes is held exclusively, every frozen layer under it
//! shared. A writable open of a layer a running VM uses (another
//! `vmsctl run --disk` of the same file, say) therefore fails at once
//! with a clear error instead of changing clones' disks under them. A
//! layer that changed while no VM held it is caught by its modification
//! time, which the live image records.

use std::fs::{File, OpenOptions};
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, ensure, Context, Result};
use imago::qcow2::Qcow2;
use imago::{FormatAccess, FormatCreateBuilder, FormatDriverBuilder, PermissiveImplicitOpenGate, Storage, StorageOpenOptions};
use serde::{Deserialize, Serialize};

/// The unit of the disk's size.
pub const SECTOR: u64 = 512;

/// How a disk file is laid out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum DiskFormat {
    /// The guest's bytes, as they are (a raw image or a block device).
    #[default]
    Raw,
    /// A qcow2 image (QEMU's format), possibly with a backing file.
    Qcow2,
}

impl DiskFormat {
    fn name(self) -> &'static str {
        match self {
            DiskFormat::Raw => "raw",
            DiskFormat::Qcow2 => "qcow2",
        }
    }
}

/// A disk as the VM was given it, and as a live image records it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct DiskConfig {
    /// The file: for a live image, its frozen layer.
    pub path: PathBuf,
    /// Its format (never guessed from the contents: a raw disk whose
    /// guest wrote a qcow2 header must stay raw).
    #[serde(default)]
    pub format: DiskFormat,
    /// The guest may not write it (`VIRTIO_BLK_F_RO`).
    pub read_only: bool,
    /// The guest-visible size in bytes.
    pub size: u64,
    /// The file's modification time (ns since the epoch) when the VM got
    /// it, or when a live image froze it: a clone refuses a layer that
    /// changed since.
    pub modified: i128,
    /// The frozen layers under `path` that vms made (its backing file
    /// first, then that one's): each is held shared while the disk is
    /// open and must keep its recorded modification time. A qcow2 file
    /// the user gave may have backing files of its own, which are the
    /// user's to keep unchanged.
    #[serde(default)]
    pub backing: Vec<Layer>,
}

/// A frozen layer of a disk, as recorded when it was frozen.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Layer {
    pub path: PathBuf,
    pub modified: i128,
}

impl DiskConfig {
    /// The disk at `path` (made absolute: clones start in other working
    /// directories), with its size and modification time now.
    pub fn new(path: &Path, format: DiskFormat, read_only: bool) -> Result<Self> {
        let path = std::fs::canonicalize(path).with_context(|| format!("disk {}", path.display()))?;
        let (size, modified) = identity(&path, format)?;
        Ok(Self { path, format, read_only, size, modified, backing: Vec::new() })
    }

    /// The config of a qcow2 overlay at `overlay` on the frozen layer
    /// `base`: writable, `base`'s size, `base` and its layers under it.
    /// Its `modified` is 0 until the file is made.
    pub fn overlay_of(base: &DiskConfig, overlay: &Path) -> Self {
        let below = Layer { path: base.path.clone(), modified: base.modified };
        DiskConfig {
            path: overlay.to_path_buf(),
            format: DiskFormat::Qcow2,
            read_only: false,
            size: base.size,
            modified: 0,
            backing: std::iter::once(below).chain(base.backing.iter().cloned()).collect(),
        }
    }

    /// Fails unless every frozen layer under the file (and, with `this`,
    /// the file itself) still has the modification time recorded when it
    /// was frozen: a layer changed behind a live image's back would change
    /// its clones' disks.
    pub fn check_frozen(&self, this: bool) -> Result<()> {
        let me = Layer { path: self.path.clone(), modified: self.modified };
        for l in this.then_some(&me).into_iter().chain(&self.backing) {
            ensure!(
                mtime(&l.path)? == l.modified,
                "disk layer {} was modified since a live image froze it (it must never be written again)",
                l.path.display()
            );
        }
        Ok(())
    }
}

/// The modification time of `path` in ns since the epoch.
fn mtime(path: &Path) -> Result<i128> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(path).with_context(|| format!("fstat of disk {}", path.display()))?;
    Ok(i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()))
}

/// The guest-visible size of the disk at `path` (a nonzero multiple of
/// 512 bytes) and its modification time.
fn identity(path: &Path, format: DiskFormat) -> Result<(u64, i128)> {
    let size = match format {
        DiskFormat::Raw => {
            let mut f = File::open(path).with_context(|| format!("opening disk {}", path.display()))?;
            std::io::Seek::seek(&mut f, std::io::SeekFrom::End(0))
                .with_context(|| format!("the size of disk {}", path.display()))?
        }
        DiskFormat::Qcow2 => open_qcow2(path, false)?.size(),
    };
    ensure!(
        size > 0 && size % SECTOR == 0,
        "disk {}: {size} bytes; a disk is a nonzero multiple of {SECTOR} bytes",
        path.display()
    );
    Ok((size, mtime(path)?))
}

fn open_qcow2(path: &Path, write: bool) -> Result<FormatAccess<imago::file::File>> {
    let q = Qcow2::<imago::file::File>::builder_path(path)
        .write(write)
        .open(PermissiveImplicitOpenGate::default())
        .with_context(|| format!("opening qcow2 disk {}{}", path.display(), if write { "" } else { " read-only" }))?;
    Ok(FormatAccess::new(q))
}

/// Takes `flock` lock `op` on `f` (without waiting).
fn lock(f: &File, op: libc::c_int, path: &Path, what: &str) -> Result<()> {
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    if unsafe { libc::flock(f.as_raw_fd(), op | libc::LOCK_NB) } != 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() == Some(libc::EWOULDBLOCK) {
            bail!("disk {} is in use: {what}", path.display());
        }
        return Err(e).with_context(|| format!("flock of disk {}", path.display()));
    }
    Ok(())
}

/// The open storage of a disk.
enum Backend {
    Raw(File),
    Qcow2(FormatAccess<imago::file::File>),
}

/// A disk's storage, open: the file the VM reads (and writes), the
/// layers under it held with shared locks.
pub struct DiskFile {
    backend: std::cell::OnceCell<Backend>,
    /// A read-only qcow2 file whose backend is opened at its first use
    /// ([`open_deferred`](Self::open_deferred)).
    deferred: Option<PathBuf>,
    /// The file the VM uses, locked: exclusively when it writes it.
    _top_lock: File,
    /// Shared locks on the frozen layers it reads through.
    _layer_locks: Vec<File>,
}

impl DiskFile {
    /// Opens `config`'s file, for writing unless it is read-only, and
    /// locks it, and every frozen layer under it shared.
    pub fn open(config: &DiskConfig) -> Result<Self> {
        Self::open_holding(config, None, false)
    }

    /// [`open`](Self::open) of a read-only disk (a clone's frozen layers,
    /// read until its first write), whose qcow2 structures are read at
    /// the first read instead of now: the files are opened and locked
    /// now, and a clone's start does not wait for the chain's headers and
    /// tables. A qcow2 file that cannot be opened then fails that read.
    pub fn open_deferred(config: &DiskConfig) -> Result<Self> {
        ensure!(config.read_only, "only a read-only disk opens deferred");
        Self::open_holding(config, None, true)
    }

    /// [`open`](Self::open), with the lock of the first layer under the
    /// file already held by `held` (a descriptor of its open file
    /// description: flock locks belong to that, so a `dup` holds them).
    fn open_holding(config: &DiskConfig, mut held: Option<File>, defer: bool) -> Result<Self> {
        let write = !config.read_only;
        let top = OpenOptions::new()
            .read(true)
            .write(write)
            .open(&config.path)
            .with_context(|| {
                format!(
                    "opening disk {}{}",
                    config.path.display(),
                    if write { " for reading and writing" } else { " read-only" }
                )
            })?;
        if write {
            lock(&top, libc::LOCK_EX, &config.path, "another VM, or a live image's clones, use it (a frozen layer is never written again)")?;
        } else {
            lock(&top, libc::LOCK_SH, &config.path, "a VM writes it")?;
        }
        let mut layer_locks = Vec::new();
        for l in &config.backing {
            if let Some(f) = held.take() {
                layer_locks.push(f);
                continue;
            }
            let f = File::open(&l.path).with_context(|| format!("opening disk layer {}", l.path.display()))?;
            lock(&f, libc::LOCK_SH, &l.path, "a VM writes it, and it is a live image's frozen layer")?;
            layer_locks.push(f);
        }
        let backend = std::cell::OnceCell::new();
        let mut deferred = None;
        match config.format {
            DiskFormat::Raw => {
                let _ = backend.set(Backend::Raw(top.try_clone().context("dup of the disk's fd")?));
            }
            DiskFormat::Qcow2 if defer => deferred = Some(config.path.clone()),
            DiskFormat::Qcow2 => {
                let _ = backend.set(Backend::Qcow2(open_qcow2(&config.path, write)?));
            }
        }
        Ok(Self { backend, deferred, _top_lock: top, _layer_locks: layer_locks })
    }

    /// The open storage, opened now if it was deferred.
    fn backend(&self) -> std::io::Result<&Backend> {
        if let Some(b) = self.backend.get() {
            return Ok(b);
        }
        let Some(path) = &self.deferred else {
            return Err(std::io::Error::other("the disk has no open storage"));
        };
        let q = open_qcow2(path, false).map_err(|e| std::io::Error::other(format!("{e:#}")))?;
        let _ = self.backend.set(Backend::Qcow2(q));
        self.backend.get().ok_or_else(|| std::io::Error::other("the disk has no open storage"))
    }

    /// Creates a qcow2 overlay at `overlay` on the frozen layer `base`
    /// and opens it for writing: a clone's own disk, or a VM's new top
    /// after a live image froze its old one. Refuses an existing file.
    /// (Clones make theirs at their first write, through
    /// [`freeze_into`](Self::freeze_into).)
    #[cfg(test)]
    pub fn create_overlay(base: &DiskConfig, overlay: &Path) -> Result<(Self, DiskConfig)> {
        Self::create_overlay_holding(base, overlay, None)
    }

    /// [`create_overlay`](Self::create_overlay) on a base whose lock
    /// `held` already holds (see [`open_holding`](Self::open_holding)).
    fn create_overlay_holding(base: &DiskConfig, overlay: &Path, held: Option<File>) -> Result<(Self, DiskConfig)> {
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(overlay)
            .with_context(|| format!("creating disk overlay {}", overlay.display()))?;
        drop(f);
        let made = (|| -> Result<(Self, DiskConfig)> {
            let file = <imago::file::File as Storage>::open(StorageOpenOptions::new().filename(overlay).write(true))
                .with_context(|| format!("opening {}", overlay.display()))?;
            Qcow2::<imago::file::File>::create_builder(file)
                .size(base.size)
                .backing(base.path.to_string_lossy().into_owned(), base.format.name().to_owned())
                .create()
                .with_context(|| format!("writing the qcow2 overlay {}", overlay.display()))?;
            let config = DiskConfig { modified: mtime(overlay)?, ..DiskConfig::overlay_of(base, overlay) };
            Ok((Self::open_holding(&config, held, false)?, config))
        })();
        if made.is_err() {
            let _ = std::fs::remove_file(overlay);
        }
        made
    }

    /// Goes on in a new overlay at `overlay` on this disk's file, frozen
    /// as `frozen` (the VM paused). The file's exclusive lock passes to
    /// the new overlay's hold on its base and becomes shared only once
    /// the overlay is made: nothing else can take the file in between,
    /// and a failure leaves this disk as it was, still exclusive.
    pub fn freeze_into(&self, frozen: &DiskConfig, overlay: &Path) -> Result<(Self, DiskConfig)> {
        let held = self._top_lock.try_clone().context("dup of the disk's lock")?;
        let (new, config) = Self::create_overlay_holding(frozen, overlay, Some(held))?;
        // Exclusive to shared cannot conflict: nobody else holds it.
        lock(&new._layer_locks[0], libc::LOCK_SH, &frozen.path, "a VM holds it")?;
        Ok((new, config))
    }

    pub fn read_at(&self, buf: &mut [u8], off: u64) -> std::io::Result<()> {
        match self.backend()? {
            Backend::Raw(f) => f.read_exact_at(buf, off),
            Backend::Qcow2(q) => q.read(buf, off),
        }
    }

    pub fn write_at(&self, buf: &[u8], off: u64) -> std::io::Result<()> {
        match self.backend()? {
            Backend::Raw(f) => f.write_all_at(buf, off),
            Backend::Qcow2(q) => q.write(buf, off),
        }
    }

    /// Makes what was written durable: the file's data, and for qcow2
    /// its metadata first.
    pub fn flush(&self) -> std::io::Result<()> {
        match self.backend()? {
            Backend::Raw(f) => f.sync_data(),
            Backend::Qcow2(q) => {
                q.flush()?;
                q.sync()
            }
        }
    }

    /// The size of the top file in bytes as allocated on its filesystem
    /// (a sparse file's blocks).
    pub fn allocated(path: &Path) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(path).map(|m| m.blocks() * 512).unwrap_or(0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scratch(name: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("vms-disk-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn an_overlay_reads_its_base_and_keeps_its_writes() {
        let d = scratch("overlay");
        let base = d.join("base.raw");
        std::fs::write(&base, vec![7u8; 1 << 20]).unwrap();
        let cfg = DiskConfig::new(&base, DiskFormat::Raw, false).unwrap();
        let (a, acfg) = DiskFile::create_overlay(&cfg, &d.join("a.qcow2")).unwrap();
        let (b, _) = DiskFile::create_overlay(&cfg, &d.join("b.qcow2")).unwrap();
        assert_eq!(acfg.size, 1 << 20);
        assert_eq!(acfg.format, DiskFormat::Qcow2);
        let mut buf = vec![0u8; 4096];
        a.write_at(&[9u8; 4096], 8192).unwrap();
        a.flush().unwrap();
        a.read_at(&mut buf, 8192).unwrap();
        assert!(buf.iter().all(|&x| x == 9), "a reads its own write");
        b.read_at(&mut buf, 8192).unwrap();
        assert!(buf.iter().all(|&x| x == 7), "b reads the base");
        assert!(std::fs::read(&base).unwrap().iter().all(|&x| x == 7), "the base is unchanged");
        // A writable open of the base while overlays use it: refused.
        let e = DiskFile::open(&cfg).err().expect("the base is locked");
        assert!(format!("{e:#}").contains("in use"), "{e:#}");
        drop((a, b));
        // An overlay of an overlay (a second live image level), reopened.
        let acfg2 = DiskConfig { read_only: true, ..acfg.clone() };
        let (c, _) = DiskFile::create_overlay(&acfg2, &d.join("c.qcow2")).unwrap();
        c.read_at(&mut buf, 8192).unwrap();
        assert!(buf.iter().all(|&x| x == 9));
        c.read_at(&mut buf, 0).unwrap();
        assert!(buf.iter().all(|&x| x == 7));
        drop(c);
        // An existing file is never overwritten.
        assert!(DiskFile::create_overlay(&cfg, &d.join("a.qcow2")).is_err());
        assert!(d.join("a.qcow2").exists());
        std::fs::remove_dir_all(&d).unwrap();
    }
}
