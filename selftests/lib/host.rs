// SPDX-License-Identifier: GPL-2.0

//! Host-side helpers: free memory (from `/proc/meminfo` and
//! `/proc/zoneinfo`), running a piece of code in a forked child to see
//! how it ends (a signal, or as another user), owned memory mappings
//! ([`Mapping`]), and a file's page cache (drop it, count its pages, tell
//! whether the file system has one to drop).

use std::fs::{self, File};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::ksft::{self, check};
use crate::vms::PAGE_SIZE;

/// A field of `/proc/meminfo` (such as `"MemFree"`), in bytes.
#[track_caller]
pub fn meminfo(field: &str) -> u64 {
    let text = check(fs::read_to_string("/proc/meminfo"), "read /proc/meminfo");
    for line in text.lines() {
        // "MemFree:         3923416 kB"
        let Some((name, rest)) = line.split_once(':') else {
            continue;
        };
        if name == field {
            let kib = rest
                .split_whitespace()
                .next()
                .and_then(|v| v.parse::<u64>().ok());
            if let Some(kib) = kib {
                return kib * 1024;
            }
        }
    }
    ksft::fail(
        std::panic::Location::caller(),
        "no such field in /proc/meminfo",
        format_args!("{field}"),
        None,
    )
}

/// Free memory in bytes: `MemFree` plus the pages on the per-CPU free
/// lists, which `MemFree` leaves out. A page freed a moment ago usually
/// goes to such a list first and can stay there (up to many MiB per CPU)
/// until the list is trimmed, so without them a test would see memory
/// "in use" that was freed.
#[track_caller]
pub fn mem_free() -> u64 {
    meminfo("MemFree") + pcp_pages() * 4096
}

/// Gives back memory the kernel keeps for reuse but does not need: empty
/// slabs of every slab cache (`/sys/kernel/slab/*/shrink`) and clean page
/// cache and dentries (`drop_caches`). A test that made many KVM VMs
/// leaves tens of MiB of empty slabs behind (measured: 44 MiB after 5,000
/// fuzz calls, all of it back after this), which a free-memory check
/// would take for a leak. Best effort: a file that cannot be written is
/// skipped.
pub fn shrink_caches() {
    if let Ok(dir) = fs::read_dir("/sys/kernel/slab") {
        for e in dir.flatten() {
            let _ = fs::write(e.path().join("shrink"), "1");
        }
    }
    let _ = fs::write("/proc/sys/vm/drop_caches", "3");
}

/// Pages on the per-CPU free lists of every zone: the sum of the
/// `count:` lines of the `pagesets` in `/proc/zoneinfo`.
#[track_caller]
pub fn pcp_pages() -> u64 {
    let text = check(fs::read_to_string("/proc/zoneinfo"), "read /proc/zoneinfo");
    text.lines()
        .filter_map(|l| l.trim_start().strip_prefix("count:"))
        .filter_map(|v| v.trim().parse::<u64>().ok())
        .sum()
}

/// Waits up to `limit` for [`mem_free`] to come back to at least
/// `start - slack` (some memory is freed after an RCU grace period or by
/// a worker), returning the last value read.
pub fn mem_free_settle(start: u64, slack: u64, limit: Duration) -> u64 {
    let t0 = Instant::now();
    loop {
        let now = mem_free();
        if now + slack >= start || t0.elapsed() >= limit {
            return now;
        }
        thread::sleep(Duration::from_millis(100));
    }
}

/// MiB, for diagnostics.
pub fn mib(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

/// How a child process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ChildEnd {
    /// It exited with this status.
    Exited(i32),
    /// A signal killed it.
    Signaled(i32),
}

/// Runs `f` in a forked child and returns how the child ended; the child
/// exits with `f`'s return value.
///
/// The child must not touch the harness: `f` should make raw system calls
/// and memory accesses only (no assertions, no allocation: the parent may
/// have other threads), and report through its return value.
#[track_caller]
pub fn fork_run(f: impl FnOnce() -> i32) -> ChildEnd {
    // SAFETY: fork has no memory-safety preconditions; the child only
    // runs `f`, which the caller keeps to async-signal-safe work, then
    // _exit()s without running destructors or atexit handlers.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        check::<(), _>(Err(std::io::Error::last_os_error()), "fork");
    }
    if pid == 0 {
        let code = f();
        // SAFETY: _exit ends the child at once; nothing runs after it.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    loop {
        // SAFETY: waits for our own child; `status` is a valid out
        // pointer.
        let r = unsafe { libc::waitpid(pid, &mut status, 0) };
        if r == pid {
            break;
        }
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::EINTR) {
            check::<(), _>(Err(e), "waitpid");
        }
    }
    if libc::WIFSIGNALED(status) {
        ChildEnd::Signaled(libc::WTERMSIG(status))
    } else {
        ChildEnd::Exited(libc::WEXITSTATUS(status))
    }
}

