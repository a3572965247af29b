// SPDX-License-Identifier: GPL-2.0

//! Clones: a VM's memory, streamed from an image, private on first write.
//!
//! Page states (per clone page `idx`, in `State::private`):
//!
//! - shared: no private page. A read, by the guest (stage-2 fault) or the
//!   VMM (fault of its mapping), maps the image's page read-only: the
//!   cached page, or the zero page; where the image holds the file's
//!   page-cache page, the VMM maps the image's copy of it instead (same
//!   bytes, never written; see `image.rs`);
//! - private: the clone's own copy, mapped writable everywhere.
//!
//! Two transitions: shared -> private, on the first write from the guest
//! or through the VMM's mapping (copy-on-write), and private -> shared for
//! every private page at once when [`VmClone::snapshot`] moves them into a
//! new live image, which becomes the clone's image (a page someone holds
//! stays private, and the image gets a copy). It follows KVM's
//! rule: publish the private page in `State::private`, zap the old page
//! from stage 2 ([`ffi::Vm::invalidate`], which bumps KVM's invalidation
//! sequence so a racing fault retries), unmap it from the VMM's mappings
//! under its page lock ([`VmClone::retire`], which waits for a racing VMM
//! fault that already returned it), then drop our reference to it, all
//! with `state` held: no fault can find the new page while a mapping of
//! the old one remains (one VMM mapping would write the copy while another
//! still read the old page). Both fault paths resolve through
//! `State::private`, so the VMM's mapping and the guest always see the
//! same page for every gfn.
//!
//! The zap and the unmap are needed only where the old page can be
//! mapped: `State::mapped` records, per page, whether a shared page was
//! ever handed to stage 2 and whether to the VMM (always under `state`,
//! before the fault returns it). A first access that writes skips both,
//! and so skips KVM's invalidation, which would make the faulting vCPU
//! retry, and the mmu notifier that the VMM unmap raises on the memslot.
//!
//! Eviction (`VMS_CLONE_SET_LIMIT`): a clone with a limit keeps at most
//! that many private pages in memory; the rest live in its swap file
//! ([`ffi::SwapFile`], clone page `idx` at offset `idx * 4096`), listed in
//! `State::out`. A private page leaves in three steps: under `state`, the
//! clock picks it (not [`YOUNG`] since its last turn), zaps it from stage
//! 2 and the VMM's mappings, keeps it only if nobody else holds it (as a
//! snapshot tells held pages apart), and marks it `Out::Writeback(seq)`,
//! still in `State::private`; the page is written with no vms lock held
//! (a file system's locks are taken by writers that fault on clone
//! mappings, which take `state`); then, under `state` again, the page
//! leaves `private` and becomes `Out::Swapped(seq)` if its entry is still
//! that `Writeback(seq)`. Any access meanwhile resolves the page, which
//! is still private, and cancels the eviction by removing the entry. A
//! fault on a swapped page reads it back without `state` into a new page
//! and installs it if the entry is still `Swapped(seq)`: a reset, and a
//! new eviction of the same page, change or remove it (`seq` is new for
//! every eviction). A stage-2 fault evicts before it allocates; a VMM
//! fault never writes, and reads back with the fault lock released, as an
//! image read does. A stage-2 fault that would allocate while another
//! eviction writes pages out, its clone over its limit, is retried
//! instead ([`THROTTLE_MAX_MS`]): the guest writes at the swap disk's
//! pace; so is a VMM fault that may release its fault lock (it sleeps
//! with the lock released and returns `VM_FAULT_RETRY`).
//!
//! Lock order: registry `images` -> `state` (snapshot) ;
//! `attach` -> (KVM's `slots_lock`) ; `state` -> image `cache` (a lookup
//! that only finds cached pages: file reads happen in `warm`, without
//! `state`)
//! ; `state` -> (KVM's `mmu_lock`) ; `state` -> page lock ; page lock ->
//! (`i_mmap_rwsem`, page table locks). `state` is never held across a
//! call that waits for KVM's SRCU readers (register, unregister): vCPUs
//! take `state` inside KVM's SRCU read section. A private page's lock is
//! taken under `state` by the VMM's fault and `mmap_mkwrite` (mm releases
//! it without vms locks), and waited for under `state` by `reset`: every
//! holder of a private page's lock is an mm fault path between our
//! handler and the PTE's installation, which takes no vms lock (private
//! pages have no `mapping` and are not on the LRU, so rmap, reclaim and
//! migration never lock them).

use crate::ffi::{self, LockedPage, Mapping, PageRef, SlotInfo, SwapFile, PAGE_SIZE};
use crate::image::{Cached, Image, Pass, Source};
use crate::table::{PageTable, LEAF_PAGES};
use crate::abi;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering::Relaxed};
use kernel::new_mutex;
use kernel::c_str;
use kernel::prelude::*;
use kernel::sync::{Arc, Mutex};
use kernel::uaccess::{UserPtr, UserSlice};

/// One memslot served by the clone.
struct Attachment {
    /// `as_id << 16 | id`.
    slot: u32,
    /// First clone page of the memslot.
    first: usize,
    npages: usize,
    /// The memslot's base gfn, learnt on its first fault (or at its claim).
    base_gfn: Option<u64>,
    /// A size mismatch with the memslot was logged.
    warned: bool,
    /// For a memslot KVM asked us to claim: the mapping of the clone it
    /// was claimed for (its VMM's address space and host range), and
    /// whether that mapping has gone (then its faults go back to the
    /// slot's host address).
    claim: Option<SlotClaim>,
}

struct SlotClaim {
    mm: ffi::MmId,
    start: u64,
    end: u64,
    lapsed: bool,
}

/// In `State::mapped`: a shared page of this clone page went to stage 2
/// (cleared where image reclaim zapped it since: [`reclaim_image`]).
const STAGE2: u8 = 1;
/// In `State::mapped`: a shared page of this clone page went to the VMM.
const VMM: u8 = 2;
/// In `State::mapped`: the clone used the page, by any access
/// (`VMS_CLONE_TOUCHED`). A first access that writes marks only this: the
/// image's page was copied, never mapped.
const USED: u8 = 4;
/// In `State::mapped`, for a private page of a clone with a swap file:
/// resolved since the clock last looked at it (see [`VmClone::pick`]).
const YOUNG: u8 = 8;

/// Most pages one eviction writes.
const EVICT_BATCH: usize = 64;
/// Stage-2 faults that skip eviction after one that could not evict.
const EVICT_BACKOFF: u32 = 1024;
/// Milliseconds the worker (for the shrinker, or clones over their
/// limits) leaves a clone alone after an eviction of it that could not
/// evict: its zaps would cost the guest faults for nothing.
const PRESSURE_BACKOFF_MS: i64 = 1000;
/// The longest such back-off, after consecutive evictions that could not
/// evict (each doubles it; one that frees a page ends the doubling).
const PRESSURE_BACKOFF_MAX_MS: i64 = 32_000;
/// A stage-2 fault that would allocate a private page, its clone over its
/// limit, while another eviction of the clone writes pages out (the
/// worker, another vCPU, the shrinker, an ioctl) is turned back: the vCPU
/// retries it after a sleep of about a millisecond
/// ([`THROTTLE_SLEEP_US`]), outside KVM's SRCU read section between
/// tries (but for `KVM_PRE_FAULT_MEMORY`, which holds it across its
/// retries), until those writes are over; then the fault evicts itself, or
/// goes on below the limit. Without this, on a swap disk slower than the
/// guest's writes, the faults went on while the eviction wrote, and the
/// limit held only on fast disks. A vCPU's faults are turned back for
/// at most this long in a row (`State::throttled_tasks`): then they go on
/// over the limit until one of them finds no write in flight (a frozen or
/// hung file system, or evictions back to back, as when the limit was
/// lowered by far). VMM faults are throttled alike, with the fault lock
/// released (see [`MmapFault::Throttled`]).
const THROTTLE_MAX_MS: i64 = 2000;
/// Most threads (vCPUs, the VMM's) of one clone whose throttling is
/// tracked at once; others are not throttled.
const THROTTLE_TASKS: usize = 32;
/// The throttled fault's sleep before its retry, so that a throttled
/// vCPU does not spin (`TASK_IDLE`: it does not count as load).
const THROTTLE_SLEEP_US: (u64, u64) = (500, 1000);

/// A thread whose faults are being turned back (`State::throttled_tasks`).
#[derive(Clone, Copy)]
struct Throttled {
    /// [`ffi::current_task_id`]; 0: a free entry.
    task: usize,
    /// When (`ktime_get()`, ms) the first fault of its row was turned back.
    since: i64,
    /// When its last fault that would allocate came.
    last: i64,
    /// 1 + the page of the fault last turned back, until the retry of a
    /// VMM fault takes it (see [`VmClone::was_turned_back`]); 0: none.
    page: usize,
}

impl Throttled {
    const FREE: Self = Self { task: 0, since: 0, last: 0, page: 0 };
}

/// A private page on its way to the swap file, or in it (`State::out`).
/// The number is the eviction's: see the module doc.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Out {
    /// Still in `State::private`, being written.
    Writeback(u64),
    /// In the swap file only.
    Swapped(u64),
}

struct State {
    // Dropped first (see `PinnedDrop`): the VM must stop mapping our pages
    // before they are released.
    vm: Option<ffi::Vm>,
    slots: KVec<Attachment>,
    private: PageTable<PageRef>,
    /// Who may map a shared page of each clone page ([`STAGE2`], [`VMM`]),
    /// and which pages the clone used ([`USED`]); never cleared but by
    /// image reclaim after it zapped a page from stage 2, so it can only
    /// say too much.
    mapped: PageTable<u8>,
    /// No memory was left for a mark in `mapped`: assume every page is
    /// mapped by everyone.
    mapped_all: bool,
    /// No memory was left for a [`USED`] mark alone (a first write's):
    /// assume every page used. Kept apart from `mapped_all`, which would
    /// make every later copy-on-write zap and unmap for nothing.
    used_all: bool,
    /// The image shared pages come from; replaced by `snapshot`. Its
    /// `clones` count includes this clone.
    image: Arc<Image>,
    /// Private pages being written to the swap file or in it.
    out: PageTable<Out>,
    /// Entries of `out` that are `Writeback`, and that are `Swapped`.
    writeback: usize,
    swapped: usize,
    /// An eviction wrote (or tried to write) to the swap file since the
    /// last reset: the next one punches it. From our own writes, not the
    /// file's block count, which some file systems (XFS) do not keep in
    /// the VFS inode.
    swap_written: bool,
    /// Most private pages in memory (0: no limit), and the swap file.
    limit: usize,
    swap: Option<Arc<SwapFile>>,
    /// The clock's hand: the clone page it looks at next.
    hand: usize,
    /// Pages the hand made old since it last picked one: past twice the
    /// private pages in memory, every page was used again before the hand
    /// came back (a working set above the limit), and the clock is stuck.
    aged: usize,
    /// Eviction is off while this is above 0 (a snapshot reading every
    /// page back, [`VmClone::hold_resident`]).
    evict_holds: u32,
    /// The number of the last eviction (`Out`).
    seq: u64,
    /// Stage-2 faults that skip eviction after one that could not evict
    /// (every candidate held, or writes failing): an eviction zaps, which
    /// makes the faulting vCPU retry, so one that frees nothing must not
    /// run at every fault.
    evict_skip: u32,
    /// As `evict_skip`, for the shrinker's worker: when (`ktime_get()`,
    /// ms) it may evict again.
    pressure_after: i64,
    /// As `pressure_after`, for the worker bringing the clone down to its
    /// limit; its last back-off (`backoff_ms`) doubles while it stays stuck.
    over_after: i64,
    backoff_ms: i64,
    /// The threads (vCPUs, the VMM's) whose faults are being turned back
    /// ([`VmClone::throttles`]), by [`ffi::current_task_id`], with when
    /// (`ktime_get()`, ms) the first of the row was and when the last
    /// fault that would allocate was; a thread leaves when one of its
    /// faults finds no reason to wait (per thread, so that another vCPU's
    /// fault in a short gap between evictions does not renew this one's
    /// time), and a new row starts after [`THROTTLE_MAX_MS`] without such
    /// a fault (a vCPU that stopped faulting never saw the end of the
    /// last). At most [`THROTTLE_TASKS`]; id 0 marks a free entry.
    throttled_tasks: [Throttled; THROTTLE_TASKS],
    /// Entries of `throttled_tasks` in use.
    throttled_n: usize,
    /// The last read-back that failed: page, eviction and error, for the
    /// retry of its VMM fault to fail with (see [`MayRead::Again`]).
    read_failure: Option<(usize, u64, Error)>,
    /// The provider is being registered or unregistered without `state`
    /// held (`VMS_CLONE_ATTACH`, [`VmClone::leave_lapsed_vm`]): a claim
    /// must not register it meanwhile, or it would serve two VMs, which
    /// it cannot tell apart.
    registering: bool,
}

