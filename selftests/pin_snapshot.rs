// SPDX-License-Identifier: GPL-2.0

//! pin_snapshot: `VMS_IMAGE_SNAPSHOT` never puts into the live image a
//! page that someone goes on writing without the page tables.
//!
//! A GUP pin for writing (O_DIRECT reads into guest memory,
//! `process_vm_writev`, io_uring) or a page reference such as
//! `kvm_vcpu_map()`'s writes the page itself, whatever the clone's
//! mappings say. If the snapshot moved such a page into the image, the
//! image, which is immutable, would change under every other clone of it.
//!
//! - `pinned_page_is_copied` (deterministic): a thread calls
//!   `process_vm_writev()` on this process, from a userfaultfd-registered
//!   (MISSING) page to one page of clone A's mapping. The kernel pins A's
//!   page for writing, which makes it private, then stalls on the
//!   userfault while copying. With the pin held the test snapshots A into
//!   "live", reads the page through clone B of "live", then resolves the
//!   fault with new bytes. B must still read what it read before (the
//!   page at the snapshot), and A the new bytes. A second snapshot, with
//!   no pin left, takes the page with the new bytes.
//! - `io_uring_fixed_buffers_refused`: registering a clone mapping as
//!   io_uring fixed buffers (a long-term pin for writing) is refused, as
//!   GUP refuses `FOLL_LONGTERM | FOLL_WRITE` on a shared mapping whose
//!   `vm_ops` has `page_mkwrite`. Skips without `CONFIG_IO_URING`.
//! - `o_direct_reads_race_snapshots` (probabilistic): threads do O_DIRECT
//!   reads from a file on an ext4 disk into their own regions of a clone
//!   mapping, without pause, while the test takes snapshots; a clone of
//!   each snapshot reads the same bytes right after the snapshot and
//!   again once the reads have stopped, and the clone holds what each
//!   thread read last. Skips without a disk (`scripts/vm --disk`, which
//!   sets `VMS_DISK`).
//!
//! Skips if `/dev/vms` is missing.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::panic::{self, AssertUnwindSafe};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Duration;

