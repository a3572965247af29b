// SPDX-License-Identifier: GPL-2.0

//! Guest memory backends: the ways a VMM can give a VM the memory of an
//! image, each measured on the same guest programs.
//!
//! | [`Backend`]    | host memory behind the memslot                      |
//! |----------------|-----------------------------------------------------|
//! | `AnonFilled`   | anonymous memory the VMM filled with the image first |
//! | `AnonFresh`    | anonymous memory never touched (zero-filled on fault)|
//! | `VmsWarm`      | a vms clone of an image whose pages are all cached   |
//! | `VmsCold`      | a vms clone of a new image of the cold file          |
//! | `UffdMissing`  | anonymous memory, MISSING faults answered with       |
//! |                | `UFFDIO_COPY` from a mapping of the image file       |
//! | `UffdMissingCold` | the same, copying from the cold file              |
//! | `UffdMinor`    | a shmem (memfd) copy of the image mapped twice,      |
//! |                | MINOR faults answered with `UFFDIO_CONTINUE`         |
//! | `FilePrivate`  | `MAP_PRIVATE` of the image file, page cache warm     |
//! | `FilePrivateCold` | `MAP_PRIVATE` of the cold file                    |
//!
//! The *cold file* is a copy of the image file whose page cache is
//! dropped (`POSIX_FADV_DONTNEED`) before each use: on a disk
//! (`scripts/vm --disk`) every first touch of a page reads the disk; on
//! tmpfs nothing can be dropped (see [`in_memory`]).
//!
//! Anonymous memory never uses transparent huge pages (see
//! [`Mapping::anon`]): every backend maps 4 KiB pages, as vms does.
//!
//! A [`Backing`] holds one instance (with its uffd handler threads);
//! [`Backing::attach`] installs it as a VM's memslot.

use std::any::Any;
use std::fs::File;
use std::io;
use std::os::fd::FromRawFd;
use std::path::Path;
use std::sync::Arc;

pub use vms_selftests::host::Mapping;
use vms_selftests::host::{fadvise_dontneed, in_memory, resident_pages};
use vms_selftests::ksft::check;
use vms_selftests::kvm::Vm;
use vms_selftests::test_assert;
use vms_selftests::vms::{
    __vm_map_clone, image_create, image_dir, unique_name, vm_attach_clone, CloneMap, Image,
    ImageFile, VmsClone, PAGE_SIZE,
};

use crate::uffd::{self, Handler, Served, Uffd};

/// The file system `dir` is on, from `/proc/mounts`: "ext4 on
/// /dev/vda at /run/disk".
pub fn mount_of(dir: &Path) -> String {
    let dir = std::fs::canonicalize(dir).unwrap_or_else(|_| dir.to_path_buf());
    let mounts = std::fs::read_to_string("/proc/mounts").unwrap_or_default();
    mounts
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() >= 3 && dir.starts_with(f[1]))
                .then(|| (f[1].len(), format!("{} on {} at {}", f[2], f[0], f[1])))
        })
        .max_by_key(|(len, _)| *len)
        .map_or_else(|| "file system unknown".into(), |(_, d)| d)
}

/// Reads `file` through (its first `len` bytes), so that all its pages
/// are in the page cache.
pub fn warm_page_cache(file: &File, len: u64) {
    let mut buf = vec![0u8; 1 << 20];
    let mut at = 0;
    while at < len {
        let n = (len - at).min(buf.len() as u64) as usize;
        check(
            std::os::unix::fs::FileExt::read_exact_at(file, &mut buf[..n], at),
            "read image file",
        );
        at += n as u64;
    }
}

/// Drops the page cache of the cold file and checks it is gone (but on
/// tmpfs, where it cannot be).
#[track_caller]
fn make_cold(file: &ImageFile, len: u64) {
    fadvise_dontneed(file.file());
    if !in_memory(&image_dir()) {
        let left = resident_pages(file.file(), len);
        test_assert!(
            left <= len / PAGE_SIZE / 100,
            "{left} pages of the cold file stayed in the page cache after POSIX_FADV_DONTNEED"
        );
    }
}