impl State {
    /// Record that a shared page of clone page `idx` goes to `by` (marks
    /// of [`STAGE2`], [`VMM`], [`USED`]).
    fn mark(&mut self, idx: usize, by: u8) {
        if self.mapped_all {
            return;
        }
        let m = self.mapped.get(idx).copied().unwrap_or(0);
        if m & by != by && self.mapped.set(idx, m | by).is_err() {
            if by == USED {
                self.used_all = true;
            } else {
                self.mapped_all = true;
            }
        }
    }

    /// Who may map a shared page of clone page `idx`, and whether the
    /// clone used it.
    fn marks(&self, idx: usize) -> u8 {
        if self.mapped_all {
            return STAGE2 | VMM | USED;
        }
        let used = if self.used_all { USED } else { 0 };
        self.mapped.get(idx).copied().unwrap_or(0) | used
    }

    /// A private page was resolved: it is young, and an eviction of it in
    /// flight is cancelled. Only for clones with a swap file. Without
    /// memory for the mark the page just looks cold, and may be evicted
    /// and read back again.
    fn accessed(&mut self, idx: usize) {
        if self.swap.is_none() {
            return;
        }
        let m = self.mapped.get(idx).copied().unwrap_or(0);
        if m & YOUNG == 0 {
            let _ = self.mapped.set(idx, m | YOUNG);
        }
        if let Some(Out::Writeback(_)) = self.out.get(idx) {
            self.out.take(idx);
            self.writeback -= 1;
        }
    }

    /// Whether private page `idx` was young, making it old.
    fn take_young(&mut self, idx: usize) -> bool {
        match self.mapped.get_mut(idx) {
            Some(m) if *m & YOUNG != 0 => {
                *m &= !YOUNG;
                true
            }
            _ => false,
        }
    }

    /// Private pages in memory that are not on their way out.
    fn staying(&self) -> usize {
        self.private.used() - self.writeback
    }

    /// If the clone is over its limit, have the worker bring it down: now,
    /// or when the worker's back-off from it ends (a timer: no fault may
    /// come then). For whoever may not evict, or stopped evicting, with
    /// the clone possibly still over its limit.
    fn hand_over(&self) {
        if !self.over_limit() {
            return;
        }
        if ffi::now_ms() >= self.over_after {
            ffi::reclaim_kick();
        } else {
            ffi::reclaim_retry_at(self.over_after + 10);
        }
    }

    /// Whether the clone holds more private pages than its limit, and may
    /// evict: only while KVM's mappings of its pages can be zapped (the VM
    /// is stored, or the clone serves no memslot). A clone being dropped,
    /// or registering, has SPTEs that no zap of ours reaches: KVM keeps no
    /// page reference for them, so a page freed then would stay mapped.
    fn over_limit(&self) -> bool {
        self.limit != 0 && self.may_evict() && self.staying() > self.limit
    }

    /// Whether the clone may evict at all: it has a swap file, no snapshot
    /// holds its pages in memory, and KVM's mappings of its pages can be
    /// zapped (see [`over_limit`](Self::over_limit)).
    fn may_evict(&self) -> bool {
        self.evict_holds == 0
            && self.swap.is_some()
            && (self.vm.is_some() || (self.slots.is_empty() && !self.registering))
    }

    /// The clone's private pages in memory that the shrinker may ask for
    /// ([`VmClone::publish`]).
    fn reclaimable(&self) -> usize {
        if self.may_evict() {
            self.private.used()
        } else {
            0
        }
    }

    /// Forget every eviction: in flight ones are cancelled (their pages
    /// stay), swapped pages are dropped, and so are the back-offs.
    fn forget_out(&mut self) {
        self.out.drain(|_, _| ());
        self.writeback = 0;
        self.swapped = 0;
        self.read_failure = None;
        self.aged = 0;
        self.backoff_ms = 0;
        self.over_after = 0;
        self.pressure_after = 0;
        self.evict_skip = 0;
        self.throttled_tasks = [Throttled::FREE; THROTTLE_TASKS];
        self.throttled_n = 0;
    }

    /// Whether no page of the [`LEAF_PAGES`] from `idx` (a multiple of
    /// that) has a mark: a fast path for scans.
    fn unmarked_leaf(&self, idx: usize) -> bool {
        !self.mapped_all && !self.used_all && !self.mapped.leaf_present(idx)
    }
}

/// What [`VmClone::mmap_fault`] found.
pub(crate) enum MmapFault {
    /// Map this page.
    Page(LockedPage),
    /// Release the fault lock, [`read`](Warm::read) the page into the
    /// image's cache, and let the fault retry.
    Read(Warm),
    /// The page must be read, which the fault may not wait for: retry
    /// later (`VM_FAULT_RETRY` with the fault lock still held).
    Busy,
    /// Release the fault lock, [`read_back`](VmClone::read_back) clone
    /// page `idx` from the swap file, and let the fault retry. The caller
    /// holds the clone file over the read (so the clone too).
    ReadBack(usize),
    /// The fault would take a private page while the clone is over its
    /// limit and an eviction writes ([`VmClone::throttles`]): release the
    /// fault lock, [`throttle_sleep`], and let the fault retry. The caller
    /// holds the clone file over the sleep (the sleeping code is vms.ko's).
    Throttled,
}

/// The sleep of a throttled fault before its retry, so that the thread
/// does not spin; none if a signal is pending (the retry is cut short
/// there: KVM returns to the VMM, mm to the signal's handler).
pub(crate) fn throttle_sleep() {
    if !ffi::signal_pending() {
        ffi::usleep_idle_range(THROTTLE_SLEEP_US.0, THROTTLE_SLEEP_US.1);
    }
}

/// How a VMM fault may wait for a read of the image, from its
/// `FAULT_FLAG_*`s (`clone_vm_fault` in ffi.rs), as `filemap_fault`
/// waits for I/O.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum MayRead {
    /// A first attempt that may retry (`ALLOW_RETRY` without
    /// `RETRY_NOWAIT`): release the fault lock, read, retry.
    First,
    /// A retry (`TRIED`) that may retry again: as [`First`](Self::First),
    /// unless the page's last attempt failed (`Image::failure`): then the
    /// fault fails with its error (SIGBUS, or OOM for ENOMEM). A page
    /// read without error stays in the image's cache for a while (it is
    /// stored referenced, and image reclaim drops only pages nobody
    /// referenced for a pass interval, `Image::reclaim_pass`), so the
    /// retry after a good read finds it, and after a bad read fails:
    /// retries end, unless the failure could not be marked (no memory for
    /// the mark; then it reads again), or reclaim came by twice between
    /// the read and the retry (then it reads again). A transient error is
    /// not read again by the retry (`filemap_fault` reads once more): the
    /// next fault on the page reads it again. The retry of a fault that was
    /// turned back ([`MmapFault::Throttled`]) read nothing, so it is a
    /// [`First`](Self::First) ([`VmClone::was_turned_back`]).
    Again,
    /// `RETRY_NOWAIT`: the caller (KVM's async page fault, through GUP's
    /// `FOLL_NOWAIT`) may neither block nor lose the lock: it is told to
    /// retry, and faults again later without `RETRY_NOWAIT`.
    NoWait,
    /// No `ALLOW_RETRY` (e.g. `access_remote_vm()` for ptrace): the read
    /// runs with the fault lock held, the only choice left.
    Locked,
}

/// What a VMM fault needs to bring a page into the image's cache with the
/// fault lock released: the image and the clone's counters, not the
/// clone.
///
/// Once the fault lock is released, the VMA may be unmapped and the clone
/// file closed, so a reference to the clone held here could be the last.
/// Dropping that unregisters the clone from KVM, which waits for KVM's
/// SRCU readers, and the faulting thread may be one: a vCPU reaches this
/// fault inside `kvm->srcu` when KVM's emulator (string I/O, page walks,
/// kvmclock) reads guest memory through the memslot's hva, the clone
/// mapping, or pins it with GUP. It would wait for itself. The image and
/// the counters wait for nothing when dropped (an image file's last
/// reference goes through `fput`, which defers the release).
pub(crate) struct Warm {
    image: Arc<Image>,
    stats: Arc<Stats>,
    idx: usize,
}

impl Warm {
    /// Bring the page into the image's cache, counting it in the clone's
    /// counters (see [`VmClone::warm`]).
    pub(crate) fn read(&self) -> Result {
        self.stats.warm(&self.image, self.idx)
    }
}

/// What [`VmClone::resolve`] found for a clone page.
enum Resolved {
    /// Map `page`, writable if `private` (the clone's own page).
    Page { page: PageRef, private: bool },
    /// Not in `image`'s cache: [`warm`](VmClone::warm) it without `state`,
    /// then resolve again.
    Uncached(Arc<Image>),
    /// In the swap file, evicted as number `seq`:
    /// [`read_back`](VmClone::read_back) it without `state`, then resolve
    /// again.
    Swapped(u64),
}

/// The clone's counters, behind their own `Arc`: see [`Warm`].
#[derive(Default)]
struct Stats {
    faults: AtomicU64,
    mmap_faults: AtomicU64,
    shared_maps: AtomicU64,
    zero_maps: AtomicU64,
    streamed: AtomicU64,
    cow_copies: AtomicU64,
    io_errors: AtomicU64,
    resets: AtomicU64,
    evicted: AtomicU64,
    read_back: AtomicU64,
    evict_errors: AtomicU64,
    evict_held: AtomicU64,
    shrunk: AtomicU64,
    throttled: AtomicU64,
}

/// The lockdep class of [`VmClone::state`].
static STATE_KEY: ffi::LockKey = ffi::LockKey::new();

#[pin_data(PinnedDrop)]
pub(crate) struct VmClone {
    /// A [`ffi::TryMutex`]: image reclaim does not wait for it
    /// ([`reclaim_image`]).
    #[pin]
    state: ffi::TryMutex<State>,
    /// Serialises attaching (which registers with KVM) without `state`.
    #[pin]
    attach: Mutex<()>,
    /// An eviction runs ([`Evicting`]): one at a time, so that a write of
    /// a page from before a reset (whose entry the reset dropped) cannot
    /// land after a newer eviction's write of the same clone page. A flag,
    /// not a lock: a stage-2 fault that finds it set does not wait,
    /// behind another's file I/O, inside KVM's SRCU read section; it goes
    /// on without evicting, or, if the eviction is writing pages out and
    /// the fault would take its clone further over its limit, has its vCPU
    /// retry ([`THROTTLE_MAX_MS`]).
    evicting: AtomicBool,
    pub(crate) provider: ffi::Provider,
    pub(crate) mapping: Mapping,
    /// The address of the image the clone was made of: the only image
    /// whose pages it may map without a live image on that image
    /// (`snapshot` layers a new one on its image). The clone keeps it alive
    /// (through `State::image` and its parents), so no other image has
    /// this address while the clone lives. For [`reclaim_image`], which
    /// reads it without `state`.
    origin: usize,
    npages: usize,
    stats: Arc<Stats>,
    /// `State::limit`, read without `state` by stage-2 faults, which take
    /// `state` to check the limit only if it is set.
    limit: AtomicUsize,
    /// What this clone adds to the shrinker's count
    /// ([`State::reclaimable`], published by [`VmClone::publish`]).
    reclaimable: AtomicUsize,
    /// Work to leave the VM was queued (`ffi::queue_leave`): releasing a
    /// clone file or a name waits for the queue, so that the work's
    /// reference is gone before theirs.
    pub(crate) leave_queued: AtomicBool,
}

impl Stats {
    /// [`VmClone::warm`], counted here.
    fn warm(&self, image: &Image, idx: usize) -> Result {
        // A read error on demand, for the tests (`image_read_fail`).
        let read = if ffi::debug_fail_read() { Err(EIO) } else { image.page(idx) };
        match read {
            Ok((_, _, streamed)) => {
                if streamed {
                    self.streamed.fetch_add(1, Relaxed);
                }
                Ok(())
            }
            Err(e) => {
                self.io_errors.fetch_add(1, Relaxed);
                // For a retried VMM fault (`MayRead::Again`) to return.
                image.mark_failure(idx, e);
                Err(e)
            }
        }
    }
}

/// Who asks a clone to evict ([`VmClone::evict`]).
#[derive(Clone, Copy, PartialEq, Eq)]
enum Why {
    /// A stage-2 fault of a clone over its limit: never waits.
    Fault,
    /// `VMS_CLONE_SET_LIMIT` lowering the limit: waits for an eviction in
    /// flight.
    Limit,
    /// The shrinker ([`reclaim`]), for up to this many pages, limit or
    /// not: never waits.
    Pressure(usize),
    /// The worker, for a clone over its limit that a VMM fault took there
    /// ([`ffi::reclaim_kick`]): never waits.
    Over,
}