use vms_selftests::host::Mapping;
use vms_selftests::ksft::{self, check, Test, Watchdog};
use vms_selftests::vms::{
    image_create, image_create_empty, image_snapshot, pattern_page, unique_name, vms_open,
    CloneMap, Image, ImageFile, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 64 KiB pattern image for the deterministic subtests.
const PAGES: u64 = 16;
/// The page the pinned writer writes.
const PINNED: u64 = 5;
/// The bytes the writer writes, unlike any pattern page.
const NEW_BYTE: u8 = 0xc3;

// userfaultfd's ABI comes from the workspace's `uffd-abi` crate;
// bench/src/uffd.rs has a full page server, one fault is all this test
// needs.
use uffd_abi::{
    UffdMsg, UffdioApi, UffdioCopy, UffdioRange, UffdioRegister, UFFDIO_API, UFFDIO_COPY, UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_EVENT_PAGEFAULT,
};

/// Issues ioctl `request` on `fd` with `arg`.
///
/// # Safety
///
/// `arg` must be the argument type of `request`.
unsafe fn ioctl<T>(fd: &OwnedFd, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees that `arg` fits `request`.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::Ioctl::from(request), arg as *mut T) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

/// A userfaultfd (blocking) that handles faults from the kernel too: a
/// copy from user memory inside `process_vm_writev()` must wait on it.
struct Uffd(OwnedFd);

impl Uffd {
    #[track_caller]
    fn new() -> Self {
        // SAFETY: a system call without pointers. No UFFD_USER_MODE_ONLY:
        // the fault to catch is the kernel's; the test runs as root.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            if e.raw_os_error() == Some(libc::ENOSYS) {
                ksft::skip("no userfaultfd (CONFIG_USERFAULTFD)");
            }
            check::<(), _>(Err(e), "userfaultfd");
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            ..Default::default()
        };
        // SAFETY: `api` is a uffdio_api, the argument of UFFDIO_API.
        check(unsafe { ioctl(&fd, UFFDIO_API, &mut api) }, "UFFDIO_API");
        Self(fd)
    }

    /// Registers `m`'s first page for MISSING faults.
    #[track_caller]
    fn register(&self, m: &Mapping) {
        let mut reg = UffdioRegister {
            range: UffdioRange { start: m.hva(), len: PAGE_SIZE },
            mode: UFFDIO_REGISTER_MODE_MISSING,
            ..Default::default()
        };
        // SAFETY: `reg` is a uffdio_register, the argument of
        // UFFDIO_REGISTER.
        check(
            unsafe { ioctl(&self.0, UFFDIO_REGISTER, &mut reg) },
            "UFFDIO_REGISTER",
        );
    }

    /// The address of the next page fault, waiting up to `limit`.
    fn wait_fault(&self, limit: Duration) -> io::Result<u64> {
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd, for the call.
        let r = unsafe { libc::poll(&mut pfd, 1, limit.as_millis() as i32) };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
        if r == 0 {
            return Err(io::Error::new(io::ErrorKind::TimedOut, "no userfault"));
        }
        let mut msg = UffdMsg::default();
        // SAFETY: reads one message into `msg`, plain data valid for any
        // bytes.
        let n = unsafe {
            libc::read(
                self.0.as_raw_fd(),
                (&mut msg as *mut UffdMsg).cast(),
                size_of::<UffdMsg>(),
            )
        };
        if n != size_of::<UffdMsg>() as isize {
            return Err(io::Error::last_os_error());
        }
        if msg.event != UFFD_EVENT_PAGEFAULT {
            return Err(io::Error::other(format!("event {:#x}", msg.event)));
        }
        Ok(msg.address())
    }

    /// Resolves the fault on `dst` (page aligned) with a copy of `src`.
    fn copy(&self, dst: u64, src: &[u8]) -> io::Result<()> {
        assert_eq!(src.len() as u64, PAGE_SIZE);
        let mut c = UffdioCopy {
            dst,
            src: src.as_ptr() as u64,
            len: PAGE_SIZE,
            ..Default::default()
        };
        // SAFETY: `c` is a uffdio_copy, the argument of UFFDIO_COPY; the
        // kernel reads `src`'s page, which lives across the call.
        unsafe { ioctl(&self.0, UFFDIO_COPY, &mut c) }
    }
}