/// A memfd of `size` bytes (shmem).
pub fn memfd(size: u64) -> File {
    // SAFETY: the name is a NUL-terminated string.
    let fd = unsafe { libc::memfd_create(c"vms-bench".as_ptr(), libc::MFD_CLOEXEC) };
    if fd < 0 {
        check::<(), _>(Err(io::Error::last_os_error()), "memfd_create");
    }
    // SAFETY: memfd_create returned a new fd that nothing else owns.
    let f = unsafe { File::from_raw_fd(fd) };
    check(f.set_len(size), "ftruncate memfd");
    f
}

/// A way of backing guest memory; see the module's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    AnonFilled,
    AnonFresh,
    VmsWarm,
    VmsCold,
    VmsPlain,
    VmsHva,
    UffdMissing,
    UffdMissingCold,
    UffdMinor,
    FilePrivate,
    FilePrivateCold,
}

impl Backend {
    /// Its name in tables and charts.
    pub fn name(self) -> &'static str {
        match self {
            Backend::AnonFilled => "anon, prefilled (ceiling)",
            Backend::AnonFresh => "anon, zero-fill on fault",
            Backend::VmsWarm => "vms, image cached (warm)",
            Backend::VmsCold => "vms, image cold",
            Backend::VmsPlain => "vms, warm, ordinary memslot (claimed)",
            Backend::VmsHva => "vms, warm, ordinary memslot, hva path",
            Backend::UffdMissing => "uffd MISSING + UFFDIO_COPY",
            Backend::UffdMissingCold => "uffd MISSING + UFFDIO_COPY, file cold",
            Backend::UffdMinor => "uffd MINOR + UFFDIO_CONTINUE (shmem)",
            Backend::FilePrivate => "MAP_PRIVATE of the image file",
            Backend::FilePrivateCold => "MAP_PRIVATE of the image file, cold",
        }
    }

    /// Its short name, for `--only`.
    pub fn key(self) -> &'static str {
        match self {
            Backend::AnonFilled => "anon",
            Backend::AnonFresh => "zero",
            Backend::VmsWarm => "vms-warm",
            Backend::VmsCold => "vms-cold",
            Backend::VmsPlain => "vms-plain",
            Backend::VmsHva => "vms-hva",
            Backend::UffdMissing => "uffd-missing",
            Backend::UffdMissingCold => "uffd-missing-cold",
            Backend::UffdMinor => "uffd-minor",
            Backend::FilePrivate => "private",
            Backend::FilePrivateCold => "private-cold",
        }
    }

    /// Whether the guest sees the image's contents (all but
    /// [`Backend::AnonFresh`], which reads zeros).
    pub fn has_image(self) -> bool {
        self != Backend::AnonFresh
    }

    /// Whether it reads the cold file (whose page cache each use drops).
    pub fn is_cold(self) -> bool {
        matches!(
            self,
            Backend::VmsCold | Backend::UffdMissingCold | Backend::FilePrivateCold
        )
    }
}

/// What every backing of one image shares: the image file (the pattern
/// of `vms_selftests::vms`), `/dev/vms` and, for [`Backend::VmsWarm`], an
/// image whose pages are all cached.
pub struct Source<'a> {
    /// `/dev/vms`, if the vms backends are measured.
    pub dev: Option<&'a File>,
    /// The image file.
    pub file: &'a ImageFile,
    /// A copy of it for the cold backends ([`Backend::is_cold`]), which
    /// drop its page cache before use; only they read it.
    pub cold: Option<&'a ImageFile>,
    /// Its size in bytes.
    pub size: u64,
    /// A warm image of `file` ([`Backend::VmsWarm`]).
    pub warm: Option<&'a Image>,
}