/// A swap file's punch at a reset failed once: the next failures are not
/// logged (a reset may come with every request).
static PUNCH_WARNED: AtomicBool = AtomicBool::new(false);

/// An eviction runs while this lives (`VmClone::evicting`).
struct Evicting<'a>(&'a VmClone);

impl<'a> Evicting<'a> {
    /// Start one, unless one runs.
    fn try_start(clone: &'a VmClone) -> Option<Self> {
        clone
            .evicting
            .compare_exchange(false, true, core::sync::atomic::Ordering::Acquire, Relaxed)
            .ok()
            .map(|_| Evicting(clone))
    }

    /// Start one once the one that runs is over (polling: the flag is no
    /// lock to sleep on). For ioctls only, which hold no lock of ours;
    /// `ERESTARTSYS` if a signal comes first.
    fn wait(clone: &'a VmClone) -> Result<Self> {
        loop {
            if let Some(e) = Self::try_start(clone) {
                return Ok(e);
            }
            if ffi::signal_pending() {
                return Err(ERESTARTSYS);
            }
            ffi::msleep(1);
        }
    }
}

impl Drop for Evicting<'_> {
    fn drop(&mut self) {
        self.0.evicting.store(false, core::sync::atomic::Ordering::Release);
    }
}

/// Eviction is off while this lives ([`VmClone::hold_resident`]).
pub(crate) struct Resident<'a>(&'a VmClone);

impl Drop for Resident<'_> {
    fn drop(&mut self) {
        let mut st = self.0.state.lock();
        st.evict_holds -= 1;
        self.0.publish(&st);
        // A snapshot that failed after reading pages back.
        st.hand_over();
    }
}

impl VmClone {
    /// A new clone of `image`, whose `clones` count the caller already
    /// raised for it.
    pub(crate) fn new(image: Arc<Image>) -> Result<Arc<Self>> {
        let npages = image.npages();
        let origin = core::ptr::from_ref::<Image>(&*image) as usize;
        let private = PageTable::new(npages)?;
        let mapped = PageTable::new(npages)?;
        let out = PageTable::new(npages)?;
        let stats = Arc::new(Stats::default(), GFP_KERNEL)?;
        Arc::pin_init(
            try_pin_init!(VmClone {
                state <- ffi::TryMutex::new(
                    State {
                        vm: None,
                        registering: false,
                        slots: KVec::new(),
                        private,
                        mapped,
                        mapped_all: false,
                        used_all: false,
                        out,
                        writeback: 0,
                        swapped: 0,
                        swap_written: false,
                        limit: 0,
                        swap: None,
                        hand: 0,
                        aged: 0,
                        evict_holds: 0,
                        seq: 0,
                        evict_skip: 0,
                        pressure_after: 0,
                        over_after: 0,
                        backoff_ms: 0,
                        throttled_tasks: [Throttled::FREE; THROTTLE_TASKS],
                        throttled_n: 0,
                        read_failure: None,
                        image,
                    },
                    c_str!("vms_clone_state"),
                    &STATE_KEY
                ),
                attach <- new_mutex!((), "vms_clone_attach"),
                provider: ffi::Provider::new(),
                mapping: Mapping::none(),
                origin,
                npages,
                stats,
                limit: AtomicUsize::new(0),
                reclaimable: AtomicUsize::new(0),
                evicting: AtomicBool::new(false),
                leave_queued: AtomicBool::new(false),
            }? Error),
            GFP_KERNEL,
        )
    }

    /// Tell the shrinker how many private pages the clone could give back
    /// now; with `state` held, after its private pages changed.
    fn publish(&self, st: &State) {
        let new = st.reclaimable();
        // Most calls change nothing (clones without a swap file): no write
        // to the shared sum then.
        if self.reclaimable.load(Relaxed) != new {
            ffi::reclaimable_set(self.reclaimable.swap(new, Relaxed), new);
        }
    }

    pub(crate) fn npages(&self) -> usize {
        self.npages
    }

    pub(crate) fn provider(&self) -> &ffi::Provider {
        &self.provider
    }

    /// The page for clone page `idx` with `state` held, for `by`
    /// ([`STAGE2`] or [`VMM`]): the private page, or the image's page, or
    /// (for a write) a new private copy. Never reads: a page the image has
    /// not cached comes back as [`Resolved::Uncached`].
    fn resolve(&self, st: &mut State, idx: usize, write: bool, by: u8) -> Result<Resolved> {
        if let Some(p) = st.private.get(idx) {
            let page = p.clone();
            st.accessed(idx);
            return Ok(Resolved::Page { page, private: true });
        }
        // Never the image's page for a page the clone wrote.
        if let Some(&Out::Swapped(seq)) = st.out.get(idx) {
            return Ok(Resolved::Swapped(seq));
        }
        // The VMM never maps the file's page-cache page but the image's
        // copy of it: to read, and to retire after a copy-on-write where
        // the VMM may have mapped the shared page. The copy is the same
        // page at every image level (image.rs), so a snapshot between a
        // VMM fault and the copy does not change the page `retire` locks.
        let for_vmm = if write { st.marks(idx) & VMM != 0 } else { by == VMM };
        let Some((src, source)) = st.image.cached(idx, for_vmm, by == VMM && !write)? else {
            return Ok(Resolved::Uncached(st.image.clone()));
        };
        if !write {
            match source {
                Source::Zero => self.stats.zero_maps.fetch_add(1, Relaxed),
                Source::Cache | Source::File => self.stats.shared_maps.fetch_add(1, Relaxed),
            };
            st.mark(idx, by | USED);
            return Ok(Resolved::Page { page: src, private: false });
        }
        let new = if source == Source::Zero {
            PageRef::alloc_private(true)?
        } else {
            let p = PageRef::alloc_private(false)?;
            p.copy_from(&src);
            p
        };
        // Publish, then zap stage 2 and unmap the VMM's mappings where the
        // old page can be mapped, before `state` goes (see the module doc).
        st.private.set(idx, new.clone())?;
        st.accessed(idx);
        self.publish(st);
        self.stats.cow_copies.fetch_add(1, Relaxed);
        let marks = st.marks(idx);
        st.mark(idx, USED);
        if marks & STAGE2 != 0 {
            self.invalidate_stage2(st, idx);
        }
        if marks & VMM != 0 {
            self.retire(idx, src);
        }
        Ok(Resolved::Page { page: new, private: true })
    }

    /// Zap the stage-2 mappings of clone page `idx` in every memslot.
    fn invalidate_stage2(&self, st: &State, idx: usize) {
        let Some(vm) = &st.vm else { return };
        for a in st.slots.iter() {
            if let Some(base) = a.base_gfn {
                if idx >= a.first && idx < a.first + a.npages {
                    let gfn = base + (idx - a.first) as u64;
                    vm.invalidate(gfn, gfn + 1);
                }
            }
        }
    }

    /// Zap every stage-2 mapping of the clone.
    fn invalidate_stage2_all(&self, st: &State) {
        let Some(vm) = &st.vm else { return };
        for a in st.slots.iter() {
            if let Some(base) = a.base_gfn {
                vm.invalidate(base, base + a.npages as u64);
            }
        }
    }

    /// Zap clone pages `first..first + n` from stage 2 in every memslot
    /// and from the VMM's mappings.
    fn zap(&self, st: &State, first: usize, n: usize) {
        self.invalidate_stage2_range(st, first, n);
        self.mapping.unmap_pages(first, n);
    }

    /// Image reclaim ([`reclaim_image`]): zap from stage 2 the pages of
    /// `idxs` (ascending, perhaps repeated) that the clone may map from its
    /// image, by runs, clearing their [`STAGE2`] marks; how many it zapped.
    fn zap_image_pages(&self, mut st: ffi::TryMutexGuard<'_, State>, idxs: impl Iterator<Item = usize>) -> usize {
        let (mut n, mut run): (usize, Option<(usize, usize)>) = (0, None);
        for idx in idxs {
            if run.is_some_and(|(first, k)| idx < first + k) {
                continue;
            }
            // The clone's own page there, in memory or swapped: no page of
            // the image is mapped for it.
            if st.private.get(idx).is_some() || st.out.get(idx).is_some() || st.marks(idx) & STAGE2 == 0 {
                continue;
            }
            if let Some(m) = st.mapped.get_mut(idx) {
                *m &= !STAGE2;
            }
            n += 1;
            run = match run {
                Some((first, k)) if first + k == idx => Some((first, k + 1)),
                Some((first, k)) => {
                    self.invalidate_stage2_range(&st, first, k);
                    Some((idx, 1))
                }
                None => Some((idx, 1)),
            };
        }
        if let Some((first, k)) = run {
            self.invalidate_stage2_range(&st, first, k);
        }
        n
    }

    /// Zap clone pages `first..first + n` from stage 2 in every memslot.
    fn invalidate_stage2_range(&self, st: &State, first: usize, n: usize) {
        let Some(vm) = &st.vm else { return };
        for a in st.slots.iter() {
            let Some(base) = a.base_gfn else { continue };
            let (lo, hi) = (first.max(a.first), (first + n).min(a.first + a.npages));
            if lo < hi {
                vm.invalidate(base + (lo - a.first) as u64, base + (hi - a.first) as u64);
            }
        }
    }

    /// The clock, under `state` in an eviction (`evicting`): up to `want` private pages
    /// to evict, each with a reference of its own, zapped from stage 2 and
    /// the VMM's mappings, nobody else's, and marked `Writeback(st.seq)`;
    /// and whether it is stuck: it found pages to evict but all were held,
    /// or none at all in two turns.
    ///
    /// The hand goes round the clone's private pages, at most twice and
    /// at most `8 * want + 64` of them per call (the clone's faults wait
    /// meanwhile; the next call goes on from there): a young page
    /// (resolved since the hand last passed) is made old and zapped, so
    /// that its next access faults and makes it young again; an old page
    /// is picked. Zaps go by runs of neighbouring pages. A picked page that
    /// someone holds after the zap (a pin, a fault in flight,
    /// `kvm_vcpu_map()`: see [`snapshot`](Self::snapshot)) stays.
    fn pick(&self, st: &mut State, want: usize) -> (KVec<(usize, PageRef)>, bool) {
        let n = self.npages;
        let mut picked: KVec<(usize, PageRef)> = KVec::new();
        let mut zaps: KVec<(usize, usize)> = KVec::new();
        let (mut steps, mut visits, mut nomem) = (0, 0, false);
        while picked.len() < want && steps < 2 * n && visits < 8 * want + 64 {
            let idx = st.hand % n;
            if idx % LEAF_PAGES == 0 && !st.private.leaf_present(idx) {
                // The last leaf may be partial: wrap to 0, not past it.
                let next = idx + LEAF_PAGES;
                st.hand = if next >= n { 0 } else { next };
                steps += LEAF_PAGES.min(n - idx);
                continue;
            }
            st.hand = idx + 1;
            steps += 1;
            if steps % 4096 == 0 {
                ffi::cond_resched();
            }
            let Some(page) = st.private.get(idx) else { continue };
            // On the way out already, or picked on the first turn.
            if st.out.get(idx).is_some() || picked.iter().any(|&(i, _)| i == idx) {
                continue;
            }
            visits += 1;
            let page = page.clone();
            // One zap per run of neighbours; a page is picked only once
            // its zap is recorded.
            match zaps.last_mut() {
                Some((first, len)) if *first + *len == idx => *len += 1,
                _ => {
                    if zaps.push((idx, 1), GFP_KERNEL).is_err() {
                        nomem = true;
                        break;
                    }
                }
            }
            if st.take_young(idx) {
                st.aged += 1;
            } else if picked.push((idx, page), GFP_KERNEL).is_err() {
                nomem = true;
                break;
            } else {
                st.aged = 0;
            }
        }
        for &(first, len) in zaps.iter() {
            self.zap(st, first, len);
        }
        // Order the reference counts after the cleared PTEs, against
        // GUP-fast's reference-then-recheck (as in `snapshot`).
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        // Out of memory for the lists: as stuck (backs off), not as a
        // turn that only made pages old (which the worker would retry).
        let stuck = picked.is_empty() && (steps >= 2 * n || nomem || st.aged > 2 * st.staying());
        st.seq += 1;
        let seq = st.seq;
        let Ok(mut kept) = KVec::with_capacity(picked.len(), GFP_KERNEL) else {
            return (KVec::new(), true);
        };
        let found = picked.len();
        for (idx, page) in picked {
            // Ours and the table's.
            if page.ref_count() > 2 || page.is_locked() {
                self.stats.evict_held.fetch_add(1, Relaxed);
                continue;
            }
            if st.out.set(idx, Out::Writeback(seq)).is_err() {
                continue;
            }
            st.writeback += 1;
            // Cannot fail: `kept` has room for every picked page.
            let _ = kept.push((idx, page), GFP_KERNEL);
        }
        let stuck = stuck || (found > 0 && kept.is_empty());
        if stuck {
            // The next verdict needs two fresh turns of young pages.
            st.aged = 0;
        }
        (kept, stuck)
    }