/// In a child of [`fork_run`]: drops every privilege by becoming user
/// and group `id` (65534 is `nobody`) with no supplementary groups.
/// Returns 0, or the errno of the call that failed.
pub fn become_user(id: u32) -> i32 {
    // SAFETY: plain system calls without pointers (setgroups with a
    // count of 0 reads no list).
    let r = unsafe {
        if libc::setgroups(0, std::ptr::null()) != 0
            || libc::setresgid(id, id, id) != 0
            || libc::setresuid(id, id, id) != 0
        {
            -1
        } else {
            0
        }
    };
    if r == 0 {
        0
    } else {
        last_errno()
    }
}

/// The calling thread's errno (no allocation).
pub fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// In a child of [`fork_run`]: disables core dumps, so that a child that
/// is meant to die of a signal leaves no core file behind.
pub fn no_core_dump() {
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit for the duration of the call.
    unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) };
}

/// Drops `file`'s pages from the page cache (`POSIX_FADV_DONTNEED`). On
/// tmpfs the file *is* its page cache and this does nothing; elsewhere
/// it drops every clean page nothing else holds.
#[track_caller]
pub fn fadvise_dontneed(file: &File) {
    // SAFETY: a plain system call on an fd we own.
    let r = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
    if r != 0 {
        check::<(), _>(Err(io::Error::from_raw_os_error(r)), "posix_fadvise");
    }
}

/// Whether files in `dir` live in memory (tmpfs or ramfs), so that their
/// page cache cannot be dropped and nothing reads ahead.
#[track_caller]
pub fn in_memory(dir: &Path) -> bool {
    const RAMFS_MAGIC: i64 = 0x8584_58f6;
    let st = check(fs_type(dir), "statfs of the image directory");
    st == libc::TMPFS_MAGIC || st == RAMFS_MAGIC
}