/// `process_vm_writev()` of `len` bytes from `from` to `to` in this
/// process: the bytes written, or the errno.
fn write_own_memory(from: u64, to: u64, len: u64) -> Result<isize, i32> {
    let local = libc::iovec {
        iov_base: from as *mut libc::c_void,
        iov_len: len as usize,
    };
    let remote = libc::iovec {
        iov_base: to as *mut libc::c_void,
        iov_len: len as usize,
    };
    // SAFETY: the kernel reads `from` and writes `to` as another process
    // would (checking both); the iovecs live across the call.
    let n = unsafe { libc::process_vm_writev(libc::getpid(), &local, 1, &remote, 1, 0) };
    if n < 0 {
        Err(io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(n)
    }
}

/// Where page `got` first differs from `want`, as a message.
fn page_diff(got: &[u8], want: &[u8]) -> Option<String> {
    let i = got.iter().zip(want).position(|(a, b)| a != b)?;
    Some(format!(
        "byte {i}: read {:#04x}, want {:#04x}",
        got[i], want[i]
    ))
}

fn pinned_page_is_copied() {
    if write_own_memory(0, 0, 0) == Err(libc::ENOSYS) {
        ksft::skip("no process_vm_writev (CONFIG_CROSS_MEMORY_ATTACH)");
    }
    let dev = vms_open();
    let name = unique_name("pin_snap");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let base = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let clone_a = base.clone_create();
    let map_a = clone_a.map();
    let src = check(Mapping::anon(PAGE_SIZE), "mmap the writer's source page");
    let uffd = Uffd::new();
    uffd.register(&src);
    let new_bytes = vec![NEW_BYTE; PAGE_SIZE as usize];
    let at_snapshot = pattern_page(PINNED);
    let live_name = unique_name("pin_live");

    let _wd = Watchdog::start("pinned_page_is_copied", Duration::from_secs(120));
    let mut live = None;
    let mut b_before = Vec::new();
    let written = thread::scope(|s| {
        let (from, to) = (src.hva(), map_a.hva() + PINNED * PAGE_SIZE);
        let writer = s.spawn(move || write_own_memory(from, to, PAGE_SIZE));
        // The writer waits on the userfault until it is resolved below,
        // whatever fails in between: catch that, resolve, then report.
        let held = panic::catch_unwind(AssertUnwindSafe(|| {
            let fault = check(
                uffd.wait_fault(Duration::from_secs(30)),
                "wait for the userfault",
            );
            test_assert_eq!(
                fault & !(PAGE_SIZE - 1),
                src.hva(),
                "the fault is on the source page"
            );
            let a = clone_a.stats();
            ksft::ksft_print_msg(&format!("pinned: A {a:?}"));
            test_assert_eq!(a.private_pages, 1, "the pin made A's page private");
            let image = image_snapshot(&dev, &live_name, &clone_a);
            ksft::ksft_print_msg(&format!(
                "after the snapshot: A {:?}\nlive {:?}",
                clone_a.stats(),
                image.info()
            ));
            b_before = image.clone_create().map().read_page(PINNED);
            live = Some(image);
        }));
        // Fills the source page and wakes the writer (if it never faulted,
        // this only fills the page).
        let resolved = uffd.copy(src.hva(), &new_bytes);
        let written = writer.join().expect("the writer thread");
        if let Err(p) = held {
            panic::resume_unwind(p);
        }
        check(resolved, "UFFDIO_COPY");
        written
    });
    test_assert_eq!(written, Ok(PAGE_SIZE as isize), "process_vm_writev");
    let live = live.expect("the snapshot was taken");

    test_assert_eq!(
        page_diff(&b_before, &at_snapshot),
        None,
        "B, before the write"
    );
    let clone_b = live.clone_create();
    let map_b = clone_b.map();
    test_assert_eq!(
        page_diff(&map_b.read_page(PINNED), &at_snapshot),
        None,
        "the pinned write reached the live image, under clone B"
    );
    test_assert_eq!(
        page_diff(&map_a.read_page(PINNED), &new_bytes),
        None,
        "A, its own write"
    );
    for p in (0..PAGES).filter(|&p| p != PINNED) {
        test_assert_eq!(
            page_diff(&map_b.read_page(p), &pattern_page(p)),
            None,
            "B, page {p}"
        );
    }

    // The pin is gone: the next snapshot takes A's page as it is.
    let live2 = image_snapshot(&dev, &unique_name("pin_live2"), &clone_a);
    let a = clone_a.stats();
    ksft::ksft_print_msg(&format!(
        "second snapshot: A {a:?}\nlive2 {:?}",
        live2.info()
    ));
    test_assert_eq!(a.private_pages, 0, "no page held: every page moved");
    let clone_c = live2.clone_create();
    test_assert_eq!(
        page_diff(&clone_c.map().read_page(PINNED), &new_bytes),
        None,
        "C"
    );

    drop((clone_c, map_b, clone_b, map_a, clone_a));
    live2.delete();
    live.delete();
    base.delete();
}

// io_uring's ABI (include/uapi/linux/io_uring.h).
const IORING_REGISTER_BUFFERS: u32 = 0;
/// `sizeof(struct io_uring_params)`.
const IO_URING_PARAMS_SIZE: usize = 120;

fn io_uring_fixed_buffers_refused() {
    let mut params = [0u8; IO_URING_PARAMS_SIZE];
    // SAFETY: io_uring_setup reads and writes `params`, an io_uring_params
    // of zeroes (no flags).
    let fd = unsafe { libc::syscall(libc::SYS_io_uring_setup, 4u32, params.as_mut_ptr()) };
    if fd < 0 {
        match io::Error::last_os_error().raw_os_error() {
            Some(libc::ENOSYS) => ksft::skip("no io_uring (CONFIG_IO_URING)"),
            Some(libc::EPERM) => ksft::skip("io_uring disabled (kernel.io_uring_disabled)"),
            e => check::<(), _>(
                Err(io::Error::from_raw_os_error(e.unwrap_or(0))),
                "io_uring_setup",
            ),
        }
    }
    // SAFETY: the syscall returned a new fd that nothing else owns.
    let ring = unsafe { OwnedFd::from_raw_fd(fd as i32) };

    let dev = vms_open();
    let name = unique_name("pin_uring");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    // One page written (private), the others still the image's.
    map.write_u32(0, 1);
    let iov = libc::iovec {
        iov_base: map.hva() as *mut libc::c_void,
        iov_len: (4 * PAGE_SIZE) as usize,
    };
    // SAFETY: the kernel reads one iovec from `iov`.
    let r = unsafe {
        libc::syscall(
            libc::SYS_io_uring_register,
            ring.as_raw_fd(),
            IORING_REGISTER_BUFFERS,
            &iov as *const libc::iovec,
            1u32,
        )
    };
    let errno = io::Error::last_os_error().raw_os_error().unwrap_or(0);
    ksft::ksft_print_msg(&format!(
        "IORING_REGISTER_BUFFERS over a clone mapping: {}",
        if r < 0 {
            ksft::strerror(errno)
        } else {
            "accepted".into()
        }
    ));
    // Accepted, the ring could write the clone's pages at any time, for
    // as long as they stay registered.
    test_assert!(
        r < 0,
        "a long-term writable pin of a clone mapping was accepted"
    );
    test_assert!(
        errno == libc::EFAULT || errno == libc::EOPNOTSUPP,
        "refused with an unexpected errno {errno}"
    );
    test_assert_eq!(
        clone.stats().private_pages,
        1,
        "the refused pin made nothing private"
    );
    drop((ring, map, clone));
    image.delete();
}

/// Threads doing O_DIRECT reads.
const READERS: u64 = 4;
/// Pages each reader reads at once, into its own region of the clone.
const REGION: u64 = 64;
/// Versions of a region in the file; successive reads alternate them.
const VERSIONS: u64 = 3;
/// Snapshots taken while the readers read.
const ROUNDS: usize = 20;

/// Word `w` of page `page` of version `v` in the O_DIRECT file.
fn version_word(v: u64, page: u64, w: u64) -> u32 {
    0xd000_0000 | (v << 20) as u32 | (page << 10) as u32 | w as u32
}

/// Word 2 of each page of the clone, through `map`: an O_DIRECT read
/// writes whole pages, and one word a page makes the first read after a
/// snapshot short, so that it comes before more of the I/O in flight.
fn words(map: &CloneMap) -> Vec<u32> {
    (0..READERS * REGION)
        .map(|p| map.read_u32(p * PAGE_SIZE + 8))
        .collect()
}

fn o_direct_reads_race_snapshots() {
    let Some(dir) = std::env::var_os("VMS_DISK")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
    else {
        ksft::skip("no disk (scripts/vm --disk sets VMS_DISK)");
    };
    let path = dir.join(format!("pin_snapshot-{}.dat", std::process::id()));
    let mut data = Vec::with_capacity((VERSIONS * REGION * PAGE_SIZE) as usize);
    for v in 0..VERSIONS {
        for p in 0..REGION {
            for w in 0..PAGE_SIZE / 4 {
                data.extend_from_slice(&version_word(v, p, w).to_le_bytes());
            }
        }
    }
    {
        let f = check(File::create(&path), "create the O_DIRECT file");
        check(f.write_all_at(&data, 0), "write the O_DIRECT file");
        check(f.sync_all(), "fsync the O_DIRECT file");
    }
    let direct = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&path);
    let _ = fs::remove_file(&path);
    let direct = match direct {
        Ok(f) => f,
        Err(e) if e.raw_os_error() == Some(libc::EINVAL) => ksft::skip("no O_DIRECT on VMS_DISK"),
        Err(e) => check(Err(e), "open O_DIRECT"),
    };

    let dev = vms_open();
    let name = unique_name("pin_odirect");
    let base = image_create_empty(&dev, &name, READERS * REGION * PAGE_SIZE);
    let clone = base.clone_create();
    let map = clone.map();
    let mut snaps: Vec<Image> = Vec::new();
    let (mut changed, mut reads_total) = (0, 0u64);
    let _wd = Watchdog::start("o_direct_reads_race_snapshots", Duration::from_secs(240));
    for round in 0..ROUNDS {
        let stop = AtomicBool::new(false);
        let (first, last_versions) = thread::scope(|s| {
            let readers: Vec<_> = (0..READERS)
                .map(|t| {
                    let (stop, direct, map) = (&stop, &direct, &map);
                    s.spawn(move || {
                        let (mut n, mut last) = (0u64, None);
                        while !stop.load(Ordering::Relaxed) {
                            let v = (t + n) % VERSIONS;
                            let buf = map.hva() + t * REGION * PAGE_SIZE;
                            let len = (REGION * PAGE_SIZE) as usize;
                            // SAFETY: `buf..buf + len` is this reader's
                            // region of the clone mapping, which outlives
                            // the scope; the kernel writes it as user memory.
                            let r = unsafe {
                                libc::pread(
                                    direct.as_raw_fd(),
                                    buf as *mut libc::c_void,
                                    len,
                                    (v * REGION * PAGE_SIZE) as i64,
                                )
                            };
                            if r != len as isize {
                                return Err(format!("pread: {r}, {}", io::Error::last_os_error()));
                            }
                            last = Some(v);
                            n += 1;
                        }
                        Ok((n, last))
                    })
                })
                .collect();
            // The readers read until `stop`: whatever fails here, stop
            // them before reporting it.
            let taken = panic::catch_unwind(AssertUnwindSafe(|| {
                thread::sleep(Duration::from_millis(2 + (round as u64 * 7) % 20));
                let image = image_snapshot(&dev, &format!("{name}.{round}"), &clone);
                let first = words(&image.clone_create().map());
                snaps.push(image);
                thread::sleep(Duration::from_millis(20));
                first
            }));
            stop.store(true, Ordering::Relaxed);
            let last: Vec<_> = readers
                .into_iter()
                .map(|r| r.join().expect("a reader thread"))
                .collect();
            match taken {
                Ok(first) => (first, last),
                Err(p) => panic::resume_unwind(p),
            }
        });
        let again = words(&snaps[round].clone_create().map());
        let diff = first.iter().zip(&again).position(|(a, b)| a != b);
        if let Some(i) = diff {
            changed += 1;
            ksft::ksft_print_msg(&format!(
                "round {round}: snapshot changed at clone page {i}: {:#x} -> {:#x}",
                first[i], again[i]
            ));
        }
        for (t, r) in last_versions.iter().enumerate() {
            test_assert!(r.is_ok(), "reader {t}: {r:?}");
            let &Ok((n, last)) = r else { continue };
            reads_total += n;
            let Some(v) = last else { continue };
            let t = t as u64;
            for p in 0..REGION {
                let off = (t * REGION + p) * PAGE_SIZE;
                test_assert_eq!(
                    map.read_u32(off + 8),
                    version_word(v, p, 2),
                    "reader {t}'s last read, page {p}"
                );
            }
        }
    }
    ksft::ksft_print_msg(&format!(
        "{ROUNDS} snapshots with {READERS} O_DIRECT readers ({reads_total} reads): {changed} changed afterwards"
    ));
    test_assert_eq!(changed, 0, "snapshots changed after they were taken");
    drop((map, clone));
    for image in snaps.into_iter().rev() {
        image.delete();
    }
    base.delete();
}

fn main() {
    ksft::init();
    drop(vms_open());
    ksft::run(&[
        Test::new("pinned_page_is_copied", pinned_page_is_copied),
        Test::new(
            "io_uring_fixed_buffers_refused",
            io_uring_fixed_buffers_refused,
        ),
        Test::new(
            "o_direct_reads_race_snapshots",
            o_direct_reads_race_snapshots,
        ),
    ]);
}