    /// Evict one batch if the clone is over its limit, or for the
    /// shrinker: pick under `state`, write without it, then free the pages
    /// whose eviction nobody cancelled. Returns how many pages left memory,
    /// `None` if there was nothing to do or nothing could go (`Some(0)`:
    /// the clock only made pages old, and the next call may evict). From a
    /// stage-2 fault, it backs off for [`EVICT_BACKOFF`] faults after an
    /// eviction that could not evict; faults and the worker do nothing
    /// while another eviction runs; the ioctl waits for that one.
    fn evict(&self, why: Why) -> Result<Option<usize>> {
        let backed_off = core::cell::Cell::new(false);
        let r = self.evict_batch(why, &backed_off);
        // A fault evicted one batch, only made pages old, or could not
        // evict and made the next faults skip eviction; while it ran, the
        // worker found the clone busy and may have stopped. With the
        // eviction over (`Evicting` dropped: the worker could find it busy
        // again), if the clone is still over its limit the worker goes on
        // (or comes back when its back-off ends), should no fault follow.
        if why == Why::Fault && (matches!(r, Ok(Some(_))) || backed_off.get()) {
            self.state.lock().hand_over();
        }
        r
    }

    /// [`evict`](Self::evict) without the hand-over; `backed_off` is set
    /// if this call backed off.
    fn evict_batch(&self, why: Why, backed_off: &core::cell::Cell<bool>) -> Result<Option<usize>> {
        let wanted = |st: &State| match why {
            Why::Pressure(_) => st.may_evict() && st.staying() > 0,
            Why::Fault | Why::Limit | Why::Over => st.over_limit(),
        };
        // Every clone is on the worker's list: one that has nothing for it
        // (no swap file, or no limit) is not waited for. Both hints are
        // published under `state`; a stale one skips a clone that just
        // got something, which the next ask or kick finds.
        let nothing = match why {
            Why::Pressure(_) => self.reclaimable.load(Relaxed) == 0,
            Why::Over => self.limit.load(Relaxed) == 0,
            Why::Fault | Why::Limit => false,
        };
        if nothing {
            return Ok(None);
        }
        {
            let mut st = self.state.lock();
            if !wanted(&st) {
                return Ok(None);
            }
            if why == Why::Fault && st.evict_skip > 0 {
                st.evict_skip -= 1;
                return Ok(None);
            }
            let after = match why {
                Why::Pressure(_) => st.pressure_after,
                Why::Over => st.over_after,
                Why::Fault | Why::Limit => 0,
            };
            if ffi::now_ms() < after {
                return Ok(None);
            }
        }
        let _running = if why == Why::Limit {
            Evicting::wait(self)?
        } else {
            match Evicting::try_start(self) {
                Some(e) => e,
                None => return Ok(None),
            }
        };
        let (picked, seq, swap) = {
            let mut st = self.state.lock();
            if !wanted(&st) {
                return Ok(None);
            }
            let want = match why {
                Why::Pressure(n) => n.min(st.staying()).clamp(1, EVICT_BATCH),
                Why::Fault | Why::Limit | Why::Over => {
                    let over = st.staying() - st.limit;
                    // A little below the limit, so that the next faults do
                    // not each evict a page.
                    (over + (st.limit / 16).min(EVICT_BATCH / 2)).clamp(1, EVICT_BATCH)
                }
            };
            let Some(swap) = st.swap.clone() else { return Ok(None) };
            let (picked, stuck) = self.pick(&mut st, want);
            if picked.is_empty() {
                if stuck {
                    self.back_off(&mut st, why);
                    backed_off.set(true);
                    return Ok(None);
                }
                return Ok(Some(0));
            }
            // Before the writes: one that lands may leave blocks even if
            // its page stays (a cancelled eviction, a failed write or
            // sync). A reset cannot take the flag in between: it holds
            // `evicting` while it does.
            st.swap_written = true;
            (picked, st.seq, swap)
        };
        // A swap disk that hangs, for the tests (0: no sleep).
        ffi::debug_delay(ffi::Delay::SwapWrite);
        let mut results = KVec::with_capacity(picked.len(), GFP_KERNEL).unwrap_or_default();
        let mut logged = false;
        let (mut lo, mut hi) = (usize::MAX, 0);
        for (idx, page) in picked.iter() {
            let r = swap.write_page(*idx, page);
            if let Err(e) = r {
                // One line for the batch, and only for the 1st, 2nd, 4th,
                // ... failing batch: a full disk fails every write.
                if !logged && self.stats.evict_errors.load(Relaxed).wrapping_add(1).is_power_of_two() {
                    pr_warn!("swap file write of page {:#x}: error {}\n", idx, e.to_errno());
                }
                logged = true;
            } else {
                (lo, hi) = (lo.min(*idx), hi.max(*idx));
            }
            // Without room for the result (no memory), the write counts
            // as failed: the page stays.
            let _ = results.push(r.is_ok(), GFP_KERNEL);
        }
        // Durable before the pages go (a buffered swap file's writeback
        // could still fail).
        let synced = lo > hi || swap.sync(lo, hi).is_ok();
        let mut freed = 0;
        let mut st = self.state.lock();
        for (n, (idx, page)) in picked.into_iter().enumerate() {
            if st.out.get(idx) != Some(&Out::Writeback(seq)) {
                // Cancelled by an access, or a snapshot.
                continue;
            }
            st.writeback -= 1;
            if !synced || !results.get(n).copied().unwrap_or(false) {
                st.out.take(idx);
                self.stats.evict_errors.fetch_add(1, Relaxed);
                continue;
            }
            // Cannot fail: the entry exists.
            let _ = st.out.set(idx, Out::Swapped(seq));
            st.swapped += 1;
            drop(page);
            if let Some(p) = st.private.take(idx) {
                // Nothing maps it (zapped when picked, and any fault since
                // would have cancelled the eviction); the quarantine may
                // keep it.
                ffi::release_private(p);
            }
            freed += 1;
        }
        if freed > 0 {
            // It can evict again: the doubling ends, its faults evict
            // again, and the workers' back-offs end within a second (not
            // at once: a clone with held pages and a few free ones would
            // have the worker zap the held ones at every such eviction).
            let soon = ffi::now_ms() + PRESSURE_BACKOFF_MS;
            st.backoff_ms = 0;
            st.evict_skip = 0;
            st.over_after = st.over_after.min(soon);
            st.pressure_after = st.pressure_after.min(soon);
        }
        self.publish(&st);
        self.stats.evicted.fetch_add(freed as u64, Relaxed);
        if let Why::Pressure(_) = why {
            self.stats.shrunk.fetch_add(freed as u64, Relaxed);
        }
        if freed == 0 && (logged || !synced) {
            self.back_off(&mut st, why);
            backed_off.set(true);
            return Ok(None);
        }
        Ok(Some(freed))
    }

    /// After an eviction for `why` that could not evict: the next ones
    /// for the same reason wait ([`EVICT_BACKOFF`], [`PRESSURE_BACKOFF_MS`]).
    fn back_off(&self, st: &mut State, why: Why) {
        match why {
            // The shrinker's scans come as the kernel needs memory: a
            // second is enough, and a longer one would keep cold pages
            // from a reclaim that needs them.
            Why::Pressure(_) => st.pressure_after = ffi::now_ms() + PRESSURE_BACKOFF_MS,
            Why::Over => {
                // Doubling while it stays stuck (a page held for long), so
                // that the worker's timed retries of it cost little; from
                // a second again once the last back-off is long over.
                let now = ffi::now_ms();
                if now > st.over_after + st.backoff_ms {
                    st.backoff_ms = 0;
                }
                st.backoff_ms = (st.backoff_ms * 2).clamp(PRESSURE_BACKOFF_MS, PRESSURE_BACKOFF_MAX_MS);
                st.over_after = now + st.backoff_ms;
            }
            // Its faults stop evicting; `evict` hands the clone over to
            // the worker once this eviction is over (the ioctl does so
            // itself).
            Why::Fault | Why::Limit => st.evict_skip = EVICT_BACKOFF,
        }
    }

    /// If the clone is over its limit but the worker leaves it alone for
    /// now (after an eviction that could not evict): until when.
    fn over_but_backing_off(&self) -> Option<i64> {
        // Every clone is on the worker's list: one without a limit is
        // never over it, and is not waited for.
        if self.limit.load(Relaxed) == 0 {
            return None;
        }
        let st = self.state.lock();
        (st.over_limit() && ffi::now_ms() < st.over_after).then_some(st.over_after)
    }

    /// Whether a stage-2 or VMM fault on clone page `idx` is turned back
    /// ([`THROTTLE_MAX_MS`]): it would allocate a private page (a write to
    /// a page the clone has no private page in memory for, any access to a
    /// swapped one), the clone's private pages in memory (those being
    /// written out too) are over its limit, another eviction is writing
    /// pages out (`writeback`: an eviction that found nothing to write, or
    /// whose pages were all used again, frees nothing to wait for; a
    /// reset's punch writes nothing), and this thread's faults have not
    /// been turned back for [`THROTTLE_MAX_MS`] in a row. Pages the clone
    /// has in memory are never turned back: an access to one in writeback
    /// cancels its eviction. Nothing throttles while the clone may not
    /// evict (a snapshot holds its pages, or KVM's mappings cannot be
    /// zapped).
    fn throttles(&self, st: &mut State, idx: usize, write: bool) -> bool {
        let wait = st.limit != 0 && st.writeback != 0 && st.may_evict() && st.private.used() > st.limit;
        if !wait && st.throttled_n == 0 {
            return false;
        }
        let tid = ffi::current_task_id();
        let mine = st.throttled_tasks.iter().position(|e| e.task == tid);
        if !wait {
            // The writes it waited for are over (or it need not wait): its
            // next faults may be turned back for a while again.
            if let Some(i) = mine {
                st.throttled_tasks[i] = Throttled::FREE;
                st.throttled_n -= 1;
            }
            return false;
        }
        if st.private.get(idx).is_some() || !(write || matches!(st.out.get(idx), Some(Out::Swapped(_)))) {
            return false;
        }
        let now = ffi::now_ms();
        if let Some(i) = mine {
            let e = &mut st.throttled_tasks[i];
            if now - e.last > THROTTLE_MAX_MS {
                e.since = now;
            }
            e.last = now;
            let turned = now - e.since < THROTTLE_MAX_MS;
            // A mark this fault did not take (a stage-2 fault's, or a
            // `page_mkwrite`'s whose fault went on) goes.
            e.page = if turned { idx + 1 } else { 0 };
            return turned;
        }
        if st.throttled_n == THROTTLE_TASKS {
            // Threads that went away while turned back leave entries (an
            // id may come back as another thread's, which then waits
            // less): those long over go.
            for e in st.throttled_tasks.iter_mut() {
                if e.task != 0 && now - e.last >= 16 * THROTTLE_MAX_MS {
                    *e = Throttled::FREE;
                    st.throttled_n -= 1;
                }
            }
        }
        // Not tracked (every entry in use): not throttled.
        let Some(e) = st.throttled_tasks.iter_mut().find(|e| e.task == 0) else {
            return false;
        };
        *e = Throttled { task: tid, since: now, last: now, page: idx + 1 };
        st.throttled_n += 1;
        true
    }

    /// Whether the last read of clone page `idx`, not in memory, failed:
    /// its read-back from the swap file, or its read from the image (a
    /// lookup under the image's cache lock, after `state`).
    fn read_failed(st: &State, idx: usize) -> bool {
        match st.out.get(idx) {
            Some(&Out::Swapped(seq)) => st.read_failure.is_some_and(|(i, s, _)| i == idx && s == seq),
            _ => st.image.failure(idx).is_some(),
        }
    }

    /// Whether this thread's last fault turned back was on page `idx`
    /// (its mark is taken): the retry of a VMM fault, which carries
    /// `FAULT_FLAG_TRIED` (`MayRead::Again`) though it has read nothing
    /// yet. It must read as a first attempt does: `Again` fails with a
    /// read error recorded for the page, maybe by another thread's read
    /// while this one was turned back.
    fn was_turned_back(st: &mut State, idx: usize) -> bool {
        if st.throttled_n == 0 {
            return false;
        }
        let tid = ffi::current_task_id();
        match st.throttled_tasks.iter_mut().find(|e| e.task == tid) {
            Some(e) if e.page == idx + 1 => {
                e.page = 0;
                true
            }
            _ => false,
        }
    }

