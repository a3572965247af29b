// SPDX-License-Identifier: GPL-2.0

//! fuzz: random sequences of calls over the whole userspace interface of
//! vms, from several threads at once, with valid and invalid arguments.
//!
//! The calls:
//! - `/dev/vms`: `VMS_GET_VERSION`, `VMS_IMAGE_CREATE` (of a file and
//!   empty), `VMS_IMAGE_INFO`, `VMS_IMAGE_DELETE`, `VMS_IMAGE_LIST`,
//!   `VMS_CLONE_CREATE`, `VMS_IMAGE_SNAPSHOT`, unknown ioctls;
//! - clone fds: `VMS_CLONE_ATTACH`, `VMS_CLONE_STATS`, `VMS_CLONE_RESET`,
//!   `VMS_CLONE_TOUCHED`
//!   (with a good and a bad argument), unknown ioctls,
//!   close;
//! - every ioctl also with bad pointers (NULL, unmapped, kernel, a struct
//!   that runs into an unmapped page, read-only memory);
//! - `mmap` of clones (shared and private, read-only and read-write, in
//!   and out of range), unmapping parts of a mapping and mapping them
//!   again, `madvise`, reads and writes of clone pages from host threads
//!   (directly, and through the kernel's user copies), and `fork` of the
//!   process while it maps clones (the child reads and writes a few pages
//!   and exits);
//! - KVM: VM and vCPU creation and closes, memslots created, moved,
//!   deleted and changed (flags, among them `KVM_MEM_PAGE_PROVIDER` and
//!   `KVM_MEM_READONLY`), with valid and invalid arguments, and vCPU runs
//!   of small guests that read, write, or read and write forever the
//!   pages of a memslot (`selftests/lib/guest.rs`);
//! - image files truncated under their images.
//!
//! Objects live in shared pools (images, clones, mappings, VMs, image
//! files); each call picks random objects and random, sometimes invalid,
//! arguments. Each result must be one the ABI allows (`uapi/vms.h`; KVM's
//! for KVM calls), and where the model below predicts it exactly, that
//! one. A fault where none may happen (a `SIGBUS` in a forked child, a
//! `KVM_RUN` that fails with `EFAULT` on memory that is there), or a
//! guest or host thread reading wrong bytes fails the test, and so does a
//! `KVM_RUN` that runs for 30 s (a livelock).
//!
//! # The data model
//!
//! Every clone descends from a base image: a pattern file
//! (`selftests/lib/vms.rs`, page `i` of the image is pattern page
//! `i + shift`) or an empty image (zeros). The test keeps, per clone, the
//! set of pages whose pattern words (bytes 0 and 2048) someone may have
//! written: a page goes into the set before anyone writes it. A page
//! outside the set must read as its base image's page: bytes 4 to 7 (the
//! word every writer may change, "soft" writes that copy the page on write
//! but keep it checkable) are left out of the comparison. A snapshot's
//! image inherits its clone's set. A guest reaches a clone through a
//! memslot in one of two windows at fixed guest physical addresses
//! (`A_BASE` or `B_BASE` + clone page * 4096, whatever the memslot; a
//! move goes from one window to the other), so the page behind a guest
//! address never depends on when the guest read it. A third window
//! (`D_BASE`) holds memslots with odd host addresses (none, anonymous
//! memory, another clone's mapping); its bytes are not checked.
//!
//! When a run must succeed: a memslot with `KVM_MEM_PAGE_PROVIDER` that
//! its clone serves (attached with the same size), or one without it over
//! a mapping with the pages in place, of a clone whose fd is still open
//! and whose image file was never truncated, while no memslot of the VM
//! changed. Otherwise it may also end in `KVM_EXIT_MMIO` or a memory
//! fault, but still never read wrong bytes.
//!
//! # Replay
//!
//! Each run prints `# seed N`; `VMS_FUZZ_SEED=N` replays it. Each call
//! of each thread draws its choices from a generator seeded with the
//! seed, the thread and the call's number, so a replay makes every
//! thread draw the same sequence of calls and arguments. The threads'
//! interleaving is not replayed, and with it neither which objects the
//! pools held when a call picked one: with `VMS_FUZZ_THREADS=1` a replay
//! is exact up to what the kernel decides by itself (timing). Other
//! knobs: `VMS_FUZZ_CALLS=N` (total calls, default 50,000),
//! `VMS_FUZZ_THREADS=N` (default 4), `VMS_FUZZ_SKIP=op,op` (leave call
//! kinds out, to narrow a failure down; the names are those of the
//! per-kind counts the test prints).
//!
//! A failure prints the failing call as the thread drew it, with the last
//! calls of every thread.
//!
//! At the end everything is closed, every image deleted (each delete must
//! succeed then), the files removed, and free memory must come back to
//! within [`SLACK`] of where it started, measured at both ends with empty
//! slabs and clean caches given back (`host::shrink_caches`: the VMs a
//! run makes leave tens of MiB of empty slabs); `ksft::run` then checks
//! the kernel log.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::collections::VecDeque;
use std::fmt::Debug;
use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering::SeqCst};
use std::sync::{Arc, Mutex, MutexGuard, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::thread;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region2;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::host::{mem_free, mib, shrink_caches, Mapping};
use vms_selftests::ksft::{self, Test, Watchdog};
use vms_selftests::kvm::{self, set_flat_pm32, vcpu_set_entry, Exit, CODE_MEM_SIZE};
use vms_selftests::vms::{
    image_dir, pattern_byte, pattern_word, require_vms_and_kvm, vms_open, HI_OFFSET,
    PAGE_SIZE,
};
use vms_selftests::test_assert;
use vms_uapi::{
    set_name, VmsCloneAttach, VmsCloneCreate, VmsCloneFootprint, VmsCloneLimit, VmsCloneStats,
    VmsCloneTouched, VmsImageCreate, VmsImageInfo, VmsImageList, VmsImageSnapshot, VmsVersion, _IOC,
    _IOW, KVM_MEM_PAGE_PROVIDER, VMS_ABI_VERSION, VMS_CLONE_ATTACH, VMS_CLONE_CREATE,
    VMS_CLONE_FOOTPRINT, VMS_CLONE_RESET, VMS_CLONE_SET_LIMIT, VMS_CLONE_STATS, VMS_CLONE_TOUCHED,
    VMS_GET_VERSION, VMS_IMAGE_CREATE, VMS_IMAGE_DELETE, VMS_IMAGE_EMPTY, VMS_IMAGE_INFO,
    VMS_IMAGE_LIST, VMS_IMAGE_SNAPSHOT, VMS_IOCTL_TYPE, VMS_NAME_LEN,
};

/// Calls of a run unless `VMS_FUZZ_CALLS` says otherwise.
const CALLS: u64 = 50_000;
/// Threads unless `VMS_FUZZ_THREADS` says otherwise.
const THREADS: usize = 4;
/// How much free memory may stay below where it started.
const SLACK: u64 = 16 << 20;
/// A `KVM_RUN` that takes this long is a livelock: the guests walk at
/// most 64 pages.
const RUN_HANG: Duration = Duration::from_secs(30);
/// Any other call that takes this long is a hang.
const CALL_HANG: Duration = Duration::from_secs(120);

/// Pool limits: beyond them a creating call closes something instead.
const MAX_IMAGES: usize = 10;
const MAX_CLONES: usize = 8;
const MAX_MAPS: usize = 12;
const MAX_VMS: usize = 3;
/// Image files (each of 32 to 256 pattern pages).
const FILES: usize = 4;

/// Memslots a VM's calls use besides the code memory (slot 0): ids
/// `1..=NSLOTS`, each with a window of its clone fixed at the VM's
/// creation.
const NSLOTS: usize = 6;
/// vCPU ids `0..MAX_VCPUS`.
const MAX_VCPUS: usize = 3;
/// The most pages a window (and a guest walk) covers.
const MAX_WINDOW: u64 = 32;
/// Anonymous pages a VM keeps for memslots of the D window.
const SCRATCH_PAGES: u64 = 16;

/// The windows of guest physical memory (see the module's doc): clone
/// page `p` is at `A_BASE + p * 4096` or `B_BASE + p * 4096`; `D_BASE`
/// holds memslots whose bytes are not checked.
const A_BASE: u64 = 0x4000_0000;
const B_BASE: u64 = 0x8000_0000;
const D_BASE: u64 = 0xc000_0000;

const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1 << 0;
const KVM_MEM_READONLY: u32 = 1 << 1;
const KVM_MEM_GUEST_MEMFD: u32 = 1 << 2;
/// KVM's ioctl type.
const KVMIO: u32 = 0xae;
/// A page-aligned address in the kernel half: `access_ok` refuses it.
const KERNEL_ADDR: u64 = 0xffff_8880_0000_0000;
/// File descriptors that are never open.
const BAD_FDS: [RawFd; 3] = [-1, 1_000_000, i32::MIN];

// ---------------------------------------------------------------------------
// Random numbers

/// splitmix64's output function.
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// splitmix64: small, fast and good enough to pick calls.
struct Rng(u64);

impl Rng {
    /// The generator of call `call` of thread `thread` in the run `seed`.
    fn for_call(seed: u64, thread: usize, call: u64) -> Self {
        Rng(mix(mix(seed ^ mix(thread as u64 + 1)) ^ call))
    }

    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        mix(self.0)
    }

    /// Uniform in `0..n` (0 if `n` is 0).
    fn below(&mut self, n: u64) -> u64 {
        ((self.next() as u128 * n as u128) >> 64) as u64
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.below(hi - lo + 1)
    }

    /// True with `percent` percent probability.
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }

    /// A random element of `v`.
    fn pick<T: Clone>(&mut self, v: &[T]) -> Option<T> {
        if v.is_empty() {
            None
        } else {
            Some(v[self.below(v.len() as u64) as usize].clone())
        }
    }

    /// A random element of the pool `v`.
    fn pick_from<T: Clone>(&mut self, v: &Mutex<Vec<T>>) -> Option<T> {
        self.pick(&lock(v))
    }
}

// ---------------------------------------------------------------------------
// Helpers

/// Locks `m`; a lock a failed thread poisoned is still usable (the test
/// ends anyway, and cleans up).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(m: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    m.read().unwrap_or_else(|e| e.into_inner())
}

fn write<T>(m: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    m.write().unwrap_or_else(|e| e.into_inner())
}

/// A bug the test found (or a bug of the test): what happened.
#[derive(Debug)]
struct Bug(String);

type Res = Result<(), Bug>;

macro_rules! bug {
    ($($fmt:tt)+) => {
        return Err(Bug(format!($($fmt)+)))
    };
}

/// The errno of a result, 0 for success.
fn errno_of<T>(r: &io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap_or(-1),
    }
}

fn kvm_err<T>(r: Result<T, vmm_sys_util::errno::Error>) -> io::Result<T> {
    r.map_err(|e| io::Error::from_raw_os_error(e.errno()))
}

/// The name of an errno, for messages.
fn ename(e: i32) -> String {
    match (e, vms_uapi::errno_name(e)) {
        (0, _) => "success".into(),
        (_, Some(n)) => n.into(),
        (_, None) => format!("errno {e} ({})", ksft::strerror(e)),
    }
}

/// Checks that `r` is an allowed result of `what`: success if `ok`, or
/// one of the errnos `errs`.
fn expect<T: Debug>(r: &io::Result<T>, ok: bool, errs: &[i32], what: &str) -> Res {
    let got = errno_of(r);
    if (got == 0 && ok) || (got != 0 && errs.contains(&got)) {
        return Ok(());
    }
    let mut want: Vec<String> = errs.iter().map(|&e| ename(e)).collect();
    if ok {
        want.insert(0, "success".into());
    }
    match r {
        Ok(v) => bug!("{what}: succeeded ({v:?}), expected {}", want.join(" or ")),
        Err(_) => bug!("{what}: {}, expected {}", ename(got), want.join(" or ")),
    }
}

/// A name field holding `name`.
fn name_field(name: &str) -> [u8; VMS_NAME_LEN] {
    let mut f = [0u8; VMS_NAME_LEN];
    assert!(set_name(&mut f, name.as_bytes()), "name {name}");
    f
}

/// A name field `VMS_IMAGE_CREATE` and friends refuse with `EINVAL`.
fn bad_name_field(rng: &mut Rng) -> [u8; VMS_NAME_LEN] {
    let mut f = [0u8; VMS_NAME_LEN];
    match rng.below(4) {
        0 => {}                                  // empty
        1 => f[..4].copy_from_slice(b"a/b\n"),  // bad characters
        2 => f = [b'x'; VMS_NAME_LEN],           // no NUL
        _ => f[..3].copy_from_slice(b"a b"),
    }
    f
}

/// Issues ioctl `cmd` on `fd` with argument `arg`.
///
/// # Safety
///
/// As for [`vms_selftests::vms::__vms_ioctl`]: `arg` is valid for what `cmd` makes the kernel
/// read and write, or memory the kernel cannot access.
unsafe fn ioctl(fd: RawFd, cmd: u32, arg: u64) -> io::Result<i32> {
    // SAFETY: per this function's contract.
    let r = unsafe { libc::ioctl(fd, cmd as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Issues ioctl `cmd` on `fd` with a pointer to `arg`, whose type is the
/// argument type of `cmd` (any bit pattern is valid for it: the ABI
/// structs are plain integers).
fn ioctl_with<T>(fd: RawFd, cmd: u32, arg: &mut T) -> io::Result<i32> {
    // SAFETY: `arg` is a live, writable `T`, the argument type of `cmd`.
    unsafe { ioctl(fd, cmd, arg as *mut T as u64) }
}

// ---------------------------------------------------------------------------
// What the pages of a clone hold

/// Where a clone's pages come from when nobody wrote them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Root {
    /// A pattern file: clone page `p` is pattern page `p + shift`.
    File { shift: u64 },
    /// An empty image: zeros.
    Empty,
}

impl Root {
    /// Byte `off` of clone page `page`, as its base image holds it.
    /// Allocation-free: a forked child calls it.
    fn byte(self, page: u64, off: usize) -> u8 {
        match self {
            Root::Empty => 0,
            Root::File { shift } => {
                let p = page + shift;
                let w = pattern_word(p);
                let hi = HI_OFFSET as usize;
                if off < 4 {
                    w.to_le_bytes()[off]
                } else if (hi..hi + 4).contains(&off) {
                    (!w).to_le_bytes()[off - hi]
                } else {
                    pattern_byte(p, off)
                }
            }
        }
    }

    /// The walk of `pages` clone pages from `first` at guest address `gpa`
    /// that expects their base image's words.
    fn walk(self, gpa: u64, first: u64, pages: u64) -> Walk {
        match self {
            Root::Empty => Walk::zeros(gpa, pages),
            Root::File { shift } => Walk::pattern(gpa, first + shift, pages),
        }
    }
}

/// Bytes 4 to 7 of a page: what soft writes (host and guest) change.
fn soft_byte(off: usize) -> bool {
    (4..8).contains(&off)
}

/// A set of page numbers.
#[derive(Clone, Default)]
struct Bits(Vec<u64>);

impl Bits {
    fn new(n: u64) -> Self {
        Bits(vec![0; n.div_ceil(64) as usize])
    }

    fn get(&self, i: u64) -> bool {
        self.0
            .get((i / 64) as usize)
            .is_some_and(|w| w & (1 << (i % 64)) != 0)
    }

    fn set(&mut self, i: u64, v: bool) {
        let w = &mut self.0[(i / 64) as usize];
        if v {
            *w |= 1 << (i % 64);
        } else {
            *w &= !(1 << (i % 64));
        }
    }

    fn set_range(&mut self, from: u64, to: u64, v: bool) {
        for i in from..to {
            self.set(i, v);
        }
    }

    fn all(&self, from: u64, to: u64) -> bool {
        (from..to).all(|i| self.get(i))
    }
}

// ---------------------------------------------------------------------------
// The objects

/// An image file: `junk` pages of 0xee, then `pages` pattern pages.
struct FileObj {
    path: PathBuf,
    pages: u64,
    junk: u64,
    /// Was truncated (set before a truncation starts, cleared if it did not
    /// happen): its images' pages may fail to read.
    truncated: AtomicBool,
    /// Truncations in flight.
    truncating: AtomicU32,
    /// Bytes from the start that still hold what `create` wrote: the
    /// shortest length the file was truncated to, and the lengths of the
    /// truncations in flight. A truncation that makes the file longer
    /// again leaves a hole of zeros, and an image made of the file after
    /// that rightly reads zeros there.
    intact: Mutex<(u64, Vec<u64>)>,
}

impl FileObj {
    /// Writes a new pattern file. The file is closed when this returns: an
    /// image must not be made of a file open for writing.
    fn create(name: &str, pages: u64, junk: u64) -> io::Result<Self> {
        let path = image_dir().join(format!("vms-{name}.img"));
        {
            let f = OpenOptions::new()
                .write(true)
                .create(true)
                .truncate(true)
                .open(&path)?;
            f.write_all_at(&vec![0xee; (junk * PAGE_SIZE) as usize], 0)?;
            let mut buf = vec![0u8; (pages * PAGE_SIZE) as usize];
            for (i, p) in buf.chunks_mut(PAGE_SIZE as usize).enumerate() {
                vms_selftests::vms::fill_pattern_page(i as u64, p);
            }
            f.write_all_at(&buf, junk * PAGE_SIZE)?;
        }
        Ok(FileObj {
            path,
            pages,
            junk,
            truncated: AtomicBool::new(false),
            truncating: AtomicU32::new(0),
            intact: Mutex::new(((junk + pages) * PAGE_SIZE, Vec::new())),
        })
    }

    fn len(&self) -> u64 {
        (self.junk + self.pages) * PAGE_SIZE
    }

    /// How many bytes from the start may still be trusted (see `intact`).
    fn intact(&self) -> u64 {
        let g = lock(&self.intact);
        g.1.iter().fold(g.0, |a, &b| a.min(b))
    }
}

impl Drop for FileObj {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.path);
    }
}