/// The host memory of one guest: one [`Backend`] instance. Fields drop
/// in order: the handlers stop, then the mappings go, then the clone,
/// then its image and file. The `_` fields are only held.
pub struct Backing {
    handlers: Vec<Handler>,
    /// What the guest's memslot maps, for host-side checks.
    map: Map,
    /// The other mapping of a MINOR memfd (the one the VMM fills).
    _alias: Option<Mapping>,
    /// The userfaultfds: they outlive their handlers, so the range stays
    /// registered until the backing goes.
    _uffds: Vec<Arc<Uffd>>,
    _memfd: Option<File>,
    clone: Option<VmsClone>,
    /// An image of the backing's own ([`Backend::VmsCold`]).
    image: Option<Image>,
    size: u64,
    backend: Backend,
}

enum Map {
    Host(Arc<Mapping>),
    Clone(Arc<CloneMap>),
}

impl Backing {
    /// Prepares `backend` for an image of `src.size` bytes whose guest
    /// is split into `shares` ranges, one per vCPU (each MISSING or MINOR
    /// range gets its own userfaultfd and handler thread, like
    /// `demand_paging_test`). Nothing here is timed.
    #[track_caller]
    pub fn new(src: &Source<'_>, backend: Backend, shares: u64) -> Self {
        let size = src.size;
        let mut handlers = Vec::new();
        let mut uffds = Vec::new();
        let (mut alias, mut shm, mut clone, mut image) = (None, None, None, None);
        let host = |m: io::Result<Mapping>| Arc::new(check(m, "mmap guest memory"));
        let map = match backend {
            Backend::AnonFilled => {
                let m = host(Mapping::anon(size));
                m.fill_from(src.file.file());
                Map::Host(m)
            }
            Backend::AnonFresh => Map::Host(host(Mapping::anon(size))),
            Backend::FilePrivate => {
                warm_page_cache(src.file.file(), size);
                Map::Host(host(Mapping::file(src.file.file(), size, false)))
            }
            Backend::FilePrivateCold => {
                let cold = src.cold.expect("a cold file");
                make_cold(cold, size);
                Map::Host(host(Mapping::file(cold.file(), size, false)))
            }
            Backend::VmsWarm | Backend::VmsPlain | Backend::VmsHva => {
                let c = src.warm.expect("a warm image").clone_create();
                let m = c.map();
                clone = Some(c);
                Map::Clone(m)
            }
            Backend::VmsCold => {
                // The cold file, its page cache dropped (on tmpfs that
                // does nothing), and a new image of it: nothing of it is
                // in the vms image cache. The image gets its own open
                // file: vms widens the readahead window of the open file
                // it is given, which the other cold rows must not inherit.
                let dev = src.dev.expect("/dev/vms");
                let cold = src.cold.expect("a cold file");
                make_cold(cold, size);
                let own = check(File::open(cold.path()), "open the cold image file");
                let i = image_create(dev, &unique_name("bench"), &own, size, 0);
                let c = i.clone_create();
                let m = c.map();
                (clone, image) = (Some(c), Some(i));
                Map::Clone(m)
            }
            Backend::UffdMissing | Backend::UffdMissingCold | Backend::UffdMinor => {
                let mode = if backend == Backend::UffdMinor {
                    uffd::Mode::Minor
                } else {
                    uffd::Mode::Missing
                };
                let (m, source) = if mode == uffd::Mode::Missing {
                    // The handlers copy from a mapping of the file.
                    let from = if backend == Backend::UffdMissingCold {
                        let cold = src.cold.expect("a cold file");
                        make_cold(cold, size);
                        cold
                    } else {
                        src.file
                    };
                    let source = Mapping::file_ro(from.file(), size);
                    let source = Arc::new(check(source, "mmap image file"));
                    (host(Mapping::anon(size)), Some(source))
                } else {
                    // A shmem copy of the image: the VMM fills the page
                    // cache through one mapping, the guest gets the
                    // other, whose page tables are empty.
                    let fd = memfd(size);
                    let a = check(Mapping::file(&fd, size, true), "mmap memfd");
                    a.fill_from(src.file.file());
                    let m = host(Mapping::file(&fd, size, true));
                    (alias, shm) = (Some(a), Some(fd));
                    (m, None)
                };
                for (start, len) in shares_of(size, shares) {
                    let u = Arc::new(check(Uffd::new(mode), "userfaultfd"));
                    check(u.register(m.hva() + start, len, mode), "UFFDIO_REGISTER");
                    handlers.push(Handler::start(u.clone(), mode, m.hva(), source.clone()));
                    uffds.push(u);
                }
                Map::Host(m)
            }
        };
        Backing {
            handlers,
            map,
            _alias: alias,
            _uffds: uffds,
            _memfd: shm,
            clone,
            image,
            size,
            backend,
        }
    }