    /// Evict if the clone is over its limit (a stage-2 fault, before it
    /// may allocate). Takes `state` only if a limit is set.
    fn evict_if_over(&self) {
        if self.limit.load(Relaxed) != 0 {
            // Faults never wait (`Err` only comes to a caller that does).
            let _ = self.evict(Why::Fault);
        }
    }

    /// Read clone page `idx`, evicted as number `seq`, back from `swap`
    /// into a new page, without `state`; install it if the page is still
    /// that eviction's. A failure is logged, counted, and kept for the
    /// retry of a VMM fault.
    fn read_back(&self, idx: usize, seq: u64, swap: &SwapFile) -> Result {
        let page = PageRef::alloc_private(false)?;
        if let Err(e) = swap.read_page(idx, &page) {
            if self.stats.io_errors.fetch_add(1, Relaxed).wrapping_add(1).is_power_of_two() {
                pr_warn!("swap file read of page {:#x}: error {}\n", idx, e.to_errno());
            }
            self.state.lock().read_failure = Some((idx, seq, e));
            return Err(e);
        }
        let mut st = self.state.lock();
        if st.out.get(idx) != Some(&Out::Swapped(seq)) {
            // Read back by another fault, or dropped by a reset.
            return Ok(());
        }
        st.private.set(idx, page)?;
        st.out.take(idx);
        st.swapped -= 1;
        st.accessed(idx);
        self.publish(&st);
        self.stats.read_back.fetch_add(1, Relaxed);
        Ok(())
    }

    /// [`read_back`](Self::read_back) clone page `idx` if it is swapped
    /// (a VMM fault with its lock released, or a snapshot).
    pub(crate) fn read_back_idx(&self, idx: usize) -> Result {
        let (seq, swap) = {
            let st = self.state.lock();
            match (st.out.get(idx), &st.swap) {
                (Some(&Out::Swapped(seq)), Some(swap)) => (seq, swap.clone()),
                _ => return Ok(()),
            }
        };
        self.read_back(idx, seq, &swap)
    }