/// The `f_type` (file system magic) of the file system `dir` is on.
fn fs_type(dir: &Path) -> io::Result<i64> {
    let mut c = dir.as_os_str().as_bytes().to_vec();
    c.push(0);
    // SAFETY: a NUL-terminated path and a buffer statfs fills.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    // SAFETY: as above; `st` outlives the call.
    let r = unsafe { libc::statfs(c.as_ptr().cast(), &mut st) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(st.f_type as i64)
}

/// A host mapping this program owns: anonymous or of a file, unmapped on
/// drop. Accesses are volatile: a guest may change the memory.
///
/// # Invariants
///
/// `ptr` is the start of a mapping of `len` bytes, owned by this value,
/// readable (and writable if mapped so) until `inaccessible` is set.
pub struct Mapping {
    ptr: NonNull<u8>,
    len: usize,
    /// Set by [`Mapping::make_inaccessible`].
    inaccessible: AtomicBool,
}

// SAFETY: the mapping is plain memory owned like a Box<[u8]>; every
// access is a volatile copy through a raw pointer.
unsafe impl Send for Mapping {}
// SAFETY: as for Send.
unsafe impl Sync for Mapping {}

impl Mapping {
    fn mmap(len: usize, prot: i32, flags: i32, fd: i32) -> io::Result<Self> {
        // SAFETY: a new mapping at an address the kernel picks; it
        // aliases nothing of ours.
        let p = unsafe { libc::mmap(std::ptr::null_mut(), len, prot, flags, fd, 0) };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // INVARIANT: mmap succeeded: `p` maps `len` bytes.
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            len,
            inaccessible: AtomicBool::new(false),
        })
    }

    /// `len` bytes of private anonymous memory, read-write, without
    /// transparent huge pages (`MADV_NOHUGEPAGE`, as the "anonymous"
    /// backing of the KVM selftests): KVM then maps 4 KiB pages at stage
    /// 2, as it does for every other backend, and each page is a fault.
    pub fn anon(len: u64) -> io::Result<Self> {
        let m = Self::mmap(
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
        )?;
        // SAFETY: advice on our own mapping; it changes no contents.
        if unsafe { libc::madvise(m.ptr.as_ptr().cast(), m.len, libc::MADV_NOHUGEPAGE) } != 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(m)
    }

    /// The first `len` bytes of `file`, read-write, `MAP_SHARED` or
    /// `MAP_PRIVATE`.
    pub fn file(file: &File, len: u64, shared: bool) -> io::Result<Self> {
        let share = if shared {
            libc::MAP_SHARED
        } else {
            libc::MAP_PRIVATE
        };
        Self::mmap(
            len as usize,
            libc::PROT_READ | libc::PROT_WRITE,
            share | libc::MAP_NORESERVE,
            file.as_raw_fd(),
        )
    }

    /// The first `len` bytes of `file`, read-only and shared: the source
    /// a userfaultfd handler copies from.
    pub fn file_ro(file: &File, len: u64) -> io::Result<Self> {
        Self::mmap(
            len as usize,
            libc::PROT_READ,
            libc::MAP_SHARED,
            file.as_raw_fd(),
        )
    }

    /// The host address of byte 0.
    pub fn hva(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// Replaces the mapping with an inaccessible one of the same range
    /// (`mmap(PROT_NONE, MAP_FIXED)`): its pages are freed as by
    /// `munmap`, but the range stays reserved, so a memslot that still
    /// points here never reaches memory the process maps later. The
    /// accessors below refuse to run afterwards.
    #[track_caller]
    pub fn make_inaccessible(&self) {
        self.inaccessible.store(true, Ordering::SeqCst);
        // SAFETY: MAP_FIXED over our own mapping (type invariant) replaces
        // it; no reference into it exists (the accessors copy, and check
        // `inaccessible` first).
        let p = unsafe {
            libc::mmap(
                self.ptr.as_ptr().cast(),
                self.len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_FIXED | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            check::<(), _>(Err(io::Error::last_os_error()), "mmap PROT_NONE over a mapping");
        }
    }

    /// Asserts that [`Mapping::make_inaccessible`] was not called.
    fn assert_accessible(&self) {
        assert!(
            !self.inaccessible.load(Ordering::SeqCst),
            "access to a mapping made inaccessible"
        );
    }

    /// Reads the u32 at byte `off` (4-byte aligned).
    pub fn read_u32(&self, off: u64) -> u32 {
        assert!(off.is_multiple_of(4) && off + 4 <= self.len as u64);
        self.assert_accessible();
        // SAFETY: aligned and inside the mapping (type invariant), which
        // is readable: it was not made inaccessible (checked above).
        unsafe {
            self.ptr
                .as_ptr()
                .add(off as usize)
                .cast::<u32>()
                .read_volatile()
        }
    }

    /// Copies `bytes` to byte `off` (a writable mapping that no guest
    /// runs on yet).
    pub fn write(&self, off: u64, bytes: &[u8]) {
        assert!(off + bytes.len() as u64 <= self.len as u64);
        self.assert_accessible();
        // SAFETY: the destination lies inside our writable mapping (type
        // invariant; not made inaccessible, checked above) and cannot
        // overlap `bytes`, which Rust owns.
        unsafe {
            std::ptr::copy_nonoverlapping(
                bytes.as_ptr(),
                self.ptr.as_ptr().add(off as usize),
                bytes.len(),
            )
        };
    }

    /// Fills the whole mapping from `file` at offset 0 (`pread`, which
    /// writes the mapping from the kernel: no reference into it is
    /// made here).
    #[track_caller]
    pub fn fill_from(&self, file: &File) {
        self.assert_accessible();
        let mut done = 0usize;
        while done < self.len {
            let chunk = (self.len - done).min(1 << 20);
            // SAFETY: the destination lies inside our mapping (type
            // invariant), which is writable when this is called; the
            // kernel writes it like any user buffer.
            let n = unsafe {
                libc::pread(
                    file.as_raw_fd(),
                    self.ptr.as_ptr().add(done).cast(),
                    chunk,
                    done as i64,
                )
            };
            if n <= 0 {
                let e = if n == 0 {
                    io::Error::from(io::ErrorKind::UnexpectedEof)
                } else {
                    io::Error::last_os_error()
                };
                check::<(), _>(Err(e), "pread into guest memory");
            }
            done += n as usize;
        }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own the range; no reference
        // into it outlives `self`.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.len) };
    }
}

/// How many of the first `len` bytes' pages of `file` are in the page
/// cache (`mincore` of a mapping, which faults nothing in).
#[track_caller]
pub fn resident_pages(file: &File, len: u64) -> u64 {
    let m = check(Mapping::file_ro(file, len), "mmap for mincore");
    let pages = len.div_ceil(PAGE_SIZE) as usize;
    let mut vec = vec![0u8; pages];
    // SAFETY: `m` maps `len` bytes; `vec` has a byte per page of it.
    let r = unsafe { libc::mincore(m.ptr.as_ptr().cast(), len as usize, vec.as_mut_ptr()) };
    if r != 0 {
        check::<(), _>(Err(io::Error::last_os_error()), "mincore");
    }
    vec.iter().filter(|&&b| b & 1 != 0).count() as u64
}