/// An image in the module.
struct ImageObj {
    name: String,
    pages: u64,
    root: Root,
    /// The base image's file, if any: when it is truncated, reads may fail.
    file: Option<Arc<FileObj>>,
    /// Pages that may differ from the base image (frozen).
    written: Bits,
    generation: u64,
    parent: Option<Arc<ImageObj>>,
    /// Deletes in flight, and whether one succeeded.
    deleting: AtomicU32,
    deleted: AtomicBool,
}

impl ImageObj {
    /// Whether a call that found no image of this name is explained: a
    /// delete of it succeeded or is in flight (`me`: the caller's own).
    fn gone(&self, me: u32) -> bool {
        self.deleted.load(SeqCst) || self.deleting.load(SeqCst) > me
    }
}

fn tainted(file: &Option<Arc<FileObj>>) -> bool {
    file.as_ref().is_some_and(|f| f.truncated.load(SeqCst))
}

/// A clone and its fd.
struct CloneObj {
    id: u64,
    pages: u64,
    root: Root,
    file: Option<Arc<FileObj>>,
    /// `None` once closed. Readers use the fd number under the lock, so it
    /// is never a number reused by another open.
    fd: RwLock<Option<OwnedFd>>,
    closed: AtomicBool,
    /// Pages whose pattern words may have been written.
    written: Mutex<Bits>,
    /// Its image now (a snapshot replaces it).
    image: Mutex<Arc<ImageObj>>,
    /// The VM it serves (`VmObj::id`), once attached.
    bound: Mutex<Option<u64>>,
    /// VMs that made a memslot without `KVM_MEM_PAGE_PROVIDER` on a
    /// mapping of it: vms.ko may have claimed it for them (patch 0010),
    /// and the clone may then serve one of them without an attach, until
    /// the mapping goes (it then leaves the VM from a workqueue, at a time
    /// the test cannot know).
    claimers: Mutex<Vec<u64>>,
}

impl CloneObj {
    fn tainted(&self) -> bool {
        tainted(&self.file)
    }

    /// Where the clone's pages come from, for messages.
    fn origin(&self) -> String {
        let image = lock(&self.image).name.clone();
        match &self.file {
            Some(f) => format!(
                "image {image}, {:?} of {}{}",
                self.root,
                f.path.display(),
                if f.truncated.load(SeqCst) { ", which was truncated" } else { "" }
            ),
            None => format!("image {image}, empty"),
        }
    }

    /// Whether page `p` may differ from the base image.
    fn written(&self, p: u64) -> bool {
        lock(&self.written).get(p)
    }

    /// Whether page `p` may read as zeros: its bytes in the image file were
    /// cut off by a truncation before the image was made (a truncation
    /// while an image uses the file fails).
    fn hole(&self, p: u64) -> bool {
        match (&self.file, self.root) {
            (Some(f), Root::File { shift }) => (f.junk + shift + p + 1) * PAGE_SIZE > f.intact(),
            _ => false,
        }
    }

    /// Whether page `p` may read other than the base image's bytes.
    fn unchecked(&self, p: u64) -> bool {
        self.written(p) || self.hole(p)
    }

    /// Compares what was read of page `p` with the model; `how` says how
    /// it was read.
    fn check_page(&self, p: u64, data: &[u8], how: &str) -> Res {
        let bad = (0..data.len()).find(|&off| !soft_byte(off) && data[off] != self.root.byte(p, off));
        if let Some(off) = bad {
            // Checked after the read: a writer marks the page first.
            if !self.unchecked(p) {
                let word = |d: &[u8], o: usize| u32::from_le_bytes(d[o & !3..(o & !3) + 4].try_into().unwrap());
                let want: Vec<u8> = (0..data.len()).map(|o| self.root.byte(p, o)).collect();
                bug!(
                    "clone {} page {p} ({how}): byte {off} is {:#04x}, expected {:#04x} \
                     (word {:#010x}, expected {:#010x}; word 0 {:#010x}, expected {:#010x}); \
                     nobody wrote the page; {}",
                    self.id,
                    data[off],
                    want[off],
                    word(data, off),
                    word(&want, off),
                    word(data, 0),
                    word(&want, 0),
                    self.origin()
                );
            }
        }
        Ok(())
    }
}

/// A mapping of (part of) a clone: `pages` pages from clone page `pgoff`
/// at `addr`.
///
/// # Invariants
///
/// `addr..addr + pages * 4096` is reserved for this value until it is
/// dropped: each page is either mapped from the clone (at its page
/// `pgoff + i`; `present` says which) or an inaccessible anonymous
/// mapping. Memslots that use the range hold an `Arc` of it.
struct MapObj {
    id: u64,
    clone: Arc<CloneObj>,
    addr: usize,
    pages: u64,
    pgoff: u64,
    writable: bool,
    present: RwLock<Bits>,
    /// Bumped before and after every change of `present`.
    seq: AtomicU64,
}

impl MapObj {
    fn hva(&self, page: u64) -> u64 {
        self.addr as u64 + page * PAGE_SIZE
    }

    fn prot(&self) -> i32 {
        if self.writable {
            libc::PROT_READ | libc::PROT_WRITE
        } else {
            libc::PROT_READ
        }
    }