    /// Turn eviction off and bring every swapped page back into memory,
    /// for a snapshot; eviction is on again when the guard goes.
    /// Evictions in flight are cancelled.
    pub(crate) fn hold_resident(&self) -> Result<Resident<'_>> {
        {
            let mut st = self.state.lock();
            st.evict_holds += 1;
            self.publish(&st);
        }
        let guard = Resident(self);
        let swapped = {
            let mut st = self.state.lock();
            // Cancel writes in flight: their pages stay.
            // kvmalloc: millions of pages may be swapped.
            let mut cancel = KVVec::new();
            let mut swapped = KVVec::new();
            let mut idx = 0;
            while st.writeback + st.swapped > 0 && idx < self.npages {
                if idx % LEAF_PAGES == 0 {
                    ffi::cond_resched();
                    if !st.out.leaf_present(idx) {
                        idx += LEAF_PAGES;
                        continue;
                    }
                }
                match st.out.get(idx) {
                    Some(Out::Writeback(_)) => cancel.push(idx, GFP_KERNEL)?,
                    Some(Out::Swapped(_)) => swapped.push(idx, GFP_KERNEL)?,
                    None => (),
                }
                idx += 1;
            }
            for idx in cancel {
                st.out.take(idx);
                st.writeback -= 1;
            }
            swapped
        };
        for (n, idx) in swapped.into_iter().enumerate() {
            self.read_back_idx(idx)?;
            if n % 64 == 63 {
                if ffi::signal_pending() {
                    return Err(ERESTARTSYS);
                }
                ffi::cond_resched();
            }
        }
        Ok(guard)
    }

    /// Make the clone's current memory the live image `name`, layered on
    /// its image, without copying what nobody else holds; the clone
    /// continues as a clone of it. Called under the registry lock, which
    /// keeps `name` free and makes the `clones`/`children` counts change
    /// atomically for delete.
    ///
    /// Every private page moves into the new image's cache and leaves the
    /// clone's table: from now on the clone reads it shared, and a write
    /// copies it again. Except a page someone may write without the page
    /// tables: a GUP pin for writing (O_DIRECT reads into guest memory,
    /// `process_vm_writev`) or a reference such as `kvm_vcpu_map()`'s.
    /// Its writes would change the immutable image under every other
    /// clone of it. The image gets a copy of such a page, taken now, and
    /// the clone keeps the page, which the writer goes on writing: it is
    /// the clone's memory. The copy is taken while such a writer may be
    /// writing, so the image holds the page as it was at some moment of
    /// the write (crash-consistent): a VMM that wants whole I/O in the
    /// image drains its I/O before the snapshot, as it pauses its vCPUs.
    ///
    /// Telling them apart: with `state` held, remove every mapping (zap
    /// stage 2, where KVM keeps no page reference, and unmap the VMM's
    /// mappings); no new one can be made, as VMM and stage-2 faults take
    /// `state`. A pin taken before the unmap is counted before we look:
    /// GUP's slow path takes its reference under the page-table lock the
    /// unmap takes (or faults), and its fast path rechecks the PTE after
    /// taking its reference. Then the table's reference is a
    /// page's only one unless someone holds it: anything above one (a pin
    /// adds 1024, `FOLL_GET` 1) means copy, as fork's
    /// `copy_present_page()` copies a maybe-DMA-pinned page. A fault that
    /// resolved the page before we took `state` holds a reference too: a
    /// harmless false positive, and the reason no late mapping can show a
    /// moved page: a VMM fault or `page_mkwrite` that may still map a
    /// private page holds it (its reference, taken under `state` or from
    /// the PTE we removed), so that page stays the clone's; a stage-2
    /// fault retries on KVM's invalidation sequence.
    ///
    /// Everything that can fail comes before any page moves: the image,
    /// its table and a table for the pages the clone keeps (both with a
    /// leaf wherever the clone's table has one, so storing cannot fail),
    /// then, once the held pages are counted, their copies; if those
    /// cannot be had, every page goes back into the clone. The clone's
    /// table keeps its leaves, which its next writes usually need again.
    pub(crate) fn snapshot(
        &self,
        name: [u8; abi::VMS_NAME_LEN],
        zero: PageRef,
    ) -> Result<Arc<Image>> {
        let mut st = self.state.lock();
        // The caller holds the pages in memory (`hold_resident`), so no
        // page is in the swap file and no eviction is in flight.
        if st.swapped != 0 || st.writeback != 0 {
            return Err(EAGAIN);
        }
        let n = st.private.used();
        let mut table = PageTable::with_leaves_of(&st.private)?;
        let mut keep = PageTable::with_leaves_of(&st.private)?;
        // kvmalloc: a clone may hold millions of private pages.
        let mut pages = KVVec::with_capacity(n, GFP_KERNEL)?;
        let image = Arc::pin_init(
            Image::layer(name, st.image.clone(), PageTable::new(self.npages)?, n as u64, zero)?,
            GFP_KERNEL,
        )?;
        self.invalidate_stage2_all(&st);
        self.mapping.unmap_all();
        // Order the reference counts after the cleared PTEs, against
        // GUP-fast's reference-then-recheck.
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let mut held = 0;
        st.private.drain(|idx, page| {
            // A fault that installed the page may still hold its lock for
            // a few instructions (then marks it dirty and unlocks it, with
            // its reference already handed to the PTE we removed): copy
            // rather than move a page that is not wholly ours yet.
            let copy = page.ref_count() > 1 || page.is_locked();
            held += usize::from(copy);
            // Cannot fail: `pages` has room for every page.
            let _ = pages.push((idx, page, copy), GFP_KERNEL);
        });
        let alloc = || -> Result<KVVec<PageRef>> {
            let mut copies = KVVec::with_capacity(held, GFP_KERNEL)?;
            for n in 0..held {
                copies.push(PageRef::alloc_private(false)?, GFP_KERNEL)?;
                if n % 512 == 511 {
                    ffi::cond_resched();
                }
            }
            Ok(copies)
        };
        let mut copies = match alloc() {
            Ok(copies) => copies.into_iter(),
            Err(e) => {
                for (n, (idx, page, _)) in pages.into_iter().enumerate() {
                    // Cannot fail: `keep` has a leaf wherever `private`
                    // had one.
                    let _ = keep.set(idx, page);
                    if n % 512 == 511 {
                        ffi::cond_resched();
                    }
                }
                st.private = keep;
                return Err(e);
            }
        };
        for (n, (idx, page, copy)) in pages.into_iter().enumerate() {
            // Millions of pages, under a mutex: give the CPU up now and
            // then, as `drain` does.
            if n % 512 == 511 {
                ffi::cond_resched();
            }
            // There is a copy for every held page.
            let page = match copy.then(|| copies.next()).flatten() {
                Some(c) => {
                    c.copy_from(&page);
                    let _ = keep.set(idx, page);
                    c
                }
                None => page,
            };
            let _ = table.set(idx, Cached::page(page));
        }
        st.private = keep;
        st.aged = 0;
        self.publish(&st);
        *image.lock_cache() = table;
        image.clones.fetch_add(1, Relaxed);
        st.image.children.fetch_add(1, Relaxed);
        let old = core::mem::replace(&mut st.image, image.clone());
        // Under the registry lock, as its `children` went up: reclaim
        // (which holds it) never sees the clone counted twice or not at
        // all.
        old.clones.fetch_sub(1, core::sync::atomic::Ordering::Release);
        Ok(image)
    }

    /// Drop every private page (`VMS_CLONE_RESET`): the clone reads its
    /// image again, as it was when the clone was made or last
    /// snapshotted. Returns how many pages went.
    ///
    /// With `state` held, as in [`snapshot`](Self::snapshot): zap stage 2
    /// and unmap the VMM's mappings, then empty the table. No new mapping
    /// of a private page can be made meanwhile (VMM and stage-2 faults
    /// take `state`), and a stage-2 fault that resolved a page before we
    /// took `state` retries on KVM's invalidation sequence. A VMM fault
    /// that resolved a private page before may still map it: a read fault
    /// (and `mmap_mkwrite`) locks the page with `state` held and mm maps
    /// it before unlocking, so we wait for the page's lock, then unmap the
    /// page again. Such a fault holds a reference, so only pages with a
    /// reference besides the table's, or locked, need it (a pin counts
    /// too: a harmless wait). A write fault that made a new private copy
    /// locks it only after `state` is released (`mmap_fault`), but mm
    /// never maps that copy as it is: for a write to a shared mapping it
    /// unlocks the page and calls `mmap_mkwrite` first (`do_shared_fault`),
    /// which finds under `state` that the copy is no longer the clone's
    /// private page, and the access retries.
    ///
    /// Pages pinned for I/O (O_DIRECT, io_uring) or held by KVM
    /// (`kvm_vcpu_map()`) leave the clone with their pin: the writer
    /// finishes into a page nobody maps any more, freed when unpinned.
    ///
    /// No eviction runs while it does: it waits for one that runs (its
    /// write in flight), and holds `evicting` until the swap file's blocks
    /// are given back, after `state` is released (a file system's locks
    /// do not nest inside `state`: a task holding them may fault on a
    /// clone mapping). A page evicted meanwhile would otherwise be punched
    /// away under its entry. `ERESTARTSYS` if a signal comes while it
    /// waits; nothing was dropped then.
    pub(crate) fn reset(&self) -> Result<u64> {
        let running = Evicting::wait(self)?;
        let mut st = self.state.lock();
        self.invalidate_stage2_all(&st);
        self.mapping.unmap_all();
        // Order the reference counts after the cleared PTEs, against
        // GUP-fast's reference-then-recheck (as in `snapshot`).
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        let mut n = st.swapped as u64;
        // Swapped pages go with their entries, and their blocks below; a
        // write that a snapshot cancelled may still be in flight (its
        // eviction held `evicting`, so it ended before we started).
        st.forget_out();
        let mapping = &self.mapping;
        st.private.drain(|idx, page| {
            n += 1;
            if page.ref_count() > 1 || page.is_locked() {
                page.locked(|| mapping.unmap_page(idx));
            }
            // `drain` gives the CPU up between leaves: a clone may hold
            // millions of pages (`state` is a mutex).
            ffi::release_private(page);
        });
        self.publish(&st);
        self.stats.resets.fetch_add(1, Relaxed);
        let punch = if core::mem::take(&mut st.swap_written) { st.swap.clone() } else { None };
        drop(st);
        if let Some(swap) = punch {
            ffi::debug_delay(ffi::Delay::Punch);
            // Unpunched (a file system without holes, or an error), the
            // file keeps its blocks (`swap_disk_bytes` shows them) until
            // the clone goes; after an error the next reset tries again.
            if let Err(e) = swap.punch_all() {
                if !PUNCH_WARNED.swap(true, Relaxed) {
                    pr_warn!("swap file: giving its blocks back at a reset failed: error {}\n", e.to_errno());
                }
                self.state.lock().swap_written = true;
            }
        }
        // Evictions skipped while we held the flag (faults, the worker,
        // the shrinker's ask) may have left the clone over its limit, and
        // no fault may come to kick the worker (a paused VM): as `evict`
        // does after an eviction.
        drop(running);
        self.state.lock().hand_over();
        Ok(n)
    }

    /// Unmap `old`, the page clone page `idx` had before it became private,
    /// from the VMM's mappings, then drop our reference to it. With
    /// `state` held (`state` -> page lock).
    ///
    /// The VMM's fault handler locks the page it returns while `state` is
    /// held and mm installs it before unlocking: taking the page lock here
    /// waits for such a fault that raced with the copy, so its mapping is
    /// in place, and removed, before we return. This needs the fault to
    /// have returned `old` itself, also when a snapshot replaced the
    /// clone's image in between: every level of an image chain hands out
    /// the same page for a clone page (a live image keeps its parent's
    /// pages, and its parent's VMM copy of a file page).
    fn retire(&self, idx: usize, old: PageRef) {
        old.locked(|| self.mapping.unmap_page(idx));
    }

    /// Bring image page `idx` into the image's cache without `state`
    /// held: reading the image file may take the file's inode lock, and a
    /// task holding that lock may fault on a clone mapping, which takes
    /// `state` (lockdep saw it with an image file on 9p). Resolving then
    /// finds the page cached. A snapshot that changes the image meanwhile
    /// is harmless: the new image finds the page through its parent.
    pub(crate) fn warm(&self, image: &Image, idx: usize) -> Result {
        self.stats.warm(image, idx)
    }

    /// A stage-2 (EPT/NPT) fault on `gfn` of memslot `slot`.
    pub(crate) fn stage2_fault(
        &self,
        slot: &SlotInfo,
        gfn: u64,
        write: bool,
    ) -> Result<(PageRef, bool)> {
        // Before this fault may allocate a private page.
        self.evict_if_over();
        loop {
            let mut st = self.state.lock();
            // Resolve only while a copy-on-write can zap stage 2: KVM must
            // not find the shared page mapped where it installs the copy
            // (it BUG()s on a present leaf changing pfn). Without `vm` —
            // attaching has registered but not stored it yet, or drop has
            // taken it and is unregistering — the vCPU retries until KVM
            // stops asking us.
            if st.vm.is_none() {
                return Err(EAGAIN);
            }
            // Each kind of memslot only by its own kind of attachment: a
            // claimed slot may have been served through its host address,
            // whose pages a provider page must not replace under a present
            // SPTE (KVM BUG()s on a leaf changing pfn), so only a claim,
            // made at the slot's creation before any fault, serves it; a
            // stale claim of a deleted slot must not shadow an attach.
            let Some(a) = st
                .slots
                .iter_mut()
                .find(|a| a.slot == slot.slot && a.claim.is_some() == slot.claimed)
            else {
                // A claimed slot we do not know was claimed for another
                // clone, an earlier provider of the VM: its host address
                // serves it.
                return Err(if slot.claimed { ENOENT } else { EFAULT });
            };
            if a.claim.as_ref().is_some_and(|c| c.lapsed) {
                return Err(ENOENT);
            }
            if slot.npages != a.npages as u64 {
                if !a.warned {
                    a.warned = true;
                    pr_warn!("memslot {:#x}: its size differs from the attached range\n", a.slot);
                }
                return Err(EINVAL);
            }
            let rel = gfn.checked_sub(slot.base_gfn).ok_or(EFAULT)? as usize;
            if rel >= a.npages {
                return Err(EFAULT);
            }
            a.base_gfn = Some(slot.base_gfn);
            let idx = a.first + rel;
            if self.throttles(&mut st, idx, write) {
                drop(st);
                self.stats.throttled.fetch_add(1, Relaxed);
                // A signal ends the vCPU's run instead (KVM checks before
                // it enters the guest again): no sleep then.
                throttle_sleep();
                return Err(EAGAIN);
            }
            match self.resolve(&mut st, idx, write, STAGE2)? {
                Resolved::Page { page, private } => {
                    // Over the limit while this clone's faults do not
                    // evict (one could not): the worker does, or comes
                    // back when its back-off ends, should no fault follow.
                    // Not otherwise: the next fault evicts, and a worker
                    // evicting meanwhile makes faults skip eviction.
                    if st.evict_skip > 0 {
                        st.hand_over();
                    }
                    drop(st);
                    // Served (KVM may still retry it).
                    self.stats.faults.fetch_add(1, Relaxed);
                    return Ok((page, private));
                }
                Resolved::Uncached(image) => {
                    drop(st);
                    self.warm(&image, idx)?;
                }
                Resolved::Swapped(seq) => {
                    let swap = st.swap.clone().ok_or(EIO)?;
                    drop(st);
                    self.read_back(idx, seq, &swap)?;
                }
            }
        }
    }

    /// A fault of the VMM's mapping at clone page `idx`: the page, locked;
    /// or, if the image has to read it, what `how` allows (see
    /// [`MayRead`]). A read never runs with `mmap_lock` held unless the
    /// caller cannot retry: that would order `mmap_lock` before the locks
    /// a file's `read_iter` takes, which netfs filesystems (9p, NFS, CIFS:
    /// the inode lock) and seq_file (its buffer lock) hold while copying
    /// to user memory that may be a clone mapping.
    pub(crate) fn mmap_fault(&self, idx: usize, write: bool, mut how: MayRead) -> Result<MmapFault> {
        if idx >= self.npages() {
            return Err(EINVAL);
        }
        self.stats.mmap_faults.fetch_add(1, Relaxed);
        let page = loop {
            let mut st = self.state.lock();
            // Only a fault that may release its lock waits: one that may
            // not (ptrace's, GUP's `FOLL_NOWAIT`) goes on over the limit.
            // So does one with a signal pending: a fault from kernel mode
            // (`copy_from_user`, GUP) retries at once with anything but
            // a fatal signal, and would spin instead of sleeping. And the
            // retry of a read of its own that failed: it fails with that
            // error (turned back, it would start a new row after a read
            // slower than the cap, and read again, for ever).
            if how == MayRead::Again && Self::was_turned_back(&mut st, idx) {
                how = MayRead::First;
            }
            if matches!(how, MayRead::First | MayRead::Again)
                && !ffi::signal_pending()
                && self.throttles(&mut st, idx, write)
                && !(how == MayRead::Again && Self::read_failed(&st, idx))
            {
                drop(st);
                self.stats.throttled.fetch_add(1, Relaxed);
                return Ok(MmapFault::Throttled);
            }
            match self.resolve(&mut st, idx, write, VMM)? {
                Resolved::Page { page, .. } => {
                    // This fault may have taken the clone over its limit,
                    // and may not evict: the worker will (unless it is
                    // backing off from this clone).
                    st.hand_over();
                    // Possibly a shared page: lock it before `state` goes,
                    // so a copy made after this waits in `retire` until it
                    // is mapped. For a write to a new private page, mm
                    // calls `mmap_mkwrite` before it maps the page
                    // (`do_shared_fault`), which checks under `state` that
                    // it is still the clone's private page: a snapshot or
                    // reset meanwhile makes the access retry.
                    let locked = page.into_locked();
                    drop(st);
                    ffi::debug_delay(ffi::Delay::Map);
                    break locked;
                }
                // The retry of a fault whose read failed: its error, not
                // another read (which could fail for ever).
                Resolved::Uncached(image) if how == MayRead::Again => {
                    if let Some(e) = image.failure(idx) {
                        return Err(e);
                    }
                    let stats = self.stats.clone();
                    return Ok(MmapFault::Read(Warm { image, stats, idx }));
                }
                Resolved::Uncached(image) if how == MayRead::First => {
                    let stats = self.stats.clone();
                    return Ok(MmapFault::Read(Warm { image, stats, idx }));
                }
                Resolved::Uncached(_) if how == MayRead::NoWait => return Ok(MmapFault::Busy),
                Resolved::Uncached(image) => {
                    drop(st);
                    self.warm(&image, idx)?;
                }
                // As for the image's pages: the read-back of a retry that
                // failed fails the fault.
                Resolved::Swapped(seq) if how == MayRead::Again => {
                    if let Some((_, _, e)) = st.read_failure.filter(|&(i, s, _)| i == idx && s == seq) {
                        return Err(e);
                    }
                    return Ok(MmapFault::ReadBack(idx));
                }
                Resolved::Swapped(_) if how == MayRead::First => return Ok(MmapFault::ReadBack(idx)),
                Resolved::Swapped(_) if how == MayRead::NoWait => return Ok(MmapFault::Busy),
                // A caller that cannot drop the fault lock (ptrace,
                // /proc/PID/mem): reading the swap file under `mmap_lock`
                // would order it before the file's inode lock, which
                // writers hold while they fault on user memory. The
                // access fails instead.
                Resolved::Swapped(_) => return Err(EIO),
            }
        };
        Ok(MmapFault::Page(page))
    }

    /// The VMM writes to `page`, mapped read-only at clone page `idx`.
    /// `Ok(true)`: it is the private page, locked by `lock` with `state`
    /// held (so a snapshot waits until mm has made it writable, then
    /// unmaps it): make it writable. `Ok(false)`: it was replaced (by a
    /// private copy made now or earlier, or it became an image page) and
    /// unmapped; the access must be retried.
    pub(crate) fn mmap_mkwrite(
        &self,
        idx: usize,
        page: *mut kernel::bindings::page,
        lock: impl FnOnce(),
    ) -> Result<bool> {
        loop {
            let mut st = self.state.lock();
            match st.private.get(idx).map(|p| p.is(page)) {
                Some(true) => {
                    st.accessed(idx);
                    lock();
                    return Ok(true);
                }
                // A stale mapping of the page before the copy: unmapped
                // below.
                Some(false) => (),
                // A write that would take a private page while the clone
                // is over its limit and an eviction writes: not here,
                // where mm holds the fault lock and cannot retry
                // (`do_page_mkwrite`); the shared page is unmapped below,
                // and the access faults again through `mmap_fault`, which
                // waits with the lock released.
                None if !ffi::signal_pending() && self.throttles(&mut st, idx, true) => (),
                // The copy, made now (which unmapped the shared page), or
                // a stale mapping of a page evicted since: unmapped below;
                // the access faults and reads it back with the fault lock
                // released.
                None => match self.resolve(&mut st, idx, true, VMM)? {
                    Resolved::Page { .. } | Resolved::Swapped(_) => (),
                    Resolved::Uncached(image) => {
                        drop(st);
                        self.warm(&image, idx)?;
                        continue;
                    }
                },
            }
            drop(st);
            self.mapping.unmap_page(idx);
            return Ok(false);
        }
    }

    /// ioctl on the clone file.
    pub(crate) fn ioctl(&self, cmd: u32, arg: UserPtr) -> Result<isize> {
        match cmd {
            abi::VMS_CLONE_ATTACH => self.ioctl_attach(arg),
            abi::VMS_CLONE_STATS => {
                let s = self.stats();
                UserSlice::new(arg, core::mem::size_of::<abi::VmsCloneStats>())
                    .writer()
                    .write(&s)?;
                Ok(0)
            }
            abi::VMS_CLONE_TOUCHED => self.ioctl_touched(arg),
            abi::VMS_CLONE_SET_LIMIT => self.ioctl_set_limit(arg),
            abi::VMS_CLONE_FOOTPRINT => {
                let f = self.footprint();
                UserSlice::new(arg, core::mem::size_of::<abi::VmsCloneFootprint>())
                    .writer()
                    .write(&f)?;
                Ok(0)
            }
            abi::VMS_CLONE_RESET => {
                if arg != 0 {
                    return inval("VMS_CLONE_RESET: the argument must be 0");
                }
                self.reset()?;
                Ok(0)
            }
            _ => Err(ENOTTY),
        }
    }

    /// `VMS_CLONE_TOUCHED`: the bitmap of used pages, built a chunk at a
    /// time under `state` and copied out without it (a bitmap in a clone
    /// mapping faults on `state`; copying may sleep).
    fn ioctl_touched(&self, arg: UserPtr) -> Result<isize> {
        /// Words per chunk: 4 KiB, 32,768 pages.
        const WORDS: usize = 512;
        let size = core::mem::size_of::<abi::VmsCloneTouched>();
        let (mut reader, mut writer) = UserSlice::new(arg, size).reader_writer();
        let mut t: abi::VmsCloneTouched = reader.read()?;
        if t.flags != 0 || t.pad != 0 || t.reserved.iter().any(|&r| r != 0) {
            return inval("VMS_CLONE_TOUCHED: flags, pad or reserved not zero");
        }
        if t.first % 64 != 0 {
            return inval("VMS_CLONE_TOUCHED: first must be a multiple of 64");
        }
        let end = match t.first.checked_add(t.npages) {
            Some(end) if end <= self.npages() as u64 => end as usize,
            _ => return inval("VMS_CLONE_TOUCHED: range past the end of the clone"),
        };
        let words = (t.npages as usize).div_ceil(64);
        let mut out = UserSlice::new(t.bitmap as UserPtr, words * 8).writer();
        let mut buf = KVec::from_elem(0u8, WORDS * 8, GFP_KERNEL)?;
        let mut touched = 0u64;
        let mut idx = t.first as usize;
        while idx < end {
            let n = (end - idx).min(WORDS * 64);
            let mut len = 0;
            {
                let st = self.state.lock();
                for w in (idx..idx + n).step_by(64) {
                    let mut word = 0u64;
                    // A word lies in one leaf (`first` is a multiple of 64).
                    if !st.unmarked_leaf(w / LEAF_PAGES * LEAF_PAGES) {
                        for i in w..(w + 64).min(idx + n) {
                            if st.marks(i) & USED != 0 {
                                word |= 1 << (i - w);
                            }
                        }
                    }
                    touched += u64::from(word.count_ones());
                    buf[len..len + 8].copy_from_slice(&word.to_ne_bytes());
                    len += 8;
                }
            }
            out.write_slice(&buf[..len])?;
            idx += n;
            if idx < end && ffi::signal_pending() {
                return Err(ERESTARTSYS);
            }
            ffi::cond_resched();
        }
        t.touched = touched;
        writer.write(&t)?;
        Ok(0)
    }

    /// `VMS_CLONE_SET_LIMIT`: set the limit (and the swap file, once),
    /// then evict down to it.
    fn ioctl_set_limit(&self, arg: UserPtr) -> Result<isize> {
        let l: abi::VmsCloneLimit =
            UserSlice::new(arg, core::mem::size_of::<abi::VmsCloneLimit>()).reader().read()?;
        if l.flags != 0 || l.reserved.iter().any(|&r| r != 0) {
            return inval("VMS_CLONE_SET_LIMIT: flags or reserved not zero");
        }
        // Made before `state`: creating a file takes the file system's
        // locks.
        let swap = match l.swap_dir_fd {
            -1 => None,
            fd => Some(SwapFile::create(fd).inspect_err(|e| {
                pr_info!("VMS_CLONE_SET_LIMIT: no swap file in directory fd {}: error {}\n", fd, e.to_errno());
            })?),
        };
        let swap = swap.map(|s| Arc::new(s, GFP_KERNEL)).transpose()?;
        let mut rounds = {
            let mut st = self.state.lock();
            if swap.is_some() && st.swap.is_some() {
                pr_info!("VMS_CLONE_SET_LIMIT: the clone has a swap file already\n");
                return Err(EEXIST);
            }
            if l.limit != 0 && swap.is_none() && st.swap.is_none() {
                return inval("VMS_CLONE_SET_LIMIT: a limit needs a swap file (swap_dir_fd)");
            }
            if swap.is_some() {
                st.swap = swap;
            }
            st.limit = usize::try_from(l.limit).unwrap_or(usize::MAX);
            st.evict_skip = 0;
            st.backoff_ms = 0;
            st.over_after = 0;
            self.limit.store(st.limit, Relaxed);
            self.publish(&st);
            // Twice the batches its pages in memory fill: enough for the
            // clock to make every page old and take what is over the
            // limit, when nothing brings pages back meanwhile.
            2 * (st.private.used() / EVICT_BATCH) + 8
        };
        // Down to the new limit, one batch at a time, until it is reached
        // or nothing more can go (every page held: a pin, a page in a
        // pipe), or after `rounds` batches: a guest or VMM that brings
        // pages back from a slow swap file as fast as they go would keep
        // the call for ever (a throttled fault goes on after 2 s, and one
        // that may not release its fault lock is never throttled). Stopped over
        // the limit by any of these, or cut short by a signal, the limit
        // stays and the worker goes on (no fault may come to kick it),
        // retrying while pages are held.
        loop {
            let r = match self.evict(Why::Limit) {
                // `EINTR`, not a restart (`ERESTARTSYS`): the limit is set
                // already, and a restarted call that passed a swap
                // directory would fail with `EEXIST` (the clone has its
                // file now).
                Ok(Some(_)) if ffi::signal_pending() => Err(EINTR),
                Ok(Some(_)) if rounds > 1 => {
                    rounds -= 1;
                    ffi::cond_resched();
                    continue;
                }
                Ok(Some(_)) => Ok(0),
                Ok(None) => Ok(0),
                // A signal while it waited for an eviction in flight: as
                // above.
                Err(e) if e == ERESTARTSYS => Err(EINTR),
                Err(e) => Err(e),
            };
            self.state.lock().hand_over();
            return r;
        }
    }

    fn footprint(&self) -> abi::VmsCloneFootprint {
        let s = &self.stats;
        let st = self.state.lock();
        let swap = st.swap.clone();
        let f = abi::VmsCloneFootprint {
            limit: st.limit as u64,
            resident: st.private.used() as u64,
            swapped: st.swapped as u64,
            evicted: s.evicted.load(Relaxed),
            read_back: s.read_back.load(Relaxed),
            evict_errors: s.evict_errors.load(Relaxed),
            evict_held: s.evict_held.load(Relaxed),
            shrunk: s.shrunk.load(Relaxed),
            throttled: s.throttled.load(Relaxed),
            swap_bytes: st.swap.as_ref().map_or(0, |f| f.size()),
            ..abi::VmsCloneFootprint::zeroed()
        };
        drop(st);
        // Without `state`: the file system's getattr may sleep and take
        // its own locks.
        abi::VmsCloneFootprint { swap_disk_bytes: swap.map_or(0, |f| f.disk_bytes()), ..f }
    }

    fn ioctl_attach(&self, arg: UserPtr) -> Result<isize> {
        let a: abi::VmsCloneAttach =
            UserSlice::new(arg, core::mem::size_of::<abi::VmsCloneAttach>())
                .reader()
                .read()?;
        let page = PAGE_SIZE as u64;
        if a.flags != 0 || a.pad != 0 || a.reserved.iter().any(|&r| r != 0) {
            return inval("VMS_CLONE_ATTACH: flags, pad or reserved not zero");
        }
        if a.size == 0 || a.size % page != 0 || a.offset % page != 0 {
            return inval("VMS_CLONE_ATTACH: offset and size must be page multiples, size > 0");
        }
        let end = a.offset.checked_add(a.size).ok_or(EINVAL)?;
        if end > (self.npages() * PAGE_SIZE) as u64 {
            return inval("VMS_CLONE_ATTACH: range past the end of the clone");
        }
        let first = (a.offset / page) as usize;
        let npages = (a.size / page) as usize;

        let _attach = self.attach.lock();
        let have_vm = {
            let mut st = self.state.lock();
            if let Some(vm) = &st.vm {
                if !vm.is_fd(a.vm_fd)? {
                    pr_info!("VMS_CLONE_ATTACH: the clone serves another VM\n");
                    return Err(EBUSY);
                }
            }
            // Claims (memslots KVM asked about) are the module's own
            // business: only attaches can collide with an attach.
            let mut attached = st.slots.iter().filter(|s| s.claim.is_none());
            if attached.clone().any(|s| s.slot == a.slot) {
                pr_info!("VMS_CLONE_ATTACH: memslot {:#x} already attached\n", a.slot);
                return Err(EEXIST);
            }
            if attached.any(|s| first < s.first + s.npages && s.first < first + npages) {
                return inval("VMS_CLONE_ATTACH: range overlaps an attached memslot");
            }
            if st.vm.is_none() {
                // Until we store the VM: see `State::registering`.
                st.registering = true;
            }
            st.vm.is_some()
        };
        // Register with KVM without `state` held (see the lock order).
        let vm = if have_vm {
            None
        } else {
            match ffi::Vm::attach(a.vm_fd, self) {
                Ok(vm) => Some(vm),
                Err(e) => {
                    self.end_registering(&mut self.state.lock());
                    pr_info!("VMS_CLONE_ATTACH: cannot attach to vm fd {}: error {}\n", a.vm_fd, e.to_errno());
                    return Err(e);
                }
            }
        };
        let mut st = self.state.lock();
        let att = Attachment { slot: a.slot, first, npages, base_gfn: None, warned: false, claim: None };
        if let Err(e) = st.slots.push(att, GFP_KERNEL) {
            // Unregistering waits for vCPUs, which may wait for `state`;
            // claims stay off until KVM has let the provider go.
            drop(st);
            if vm.is_some() {
                drop(vm);
                self.end_registering(&mut self.state.lock());
            }
            return Err(e.into());
        }
        if vm.is_some() {
            st.vm = vm;
            self.end_registering(&mut st);
        } else {
            self.publish(&st);
        }
        Ok(0)
    }

    /// The provider is registered and its VM stored, or unregistered, or
    /// registering failed: evictions may run again (`may_evict`), and any
    /// that a fault, a limit or the worker skipped meanwhile, while the
    /// clone did not count as over its limit, happen now.
    fn end_registering(&self, st: &mut State) {
        st.registering = false;
        self.publish(st);
        st.hand_over();
    }

    /// KVM asks whether a new memslot of the VM in `claim`, whose host
    /// range starts at clone page `first`, is to be served from the clone
    /// (see [`ffi::Claim`]). Yes, unless the clone serves another VM, or
    /// the VM has another provider, or the range leaves the clone.
    pub(crate) fn claim(&self, claim: &ffi::Claim, slot: &SlotInfo, first: usize) -> bool {
        let npages = slot.npages as usize;
        if first.checked_add(npages).map_or(true, |end| end > self.npages()) {
            return false;
        }
        let sc = SlotClaim {
            mm: claim.mm,
            start: claim.hva,
            end: claim.hva + slot.npages * PAGE_SIZE as u64,
            lapsed: false,
        };
        let att = Attachment {
            slot: slot.slot,
            first,
            npages,
            base_gfn: Some(slot.base_gfn),
            warned: false,
            claim: Some(sc),
        };
        // KVM holds `slots_lock` and `mmap_lock`: `state` nests inside
        // both, as in the VMM's faults. Registering here waits for no SRCU
        // reader.
        let mut st = self.state.lock();
        if st.registering {
            return false;
        }
        if let Some(vm) = &st.vm {
            if !claim.is_vm(vm) {
                return false;
            }
        }
        // A claimed slot id seen before was deleted or moved since: this
        // is its new life. (Attaches, for slots made with the flag, which
        // KVM never asks about, are another kind: see `stage2_fault`.)
        let existing = st.slots.iter().position(|a| a.slot == slot.slot && a.claim.is_some());
        if existing.is_none() && st.slots.reserve(1, GFP_KERNEL).is_err() {
            return false;
        }
        if st.vm.is_none() {
            match claim.register(self) {
                Ok(vm) => st.vm = Some(vm),
                // Another provider serves the VM.
                Err(_) => return false,
            }
        }
        match existing {
            Some(i) => st.slots[i] = att,
            // Cannot fail: reserved above.
            None => drop(st.slots.push(att, GFP_KERNEL)),
        }
        self.publish(&st);
        true
    }

    /// A mapping of the clone in `mm`, `[start, end)`, is going away
    /// (munmap, mremap, exit) or losing write access (mprotect), with
    /// `mmap_lock` held (munmap has detached the VMA and may hold the lock
    /// only for reading; no claim can find the VMA). The memslots
    /// claimed for it lapse: their stage-2 mappings are zapped and their
    /// faults go back to their host address. Returns whether the clone's
    /// VM should be left now (this lapsed a claim, and every memslot the
    /// clone served was claimed and has lapsed): the caller has it done
    /// outside `mmap_lock` ([`Self::leave_lapsed_vm`], from the module's
    /// workqueue). Closes that lapse nothing queue nothing.
    pub(crate) fn mapping_closed(&self, mm: ffi::MmId, start: u64, end: u64) -> bool {
        let st = &mut *self.state.lock();
        let Some(vm) = &st.vm else { return false };
        if vm.mm() != mm {
            return false;
        }
        let mut lapsed = false;
        for a in st.slots.iter_mut() {
            let (Some(c), Some(base)) = (&mut a.claim, a.base_gfn) else { continue };
            if c.lapsed || c.mm != mm || c.end <= start || end <= c.start {
                continue;
            }
            c.lapsed = true;
            lapsed = true;
            // `state` -> `mmu_lock`, as for a copy-on-write.
            vm.invalidate(base, base + a.npages as u64);
        }
        lapsed && Self::all_lapsed(st)
    }

    fn all_lapsed(st: &State) -> bool {
        st.slots.iter().all(|a| a.claim.as_ref().is_some_and(|c| c.lapsed))
    }

    /// Leave the VM if every memslot the clone served was claimed and has
    /// lapsed (see [`Self::mapping_closed`]): so a named clone that a VMM
    /// used does not keep the VM alive once the VMM has gone. The clone
    /// can serve a VM again by a new claim. From the module's workqueue.
    pub(crate) fn leave_lapsed_vm(&self) {
        let _attach = self.attach.lock();
        let vm = {
            let mut st = self.state.lock();
            if st.vm.is_none() || !Self::all_lapsed(&st) {
                return;
            }
            st.slots = KVec::new();
            // Until KVM has let the provider go: see `State::registering`.
            st.registering = true;
            let vm = st.vm.take();
            self.publish(&st);
            vm
        };
        // Unregistering waits for vCPUs, which may wait for `state`.
        drop(vm);
        self.end_registering(&mut self.state.lock());
    }

    fn stats(&self) -> abi::VmsCloneStats {
        let s = &self.stats;
        let (private, image) = {
            let st = self.state.lock();
            (st.private.used() as u64, *st.image.name())
        };
        abi::VmsCloneStats {
            size: (self.npages() * PAGE_SIZE) as u64,
            faults: s.faults.load(Relaxed),
            mmap_faults: s.mmap_faults.load(Relaxed),
            shared_maps: s.shared_maps.load(Relaxed),
            zero_maps: s.zero_maps.load(Relaxed),
            streamed: s.streamed.load(Relaxed),
            cow_copies: s.cow_copies.load(Relaxed),
            private_pages: private,
            io_errors: s.io_errors.load(Relaxed),
            resets: s.resets.load(Relaxed),
            image,
            ..abi::VmsCloneStats::zeroed()
        }
    }
}