    /// Installs the memory as memslot `slot` at `gpa` of `vm` (for a
    /// clone: `KVM_MEM_PAGE_PROVIDER` and `VMS_CLONE_ATTACH`).
    #[track_caller]
    pub fn attach(&self, vm: &mut Vm, slot: u32, gpa: u64) {
        match &self.map {
            Map::Clone(map) => {
                let clone = self.clone.as_ref().expect("a clone");
                match self.backend {
                    // What QEMU does on a named clone: a memslot without
                    // flags on its mapping, which vms.ko claims.
                    Backend::VmsPlain => check(
                        __vm_map_clone(vm, map, slot, gpa, 0, self.size, 0),
                        "KVM_SET_USER_MEMORY_REGION2",
                    ),
                    // The same without the claim (as without patch 0010
                    // or vms.ko's claimer): the memslot is made before the
                    // clone is mapped under it, so KVM finds no clone to
                    // ask about and resolves the hva (GUP of the mapping).
                    Backend::VmsHva => {
                        map.unmap();
                        check(
                            __vm_map_clone(vm, map, slot, gpa, 0, self.size, 0),
                            "KVM_SET_USER_MEMORY_REGION2",
                        );
                        map.remap(clone);
                    }
                    _ => vm_attach_clone(vm, clone, map, slot, gpa, 0, self.size),
                }
            }
            Map::Host(m) => {
                let owner: Arc<dyn Any + Send + Sync> = m.clone();
                // SAFETY: the range is `m`, which stays mapped while
                // `owner` (the same Arc) lives.
                let r = unsafe { vm.__add_memory_at(slot, 0, gpa, self.size, m.hva(), owner) };
                check(r, "KVM_SET_USER_MEMORY_REGION2");
            }
        }
    }

    /// Stops the userfaultfd handlers (after the guest is done) and
    /// returns what they did in total.
    pub fn stop_handlers(&mut self) -> Served {
        let mut total = Served::default();
        for h in self.handlers.drain(..) {
            let s = h.stop();
            total.faults += s.faults;
            total.resolved += s.resolved;
            total.exists += s.exists;
        }
        total
    }

    /// The u32 at guest memory byte `off`, read through the VMM's
    /// mapping.
    pub fn read_u32(&self, off: u64) -> u32 {
        match &self.map {
            Map::Host(m) => m.read_u32(off),
            Map::Clone(m) => m.read_u32(off),
        }
    }

    /// The clone, for the vms backends.
    pub fn clone(&self) -> Option<&VmsClone> {
        self.clone.as_ref()
    }

    /// The image of a cold clone.
    pub fn own_image(&self) -> Option<&Image> {
        self.image.as_ref()
    }
}

/// `size` bytes split into `n` page-aligned shares: (offset, length).
pub fn shares_of(size: u64, n: u64) -> Vec<(u64, u64)> {
    let pages = size / PAGE_SIZE;
    (0..n)
        .map(|i| {
            let first = pages * i / n;
            let end = pages * (i + 1) / n;
            (first * PAGE_SIZE, (end - first) * PAGE_SIZE)
        })
        .collect()
}