    /// Replaces pages `a..b` with an inaccessible anonymous mapping (the
    /// clone's pages are unmapped, the range stays ours).
    fn punch(&self, present: &mut Bits, a: u64, b: u64) -> io::Result<()> {
        // Bumped before the change too: a vCPU run that overlaps any part
        // of it sees a new value when it ends (bumped only after, a run
        // that faulted on the new PROT_NONE pages could end between the
        // mmap and the bump and take its EFAULT for a bug).
        self.seq.fetch_add(1, SeqCst);
        // SAFETY: MAP_FIXED over a range this value reserves (invariant);
        // no reference into it exists (accesses are copies).
        let p = unsafe {
            libc::mmap(
                self.hva(a) as *mut libc::c_void,
                ((b - a) * PAGE_SIZE) as usize,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        present.set_range(a, b, false);
        self.seq.fetch_add(1, SeqCst);
        Ok(())
    }
}

impl Drop for MapObj {
    fn drop(&mut self) {
        // SAFETY: the range is ours (invariant) and nothing uses it any
        // more: memslots that did hold an Arc of this value.
        unsafe { libc::munmap(self.addr as *mut libc::c_void, (self.pages * PAGE_SIZE) as usize) };
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Region {
    A,
    B,
    D,
}

impl Region {
    fn base(self) -> u64 {
        match self {
            Region::A => A_BASE,
            Region::B => B_BASE,
            Region::D => D_BASE,
        }
    }
}

/// A memslot as the test made it.
#[derive(Clone)]
struct Slot {
    region: Region,
    /// First clone page (A and B: the page at `gpa`), or page in D.
    first: u64,
    pages: u64,
    flags: u32,
    hva: u64,
    /// The mapping `hva` is in, kept reserved while the memslot exists.
    map: Option<Arc<MapObj>>,
}

impl Slot {
    fn gpa(&self) -> u64 {
        self.region.base() + self.first * PAGE_SIZE
    }

    fn end(&self) -> u64 {
        self.gpa() + self.pages * PAGE_SIZE
    }
}

/// A VM's memslots and attachments, as the test made them.
#[derive(Clone, Default)]
struct Layout {
    slots: [Option<Slot>; NSLOTS + 1],
    /// `VMS_CLONE_ATTACH`es of the VM's clone that succeeded: slot, first
    /// page, pages.
    attached: Vec<(u32, u64, u64)>,
}

impl Layout {
    /// Whether guest range `gpa..end` overlaps a memslot other than `s`
    /// (the code memory included).
    fn overlaps(&self, s: usize, gpa: u64, end: u64) -> bool {
        if gpa < CODE_MEM_SIZE as u64 {
            return true;
        }
        self.slots
            .iter()
            .enumerate()
            .any(|(i, o)| i != s && o.as_ref().is_some_and(|o| gpa < o.end() && o.gpa() < end))
    }
}

/// A VM: its fds, code memory, the clone it is for and the windows of that
/// clone its memslots 1..=NSLOTS serve.
struct VmObj {
    id: u64,
    // The vCPUs and the VM fd first: fields drop in order, and the memory
    // below must outlive every vCPU.
    vcpus: [Mutex<Option<VcpuFd>>; MAX_VCPUS],
    fd: Mutex<Option<VmFd>>,
    layout: Mutex<Layout>,
    /// Odd while a memslot call is in flight; bumped around each.
    seq: AtomicU64,
    created: [AtomicBool; MAX_VCPUS],
    clone: Arc<CloneObj>,
    windows: [(u64, u64); NSLOTS + 1],
    /// A mapping of the whole clone, for memslots no other mapping fits.
    main: Arc<MapObj>,
    /// Memslot 0 at gpa 0: vCPU `i`'s program is at `guest::code_gpa(i)`.
    code: Mapping,
    scratch: Mapping,
    /// Clones on whose mappings it made a memslot without
    /// `KVM_MEM_PAGE_PROVIDER`: a claim may have made one of them its
    /// provider.
    providers: Mutex<Vec<u64>>,
}

// ---------------------------------------------------------------------------
// The shared state

/// What one worker thread is doing, for hang and failure reports.
#[derive(Default)]
struct ThreadState {
    /// The call in progress.
    desc: Mutex<String>,
    /// When it started (ms since the start of the run; 0: idle).
    since: AtomicU64,
    in_run: AtomicBool,
    kicked: AtomicBool,
    pthread: AtomicU64,
    history: Mutex<VecDeque<String>>,
}

/// The kinds of calls, with their weights.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Version,
    BadIoctl,
    ImageFile,
    ImageEmpty,
    ImageBad,
    Info,
    List,
    Delete,
    Clone,
    CloneBad,
    CloneClose,
    Stats,
    Reset,
    Snapshot,
    SnapshotBad,
    Attach,
    AttachBad,
    Mmap,
    MmapBad,
    Punch,
    Remap,
    Unmap,
    Madvise,
    Read,
    Write,
    Fork,
    VmCreate,
    VcpuCreate,
    VmClose,
    VcpuClose,
    VmDrop,
    SlotCreate,
    SlotDelete,
    SlotMove,
    SlotFlags,
    SlotBad,
    Run,
    Truncate,
    Refresh,
}

const OPS: &[(Op, u64)] = &[
    (Op::Version, 2),
    (Op::BadIoctl, 2),
    (Op::ImageFile, 4),
    (Op::ImageEmpty, 2),
    (Op::ImageBad, 3),
    (Op::Info, 3),
    (Op::List, 2),
    (Op::Delete, 3),
    (Op::Clone, 5),
    (Op::CloneBad, 2),
    (Op::CloneClose, 2),
    (Op::Stats, 2),
    (Op::Reset, 2),
    (Op::Snapshot, 3),
    (Op::SnapshotBad, 2),
    (Op::Attach, 4),
    (Op::AttachBad, 3),
    (Op::Mmap, 4),
    (Op::MmapBad, 2),
    (Op::Punch, 2),
    (Op::Remap, 2),
    (Op::Unmap, 1),
    (Op::Madvise, 2),
    (Op::Read, 8),
    (Op::Write, 5),
    (Op::Fork, 1),
    (Op::VmCreate, 2),
    (Op::VcpuCreate, 2),
    (Op::VmClose, 1),
    (Op::VcpuClose, 1),
    (Op::VmDrop, 1),
    (Op::SlotCreate, 4),
    (Op::SlotDelete, 2),
    (Op::SlotMove, 2),
    (Op::SlotFlags, 3),
    (Op::SlotBad, 2),
    (Op::Run, 12),
    (Op::Truncate, 1),
    (Op::Refresh, 1),
];

/// Counts per kind of call: calls, successes, milliseconds spent.
type Counts = Vec<(u64, u64, u64)>;

struct Fuzz {
    seed: u64,
    t0: Instant,
    dev: File,
    kvm: Kvm,
    files: Mutex<Vec<Arc<FileObj>>>,
    images: Mutex<Vec<Arc<ImageObj>>>,
    clones: Mutex<Vec<Arc<CloneObj>>>,
    maps: Mutex<Vec<Arc<MapObj>>>,
    vms: Mutex<Vec<Arc<VmObj>>>,
    /// An image that exists for the whole run: a name that is taken.
    anchor: String,
    /// Direct accesses to clone pages and forks hold it for reading,
    /// truncations and the writing of a new image file for writing: an
    /// access that starts on an untruncated file's clone sees no SIGBUS,
    /// and no forked child inherits a file open for writing.
    truncate_gate: RwLock<()>,
    /// Open fds of the wrong kind: a directory, a write-only file.
    dir: File,
    wronly: File,
    wronly_path: PathBuf,
    /// Three pages: read-write, inaccessible, read-only (bad pointers).
    bad: Mapping,
    next_id: AtomicU64,
    stop: AtomicBool,
    failures: Mutex<Vec<String>>,
    /// Rare calls whose effects last (truncations), printed on a failure.
    events: Mutex<Vec<String>>,
    threads: Vec<ThreadState>,
    skip: Vec<Op>,
}

/// How an ioctl argument is bad.
#[derive(Debug, Clone, Copy)]
enum BadPtr {
    Null,
    Unmapped,
    Kernel,
    /// The struct starts on a readable page and runs into an unmapped one.
    Straddle,
    /// Readable (all zeros) but not writable.
    ReadOnly,
}

impl Fuzz {
    fn id(&self) -> u64 {
        self.next_id.fetch_add(1, SeqCst)
    }

    /// A name no image ever had.
    fn new_name(&self) -> String {
        format!("fz{}-{}", std::process::id(), self.id())
    }

    fn ms(&self) -> u64 {
        self.t0.elapsed().as_millis() as u64 + 1
    }

    /// A bad pointer for a struct of `size` bytes.
    fn bad_ptr(&self, rng: &mut Rng, size: usize) -> (BadPtr, u64) {
        let base = self.bad.hva();
        match rng.below(5) {
            0 => (BadPtr::Null, 0),
            1 => (BadPtr::Unmapped, base + PAGE_SIZE),
            2 => (BadPtr::Kernel, KERNEL_ADDR),
            3 => (BadPtr::Straddle, base + PAGE_SIZE - (size as u64 / 2).max(1)),
            _ => (BadPtr::ReadOnly, base + 2 * PAGE_SIZE),
        }
    }

    /// A fd of the wrong kind for `VMS_IMAGE_SNAPSHOT` and
    /// `VMS_CLONE_ATTACH`'s `vm_fd`: `/dev/vms`, `/dev/kvm` or a directory
    /// (`EINVAL`).
    fn wrong_fd(&self, rng: &mut Rng) -> RawFd {
        match rng.below(3) {
            0 => self.dev.as_raw_fd(),
            1 => self.kvm.as_raw_fd(),
            _ => self.dir.as_raw_fd(),
        }
    }

    fn failed(&self) -> bool {
        self.stop.load(SeqCst)
    }

    fn record_failure(&self, msg: String) {
        lock(&self.failures).push(msg);
        self.stop.store(true, SeqCst);
    }
}

// ---------------------------------------------------------------------------
// A worker thread and its calls

/// What a `KVM_RUN` of a program gave.
type RunResult = Result<Outcome, i32>;

struct Worker<'a> {
    f: &'a Fuzz,
    t: usize,
    call: u64,
    /// A pipe to copy clone pages through the kernel's user copies, which
    /// fail with `EFAULT` where a direct access would raise a signal.
    pipe_r: OwnedFd,
    pipe_w: OwnedFd,
    counts: Counts,
}

impl<'a> Worker<'a> {
    fn new(f: &'a Fuzz, t: usize) -> Self {
        let mut fds = [0; 2];
        // SAFETY: `fds` has room for the two fds pipe2 returns.
        let r = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
        assert_eq!(r, 0, "pipe2: {}", io::Error::last_os_error());
        // SAFETY: pipe2 succeeded: both fds are new and ours.
        let (pipe_r, pipe_w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // The read end never blocks: every read follows a write that put
        // the bytes there, except the drain after a faulting write.
        // SAFETY: fcntl on our own descriptor.
        unsafe { libc::fcntl(pipe_r.as_raw_fd(), libc::F_SETFL, libc::O_NONBLOCK) };
        Worker {
            f,
            t,
            call: 0,
            pipe_r,
            pipe_w,
            counts: vec![(0, 0, 0); OPS.len()],
        }
    }

    fn ts(&self) -> &ThreadState {
        &self.f.threads[self.t]
    }

    /// Records what the call about to be made is.
    fn note(&self, desc: String) {
        let line = format!("call {}: {desc}", self.call);
        let ts = self.ts();
        *lock(&ts.desc) = line.clone();
        let mut h = lock(&ts.history);
        if h.len() == 12 {
            h.pop_front();
        }
        h.push_back(line);
    }

    /// Runs this thread's share of the calls.
    fn run(&mut self, calls: u64) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.ts().pthread.store(me as u64, SeqCst);
        for call in 0..calls {
            if self.f.failed() {
                break;
            }
            self.call = call;
            let mut rng = Rng::for_call(self.f.seed, self.t, call);
            let op = pick_op(&mut rng, &self.f.skip);
            let k = OPS.iter().position(|&(o, _)| o == op).unwrap();
            self.counts[k].0 += 1;
            let t_call = Instant::now();
            self.ts().since.store(self.f.ms(), SeqCst);
            let r = panic::catch_unwind(AssertUnwindSafe(|| self.step(op, &mut rng)));
            self.ts().since.store(0, SeqCst);
            self.counts[k].2 += t_call.elapsed().as_millis() as u64;
            let msg = match r {
                Ok(Ok(true)) => {
                    self.counts[k].1 += 1;
                    continue;
                }
                Ok(Ok(false)) => continue,
                Ok(Err(Bug(m))) => m,
                Err(p) => format!(
                    "the test panicked: {}",
                    p.downcast_ref::<String>()
                        .map(String::as_str)
                        .or(p.downcast_ref::<&str>().copied())
                        .unwrap_or("?")
                ),
            };
            let desc = lock(&self.ts().desc).clone();
            self.f.record_failure(format!(
                "thread {} {desc} [{op:?}]\n  {msg}\n  (VMS_FUZZ_SEED={} replays it)",
                self.t, self.f.seed
            ));
            break;
        }
    }

    /// One call of kind `op`: `Ok(true)` if made, `Ok(false)` if there was
    /// nothing to make it on.
    fn step(&mut self, op: Op, rng: &mut Rng) -> Result<bool, Bug> {
        let f = self.f;
        match op {
            Op::Version => self.version(rng),
            Op::BadIoctl => self.bad_ioctl(rng),
            Op::ImageFile if lock(&f.images).len() >= MAX_IMAGES => self.delete(rng),
            Op::ImageFile => self.image_file(rng),
            Op::ImageEmpty if lock(&f.images).len() >= MAX_IMAGES => self.delete(rng),
            Op::ImageEmpty => self.image_empty(rng),
            Op::ImageBad => self.image_bad(rng),
            Op::Info => self.info(rng),
            Op::List => self.list(rng),
            Op::Delete => self.delete(rng),
            Op::Clone if lock(&f.clones).len() >= MAX_CLONES => self.clone_close(rng),
            Op::Clone => self.clone_create(rng),
            Op::CloneBad => self.clone_bad(rng),
            Op::CloneClose => self.clone_close(rng),
            Op::Stats => self.stats(rng),
            Op::Reset => self.reset(rng),
            Op::Snapshot if lock(&f.images).len() >= MAX_IMAGES => self.delete(rng),
            Op::Snapshot => self.snapshot(rng),
            Op::SnapshotBad => self.snapshot_bad(rng),
            Op::Attach => self.attach(rng),
            Op::AttachBad => self.attach_bad(rng),
            Op::Mmap if lock(&f.maps).len() >= MAX_MAPS => self.unmap(rng),
            Op::Mmap => self.mmap(rng),
            Op::MmapBad => self.mmap_bad(rng),
            Op::Punch => self.punch(rng),
            Op::Remap => self.remap(rng),
            Op::Unmap => self.unmap(rng),
            Op::Madvise => self.madvise(rng),
            Op::Read => self.host_read(rng),
            Op::Write => self.host_write(rng),
            Op::Fork => self.fork(rng),
            Op::VmCreate if lock(&f.vms).len() >= MAX_VMS => self.vm_drop(rng),
            Op::VmCreate => self.vm_create(rng),
            Op::VcpuCreate => self.vcpu_create(rng),
            Op::VmClose => self.vm_close(rng),
            Op::VcpuClose => self.vcpu_close(rng),
            Op::VmDrop => self.vm_drop(rng),
            Op::SlotCreate => self.slot_create(rng),
            Op::SlotDelete => self.slot_delete(rng),
            Op::SlotMove => self.slot_move(rng),
            Op::SlotFlags => self.slot_flags(rng),
            Op::SlotBad => self.slot_bad(rng),
            Op::Run => self.run_guest(rng),
            Op::Truncate => self.truncate(rng),
            Op::Refresh => self.refresh(),
        }
    }

    // -- /dev/vms ----------------------------------------------------------

    fn dev(&self) -> RawFd {
        self.f.dev.as_raw_fd()
    }

    /// `cmd` on `fd` with a bad pointer to its `size`-byte argument: an
    /// unreadable one must give `EFAULT`, read-only zeros `ro`.
    fn bad_ptr_call(&self, rng: &mut Rng, fd: RawFd, cmd: u32, size: usize, ro: &[i32], what: &str) -> Res {
        let (kind, p) = self.f.bad_ptr(rng, size);
        self.note(format!("{what} with a bad pointer ({kind:?}, {p:#x})"));
        // SAFETY: `p` is not memory Rust uses: NULL, unmapped, a kernel
        // address, a read-only page, or a struct whose end is unmapped and
        // whose start is in a page of `bad` that nothing reads (a kernel
        // write may land there before it faults).
        let r = unsafe { ioctl(fd, cmd, p) };
        match kind {
            BadPtr::ReadOnly => expect(&r, false, ro, what),
            _ => expect(&r, false, &[libc::EFAULT], what),
        }
    }

    fn version(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let mut v = VmsVersion::zeroed();
        match rng.below(4) {
            0 => {
                self.note("VMS_GET_VERSION".into());
                let r = ioctl_with(self.dev(), VMS_GET_VERSION, &mut v);
                expect(&r, true, &[], "VMS_GET_VERSION")?;
                if v.abi_version != VMS_ABI_VERSION || v.module_version[0] == 0 {
                    bug!("VMS_GET_VERSION: abi {} module version {:?}", v.abi_version, v.module_version);
                }
            }
            1 => {
                v.flags = 1 << rng.below(32);
                self.note(format!("VMS_GET_VERSION flags {:#x}", v.flags));
                let r = ioctl_with(self.dev(), VMS_GET_VERSION, &mut v);
                expect(&r, false, &[libc::EINVAL], "VMS_GET_VERSION")?;
            }
            2 => {
                v.reserved[rng.below(4) as usize] = rng.next() | 1;
                self.note(format!("VMS_GET_VERSION reserved {:?}", v.reserved));
                let r = ioctl_with(self.dev(), VMS_GET_VERSION, &mut v);
                expect(&r, false, &[libc::EINVAL], "VMS_GET_VERSION")?;
            }
            _ => self.bad_ptr_call(
                rng,
                self.dev(),
                VMS_GET_VERSION,
                size_of::<VmsVersion>(),
                &[libc::EFAULT],
                "VMS_GET_VERSION",
            )?,
        }
        Ok(true)
    }

    /// Ioctls neither `/dev/vms` nor a clone has: `ENOTTY`.
    fn bad_ioctl(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let clone = if rng.chance(50) { rng.pick_from(&self.f.clones) } else { None };
        let guard = clone.as_ref().map(|c| read(&c.fd));
        let fd = match guard.as_ref() {
            Some(g) => match g.as_ref() {
                Some(fd) => fd.as_raw_fd(),
                None => return Ok(false),
            },
            None => self.dev(),
        };
        let on_clone = clone.is_some();
        let cmd = match rng.below(3) {
            0 => {
                // A number of vms's type that no ioctl has.
                let nr = if rng.chance(50) { rng.range(0x07, 0x0f) } else { rng.range(0x14, 0xff) };
                _IOC(rng.below(4) as u32, VMS_IOCTL_TYPE, nr as u32, rng.below(1 << 14) as usize)
            }
            1 if on_clone => rng
                .pick(&[VMS_GET_VERSION, VMS_IMAGE_CREATE, VMS_IMAGE_INFO, VMS_IMAGE_DELETE, VMS_IMAGE_LIST, VMS_CLONE_CREATE, VMS_IMAGE_SNAPSHOT])
                .unwrap(),
            1 => rng.pick(&[VMS_CLONE_ATTACH, VMS_CLONE_STATS]).unwrap(),
            _ => {
                // A real one with the wrong size.
                let cmd = rng.pick(&[VMS_GET_VERSION, VMS_IMAGE_INFO, VMS_IMAGE_LIST, VMS_CLONE_STATS, VMS_CLONE_ATTACH]).unwrap();
                let size = ((cmd >> 16) & 0x3fff) as u64;
                let other = if rng.chance(50) { size + rng.range(1, 64) } else { size - rng.range(1, size) };
                (cmd & !(0x3fff << 16)) | ((other as u32 & 0x3fff) << 16)
            }
        };
        let what = format!("ioctl {cmd:#x} on {}", if on_clone { "a clone" } else { "/dev/vms" });
        self.note(what.clone());
        let mut buf = [0u8; 1 << 14];
        let r = ioctl_with(fd, cmd, &mut buf);
        expect(&r, false, &[libc::ENOTTY], &what)?;
        Ok(true)
    }

    fn image_file(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(file) = rng.pick_from(&self.f.files) else { return Ok(false) };
        let shift = rng.below(file.pages.min(4));
        let pages = rng.range(1, file.pages - shift);
        let name = self.f.new_name();
        let fd = match File::open(&file.path) {
            Ok(fd) => fd,
            Err(e) => bug!("open {}: {e}", file.path.display()),
        };
        let mut arg = VmsImageCreate {
            name: name_field(&name),
            fd: fd.as_raw_fd(),
            size: pages * PAGE_SIZE,
            file_offset: (file.junk + shift) * PAGE_SIZE,
            ..VmsImageCreate::zeroed()
        };
        self.note(format!(
            "VMS_IMAGE_CREATE {name} of {} pages from {} at page {}",
            pages,
            file.path.display(),
            file.junk + shift
        ));
        let before = file.truncated.load(SeqCst);
        let r = ioctl_with(self.dev(), VMS_IMAGE_CREATE, &mut arg);
        drop(fd);
        // A truncated file may be too short now; one being truncated may be
        // open for writing.
        let short = before || file.truncated.load(SeqCst) || file.truncating.load(SeqCst) > 0;
        let mut errs = vec![libc::ENOMEM];
        if short {
            errs.extend([libc::EINVAL, libc::ETXTBSY]);
        }
        expect(&r, true, &errs, "VMS_IMAGE_CREATE")?;
        if r.is_ok() {
            self.add_image(ImageObj {
                name,
                pages,
                root: Root::File { shift },
                file: Some(file),
                written: Bits::new(pages),
                generation: 0,
                parent: None,
                deleting: AtomicU32::new(0),
                deleted: AtomicBool::new(false),
            });
        }
        Ok(true)
    }

    fn add_image(&self, image: ImageObj) {
        lock(&self.f.images).push(Arc::new(image));
    }

    fn image_empty(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let pages = rng.range(1, 256);
        let name = self.f.new_name();
        let mut arg = VmsImageCreate {
            name: name_field(&name),
            fd: -1,
            flags: VMS_IMAGE_EMPTY,
            size: pages * PAGE_SIZE,
            ..VmsImageCreate::zeroed()
        };
        self.note(format!("VMS_IMAGE_CREATE {name} empty, {pages} pages"));
        let r = ioctl_with(self.dev(), VMS_IMAGE_CREATE, &mut arg);
        expect(&r, true, &[libc::ENOMEM], "VMS_IMAGE_CREATE (VMS_IMAGE_EMPTY)")?;
        if r.is_ok() {
            self.add_image(ImageObj {
                name,
                pages,
                root: Root::Empty,
                file: None,
                written: Bits::new(pages),
                generation: 0,
                parent: None,
                deleting: AtomicU32::new(0),
                deleted: AtomicBool::new(false),
            });
        }
        Ok(true)
    }

    /// `VMS_IMAGE_CREATE` with one thing wrong.
    fn image_bad(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(file) = rng.pick_from(&self.f.files) else { return Ok(false) };
        let fd = match File::open(&file.path) {
            Ok(fd) => fd,
            Err(e) => bug!("open {}: {e}", file.path.display()),
        };
        let name = self.f.new_name();
        let pages = rng.range(1, file.pages);
        let mut arg = VmsImageCreate {
            name: name_field(&name),
            fd: fd.as_raw_fd(),
            size: pages * PAGE_SIZE,
            file_offset: file.junk * PAGE_SIZE,
            ..VmsImageCreate::zeroed()
        };
        let (how, errs): (String, Vec<i32>) = match rng.below(12) {
            0 => {
                arg.name = bad_name_field(rng);
                ("a bad name".into(), vec![libc::EINVAL])
            }
            1 => {
                arg.flags = 1 << rng.range(1, 31);
                (format!("flags {:#x}", arg.flags), vec![libc::EINVAL])
            }
            2 => {
                arg.reserved[rng.below(4) as usize] = rng.next() | 1;
                ("reserved set".into(), vec![libc::EINVAL])
            }
            3 => {
                arg.size = if rng.chance(30) { 0 } else { arg.size + rng.range(1, PAGE_SIZE - 1) };
                (format!("size {:#x}", arg.size), vec![libc::EINVAL])
            }
            4 => {
                arg.file_offset += rng.range(1, PAGE_SIZE - 1);
                (format!("file_offset {:#x}", arg.file_offset), vec![libc::EINVAL])
            }
            5 => {
                arg.size = (file.pages + rng.range(1, 1 << 20)) * PAGE_SIZE;
                (format!("size {:#x}, past the end of the file", arg.size), vec![libc::EINVAL])
            }
            6 => {
                arg.flags = VMS_IMAGE_EMPTY;
                if rng.chance(50) {
                    arg.file_offset = 0;
                    ("VMS_IMAGE_EMPTY with a file".into(), vec![libc::EINVAL])
                } else {
                    arg.fd = -1;
                    arg.file_offset = rng.range(1, 16) * PAGE_SIZE;
                    ("VMS_IMAGE_EMPTY with a file_offset".into(), vec![libc::EINVAL])
                }
            }
            7 => {
                arg.fd = rng.pick(&BAD_FDS).unwrap();
                (format!("fd {}", arg.fd), vec![libc::EBADF])
            }
            8 => {
                arg.fd = self.f.wrong_fd(rng);
                ("the fd of a device or directory".into(), vec![libc::EINVAL])
            }
            9 => {
                // A file being written may be refused either way.
                arg.fd = self.f.wronly.as_raw_fd();
                ("a write-only fd".into(), vec![libc::EACCES, libc::ETXTBSY])
            }
            10 => {
                // Empty: a truncated file would be refused first.
                arg.name = name_field(&self.f.anchor);
                arg.flags = VMS_IMAGE_EMPTY;
                arg.fd = -1;
                arg.file_offset = 0;
                ("a name that is taken".into(), vec![libc::EEXIST])
            }
            _ => {
                self.bad_ptr_call(rng, self.dev(), VMS_IMAGE_CREATE, size_of::<VmsImageCreate>(), &[libc::EINVAL], "VMS_IMAGE_CREATE")?;
                return Ok(true);
            }
        };
        let what = format!("VMS_IMAGE_CREATE with {how}");
        self.note(what.clone());
        let r = ioctl_with(self.dev(), VMS_IMAGE_CREATE, &mut arg);
        if r.is_ok() {
            // Made by mistake: do not leave it behind.
            let mut del = VmsImageInfo { name: arg.name, ..VmsImageInfo::zeroed() };
            let _ = ioctl_with(self.dev(), VMS_IMAGE_DELETE, &mut del);
        }
        expect(&r, false, &errs, &what)?;
        Ok(true)
    }

    /// A name no image has: `ENOENT`.
    fn unknown_name(&self) -> [u8; VMS_NAME_LEN] {
        name_field(&format!("fz{}-none-{}", std::process::id(), self.f.id()))
    }

    /// The bad calls `VMS_IMAGE_INFO` and `VMS_IMAGE_DELETE` share (both
    /// take a `vms_image_info`): case 0 an unknown name (`ENOENT`), 1 flags
    /// or pad set (`EINVAL`), 2 a bad pointer.
    fn image_name_bad(&self, rng: &mut Rng, case: u64, cmd: u32, what: &str) -> Res {
        let mut arg = VmsImageInfo::zeroed();
        match case {
            0 => {
                arg.name = self.unknown_name();
                self.note(format!("{what} of an unknown name"));
                let r = ioctl_with(self.dev(), cmd, &mut arg);
                expect(&r, false, &[libc::ENOENT], what)
            }
            1 => {
                arg.name = name_field(&self.f.anchor);
                if rng.chance(50) {
                    arg.flags = 1 << rng.below(32);
                } else {
                    arg.pad = 1 << rng.below(32);
                }
                self.note(format!("{what} of the anchor, flags {:#x} pad {:#x}", arg.flags, arg.pad));
                let r = ioctl_with(self.dev(), cmd, &mut arg);
                expect(&r, false, &[libc::EINVAL], what)
            }
            _ => self.bad_ptr_call(rng, self.dev(), cmd, size_of::<VmsImageInfo>(), &[libc::EINVAL], what),
        }
    }

    fn info(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let mut arg = VmsImageInfo::zeroed();
        match rng.below(10) {
            k @ 0..3 => self.image_name_bad(rng, k, VMS_IMAGE_INFO, "VMS_IMAGE_INFO")?,
            _ => {
                let Some(img) = rng.pick_from(&self.f.images) else { return Ok(false) };
                arg.name = name_field(&img.name);
                self.note(format!("VMS_IMAGE_INFO {}", img.name));
                let r = ioctl_with(self.dev(), VMS_IMAGE_INFO, &mut arg);
                let errs: &[i32] = if img.gone(0) { &[libc::ENOENT] } else { &[] };
                expect(&r, true, errs, "VMS_IMAGE_INFO")?;
                if r.is_ok() {
                    let s = &arg.stats;
                    let parent = vms_uapi::name_bytes(&s.parent).unwrap_or(b"?");
                    let want_parent = img.parent.as_ref().map_or("", |p| p.name.as_str());
                    if s.size != img.pages * PAGE_SIZE || s.generation != img.generation || parent != want_parent.as_bytes() {
                        bug!(
                            "VMS_IMAGE_INFO {}: size {:#x} generation {} parent {:?}, expected {:#x}, {}, {want_parent:?}",
                            img.name,
                            s.size,
                            s.generation,
                            String::from_utf8_lossy(parent),
                            img.pages * PAGE_SIZE,
                            img.generation
                        );
                    }
                }
            }
        }
        Ok(true)
    }

    fn list(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let mut arg = VmsImageList::zeroed();
        match rng.below(6) {
            0 => {
                if rng.chance(50) {
                    arg.flags = 1 << rng.below(32);
                } else {
                    arg.reserved[rng.below(2) as usize] = rng.next() | 1;
                }
                self.note(format!("VMS_IMAGE_LIST flags {:#x} reserved {:?}", arg.flags, arg.reserved));
                let r = ioctl_with(self.dev(), VMS_IMAGE_LIST, &mut arg);
                expect(&r, false, &[libc::EINVAL], "VMS_IMAGE_LIST")?;
            }
            // Read-only zeros ask for image 0, which exists (the anchor).
            1 => self.bad_ptr_call(rng, self.dev(), VMS_IMAGE_LIST, size_of::<VmsImageList>(), &[libc::EFAULT], "VMS_IMAGE_LIST")?,
            _ => {
                arg.index = if rng.chance(90) { rng.below(2 * MAX_IMAGES as u64) as u32 } else { rng.next() as u32 };
                self.note(format!("VMS_IMAGE_LIST index {}", arg.index));
                let r = ioctl_with(self.dev(), VMS_IMAGE_LIST, &mut arg);
                // Image 0 is there: the anchor.
                let errs: &[i32] = if arg.index == 0 { &[] } else { &[libc::ENOENT] };
                expect(&r, true, errs, "VMS_IMAGE_LIST")?;
                if r.is_ok() && vms_uapi::name_bytes(&arg.name).is_none_or(|n| n.is_empty()) {
                    bug!("VMS_IMAGE_LIST {}: no name", arg.index);
                }
            }
        }
        Ok(true)
    }

    fn delete(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let mut arg = VmsImageInfo::zeroed();
        match rng.below(8) {
            k @ 0..3 => self.image_name_bad(rng, k, VMS_IMAGE_DELETE, "VMS_IMAGE_DELETE")?,
            _ => {
                let Some(img) = rng.pick_from(&self.f.images) else { return Ok(false) };
                arg.name = name_field(&img.name);
                self.note(format!("VMS_IMAGE_DELETE {}", img.name));
                img.deleting.fetch_add(1, SeqCst);
                let r = ioctl_with(self.dev(), VMS_IMAGE_DELETE, &mut arg);
                let twice = r.is_ok() && img.deleted.swap(true, SeqCst);
                let errs: &[i32] = if img.gone(1) { &[libc::EBUSY, libc::ENOENT] } else { &[libc::EBUSY] };
                img.deleting.fetch_sub(1, SeqCst);
                if twice {
                    bug!("VMS_IMAGE_DELETE {}: deleted twice", img.name);
                }
                expect(&r, true, errs, "VMS_IMAGE_DELETE")?;
                if r.is_ok() {
                    lock(&self.f.images).retain(|i| !Arc::ptr_eq(i, &img));
                }
            }
        }
        Ok(true)
    }

    // -- clones ------------------------------------------------------------

    fn clone_create(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(img) = rng.pick_from(&self.f.images) else { return Ok(false) };
        let mut arg = VmsCloneCreate { name: name_field(&img.name), ..VmsCloneCreate::zeroed() };
        self.note(format!("VMS_CLONE_CREATE of {}", img.name));
        let r = ioctl_with(self.dev(), VMS_CLONE_CREATE, &mut arg);
        let errs: &[i32] = if img.gone(0) { &[libc::ENOENT, libc::ENOMEM] } else { &[libc::ENOMEM] };
        expect(&r, true, errs, "VMS_CLONE_CREATE")?;
        if let Ok(fd) = r {
            // SAFETY: VMS_CLONE_CREATE returned a new fd that nothing else
            // owns.
            let fd = unsafe { OwnedFd::from_raw_fd(fd) };
            let c = CloneObj {
                id: self.f.id(),
                pages: img.pages,
                root: img.root,
                file: img.file.clone(),
                fd: RwLock::new(Some(fd)),
                closed: AtomicBool::new(false),
                written: Mutex::new(img.written.clone()),
                image: Mutex::new(img),
                bound: Mutex::new(None),
                claimers: Mutex::new(Vec::new()),
            };
            self.note(format!("VMS_CLONE_CREATE made clone {}", c.id));
            lock(&self.f.clones).push(Arc::new(c));
        }
        Ok(true)
    }

    fn clone_bad(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let mut arg = VmsCloneCreate { name: name_field(&self.f.anchor), ..VmsCloneCreate::zeroed() };
        let (how, errs) = match rng.below(5) {
            0 => {
                arg.name = self.unknown_name();
                ("an unknown name", libc::ENOENT)
            }
            1 => {
                arg.name = bad_name_field(rng);
                ("a bad name", libc::EINVAL)
            }
            2 => {
                match rng.below(3) {
                    0 => arg.flags = 1 << rng.below(32),
                    1 => arg.pad = 1 << rng.below(32),
                    _ => arg.reserved[rng.below(4) as usize] = rng.next() | 1,
                }
                ("flags, pad or reserved set", libc::EINVAL)
            }
            _ => {
                self.bad_ptr_call(rng, self.dev(), VMS_CLONE_CREATE, size_of::<VmsCloneCreate>(), &[libc::EINVAL], "VMS_CLONE_CREATE")?;
                return Ok(true);
            }
        };
        let what = format!("VMS_CLONE_CREATE with {how}");
        self.note(what.clone());
        let r = ioctl_with(self.dev(), VMS_CLONE_CREATE, &mut arg);
        if let Ok(fd) = r {
            // SAFETY: a new fd nobody owns: close it.
            drop(unsafe { OwnedFd::from_raw_fd(fd) });
        }
        expect(&r, false, &[errs], &what)?;
        Ok(true)
    }

    fn clone_close(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let c = {
            let mut clones = lock(&self.f.clones);
            if clones.is_empty() {
                return Ok(false);
            }
            let i = rng.below(clones.len() as u64) as usize;
            clones.swap_remove(i)
        };
        self.note(format!("close clone {}", c.id));
        c.closed.store(true, SeqCst);
        drop(write(&c.fd).take());
        Ok(true)
    }

    fn stats(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(fd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        match rng.below(7) {
            0 => self.bad_ptr_call(rng, fd, VMS_CLONE_STATS, size_of::<VmsCloneStats>(), &[libc::EFAULT], "VMS_CLONE_STATS")?,
            1 => self.touched(rng, fd, c.id, c.pages)?,
            2 => self.limit(rng, fd, c.id)?,
            3 => self.footprint(rng, fd, c.id, c.pages)?,
            _ => {
                self.note(format!("VMS_CLONE_STATS of clone {}", c.id));
                let mut s = VmsCloneStats::zeroed();
                let r = ioctl_with(fd, VMS_CLONE_STATS, &mut s);
                expect(&r, true, &[], "VMS_CLONE_STATS")?;
                if s.size != c.pages * PAGE_SIZE || s.private_pages > c.pages || s.image[0] == 0 {
                    bug!("VMS_CLONE_STATS of clone {}: {s:?}, clone of {} pages", c.id, c.pages);
                }
            }
        }
        Ok(true)
    }

    /// `VMS_CLONE_SET_LIMIT`: limits from none to a few pages (eviction
    /// then runs under every other operation: the model's page contents
    /// must survive it), a swap directory or not (a clone has one swap
    /// file for life: a second is EEXIST; a limit without one, EINVAL),
    /// bad flags, reserved words and fds.
    fn limit(&self, rng: &mut Rng, fd: RawFd, id: u64) -> Res {
        if rng.chance(10) {
            // A read-only argument is read: zeros, so no limit and fd 0,
            // which is not a directory (or not open).
            return self.bad_ptr_call(
                rng,
                fd,
                VMS_CLONE_SET_LIMIT,
                size_of::<VmsCloneLimit>(),
                &[libc::ENOTDIR, libc::EBADF],
                "VMS_CLONE_SET_LIMIT",
            );
        }
        let dir = std::fs::File::open(std::env::temp_dir()).map_err(|e| Bug(format!("open the swap directory: {e}")))?;
        let limit = rng.pick(&[0u64, 1, 2, 8, 64, 1 << 20]).unwrap();
        let mut a = VmsCloneLimit { limit, swap_dir_fd: -1, ..VmsCloneLimit::zeroed() };
        let (ok, errs): (bool, &[i32]) = match rng.below(10) {
            0 => {
                a.flags = 1 << rng.below(32);
                (false, &[libc::EINVAL])
            }
            1 => {
                a.reserved[rng.below(4) as usize] = 1 << rng.below(64);
                (false, &[libc::EINVAL])
            }
            2 => {
                a.swap_dir_fd = rng.pick(&[-2, 9999, i32::MAX]).unwrap();
                (false, &[libc::EBADF])
            }
            3 | 4 => {
                a.swap_dir_fd = dir.as_raw_fd();
                (true, &[libc::EEXIST])
            }
            // Without a swap file yet, only "no limit" works.
            _ if limit == 0 => (true, &[]),
            _ => (true, &[libc::EINVAL]),
        };
        let what = format!("VMS_CLONE_SET_LIMIT of clone {id}: limit {limit}, swap dir fd {}, flags {:#x}", a.swap_dir_fd, a.flags);
        self.note(what.clone());
        let r = ioctl_with(fd, VMS_CLONE_SET_LIMIT, &mut a);
        // A signal while evicting down to the limit: the limit is set.
        if errno_of(&r) == libc::EINTR {
            return Ok(());
        }
        expect(&r, ok, errs, &what)
    }

    /// `VMS_CLONE_FOOTPRINT` (now and then after `drop_caches`, which runs
    /// the shrinker): in memory and swapped pages fit the clone.
    fn footprint(&self, rng: &mut Rng, fd: RawFd, id: u64, pages: u64) -> Res {
        if rng.chance(4) {
            return self.bad_ptr_call(rng, fd, VMS_CLONE_FOOTPRINT, size_of::<VmsCloneFootprint>(), &[libc::EFAULT], "VMS_CLONE_FOOTPRINT");
        }
        if rng.chance(8) {
            // Every shrinker, ours too: clones with a swap file evict
            // under the other threads' calls (as root; otherwise a no-op).
            self.note("drop_caches".to_owned());
            let _ = std::fs::write("/proc/sys/vm/drop_caches", "2\n");
        }
        self.note(format!("VMS_CLONE_FOOTPRINT of clone {id}"));
        let mut f = VmsCloneFootprint::zeroed();
        let r = ioctl_with(fd, VMS_CLONE_FOOTPRINT, &mut f);
        expect(&r, true, &[], "VMS_CLONE_FOOTPRINT")?;
        if f.resident + f.swapped > pages || f.read_back > f.evicted || f.shrunk > f.evicted || f.reserved != [0; 5] {
            bug!("VMS_CLONE_FOOTPRINT of clone {id}: {f:?}, clone of {pages} pages");
        }
        Ok(())
    }

    /// `VMS_CLONE_TOUCHED` with good and bad ranges, flags and bitmaps:
    /// a good call sets no bit past `npages` and writes no word past its
    /// bitmap, and its count matches the bitmap.
    fn touched(&self, rng: &mut Rng, fd: RawFd, id: u64, pages: u64) -> Res {
        const WORDS: usize = 64;
        let mut words = [u64::MAX; WORDS + 1];
        let first = match rng.below(4) {
            0 => rng.below(pages + 1) / 64 * 64,
            1 => rng.below(pages + 64),
            2 => pages,
            _ => 0,
        };
        let npages = match rng.below(4) {
            0 => rng.below((WORDS * 64) as u64 + 1).min(pages.saturating_sub(first)),
            1 => rng.below(pages + 128),
            2 => u64::MAX - rng.below(64),
            _ => 0,
        };
        let mut a = VmsCloneTouched { bitmap: words.as_mut_ptr() as u64, first, npages, ..VmsCloneTouched::zeroed() };
        let mut bad = false;
        match rng.below(8) {
            0 => (a.flags, bad) = (1 << rng.below(32), true),
            1 => (a.pad, bad) = (1 << rng.below(32), true),
            2 => (a.reserved[rng.below(4) as usize], bad) = (1 << rng.below(64), true),
            _ => {}
        }
        let fits = first % 64 == 0 && first.checked_add(npages).is_some_and(|e| e <= pages);
        let room = npages.div_ceil(64) <= WORDS as u64;
        if !room && fits && !bad {
            // More than our buffer holds: a bad pointer instead, which the
            // kernel must refuse without writing where it should not.
            return self.bad_ptr_call(rng, fd, VMS_CLONE_TOUCHED, size_of::<VmsCloneTouched>(), &[libc::EFAULT], "VMS_CLONE_TOUCHED");
        }
        let what = format!("VMS_CLONE_TOUCHED of clone {id} ({pages} pages): first {first} npages {npages}{}", if bad { ", bad flags" } else { "" });
        self.note(what.clone());
        if !room {
            // Refused before any write (bad flags or range); were it not,
            // a NULL bitmap keeps the kernel from writing past `words`.
            a.bitmap = 0;
        }
        let r = ioctl_with(fd, VMS_CLONE_TOUCHED, &mut a);
        if bad || !fits {
            return expect(&r, false, &[libc::EINVAL], &what);
        }
        expect(&r, true, &[], &what)?;
        let n = npages.div_ceil(64) as usize;
        if words[n] != u64::MAX {
            bug!("{what}: wrote past its bitmap");
        }
        let mut set = 0;
        for (w, word) in words[..n].iter().enumerate() {
            set += u64::from(word.count_ones());
            if w == n - 1 && npages % 64 != 0 && word >> (npages % 64) != 0 {
                bug!("{what}: bits past npages: {word:#x}");
            }
        }
        if set != a.touched {
            bug!("{what}: count {} against {set} bits", a.touched);
        }
        Ok(())
    }

    /// `VMS_CLONE_RESET`: the clone's pages go back to its image's. The
    /// model keeps the clone's set of written pages as it is: it can only
    /// say too much (a page back to its image's bytes is one the set may
    /// hold), and a writer racing the reset marked its page first.
    fn reset(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(fd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        if rng.chance(20) {
            let arg = rng.pick(&[1u64, 0x1000, u64::MAX]).unwrap();
            self.note(format!("VMS_CLONE_RESET of clone {} with argument {arg:#x}", c.id));
            // SAFETY: VMS_CLONE_RESET reads no argument.
            let r = unsafe { ioctl(fd, VMS_CLONE_RESET, arg) };
            expect(&r, false, &[libc::EINVAL], "VMS_CLONE_RESET with an argument")?;
            return Ok(true);
        }
        self.note(format!("VMS_CLONE_RESET of clone {}", c.id));
        // SAFETY: as above.
        let r = unsafe { ioctl(fd, VMS_CLONE_RESET, 0) };
        // EINTR: a signal while it waited for an eviction (nothing dropped).
        expect(&r, true, &[libc::EINTR], "VMS_CLONE_RESET")?;
        Ok(true)
    }

    fn snapshot(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(fd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        // Held across the call: snapshots of one clone follow each other in
        // the model as in the module.
        let mut image = lock(&c.image);
        let name = self.f.new_name();
        let mut arg = VmsImageSnapshot { name: name_field(&name), clone_fd: fd, ..VmsImageSnapshot::zeroed() };
        self.note(format!("VMS_IMAGE_SNAPSHOT {name} of clone {} (image {})", c.id, image.name));
        let r = ioctl_with(self.dev(), VMS_IMAGE_SNAPSHOT, &mut arg);
        expect(&r, true, &[libc::ENOMEM], "VMS_IMAGE_SNAPSHOT")?;
        if r.is_ok() {
            // Pages written before or during the call may be in it.
            let written = lock(&c.written).clone();
            let img = Arc::new(ImageObj {
                name,
                pages: c.pages,
                root: c.root,
                file: c.file.clone(),
                written,
                generation: image.generation + 1,
                parent: Some(image.clone()),
                deleting: AtomicU32::new(0),
                deleted: AtomicBool::new(false),
            });
            *image = img.clone();
            lock(&self.f.images).push(img);
        }
        Ok(true)
    }

    fn snapshot_bad(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let clone = rng.pick_from(&self.f.clones);
        let g = clone.as_ref().map(|c| read(&c.fd));
        let clone_fd = g.as_ref().and_then(|g| g.as_ref().map(|f| f.as_raw_fd()));
        let mut arg = VmsImageSnapshot {
            name: name_field(&self.f.new_name()),
            clone_fd: clone_fd.unwrap_or(-1),
            ..VmsImageSnapshot::zeroed()
        };
        let (how, err) = match rng.below(6) {
            0 if clone_fd.is_some() => {
                arg.name = name_field(&self.f.anchor);
                ("a name that is taken".to_string(), libc::EEXIST)
            }
            0 | 1 => {
                arg.name = bad_name_field(rng);
                ("a bad name".into(), libc::EINVAL)
            }
            2 => {
                if rng.chance(50) {
                    arg.flags = 1 << rng.below(32);
                } else {
                    arg.reserved[rng.below(4) as usize] = rng.next() | 1;
                }
                ("flags or reserved set".into(), libc::EINVAL)
            }
            3 => {
                arg.clone_fd = rng.pick(&BAD_FDS).unwrap();
                (format!("clone_fd {}", arg.clone_fd), libc::EBADF)
            }
            4 => {
                arg.clone_fd = self.f.wrong_fd(rng);
                ("a clone_fd that is no clone".into(), libc::EINVAL)
            }
            _ => {
                self.bad_ptr_call(rng, self.dev(), VMS_IMAGE_SNAPSHOT, size_of::<VmsImageSnapshot>(), &[libc::EINVAL], "VMS_IMAGE_SNAPSHOT")?;
                return Ok(true);
            }
        };
        let what = format!("VMS_IMAGE_SNAPSHOT with {how}");
        self.note(what.clone());
        let r = ioctl_with(self.dev(), VMS_IMAGE_SNAPSHOT, &mut arg);
        if r.is_ok() {
            let mut del = VmsImageInfo { name: arg.name, ..VmsImageInfo::zeroed() };
            let _ = ioctl_with(self.dev(), VMS_IMAGE_DELETE, &mut del);
        }
        expect(&r, false, &[err], &what)?;
        Ok(true)
    }

    // -- attaching ---------------------------------------------------------

    /// `VMS_CLONE_ATTACH` of window `first..first + pages` of `c` (fd
    /// `cfd`) to slot `slot` of `vm` (fd `vfd`), with the VM's layout
    /// locked (`l`) and the clone's fd held: the result is predicted
    /// exactly.
    #[expect(clippy::too_many_arguments)]
    fn attach_locked(&self, vm: &VmObj, l: &mut Layout, c: &CloneObj, cfd: RawFd, vfd: RawFd, slot: u32, first: u64, pages: u64) -> Res {
        let mut bound = lock(&c.bound);
        let mut arg = VmsCloneAttach {
            vm_fd: vfd,
            slot,
            offset: first * PAGE_SIZE,
            size: pages * PAGE_SIZE,
            ..VmsCloneAttach::zeroed()
        };
        let want = if bound.is_some_and(|b| b != vm.id) {
            libc::EBUSY
        } else if l.attached.iter().any(|a| a.0 == slot) {
            libc::EEXIST
        } else if l.attached.iter().any(|a| first < a.1 + a.2 && a.1 < first + pages) {
            libc::EINVAL
        } else {
            0
        };
        // A claim may have bound the clone to another VM, or given this
        // VM another clone as its provider: then EBUSY too. (Its own claim
        // for this VM, or this VM's of it, must not stop the attach.)
        let claims = bound.is_none()
            && (lock(&c.claimers).iter().any(|&k| k != vm.id) || lock(&vm.providers).iter().any(|&x| x != c.id));
        let what = format!(
            "VMS_CLONE_ATTACH of clone {} pages {first}+{pages} to VM {} slot {slot:#x}",
            c.id, vm.id
        );
        self.note(what.clone());
        let r = ioctl_with(cfd, VMS_CLONE_ATTACH, &mut arg);
        if want == 0 && claims {
            expect(&r, true, &[libc::EBUSY], &what)?;
        } else if want == 0 {
            expect(&r, true, &[], &what)?;
        } else {
            expect(&r, false, &[want], &what)?;
        }
        if r.is_ok() {
            l.attached.push((slot, first, pages));
            *bound = Some(vm.id);
        }
        Ok(())
    }

    fn attach(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(vfd) = fdg.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let mut l = lock(&vm.layout);
        let bound = *lock(&vm.clone.bound) == Some(vm.id);
        if bound && rng.chance(15) {
            // Another clone: the VM has its provider already, and keeps it
            // while we hold its clone's fd (not waiting for it: a second
            // clone fd is read-locked below).
            let own = match vm.clone.fd.try_read() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return Ok(false),
            };
            if own.is_none() {
                return Ok(false);
            }
            let Some(x) = rng.pick_from(&self.f.clones) else { return Ok(false) };
            if x.id == vm.clone.id {
                return Ok(false);
            }
            let g = read(&x.fd);
            let Some(xfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
            let n = rng.range(1, x.pages.min(MAX_WINDOW));
            let first = rng.range(0, x.pages - n);
            let mut arg = VmsCloneAttach {
                vm_fd: vfd,
                slot: rng.range(1, NSLOTS as u64) as u32,
                offset: first * PAGE_SIZE,
                size: n * PAGE_SIZE,
                ..VmsCloneAttach::zeroed()
            };
            let what = format!("VMS_CLONE_ATTACH of clone {} to VM {}, which clone {} serves", x.id, vm.id, vm.clone.id);
            self.note(what.clone());
            let r = ioctl_with(xfd, VMS_CLONE_ATTACH, &mut arg);
            expect(&r, false, &[libc::EBUSY], &what)?;
            return Ok(true);
        }
        let c = &vm.clone;
        let g = read(&c.fd);
        let Some(cfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let (slot, first, pages) = if rng.chance(80) {
            let s = rng.range(1, NSLOTS as u64) as usize;
            (s as u32, vm.windows[s].0, vm.windows[s].1)
        } else {
            // A slot no memslot of the test uses.
            let slot = if rng.chance(50) {
                rng.range(NSLOTS as u64 + 1, 600) as u32
            } else {
                1 << 16 | rng.range(0, NSLOTS as u64) as u32
            };
            let n = rng.range(1, c.pages.min(MAX_WINDOW));
            (slot, rng.range(0, c.pages - n), n)
        };
        self.attach_locked(&vm, &mut l, c, cfd, vfd, slot, first, pages)?;
        Ok(true)
    }

    /// `VMS_CLONE_ATTACH` with one thing wrong.
    fn attach_bad(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        // Lock order: a VM's fd before a clone's.
        let vm = rng.pick_from(&self.f.vms);
        let fdg = vm.as_ref().map(|v| lock(&v.fd));
        let vfd = fdg.as_ref().and_then(|g| g.as_ref().map(|f| f.as_raw_fd())).unwrap_or(-1);
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(cfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let n = rng.range(1, c.pages.min(MAX_WINDOW));
        let mut arg = VmsCloneAttach {
            vm_fd: vfd,
            slot: rng.range(1, NSLOTS as u64) as u32,
            offset: rng.range(0, c.pages - n) * PAGE_SIZE,
            size: n * PAGE_SIZE,
            ..VmsCloneAttach::zeroed()
        };
        let (how, err) = match rng.below(7) {
            0 => {
                match rng.below(3) {
                    0 => arg.flags = 1 << rng.below(32),
                    1 => arg.pad = 1 << rng.below(32),
                    _ => arg.reserved[rng.below(4) as usize] = rng.next() | 1,
                }
                ("flags, pad or reserved set".to_string(), libc::EINVAL)
            }
            1 => {
                match rng.below(3) {
                    0 => arg.size = 0,
                    1 => arg.size += rng.range(1, PAGE_SIZE - 1),
                    _ => arg.offset += rng.range(1, PAGE_SIZE - 1),
                }
                (format!("offset {:#x} size {:#x}", arg.offset, arg.size), libc::EINVAL)
            }
            2 => {
                arg.offset = (c.pages - n + rng.range(1, 64)) * PAGE_SIZE;
                (format!("offset {:#x} size {:#x} past the end", arg.offset, arg.size), libc::EINVAL)
            }
            3 => {
                arg.offset = !(PAGE_SIZE - 1);
                ("offset + size overflowing".into(), libc::EINVAL)
            }
            4 => {
                arg.vm_fd = rng.pick(&BAD_FDS).unwrap();
                (format!("vm_fd {}", arg.vm_fd), libc::EBADF)
            }
            5 => {
                arg.vm_fd = self.f.wrong_fd(rng);
                ("a vm_fd that is no VM".into(), libc::EINVAL)
            }
            _ => {
                self.bad_ptr_call(rng, cfd, VMS_CLONE_ATTACH, size_of::<VmsCloneAttach>(), &[libc::EINVAL], "VMS_CLONE_ATTACH")?;
                return Ok(true);
            }
        };
        let what = format!("VMS_CLONE_ATTACH of clone {} with {how}", c.id);
        self.note(what.clone());
        let r = ioctl_with(cfd, VMS_CLONE_ATTACH, &mut arg);
        expect(&r, false, &[err], &what)?;
        Ok(true)
    }

    // -- mappings ----------------------------------------------------------

    fn mmap(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(cfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let writable = rng.chance(80);
        let (pgoff, pages) = if rng.chance(50) {
            (0, c.pages)
        } else {
            let n = rng.range(1, c.pages);
            (rng.range(0, c.pages - n), n)
        };
        self.note(format!(
            "mmap clone {} pages {pgoff}+{pages} MAP_SHARED {}",
            c.id,
            if writable { "read-write" } else { "read-only" }
        ));
        let m = match map_clone(self.f.id(), &c, cfd, pgoff, pages, writable) {
            Ok(m) => m,
            Err(e) => bug!("mmap: {}, expected success", ename(e.raw_os_error().unwrap_or(0))),
        };
        drop(g);
        lock(&self.f.maps).push(Arc::new(m));
        Ok(true)
    }

    fn mmap_bad(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(cfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let mut flags = libc::MAP_SHARED;
        let mut len = c.pages * PAGE_SIZE;
        let mut off: i64 = 0;
        let (how, errs): (&str, &[i32]) = match rng.below(5) {
            0 => {
                flags = libc::MAP_PRIVATE;
                ("MAP_PRIVATE", &[libc::EINVAL])
            }
            1 => {
                let n = rng.range(1, c.pages);
                off = ((c.pages - n + rng.range(1, 64)) * PAGE_SIZE) as i64;
                len = n * PAGE_SIZE;
                ("a range past the end", &[libc::EINVAL])
            }
            2 => {
                off = i64::MAX & !(PAGE_SIZE as i64 - 1);
                ("a huge offset", &[libc::EINVAL, libc::EOVERFLOW])
            }
            3 => {
                len = 0;
                ("length 0", &[libc::EINVAL])
            }
            _ => {
                off = rng.range(1, PAGE_SIZE - 1) as i64;
                ("an unaligned offset", &[libc::EINVAL])
            }
        };
        let prot = if rng.chance(50) { libc::PROT_READ } else { libc::PROT_READ | libc::PROT_WRITE };
        let what = format!("mmap clone {} with {how} (len {len:#x} offset {off:#x})", c.id);
        self.note(what.clone());
        // SAFETY: a new mapping at an address the kernel picks (or none).
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len as usize, prot, flags, cfd, off) };
        let r = if p == libc::MAP_FAILED { Err(io::Error::last_os_error()) } else { Ok(p as usize) };
        if let Ok(p) = r {
            // SAFETY: the mapping just made by mistake, ours.
            unsafe { libc::munmap(p as *mut libc::c_void, len as usize) };
        }
        expect(&r, false, errs, &what)?;
        Ok(true)
    }

    /// A random range `a..b` of `m`'s pages.
    fn range_of(rng: &mut Rng, pages: u64) -> (u64, u64) {
        let n = rng.range(1, pages.min(8));
        let a = rng.range(0, pages - n);
        (a, a + n)
    }

    fn punch(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(m) = rng.pick_from(&self.f.maps) else { return Ok(false) };
        let mut present = write(&m.present);
        let (a, b) = Self::range_of(rng, m.pages);
        self.note(format!("munmap pages {a}..{b} of mapping {} (clone {})", m.id, m.clone.id));
        if let Err(e) = m.punch(&mut present, a, b) {
            bug!("mmap PROT_NONE over a mapping: {e}");
        }
        Ok(true)
    }

    fn remap(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(m) = rng.pick_from(&self.f.maps) else { return Ok(false) };
        let g = read(&m.clone.fd);
        let Some(cfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let mut present = write(&m.present);
        let (a, b) = Self::range_of(rng, m.pages);
        self.note(format!("mmap MAP_FIXED pages {a}..{b} of mapping {} (clone {})", m.id, m.clone.id));
        // Before and after, as in `MapObj::punch`.
        m.seq.fetch_add(1, SeqCst);
        // SAFETY: MAP_FIXED over part of the range `m` reserves (MapObj's
        // invariant), mapping the same clone pages at the same place.
        let p = unsafe {
            libc::mmap(
                m.hva(a) as *mut libc::c_void,
                ((b - a) * PAGE_SIZE) as usize,
                m.prot(),
                libc::MAP_SHARED | libc::MAP_FIXED,
                cfd,
                ((m.pgoff + a) * PAGE_SIZE) as i64,
            )
        };
        if p == libc::MAP_FAILED {
            bug!("mmap MAP_FIXED of a clone: {}, expected success", io::Error::last_os_error());
        }
        present.set_range(a, b, true);
        m.seq.fetch_add(1, SeqCst);
        Ok(true)
    }

    fn unmap(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let m = {
            let mut maps = lock(&self.f.maps);
            if maps.is_empty() {
                return Ok(false);
            }
            let i = rng.below(maps.len() as u64) as usize;
            maps.swap_remove(i)
        };
        self.note(format!("munmap mapping {} (clone {})", m.id, m.clone.id));
        let mut present = write(&m.present);
        if let Err(e) = m.punch(&mut present, 0, m.pages) {
            bug!("mmap PROT_NONE over a mapping: {e}");
        }
        Ok(true)
    }

    fn madvise(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(m) = rng.pick_from(&self.f.maps) else { return Ok(false) };
        let _present = read(&m.present);
        let (a, b) = Self::range_of(rng, m.pages);
        let (advice, name, errs): (i32, &str, &[i32]) = match rng.below(7) {
            0 => (libc::MADV_DONTNEED, "MADV_DONTNEED", &[]),
            1 => (libc::MADV_COLD, "MADV_COLD", &[]),
            2 => (libc::MADV_PAGEOUT, "MADV_PAGEOUT", &[]),
            3 => (libc::MADV_WILLNEED, "MADV_WILLNEED", &[]),
            4 => (libc::MADV_RANDOM, "MADV_RANDOM", &[]),
            // Punching a hole in a clone: not a regular file.
            5 => (libc::MADV_REMOVE, "MADV_REMOVE", &[libc::ENODEV, libc::EINVAL, libc::EACCES, libc::EOPNOTSUPP]),
            _ => (libc::MADV_FREE, "MADV_FREE", &[libc::EINVAL]),
        };
        let what = format!("madvise {name} pages {a}..{b} of mapping {} (clone {})", m.id, m.clone.id);
        self.note(what.clone());
        // SAFETY: advice on a range this program reserves; none of it
        // changes memory Rust owns (the pages are clone pages or
        // inaccessible).
        let r = unsafe { libc::madvise(m.hva(a) as *mut libc::c_void, ((b - a) * PAGE_SIZE) as usize, advice) };
        let r = if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
        let ok = advice != libc::MADV_REMOVE;
        expect(&r, ok, errs, &what)?;
        Ok(true)
    }

    // -- host accesses -----------------------------------------------------

    /// Copies the page at `addr` into `buf` through the pipe: the kernel
    /// reads it (a fault it cannot resolve is `EFAULT`).
    fn pipe_read(&self, addr: u64, buf: &mut [u8]) -> io::Result<()> {
        // SAFETY: the kernel reads `buf.len()` bytes at `addr` and fails
        // with EFAULT where it cannot; nothing of ours is written.
        let n = unsafe { libc::write(self.pipe_w.as_raw_fd(), addr as *const libc::c_void, buf.len()) };
        if n < 0 {
            let e = io::Error::last_os_error();
            // A write that faults leaves an empty buffer in the pipe's ring
            // (Linux allocates the slot before it copies); 16 of them in a
            // row fill the ring, and the next write would wait forever
            // (2026-12-04: a thread "still running" in pipe_write). A read
            // releases them; the read end is non-blocking, so it returns
            // EAGAIN once the pipe is empty.
            let mut sink = [0u8; 16];
            // SAFETY: reads into our own buffer.
            while unsafe { libc::read(self.pipe_r.as_raw_fd(), sink.as_mut_ptr().cast(), sink.len()) } > 0 {}
            return Err(e);
        }
        // SAFETY: `buf` is ours and has room for `n` bytes.
        let m = unsafe { libc::read(self.pipe_r.as_raw_fd(), buf.as_mut_ptr().cast(), n as usize) };
        assert_eq!(m, n, "pipe read");
        if (n as usize) < buf.len() {
            return Err(io::Error::from_raw_os_error(libc::EFAULT));
        }
        Ok(())
    }

    /// Writes `v` to the u32 at `addr` through the pipe: the kernel writes
    /// it (a fault it cannot resolve is `EFAULT`).
    fn pipe_write(&self, addr: u64, v: u32) -> io::Result<()> {
        let b = v.to_le_bytes();
        // SAFETY: 4 bytes of ours, read by the kernel.
        let n = unsafe { libc::write(self.pipe_w.as_raw_fd(), b.as_ptr().cast(), 4) };
        assert_eq!(n, 4, "pipe write");
        // SAFETY: the kernel writes 4 bytes at `addr`, a clone page or an
        // inaccessible page this program reserves (no memory Rust owns), or
        // fails with EFAULT.
        let n = unsafe { libc::read(self.pipe_r.as_raw_fd(), addr as *mut libc::c_void, 4) };
        if n == 4 {
            return Ok(());
        }
        let e = io::Error::last_os_error();
        let mut sink = [0u8; 4];
        // SAFETY: drains what the failed read left into our buffer.
        unsafe { libc::read(self.pipe_r.as_raw_fd(), sink.as_mut_ptr().cast(), 4) };
        Err(if n < 0 { e } else { io::Error::from_raw_os_error(libc::EFAULT) })
    }

    fn host_read(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(m) = rng.pick_from(&self.f.maps) else { return Ok(false) };
        let _gate = read(&self.f.truncate_gate);
        let present = read(&m.present);
        let c = &m.clone;
        let n = rng.range(1, m.pages.min(4));
        let a = rng.range(0, m.pages - n);
        let b = a + n;
        let tainted = c.tainted();
        let mut buf = vec![0u8; PAGE_SIZE as usize];
        for i in a..b {
            let p = m.pgoff + i;
            let here = present.get(i);
            let direct = here && !tainted && rng.chance(75);
            let how = if direct { "read directly" } else { "read through a pipe" };
            self.note(format!("{how} page {i} of mapping {} (clone {} page {p}){}", m.id, c.id, if here { "" } else { ", unmapped" }));
            if direct {
                for (k, w) in buf.chunks_mut(8).enumerate() {
                    // SAFETY: page `i` of the range `m` reserves is mapped
                    // from the clone (`present`, which no one changes while
                    // we hold it) and readable; a fault on it cannot fail:
                    // its file was never truncated and the truncate gate
                    // keeps it so.
                    let v = unsafe { ((m.hva(i) as *const u64).add(k)).read_volatile() };
                    w.copy_from_slice(&v.to_le_bytes());
                }
            } else {
                let r = self.pipe_read(m.hva(i), &mut buf);
                let errs: &[i32] = if !here || tainted { &[libc::EFAULT] } else { &[] };
                expect(&r, here, errs, "read of a clone page through a pipe")?;
                if r.is_err() {
                    continue;
                }
            }
            c.check_page(p, &buf, how)?;
        }
        Ok(true)
    }

    fn host_write(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(m) = rng.pick_from(&self.f.maps) else { return Ok(false) };
        let _gate = read(&self.f.truncate_gate);
        let present = read(&m.present);
        let c = &m.clone;
        let i = rng.below(m.pages);
        let p = m.pgoff + i;
        let here = present.get(i);
        let tainted = c.tainted();
        let soft = rng.chance(70);
        let v = rng.next() as u32;
        let direct = here && m.writable && !tainted && rng.chance(75);
        self.note(format!(
            "{} write {v:#x} to page {i} of mapping {} (clone {} page {p}){}{}",
            if soft { "soft" } else { "pattern" },
            m.id,
            c.id,
            if direct { " directly" } else { " through a pipe" },
            if here { "" } else { ", unmapped" }
        ));
        if !soft {
            lock(&c.written).set(p, true);
        }
        let offs: &[u64] = if soft { &[4] } else { &[0, HI_OFFSET] };
        for &off in offs {
            let addr = m.hva(i) + off;
            if direct {
                // SAFETY: page `i` is mapped from the clone, writable, and
                // its faults cannot fail (see `host_read`); the bytes are
                // clone memory, not memory Rust owns.
                unsafe { (addr as *mut u32).write_volatile(v) };
            } else {
                let r = self.pipe_write(addr, v);
                let ok = here && m.writable;
                let errs: &[i32] = if !ok || tainted { &[libc::EFAULT] } else { &[] };
                expect(&r, ok, errs, "write of a clone page through a pipe")?;
            }
        }
        Ok(true)
    }

    /// Forks a child that reads up to 4 pages of a mapping, checks them,
    /// writes a soft word to each if it may, and exits.
    fn fork(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(m) = rng.pick_from(&self.f.maps) else { return Ok(false) };
        let _gate = read(&self.f.truncate_gate);
        let present = read(&m.present);
        let c = &m.clone;
        let mut pages = [None::<u64>; 4];
        for slot in pages.iter_mut() {
            let i = rng.below(m.pages);
            if present.get(i) {
                *slot = Some(i);
            }
        }
        if pages.iter().all(Option::is_none) {
            return Ok(false);
        }
        let tainted = c.tainted();
        self.note(format!("fork; the child reads pages {pages:?} of mapping {} (clone {})", m.id, c.id));
        // The child's results must reach us: a shared page.
        // SAFETY: a new shared anonymous page at an address the kernel picks.
        let shared = unsafe {
            libc::mmap(std::ptr::null_mut(), PAGE_SIZE as usize, libc::PROT_READ | libc::PROT_WRITE, libc::MAP_SHARED | libc::MAP_ANONYMOUS, -1, 0)
        };
        if shared == libc::MAP_FAILED {
            bug!("mmap: {}", io::Error::last_os_error());
        }
        let out = shared as *mut u64;
        let (root, base, pgoff, writable) = (c.root, m.addr, m.pgoff, m.writable);
        // SAFETY: fork has no memory-safety preconditions; the child only
        // reads and writes clone pages and the shared page, then _exits
        // (no allocation, no locks, no destructors).
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bug!("fork: {}", io::Error::last_os_error());
        }
        if pid == 0 {
            for (k, pg) in pages.iter().enumerate() {
                let Some(i) = *pg else { continue };
                let addr = base + (i * PAGE_SIZE) as usize;
                let mut bad = 0u64;
                for off in 0..PAGE_SIZE as usize {
                    // SAFETY: page `i` was mapped from the clone when the
                    // child was forked, and the child's copy of the address
                    // space does not change.
                    let byte = unsafe { ((addr + off) as *const u8).read_volatile() };
                    if !soft_byte(off) && byte != root.byte(pgoff + i, off) {
                        bad = (off as u64 + 1) << 8 | byte as u64;
                        break;
                    }
                }
                if writable {
                    // SAFETY: the same page, writable; the soft word.
                    unsafe { ((addr + 4) as *mut u32).write_volatile(k as u32) };
                }
                // SAFETY: `out` is the shared page, 512 u64s.
                unsafe {
                    out.add(2 * k).write_volatile(1);
                    out.add(2 * k + 1).write_volatile(bad);
                }
            }
            // SAFETY: ends the child at once.
            unsafe { libc::_exit(0) };
        }
        let mut status = 0;
        loop {
            // SAFETY: waits for our child; `status` is a valid out pointer.
            let r = unsafe { libc::waitpid(pid, &mut status, 0) };
            if r == pid {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EINTR) {
                bug!("waitpid: {e}");
            }
        }
        // SAFETY: the child is gone; the shared page is ours to read.
        let results: Vec<u64> = (0..8).map(|k| unsafe { out.add(k).read_volatile() }).collect();
        // SAFETY: our shared page, no longer used.
        unsafe { libc::munmap(shared, PAGE_SIZE as usize) };
        if libc::WIFSIGNALED(status) {
            let sig = libc::WTERMSIG(status);
            if sig == libc::SIGBUS && tainted {
                return Ok(true);
            }
            bug!("the forked child died of signal {sig} reading clone {} (its image file was{} truncated)", c.id, if tainted { "" } else { " never" });
        }
        if libc::WEXITSTATUS(status) != 0 {
            bug!("the forked child exited with {}", libc::WEXITSTATUS(status));
        }
        for (k, pg) in pages.iter().enumerate() {
            let Some(i) = *pg else { continue };
            let (done, bad) = (results[2 * k], results[2 * k + 1]);
            let p = pgoff + i;
            if done != 1 {
                bug!("the forked child did not read page {i}");
            }
            if bad != 0 && !c.unchecked(p) {
                let off = (bad >> 8) - 1;
                bug!(
                    "the forked child read byte {off} of clone {} page {p} as {:#04x}, expected {:#04x}; nobody wrote the page",
                    c.id,
                    bad & 0xff,
                    root.byte(p, off as usize)
                );
            }
        }
        Ok(true)
    }

    // -- VMs and memslots --------------------------------------------------

    fn vm_create(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(c) = rng.pick_from(&self.f.clones) else { return Ok(false) };
        let g = read(&c.fd);
        let Some(cfd) = g.as_ref().map(|f| f.as_raw_fd()) else { return Ok(false) };
        let id = self.f.id();
        self.note(format!("KVM_CREATE_VM {id} for clone {}", c.id));
        let fd = match kvm_err(self.f.kvm.create_vm()) {
            Ok(fd) => fd,
            Err(e) => bug!("KVM_CREATE_VM: {e}"),
        };
        let (code, scratch) = match (Mapping::anon(CODE_MEM_SIZE as u64), Mapping::anon(SCRATCH_PAGES * PAGE_SIZE)) {
            (Ok(a), Ok(b)) => (a, b),
            _ => bug!("mmap: {}", io::Error::last_os_error()),
        };
        let region = kvm_userspace_memory_region2 {
            slot: 0,
            memory_size: CODE_MEM_SIZE as u64,
            userspace_addr: code.hva(),
            ..Default::default()
        };
        // SAFETY: the code memory belongs to the VmObj made below, which
        // drops its vCPUs first.
        if let Err(e) = kvm_err(unsafe { fd.set_user_memory_region2(region) }) {
            bug!("KVM_SET_USER_MEMORY_REGION2 of the code memory: {e}");
        }
        let vcpus: [Mutex<Option<VcpuFd>>; MAX_VCPUS] = std::array::from_fn(|_| Mutex::new(None));
        let created: [AtomicBool; MAX_VCPUS] = std::array::from_fn(|_| AtomicBool::new(false));
        for i in 0..rng.range(1, MAX_VCPUS as u64) as usize {
            let v = kvm_err(fd.create_vcpu(i as u64)).and_then(|v| kvm_err(set_flat_pm32(&v)).map(|_| v));
            match v {
                Ok(v) => *lock(&vcpus[i]) = Some(v),
                Err(e) => bug!("KVM_CREATE_VCPU {i}: {e}"),
            }
            created[i].store(true, SeqCst);
        }
        let mut windows = [(0, 0); NSLOTS + 1];
        for w in windows.iter_mut().skip(1) {
            let n = rng.range(1, c.pages.min(MAX_WINDOW));
            *w = (rng.range(0, c.pages - n), n);
        }
        let main = match map_clone(self.f.id(), &c, cfd, 0, c.pages, true) {
            Ok(m) => Arc::new(m),
            Err(e) => bug!("mmap of clone {}: {e}", c.id),
        };
        let vm = VmObj {
            id,
            vcpus,
            fd: Mutex::new(Some(fd)),
            layout: Mutex::new(Layout::default()),
            seq: AtomicU64::new(0),
            created,
            clone: c.clone(),
            windows,
            main: main.clone(),
            code,
            scratch,
            providers: Mutex::new(Vec::new()),
        };
        if rng.chance(85) {
            // Ready to run: slot 1 attached, in window A.
            let fdg = lock(&vm.fd);
            let vfd = fdg.as_ref().unwrap();
            let mut l = lock(&vm.layout);
            let (first, pages) = windows[1];
            self.attach_locked(&vm, &mut l, &c, cfd, vfd.as_raw_fd(), 1, first, pages)?;
            let slot = Slot {
                region: Region::A,
                first,
                pages,
                flags: KVM_MEM_PAGE_PROVIDER,
                hva: main.hva(first),
                map: Some(main.clone()),
            };
            self.slot_set(&vm, vfd, &mut l, 1, slot)?;
        }
        drop(g);
        {
            let mut maps = lock(&self.f.maps);
            if maps.len() < MAX_MAPS {
                maps.push(main);
            }
        }
        lock(&self.f.vms).push(Arc::new(vm));
        Ok(true)
    }

    fn vcpu_create(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(fd) = fdg.as_ref() else { return Ok(false) };
        let i = rng.below(MAX_VCPUS as u64) as usize;
        let what = format!("KVM_CREATE_VCPU {i} of VM {}", vm.id);
        self.note(what.clone());
        let r = kvm_err(fd.create_vcpu(i as u64));
        if vm.created[i].load(SeqCst) {
            expect(&r, false, &[libc::EEXIST], &what)?;
        } else {
            expect(&r, true, &[], &what)?;
        }
        if let Ok(v) = r {
            vm.created[i].store(true, SeqCst);
            if let Err(e) = kvm_err(set_flat_pm32(&v)) {
                bug!("KVM_SET_SREGS: {e}");
            }
            *lock(&vm.vcpus[i]) = Some(v);
        }
        Ok(true)
    }

    fn vm_close(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        self.note(format!("close the fd of VM {}", vm.id));
        drop(lock(&vm.fd).take());
        Ok(true)
    }

    fn vcpu_close(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let i = rng.below(MAX_VCPUS as u64) as usize;
        self.note(format!("close vCPU {i} of VM {}", vm.id));
        drop(lock(&vm.vcpus[i]).take());
        Ok(true)
    }

    fn vm_drop(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let vm = {
            let mut vms = lock(&self.f.vms);
            if vms.is_empty() {
                return Ok(false);
            }
            let i = rng.below(vms.len() as u64) as usize;
            vms.swap_remove(i)
        };
        self.note(format!("close VM {} and its vCPUs", vm.id));
        drop(vm);
        Ok(true)
    }

    /// `KVM_SET_USER_MEMORY_REGION2` of `region` on `vm`, whose layout the
    /// caller holds; the VM's `seq` is odd meanwhile.
    fn memslot(&self, vm: &VmObj, fd: &VmFd, region: kvm_userspace_memory_region2) -> io::Result<()> {
        vm.seq.fetch_add(1, SeqCst);
        // SAFETY: the host range of a memslot the test makes is memory the
        // VM's vCPUs may use for as long as the memslot exists: a mapping
        // that the layout keeps reserved (an Arc in the Slot) until the
        // memslot is deleted, the VmObj's own memory (dropped after its
        // vCPUs), address 0 or an inaccessible page.
        let r = unsafe { fd.set_user_memory_region2(region) };
        vm.seq.fetch_add(1, SeqCst);
        kvm_err(r)
    }

    fn region(s: usize, slot: &Slot) -> kvm_userspace_memory_region2 {
        kvm_userspace_memory_region2 {
            slot: s as u32,
            flags: slot.flags,
            guest_phys_addr: slot.gpa(),
            memory_size: slot.pages * PAGE_SIZE,
            userspace_addr: slot.hva,
            ..Default::default()
        }
    }

    /// Creates memslot `s` as `slot`; the result is predicted from the
    /// layout.
    fn slot_set(&self, vm: &VmObj, fd: &VmFd, l: &mut Layout, s: usize, slot: Slot) -> Res {
        let valid = KVM_MEM_LOG_DIRTY_PAGES | KVM_MEM_READONLY | KVM_MEM_PAGE_PROVIDER;
        let ro_provider = slot.flags & (KVM_MEM_READONLY | KVM_MEM_PAGE_PROVIDER) == KVM_MEM_READONLY | KVM_MEM_PAGE_PROVIDER;
        let overlap = l.overlaps(s, slot.gpa(), slot.end());
        let (ok, errs): (bool, &[i32]) = if slot.flags & !valid != 0 {
            (false, &[libc::EINVAL])
        } else if ro_provider {
            // Refused by kernels that make the combination invalid.
            (!overlap, if overlap { &[libc::EEXIST, libc::EINVAL] } else { &[libc::EINVAL] })
        } else if overlap {
            (false, &[libc::EEXIST])
        } else {
            (true, &[])
        };
        let what = format!(
            "KVM_SET_USER_MEMORY_REGION2 VM {} slot {s} {:?} gpa {:#x} pages {} flags {:#x} hva {:#x}{}",
            vm.id,
            slot.region,
            slot.gpa(),
            slot.pages,
            slot.flags,
            slot.hva,
            slot.map.as_ref().map_or(String::new(), |m| format!(" (mapping {}, clone {})", m.id, m.clone.id))
        );
        if slot.flags & KVM_MEM_PAGE_PROVIDER == 0 {
            if let Some(m) = &slot.map {
                // Before the call: a claim happens inside it.
                let mut claimers = lock(&m.clone.claimers);
                if !claimers.contains(&vm.id) {
                    claimers.push(vm.id);
                }
                let mut providers = lock(&vm.providers);
                if !providers.contains(&m.clone.id) {
                    providers.push(m.clone.id);
                }
            }
        }
        self.note(what.clone());
        let r = self.memslot(vm, fd, Self::region(s, &slot));
        expect(&r, ok, errs, &what)?;
        if r.is_ok() {
            l.slots[s] = Some(slot);
        }
        Ok(())
    }

    fn slot_create(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(fd) = fdg.as_ref() else { return Ok(false) };
        let mut l = lock(&vm.layout);
        let s = rng.range(1, NSLOTS as u64) as usize;
        if l.slots[s].is_some() {
            self.slot_delete_locked(&vm, fd, &mut l, s)?;
            return Ok(true);
        }
        let c = &vm.clone;
        const P: u32 = KVM_MEM_PAGE_PROVIDER;
        const RO: u32 = KVM_MEM_READONLY;
        const LOG: u32 = KVM_MEM_LOG_DIRTY_PAGES;
        let flags = rng
            .pick(&[0, P, P, P, P, P | LOG, LOG, 0, RO, RO | P, RO | P | LOG, KVM_MEM_GUEST_MEMFD, 1 << 4, 1 << 31])
            .unwrap();
        let (first, n) = vm.windows[s];
        let mut pages = if rng.chance(10) { rng.range(1, MAX_WINDOW) } else { n };
        let region = match rng.below(10) {
            0..4 => Region::A,
            4..7 => Region::B,
            _ => Region::D,
        };
        let (hva, map) = if region != Region::D {
            pages = pages.min(c.pages - first);
            let fits: Vec<Arc<MapObj>> = lock(&self.f.maps)
                .iter()
                .filter(|m| m.clone.id == c.id && m.pgoff <= first && first + pages <= m.pgoff + m.pages)
                .cloned()
                .collect();
            let m = rng.pick(&fits).unwrap_or_else(|| vm.main.clone());
            (m.hva(first - m.pgoff), Some(m))
        } else {
            match rng.below(4) {
                0 => {
                    pages = pages.min(SCRATCH_PAGES);
                    (vm.scratch.hva(), None)
                }
                1 => (0, None),
                2 => match rng.pick_from(&self.f.maps) {
                    Some(m) => {
                        pages = pages.min(m.pages);
                        (m.hva(0), Some(m))
                    }
                    None => (0, None),
                },
                _ => {
                    pages = 1;
                    (self.f.bad.hva() + PAGE_SIZE, None)
                }
            }
        };
        let slot = Slot { region, first, pages, flags, hva, map };
        self.slot_set(&vm, fd, &mut l, s, slot)?;
        Ok(true)
    }

    fn slot_delete_locked(&self, vm: &VmObj, fd: &VmFd, l: &mut Layout, s: usize) -> Res {
        let what = format!("delete memslot {s} of VM {}", vm.id);
        self.note(what.clone());
        let region = kvm_userspace_memory_region2 { slot: s as u32, ..Default::default() };
        let r = self.memslot(vm, fd, region);
        if l.slots[s].is_some() {
            expect(&r, true, &[], &what)?;
        } else {
            expect(&r, false, &[libc::EINVAL], &what)?;
        }
        if r.is_ok() {
            l.slots[s] = None;
        }
        Ok(())
    }

    fn slot_delete(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(fd) = fdg.as_ref() else { return Ok(false) };
        let mut l = lock(&vm.layout);
        let s = rng.range(1, NSLOTS as u64) as usize;
        self.slot_delete_locked(&vm, fd, &mut l, s)?;
        Ok(true)
    }

    /// Moves a memslot from window A to B or back (or elsewhere in D).
    fn slot_move(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(fd) = fdg.as_ref() else { return Ok(false) };
        let mut l = lock(&vm.layout);
        let s = rng.range(1, NSLOTS as u64) as usize;
        let Some(old) = l.slots[s].clone() else { return Ok(false) };
        let mut new = old.clone();
        match old.region {
            Region::A => new.region = Region::B,
            Region::B => new.region = Region::A,
            Region::D => new.first = rng.range(0, 256),
        }
        let overlap = l.overlaps(s, new.gpa(), new.end());
        let what = format!(
            "move memslot {s} of VM {} from gpa {:#x} to {:#x} ({} pages, flags {:#x})",
            vm.id,
            old.gpa(),
            new.gpa(),
            new.pages,
            new.flags
        );
        self.note(what.clone());
        let r = self.memslot(&vm, fd, Self::region(s, &new));
        if overlap {
            expect(&r, false, &[libc::EEXIST], &what)?;
        } else {
            expect(&r, true, &[], &what)?;
        }
        if r.is_ok() {
            l.slots[s] = Some(new);
        }
        Ok(true)
    }

    /// Changes the flags of a memslot.
    fn slot_flags(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(fd) = fdg.as_ref() else { return Ok(false) };
        let mut l = lock(&vm.layout);
        let s = rng.range(1, NSLOTS as u64) as usize;
        let Some(old) = l.slots[s].clone() else { return Ok(false) };
        let toggle = rng
            .pick(&[KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_LOG_DIRTY_PAGES, KVM_MEM_PAGE_PROVIDER, KVM_MEM_PAGE_PROVIDER, KVM_MEM_READONLY, KVM_MEM_GUEST_MEMFD, 1 << 9])
            .unwrap();
        let mut new = old.clone();
        new.flags ^= toggle;
        let (ok, errs): (bool, &[i32]) = match toggle {
            KVM_MEM_LOG_DIRTY_PAGES => (true, &[]),
            // Refused by kernels that make the provider flag immutable.
            KVM_MEM_PAGE_PROVIDER => (true, &[libc::EINVAL]),
            _ => (false, &[libc::EINVAL]),
        };
        let what = format!("memslot {s} of VM {}: flags {:#x} -> {:#x}", vm.id, old.flags, new.flags);
        self.note(what.clone());
        let r = self.memslot(&vm, fd, Self::region(s, &new));
        expect(&r, ok, errs, &what)?;
        if r.is_ok() {
            l.slots[s] = Some(new);
        }
        Ok(true)
    }

    /// `KVM_SET_USER_MEMORY_REGION(2)` with one thing wrong.
    fn slot_bad(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        let fdg = lock(&vm.fd);
        let Some(fd) = fdg.as_ref() else { return Ok(false) };
        let l = lock(&vm.layout);
        let s = rng.range(1, NSLOTS as u64) as usize;
        let mut region = kvm_userspace_memory_region2 {
            slot: s as u32,
            flags: KVM_MEM_PAGE_PROVIDER,
            guest_phys_addr: D_BASE + rng.range(0, 256) * PAGE_SIZE,
            memory_size: rng.range(1, 16) * PAGE_SIZE,
            userspace_addr: vm.main.hva(0),
            ..Default::default()
        };
        let how = match rng.below(9) {
            0 => {
                region.guest_phys_addr += rng.range(1, PAGE_SIZE - 1);
                "an unaligned gpa".to_string()
            }
            1 => {
                region.memory_size += rng.range(1, PAGE_SIZE - 1);
                "an unaligned size".into()
            }
            2 => {
                region.userspace_addr += rng.range(1, PAGE_SIZE - 1);
                "an unaligned host address".into()
            }
            3 => {
                region.userspace_addr = KERNEL_ADDR;
                "a kernel host address".into()
            }
            4 => {
                region.slot = if rng.chance(50) { 0x7fff } else { 2 << 16 | s as u32 };
                format!("slot {:#x}", region.slot)
            }
            5 => {
                region.guest_phys_addr = !(PAGE_SIZE - 1);
                region.memory_size = 2 * PAGE_SIZE;
                "gpa + size overflowing".into()
            }
            6 => {
                // The v1 ioctl knows no provider flag.
                let r1 = kvm_bindings::kvm_userspace_memory_region {
                    slot: region.slot,
                    flags: region.flags,
                    guest_phys_addr: region.guest_phys_addr,
                    memory_size: region.memory_size,
                    userspace_addr: region.userspace_addr,
                };
                let what = format!("KVM_SET_USER_MEMORY_REGION (v1) slot {s} with KVM_MEM_PAGE_PROVIDER");
                self.note(what.clone());
                vm.seq.fetch_add(1, SeqCst);
                // SAFETY: refused before anything is installed (and were
                // it not, as in `memslot`: the VM's own mapping).
                let r = kvm_err(unsafe { fd.set_user_memory_region(r1) });
                vm.seq.fetch_add(1, SeqCst);
                expect(&r, false, &[libc::EINVAL], &what)?;
                return Ok(true);
            }
            7 => {
                let (kind, p) = self.f.bad_ptr(rng, size_of::<kvm_userspace_memory_region2>());
                if matches!(kind, BadPtr::ReadOnly) {
                    // Zeros would delete slot 0.
                    return Ok(false);
                }
                let cmd = _IOW(KVMIO, 0x49, size_of::<kvm_userspace_memory_region2>());
                let what = format!("KVM_SET_USER_MEMORY_REGION2 with a bad pointer ({kind:?}, {p:#x})");
                self.note(what.clone());
                // SAFETY: the kernel cannot read the argument (see
                // `bad_ptr_call`) and fails before it changes anything.
                let r = unsafe { ioctl(fd.as_raw_fd(), cmd, p) };
                expect(&r, false, &[libc::EFAULT], &what)?;
                return Ok(true);
            }
            _ => {
                // An existing slot with another size or host address.
                let Some(old) = l.slots[s].clone() else { return Ok(false) };
                region = Self::region(s, &old);
                if rng.chance(50) {
                    region.memory_size += PAGE_SIZE;
                } else {
                    region.userspace_addr ^= PAGE_SIZE;
                }
                "another size or host address".into()
            }
        };
        let what = format!("KVM_SET_USER_MEMORY_REGION2 slot {:#x} with {how}", region.slot);
        self.note(what.clone());
        let r = self.memslot(&vm, fd, region);
        expect(&r, false, &[libc::EINVAL], &what)?;
        Ok(true)
    }

    // -- guests ------------------------------------------------------------

    /// One `KVM_RUN` to the program's next report. A run the monitor had
    /// to interrupt is a bug (a livelock).
    fn run_once(&self, vcpu: &mut VcpuFd) -> Result<RunResult, Bug> {
        loop {
            let exit = match vcpu.run() {
                Ok(VcpuExit::Intr) => None,
                Ok(e) => Some(Exit::from(e)),
                Err(e) if e.errno() == libc::EINTR => None,
                Err(e) => return Ok(Err(e.errno())),
            };
            match exit {
                None if self.ts().kicked.load(SeqCst) => {
                    bug!("KVM_RUN did not return for {} s", RUN_HANG.as_secs())
                }
                None => continue,
                Some(exit) => return Ok(guest::__outcome(vcpu, exit).map_err(|e| e.errno())),
            }
        }
    }

    fn run_guest(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(vm) = rng.pick_from(&self.f.vms) else { return Ok(false) };
        // The first vCPU from a random one on that exists and is idle.
        let start = rng.below(MAX_VCPUS as u64) as usize;
        let Some((i, mut vg)) = (0..MAX_VCPUS).map(|k| (start + k) % MAX_VCPUS).find_map(|i| {
            let g = match vm.vcpus[i].try_lock() {
                Ok(g) => g,
                Err(std::sync::TryLockError::Poisoned(e)) => e.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return None,
            };
            g.is_some().then_some((i, g))
        }) else {
            // Nothing to run: make something to run next time.
            return self.vcpu_create(rng);
        };
        let vcpu = vg.as_mut().unwrap();
        let (l, seq0) = {
            let l = lock(&vm.layout);
            (l.clone(), vm.seq.load(SeqCst))
        };
        let used: Vec<usize> = (1..=NSLOTS).filter(|&s| l.slots[s].is_some()).collect();
        let Some(s) = rng.pick(&used) else {
            drop(vg);
            return self.slot_create(rng);
        };
        let slot = l.slots[s].clone().unwrap();
        let c = &vm.clone;
        let n = rng.range(1, slot.pages.min(MAX_WINDOW));
        let a = rng.range(0, slot.pages - n);
        let gpa = slot.gpa() + a * PAGE_SIZE;
        // The clone page at `gpa` (windows A and B).
        let x0 = slot.first + a;
        let checked = slot.region != Region::D;
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        enum Prog {
            Read,
            Write,
            Forever,
        }
        let prog = match rng.below(100) {
            0..45 => Prog::Read,
            45..65 if checked => Prog::Write,
            45..65 => Prog::Read,
            _ => Prog::Forever,
        };
        let tag = rng.next() as u32;
        let walk = match prog {
            Prog::Write => Walk::values(gpa, n, tag),
            _ if checked => c.root.walk(gpa, x0, n),
            _ => Walk::values(gpa, n, tag),
        };
        let code = match prog {
            Prog::Read => guest::read_check(&walk),
            Prog::Write => guest::write(&walk),
            Prog::Forever => guest::read_write_forever(&walk),
        };
        let writes = prog != Prog::Read;
        let provider = slot.flags & KVM_MEM_PAGE_PROVIDER != 0;
        let ro = slot.flags & KVM_MEM_READONLY != 0;
        let mseq0 = slot.map.as_ref().map(|m| m.seq.load(SeqCst));
        let in_place = if provider {
            l.attached.iter().any(|&(sl, f, np)| sl == s as u32 && f == slot.first && np == slot.pages)
        } else {
            slot.map.as_ref().is_some_and(|m| {
                let off = slot.first - m.pgoff + a;
                read(&m.present).all(off, off + n) && (!writes || m.writable)
            })
        };
        let strict0 = checked && in_place && !c.closed.load(SeqCst) && !c.tainted();
        if prog == Prog::Write {
            lock(&c.written).set_range(x0, x0 + n, true);
        }
        self.note(format!(
            "KVM_RUN vCPU {i} of VM {}: {prog:?} of {n} pages at gpa {gpa:#x} (memslot {s}, {:?}, flags {:#x}; clone {} page {x0}){}",
            vm.id,
            slot.region,
            slot.flags,
            c.id,
            if strict0 { ", must succeed" } else { "" }
        ));
        // Complete what the last run left pending (an MMIO or port access)
        // before the registers change.
        vcpu.set_kvm_immediate_exit(1);
        let r = match vcpu.run() {
            Ok(VcpuExit::Intr) => Ok(()),
            Err(e) if e.errno() == libc::EINTR => Ok(()),
            Ok(e) => Err(format!("{e:?}")),
            Err(e) => Err(ename(e.errno())),
        };
        vcpu.set_kvm_immediate_exit(0);
        if let Err(e) = r {
            bug!("KVM_RUN with immediate_exit: {e}, expected EINTR");
        }
        vm.code.write(guest::code_gpa(i), &code);
        if let Err(e) = kvm_err(vcpu_set_entry(vcpu, guest::code_gpa(i))) {
            bug!("KVM_SET_REGS: {e}");
        }
        let ts = self.ts();
        ts.kicked.store(false, SeqCst);
        ts.in_run.store(true, SeqCst);
        let rounds = if prog == Prog::Forever { rng.range(1, 3) } else { 1 };
        let mut outcomes = Vec::new();
        for _ in 0..rounds {
            let o = self.run_once(vcpu);
            let again = matches!(o, Ok(Ok(Outcome::Progress)));
            outcomes.push(o);
            if !again {
                break;
            }
        }
        ts.in_run.store(false, SeqCst);
        let strict = strict0
            && vm.seq.load(SeqCst) == seq0
            && !c.closed.load(SeqCst)
            && !c.tainted()
            && slot.map.as_ref().map(|m| m.seq.load(SeqCst)) == mseq0;
        for o in outcomes {
            match o? {
                Ok(Outcome::Done) if strict && ro && writes => {
                    bug!("the guest's writes to a read-only memslot completed")
                }
                Ok(Outcome::Done) => {}
                Ok(Outcome::Progress) if prog == Prog::Forever => {}
                Ok(Outcome::Mismatch { gpa: g, offset, expected, found }) if prog != Prog::Write => {
                    if checked {
                        let x = (g as u64 - slot.region.base()) / PAGE_SIZE;
                        if !c.unchecked(x) {
                            bug!(
                                "the guest read {found:#010x} at gpa {g:#x} + {offset} (clone {} page {x}), \
                                 expected {expected:#010x}; nobody wrote the page; {}",
                                c.id,
                                c.origin()
                            );
                        }
                    }
                }
                Ok(Outcome::Exit(Exit::Mmio { gpa: g, write: w, .. })) => {
                    if strict && !(ro && w) {
                        bug!("KVM_EXIT_MMIO at gpa {g:#x} (write {w}) in a memslot that is there");
                    }
                }
                Ok(Outcome::Exit(Exit::MemoryFault { gpa: g, size })) => {
                    if strict {
                        bug!("KVM_EXIT_MEMORY_FAULT at gpa {g:#x} (size {size:#x}) in a memslot whose memory is there");
                    }
                }
                Err(libc::EFAULT) => {
                    if strict {
                        bug!("KVM_RUN: EFAULT in a memslot whose memory is there");
                    }
                }
                Ok(o) => bug!("KVM_RUN: {} (program {prog:?})", guest::describe(&o)),
                Err(e) => bug!("KVM_RUN: {}", ename(e)),
            }
        }
        Ok(true)
    }

    // -- image files -------------------------------------------------------

    fn truncate(&mut self, rng: &mut Rng) -> Result<bool, Bug> {
        let Some(file) = rng.pick_from(&self.f.files) else { return Ok(false) };
        let len = if rng.chance(50) {
            rng.range(0, file.len() / PAGE_SIZE) * PAGE_SIZE
        } else {
            rng.range(0, file.len())
        };
        let what = format!("truncate {} to {len:#x}", file.path.display());
        self.note(what.clone());
        let path = std::ffi::CString::new(file.path.as_os_str().as_encoded_bytes()).unwrap();
        let _gate = write(&self.f.truncate_gate);
        let was = file.truncated.swap(true, SeqCst);
        lock(&file.intact).1.push(len);
        file.truncating.fetch_add(1, SeqCst);
        // SAFETY: a NUL-terminated path.
        let r = unsafe { libc::truncate(path.as_ptr(), len as i64) };
        let r = if r == 0 { Ok(()) } else { Err(io::Error::last_os_error()) };
        if r.is_err() && !was {
            file.truncated.store(false, SeqCst);
        }
        {
            let mut g = lock(&file.intact);
            if let Some(i) = g.1.iter().position(|&l| l == len) {
                g.1.swap_remove(i);
            }
            if r.is_ok() {
                g.0 = g.0.min(len);
            }
        }
        file.truncating.fetch_sub(1, SeqCst);
        lock(&self.f.events).push(format!("thread {} call {}: {what}: {}", self.t, self.call, ename(errno_of(&r))));
        // Kernels that deny writes to a file an image uses refuse it.
        expect(&r, true, &[libc::ETXTBSY], &what)?;
        Ok(true)
    }

    /// Replaces a truncated file by a new one (its images keep the old).
    fn refresh(&mut self) -> Result<bool, Bug> {
        // No fork while the new file is open for writing: the child would
        // inherit the writer, and VMS_IMAGE_CREATE of the file would fail
        // with ETXTBSY while the child lives (a fork holds the gate for
        // reading).
        let _gate = write(&self.f.truncate_gate);
        let mut files = lock(&self.f.files);
        let Some(i) = files.iter().position(|f| f.truncated.load(SeqCst)) else { return Ok(false) };
        let name = self.f.new_name();
        self.note(format!("replace {} by a new file", files[i].path.display()));
        match FileObj::create(&name, files[i].pages, files[i].junk) {
            Ok(f) => files[i] = Arc::new(f),
            Err(e) => bug!("write an image file: {e}"),
        }
        Ok(true)
    }
}

/// Maps pages `pgoff..pgoff + pages` of clone `c` (fd `cfd`).
fn map_clone(id: u64, c: &Arc<CloneObj>, cfd: RawFd, pgoff: u64, pages: u64, writable: bool) -> io::Result<MapObj> {
    let prot = if writable { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_READ };
    // SAFETY: a new shared mapping at an address the kernel picks.
    let p = unsafe {
        libc::mmap(std::ptr::null_mut(), (pages * PAGE_SIZE) as usize, prot, libc::MAP_SHARED, cfd, (pgoff * PAGE_SIZE) as i64)
    };
    if p == libc::MAP_FAILED {
        return Err(io::Error::last_os_error());
    }
    let mut present = Bits::new(pages);
    present.set_range(0, pages, true);
    // INVARIANT: the range is a new mapping of the clone's pages
    // `pgoff..pgoff + pages`, owned by the MapObj.
    Ok(MapObj {
        id,
        clone: c.clone(),
        addr: p as usize,
        pages,
        pgoff,
        writable,
        present: RwLock::new(present),
        seq: AtomicU64::new(0),
    })
}

/// A kind of call, by weight, leaving out those in `skip`.
fn pick_op(rng: &mut Rng, skip: &[Op]) -> Op {
    let total: u64 = OPS.iter().filter(|(o, _)| !skip.contains(o)).map(|(_, w)| w).sum();
    let mut x = rng.below(total);
    for &(op, w) in OPS.iter().filter(|(o, _)| !skip.contains(o)) {
        if x < w {
            return op;
        }
        x -= w;
    }
    unreachable!()
}

// ---------------------------------------------------------------------------
// The run

extern "C" fn on_kick(_: libc::c_int) {}

/// Watches the workers: interrupts a `KVM_RUN` that runs too long (the
/// worker then fails), ends the test if any call hangs.
fn monitor(f: &Fuzz, done: &AtomicBool) {
    while !done.load(SeqCst) {
        thread::sleep(Duration::from_millis(200));
        let now = f.ms();
        for (t, ts) in f.threads.iter().enumerate() {
            let since = ts.since.load(SeqCst);
            if since == 0 {
                continue;
            }
            let age = Duration::from_millis(now.saturating_sub(since));
            if ts.in_run.load(SeqCst) && age > RUN_HANG && !ts.kicked.swap(true, SeqCst) {
                let desc = lock(&ts.desc).clone();
                f.record_failure(format!(
                    "thread {t} {desc}\n  KVM_RUN still running after {} s: the guest does not get on (VMS_FUZZ_SEED={})",
                    RUN_HANG.as_secs(),
                    f.seed
                ));
                // SAFETY: signals a live thread of ours (the worker stays in
                // its call until it returns) with a handler that does
                // nothing: KVM_RUN returns EINTR.
                unsafe { libc::pthread_kill(ts.pthread.load(SeqCst) as libc::pthread_t, libc::SIGUSR1) };
            }
            if age > CALL_HANG {
                ksft::ksft_print_msg(&format!(
                    "thread {t} {}: still running after {} s (VMS_FUZZ_SEED={})",
                    lock(&ts.desc),
                    age.as_secs(),
                    f.seed
                ));
                print_history(f);
                print_task_stacks();
                println!("Bail out! a call hangs");
                std::process::exit(ksft::KSFT_FAIL);
            }
        }
    }
}

/// Where each thread of this process is, as the kernel sees it (state,
/// wait channel, kernel stack: root only), and the blocked tasks of the
/// whole machine into the kernel log (SysRq w): whether a hung call waits
/// in the kernel or on one of the model's own locks (a futex).
fn print_task_stacks() {
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return };
    for t in tasks.flatten() {
        let p = t.path();
        let read = |f: &str| std::fs::read_to_string(p.join(f)).unwrap_or_default();
        let stat = read("stat");
        let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("?").to_owned();
        ksft::ksft_print_msg(&format!(
            "task {} {}: state {state}, wchan {}",
            t.file_name().to_string_lossy(),
            read("comm").trim(),
            read("wchan").trim()
        ));
        for line in read("stack").lines().take(24) {
            ksft::ksft_print_msg(&format!("    {line}"));
        }
    }
    let _ = std::fs::write("/proc/sysrq-trigger", "w");
}

fn print_history(f: &Fuzz) {
    for e in lock(&f.events).iter() {
        ksft::ksft_print_msg(&format!("earlier: {e}"));
    }
    for (t, ts) in f.threads.iter().enumerate() {
        ksft::ksft_print_msg(&format!("thread {t}, last calls:"));
        for line in lock(&ts.history).iter() {
            ksft::ksft_print_msg(&format!("  {line}"));
        }
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok().filter(|v| !v.is_empty())?;
    match v.parse() {
        Ok(n) => Some(n),
        Err(_) => ksft::skip(format_args!("{name}={v} is not a number")),
    }
}

impl Fuzz {
    fn new(seed: u64, threads: usize, skip: Vec<Op>) -> Fuzz {
        let dev = vms_open();
        let kvm = kvm::open_kvm();
        let pid = std::process::id();
        let mut files = Vec::new();
        for (i, pages) in [32, 64, 128, 256].into_iter().enumerate().take(FILES) {
            let f = ksft::check(FileObj::create(&format!("fz{pid}-file{i}"), pages, i as u64 % 3), "write an image file");
            files.push(Arc::new(f));
        }
        let anchor = format!("fz{pid}-anchor");
        let mut arg = VmsImageCreate {
            name: name_field(&anchor),
            fd: -1,
            flags: VMS_IMAGE_EMPTY,
            size: PAGE_SIZE,
            ..VmsImageCreate::zeroed()
        };
        ksft::check(ioctl_with(dev.as_raw_fd(), VMS_IMAGE_CREATE, &mut arg), "VMS_IMAGE_CREATE (the anchor)");
        let dir = ksft::check(File::open(image_dir()), "open the image directory");
        let wronly_path = image_dir().join(format!("vms-fz{pid}-wronly.img"));
        let wronly = ksft::check(
            OpenOptions::new().write(true).create(true).truncate(true).custom_flags(libc::O_CLOEXEC).open(&wronly_path),
            "create a write-only file",
        );
        let bad = ksft::check(Mapping::anon(3 * PAGE_SIZE), "mmap");
        // SAFETY: changes the protection of pages of our own mapping that
        // nothing references.
        let r = unsafe {
            libc::mprotect((bad.hva() + PAGE_SIZE) as *mut libc::c_void, PAGE_SIZE as usize, libc::PROT_NONE)
                | libc::mprotect((bad.hva() + 2 * PAGE_SIZE) as *mut libc::c_void, PAGE_SIZE as usize, libc::PROT_READ)
        };
        test_assert!(r == 0, "mprotect");
        Fuzz {
            seed,
            t0: Instant::now(),
            dev,
            kvm,
            files: Mutex::new(files),
            images: Mutex::new(Vec::new()),
            clones: Mutex::new(Vec::new()),
            maps: Mutex::new(Vec::new()),
            vms: Mutex::new(Vec::new()),
            anchor,
            truncate_gate: RwLock::new(()),
            dir,
            wronly,
            wronly_path,
            bad,
            next_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            failures: Mutex::new(Vec::new()),
            events: Mutex::new(Vec::new()),
            threads: (0..threads).map(|_| ThreadState::default()).collect(),
            skip,
        }
    }

    /// Closes everything, then deletes every image: with `strict` (no
    /// failure so far) each image must count no clone and each delete must
    /// succeed. Returns what went wrong.
    fn teardown(&self, strict: bool) -> Vec<String> {
        let mut problems = Vec::new();
        lock(&self.vms).clear();
        lock(&self.maps).clear();
        for c in lock(&self.clones).drain(..) {
            c.closed.store(true, SeqCst);
            drop(write(&c.fd).take());
        }
        let mut images = std::mem::take(&mut *lock(&self.images));
        if strict {
            for img in &images {
                let mut arg = VmsImageInfo { name: name_field(&img.name), ..VmsImageInfo::zeroed() };
                match ioctl_with(self.dev.as_raw_fd(), VMS_IMAGE_INFO, &mut arg) {
                    Ok(_) if arg.stats.clones != 0 => problems.push(format!(
                        "image {}: {} clones after every clone was closed",
                        img.name, arg.stats.clones
                    )),
                    Ok(_) => {}
                    Err(e) => problems.push(format!("VMS_IMAGE_INFO {}: {e}", img.name)),
                }
            }
        }
        // Live images before the images they are layered on.
        images.sort_by_key(|i| std::cmp::Reverse(i.generation));
        for img in images.iter().map(|i| i.name.as_str()).chain([self.anchor.as_str()]) {
            let mut arg = VmsImageInfo { name: name_field(img), ..VmsImageInfo::zeroed() };
            if let Err(e) = ioctl_with(self.dev.as_raw_fd(), VMS_IMAGE_DELETE, &mut arg) {
                if strict || img == self.anchor {
                    problems.push(format!("VMS_IMAGE_DELETE {img} at the end: {}", ename(e.raw_os_error().unwrap_or(0))));
                }
            }
        }
        drop(images);
        let prefix = format!("fz{}-", std::process::id());
        for index in 0.. {
            let mut arg = VmsImageList { index, ..VmsImageList::zeroed() };
            if ioctl_with(self.dev.as_raw_fd(), VMS_IMAGE_LIST, &mut arg).is_err() {
                break;
            }
            let name = vms_uapi::name_bytes(&arg.name).unwrap_or(b"");
            if strict && name.starts_with(prefix.as_bytes()) {
                problems.push(format!("image {} is left", String::from_utf8_lossy(name)));
            }
        }
        lock(&self.files).clear();
        let _ = fs::remove_file(&self.wronly_path);
        problems
    }
}

fn fuzz() {
    let calls = env_u64("VMS_FUZZ_CALLS").unwrap_or(CALLS);
    let threads = env_u64("VMS_FUZZ_THREADS").unwrap_or(THREADS as u64).clamp(1, 64) as usize;
    let seed = env_u64("VMS_FUZZ_SEED").unwrap_or_else(|| {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_nanos() as u64);
        mix(t ^ (std::process::id() as u64) << 32)
    });
    let mut skip = Vec::new();
    for name in std::env::var("VMS_FUZZ_SKIP").unwrap_or_default().split(',').filter(|n| !n.is_empty()) {
        match OPS.iter().find(|(o, _)| format!("{o:?}").eq_ignore_ascii_case(name)) {
            Some(&(o, _)) => skip.push(o),
            None => ksft::skip(format_args!("VMS_FUZZ_SKIP: no call kind {name}")),
        }
    }
    test_assert!(skip.len() < OPS.len(), "VMS_FUZZ_SKIP leaves no call");
    ksft::ksft_print_msg(&format!("seed {seed}"));
    ksft::ksft_print_msg(&format!("{calls} calls from {threads} threads"));
    // A bound on the whole run: a minute, and 20 ms a call (the debug test
    // VM makes 145-250 calls/s with two TCG threads, about 100 with one;
    // selftests/run gives this test 1200 s).
    let limit = env_u64("VMS_FUZZ_LIMIT").unwrap_or(60 + calls / 50);
    let _watchdog = Watchdog::start("fuzz", Duration::from_secs(limit));

    // SAFETY: installs a handler that does nothing, without SA_RESTART, so
    // that a KVM_RUN the monitor signals returns EINTR.
    unsafe {
        let mut sa: libc::sigaction = std::mem::zeroed();
        sa.sa_sigaction = on_kick as extern "C" fn(libc::c_int) as usize;
        libc::sigemptyset(&mut sa.sa_mask);
        libc::sigaction(libc::SIGUSR1, &sa, std::ptr::null_mut());
    }

    // Free memory is compared with empty slabs and clean caches given back
    // at both ends: what stays is held, not cached.
    shrink_caches();
    let free_start = mem_free();
    let f = Fuzz::new(seed, threads, skip);
    let t0 = Instant::now();
    let done = AtomicBool::new(false);
    let mut counts: Counts = vec![(0, 0, 0); OPS.len()];
    thread::scope(|s| {
        let mon = s.spawn(|| monitor(&f, &done));
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let n = calls / threads as u64 + u64::from((t as u64) < calls % threads as u64);
                let f = &f;
                s.spawn(move || {
                    let mut w = Worker::new(f, t);
                    w.run(n);
                    w.counts
                })
            })
            .collect();
        for w in workers {
            match w.join() {
                Ok(c) => {
                    for (k, (a, b, ms)) in c.into_iter().enumerate() {
                        counts[k].0 += a;
                        counts[k].1 += b;
                        counts[k].2 += ms;
                    }
                }
                Err(_) => f.record_failure("a worker thread panicked".into()),
            }
        }
        done.store(true, SeqCst);
        let _ = mon.join();
    });
    let secs = t0.elapsed().as_secs_f64();
    let made: u64 = counts.iter().map(|c| c.0).sum();
    ksft::ksft_print_msg(&format!("{made} calls in {secs:.1} s: {:.0} calls/s", made as f64 / secs));
    let line: Vec<String> = OPS
        .iter()
        .zip(&counts)
        .map(|((o, _), (n, ok, ms))| format!("{o:?} {ok}/{n} {:.1}s", *ms as f64 / 1000.0))
        .collect();
    for chunk in line.chunks(8) {
        ksft::ksft_print_msg(&format!("  {}", chunk.join(", ")));
    }

    let failures = std::mem::take(&mut *lock(&f.failures));
    let problems = f.teardown(failures.is_empty());
    if !failures.is_empty() {
        print_history(&f);
    }
    drop(f);
    // RCU frees objects late: shrink again until memory is back or 20 s
    // have passed.
    let t_end = Instant::now();
    let free_end = loop {
        shrink_caches();
        let now = mem_free();
        if now + SLACK >= free_start || t_end.elapsed() >= Duration::from_secs(20) {
            break now;
        }
        thread::sleep(Duration::from_secs(1));
    };
    ksft::ksft_print_msg(&format!(
        "free memory: {:.1} MiB at the start, {:.1} MiB at the end",
        mib(free_start),
        mib(free_end)
    ));
    // Memslots without the flag that vms.ko claimed (patch 0010), where
    // the debug counter exists.
    if let Ok(n) = std::fs::read_to_string("/sys/kernel/debug/vms/claimed_slots") {
        ksft::ksft_print_msg(&format!("memslots claimed by vms.ko since it loaded: {}", n.trim()));
    }
    for msg in &failures {
        ksft::ksft_print_msg(&format!("FAILED: {msg}"));
    }
    test_assert!(failures.is_empty(), "{} failures (the first is the finding)", failures.len());
    test_assert!(problems.is_empty(), "at the end: {}", problems.join("; "));
    test_assert!(
        free_end + SLACK >= free_start,
        "{:.1} MiB not freed",
        mib(free_start - free_end)
    );
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[Test::new("fuzz", fuzz)]);
}