#[pinned_drop]
impl PinnedDrop for VmClone {
    fn drop(self: Pin<&mut Self>) {
        // Off the shrinker's list first (every clone is on it, from
        // `VMS_CLONE_CREATE`), waiting for its worker to be done with this
        // clone.
        ffi::reclaim_forget(&self);
        // Unregister from KVM (which waits for vCPUs inside our fault
        // handler, so `state` must not be held) before any page goes.
        // Until it has, KVM may still call `stage2_fault`, which finds no
        // `vm` and makes the vCPU retry.
        let vm = self.state.lock().vm.take();
        drop(vm);
        let mut st = self.state.lock();
        // After the unregistering above and the VMM's mappings (which
        // held our file): the image's pages are mapped by nobody through
        // this clone any more (`Release`: reclaim frees pages the clone
        // may have mapped once the count says it is gone).
        st.image.clones.fetch_sub(1, core::sync::atomic::Ordering::Release);
        // KVM maps none of them any more; the VMM's mappings are gone
        // (they hold the clone's file). The debug quarantine may keep them.
        st.private.drain(|_, page| ffi::release_private(page));
        self.publish(&st);
    }
}

/// The worker ([`ffi::Reclaim`]): what memory reclaim asked for (the
/// shrinker, [`reclaim_pressure`]): images' caches, then cold private
/// pages of clones with a swap file, one batch from each in turn, until
/// the clock has looked at as many pages as were asked for, or a whole
/// round of clones had nothing to give; their limits do not matter, a
/// clone under its limit gives pages too. If a clone was handed over
/// ([`ffi::reclaim_kick`]: a VMM fault took it over its limit, or an
/// eviction stopped with it over), clones down to their limits
/// ([`reclaim_over`]), which serves the shrinker's ask first in each round.
pub(crate) fn reclaim(r: &ffi::Reclaim) {
    if ffi::reclaim_kicked() {
        reclaim_over(r);
    } else {
        reclaim_pressure(r);
    }
}

/// Milliseconds before the worker tries the registry lock again after it
/// found it held.
const IMAGES_RETRY_MS: i64 = 50;

/// The shrinker's ask (see [`reclaim`]): images' caches first (their
/// pages go back without a write), then clones with a swap file.
fn reclaim_pressure(r: &ffi::Reclaim) {
    let want = ffi::reclaim_wanted();
    if ffi::images_to_reclaim(want) {
        match ffi::with_registry(|reg| crate::dev::reclaim_images(reg, r, want)) {
            Some(Some((n, freed))) if n > 0 || freed > 0 => ffi::reclaim_done(n, freed),
            // The registry was busy: try again shortly.
            Some(None) => ffi::reclaim_retry_at(ffi::now_ms() + IMAGES_RETRY_MS),
            // Not published yet (the device is registered first) or any
            // more, or nothing dropped: the clones' turn.
            _ => (),
        }
    }
    let mut idle = 0;
    loop {
        let want = ffi::reclaim_wanted();
        if want == 0 {
            return;
        }
        let batch = want.min(EVICT_BATCH);
        let Some((done, clones)) = r.with_next(|c| c.evict(Why::Pressure(batch))) else {
            ffi::reclaim_done(want, 0);
            return;
        };
        let freed = match done {
            Ok(Some(n)) => {
                idle = 0;
                n
            }
            _ => {
                idle += 1;
                if idle >= clones {
                    // Nothing to give: forget this ask (not later ones).
                    ffi::reclaim_done(want, 0);
                    return;
                }
                // Not charged to the ask: every clone is listed, and most
                // may have no swap file.
                ffi::cond_resched();
                continue;
            }
        };
        ffi::reclaim_done(batch, freed);
        ffi::cond_resched();
    }
}

/// Entries of an image's cache that one [`reclaim_image`] looks at, at
/// most, in each of its two runs (see [`Image::reclaim_pass`]).
const IMAGE_LOOK: usize = 2048;

/// Memory reclaim of the cache of `image`, which [`Image::may_drop`]
/// (the caller holds the registry lock, under which that stays so): drop
/// up to `max` cached pages that no clone of the image resolved since the
/// last pass, and zap from the clones' stage 2 the pages they resolved
/// since, so that their next access faults again: a clock whose reference
/// bit is the image's `REF` flag, which every resolve sets and each pass
/// clears, and whose zap makes a page's use visible again (see
/// [`Image::reclaim_pass`], which also says which pages stay). A fault on
/// a dropped page streams it again (from the file's page cache, most
/// often). Returns the pages dropped and freed; `None` if a clone of the
/// image is being made or dropped (the count of the image's clones is not
/// the number listed), or without memory.
///
/// The pass takes the pages out of the cache first, so that no fault can
/// find them any more, then zaps them (and the referenced ones) from
/// every clone made of the image (`origin`: a clone uses only the image it
/// was made of, or a live image on that image, which `may_drop` rules
/// out), one clone at a time under its `state`: a page a clone's fault
/// resolved carries the clone's [`STAGE2`] mark, set under `state` before
/// the fault returns it, and the zap bumps KVM's invalidation sequence, so
/// a fault that holds such a page retries instead of installing it. The
/// list's lock, held throughout, keeps the clones from going; the
/// registry lock keeps new ones from coming. Only then do the pages go
/// (patches/0009: the provider may let go of a page once no `get_page` can
/// return it and the invalidation has returned). A clone whose `state` is
/// held (tried only: the worker must not wait behind a reset or a fault in
/// direct reclaim, with the list's lock, which clones' drops wait for), or
/// whose stage 2 no zap of ours reaches (registering, or leaving a VM),
/// keeps them alive: they are retired in the image, with their indices,
/// until a later pass has zapped every clone.
///
/// Lock order: registry `images` -> the reclaim list -> image `cache`
/// (the pass's first half) ; registry `images` -> the
/// reclaim list -> clone `state` (tried).
pub(crate) fn reclaim_image(r: &ffi::Reclaim, image: &Arc<Image>, max: usize) -> Option<(usize, usize)> {
    let addr = core::ptr::from_ref::<Image>(&**image) as usize;
    let gfp = GFP_NOWAIT | __GFP_NOWARN;
    r.with_all(|clones| {
        let count = image.clones.load(core::sync::atomic::Ordering::Acquire) as usize;
        let mut users = KVec::with_capacity(count, gfp).ok()?;
        for c in clones.filter(|c| c.origin == addr) {
            if users.len() == count {
                return None;
            }
            // Within the capacity: no allocation.
            users.push(c, gfp).ok()?;
        }
        // A clone counted and not yet listed (being made), or gone from
        // the list and still counted (its drop may not have unregistered
        // from KVM yet): not every clone that may map the pages is here.
        if users.len() != count {
            return None;
        }
        // Pages an earlier pass could not zap from every clone: again, and
        // no pass until they went (so at most `max` wait, and freeing them
        // needs no more than their list).
        let retired = image.retired();
        // Nothing to zap and no pass due (an image that clones use gets
        // one every `PASS_MS`, and the worker comes by more often): no
        // lists to allocate, no clone to lock.
        if retired == 0 && !image.pass_due(users.is_empty()) {
            return Some((0, 0));
        }
        let (max, look) = if retired > 0 { (0, 0) } else { (max, IMAGE_LOOK) };
        let mut idxs = KVec::with_capacity(look + max + retired, gfp).ok()?;
        let pass = if retired > 0 {
            Pass { zap: KVec::new(), gone: KVec::new() }
        } else {
            image.reclaim_pass(max, look, users.is_empty()).ok()?
        };
        let mut all = true;
        for &i in Iterator::chain(pass.zap.iter(), pass.gone.iter().map(|g| &g.0)) {
            // Within the capacity (the pass's lists are as long as `look`
            // and `max` at most): no allocation. Were it to fail, the page
            // would not be zapped: then it is retired, not put.
            all &= idxs.push(i, gfp).is_ok();
        }
        all &= image.retired_idxs(&mut idxs);
        // By index, for runs; a retired page may be listed twice.
        idxs.sort_unstable();
        let mut unmapped = 0;
        for c in users.iter() {
            let Some(st) = c.state.try_lock() else {
                all = false;
                continue;
            };
            let zappable = st.vm.is_some() || (st.slots.is_empty() && !st.registering);
            if !zappable || !Arc::ptr_eq(&st.image, image) {
                all = false;
                continue;
            }
            unmapped += c.zap_image_pages(st, idxs.iter().copied());
        }
        image.count_unmapped(unmapped);
        let n = pass.gone.len();
        if !all {
            image.retire(pass.gone);
            return Some((n, 0));
        }
        Some((n, image.forget_gone(pass.gone)))
    })
}

/// Rounds of [`reclaim_over`] before it queues itself again.
const OVER_ROUNDS: usize = 64;

/// Clones that VMM faults took over their limits (every clone is listed;
/// those without a limit are passed over): rounds of one batch from each listed
/// clone (a clone's drop waits for one batch at most), until a round in
/// which no clone had anything to do: every one at its limit, backing off
/// (its pages all held), or evicting already (a fault's eviction that
/// leaves its clone over the limit hands it over again, as does an
/// interrupted `VMS_CLONE_SET_LIMIT`: a kick, or the retry timer while
/// the clone is backed off). The shrinker's ask goes first in each round.
/// A batch that only made pages old (`Some(0)`: the clock looks at a few
/// hundred pages per call, and a VMM's fresh pages are all young) is work
/// done, not a dry round: the next round takes them. A pass still busy
/// after [`OVER_ROUNDS`] rounds asks for another, so that clones reach
/// their limits without more faults.
fn reclaim_over(r: &ffi::Reclaim) {
    for _ in 0..OVER_ROUNDS {
        // The shrinker's ask first: reclaim is waiting for it.
        reclaim_pressure(r);
        let (mut seen, mut clones, mut busy) = (0, 1, false);
        // The first end of a back-off from a clone over its limit.
        let mut retry: Option<i64> = None;
        while seen < clones {
            let Some(((done, until), live)) = r.with_next(|c| {
                let done = c.evict(Why::Over);
                let until = if matches!(done, Ok(None)) { c.over_but_backing_off() } else { None };
                (done, until)
            }) else {
                return;
            };
            busy |= matches!(done, Ok(Some(_)));
            if let Some(t) = until {
                retry = Some(retry.map_or(t, |r| r.min(t)));
            }
            clones = live;
            seen += 1;
            ffi::cond_resched();
        }
        if !busy {
            if let Some(t) = retry {
                // Nothing else would come back for them.
                ffi::reclaim_retry_at(t + 10);
            }
            return;
        }
    }
    ffi::reclaim_kick();
}

fn inval(msg: &str) -> Result<isize> {
    pr_info!("{}\n", msg);
    Err(EINVAL)
}
