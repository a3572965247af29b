// SPDX-License-Identifier: GPL-2.0

//! userfaultfd page servers, the way VMMs stream snapshots from
//! userspace: a handler thread per registered range that answers
//! MISSING faults with `UFFDIO_COPY` from a mapping of the image file
//! (Firecracker's UFFD backend, KVM's `demand_paging_test`), or MINOR
//! faults of shmem with `UFFDIO_CONTINUE` (the page is already in the
//! page cache; only the page table entry is missing).
//!
//! The ABI (`include/uapi/linux/userfaultfd.h` of 6.12) comes from the
//! workspace's `uffd-abi` crate.

use std::io;
use std::mem::size_of;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::thread::{self, JoinHandle};

use vms_selftests::ksft::check;

use crate::diag;
use crate::mem::Mapping;

use uffd_abi::{
    UffdMsg, UffdioApi, UffdioContinue, UffdioCopy, UffdioRange, UffdioRegister, UFFDIO_API, UFFDIO_CONTINUE,
    UFFDIO_CONTINUE_BIT, UFFDIO_COPY, UFFDIO_COPY_BIT, UFFDIO_REGISTER, UFFDIO_REGISTER_MODE_MINOR,
    UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_EVENT_PAGEFAULT, UFFD_FEATURE_MINOR_SHMEM,
};

/// How faults of a registered range are answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// MISSING faults of anonymous memory, answered with `UFFDIO_COPY`
    /// of the page at the same offset of a source mapping.
    Missing,
    /// MINOR faults of shmem, answered with `UFFDIO_CONTINUE`.
    Minor,
}

/// A userfaultfd (non-blocking, close-on-exec).
pub struct Uffd {
    fd: OwnedFd,
}

/// Issues ioctl `request` on `fd` with `arg`.
///
/// # Safety
///
/// `arg` must point at the argument type of `request`, valid for the
/// kernel's reads and writes.
unsafe fn ioctl<T>(fd: &OwnedFd, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: the caller guarantees `arg` fits `request`.
    let r = unsafe {
        libc::ioctl(
            fd.as_raw_fd(),
            libc::Ioctl::from(request),
            arg as *mut T as u64,
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(())
    }
}

impl Uffd {
    /// Opens a userfaultfd and does the `UFFDIO_API` handshake, asking
    /// for what `mode` needs.
    pub fn new(mode: Mode) -> io::Result<Self> {
        // SAFETY: a plain system call without pointers.
        let fd =
            unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC | libc::O_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the syscall returned a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: match mode {
                Mode::Missing => 0,
                Mode::Minor => UFFD_FEATURE_MINOR_SHMEM,
            },
            ioctls: 0,
        };
        // SAFETY: `api` is a uffdio_api, the argument of UFFDIO_API.
        unsafe { ioctl(&fd, UFFDIO_API, &mut api) }?;
        Ok(Self { fd })
    }

    /// Registers `start..start + len` for `mode`'s faults; fails with
    /// `EOPNOTSUPP` if the range cannot answer them the way `mode` does.
    pub fn register(&self, start: u64, len: u64, mode: Mode) -> io::Result<()> {
        let (bits, need) = match mode {
            Mode::Missing => (UFFDIO_REGISTER_MODE_MISSING, UFFDIO_COPY_BIT),
            Mode::Minor => (UFFDIO_REGISTER_MODE_MINOR, UFFDIO_CONTINUE_BIT),
        };
        let mut reg = UffdioRegister {
            range: UffdioRange { start, len },
            mode: bits,
            ioctls: 0,
        };
        // SAFETY: `reg` is a uffdio_register, the argument of
        // UFFDIO_REGISTER.
        unsafe { ioctl(&self.fd, UFFDIO_REGISTER, &mut reg) }?;
        if reg.ioctls & need == 0 {
            return Err(io::Error::from_raw_os_error(libc::EOPNOTSUPP));
        }
        Ok(())
    }

    /// `UFFDIO_COPY` of one page from `src` to `dst`, retried on `EAGAIN`;
    /// returns whether it copied (false: the page was there, `EEXIST`).
    fn copy(&self, dst: u64, src: u64) -> io::Result<bool> {
        loop {
            let mut c = UffdioCopy {
                dst,
                src,
                len: PAGE,
                ..Default::default()
            };
            // SAFETY: `c` is a uffdio_copy, the argument of UFFDIO_COPY;
            // the kernel reads the page at `src` as a user copy, so a bad
            // address fails with EFAULT.
            match unsafe { ioctl(&self.fd, UFFDIO_COPY, &mut c) } {
                Ok(()) => return Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => return Err(e),
            }
        }
    }

    /// `UFFDIO_CONTINUE` of one page at `addr`, retried on `EAGAIN`;
    /// returns whether it mapped it (false: `EEXIST`).
    fn cont(&self, addr: u64) -> io::Result<bool> {
        loop {
            let mut c = UffdioContinue {
                range: UffdioRange {
                    start: addr,
                    len: PAGE,
                },
                ..Default::default()
            };
            // SAFETY: `c` is a uffdio_continue, the argument of
            // UFFDIO_CONTINUE.
            match unsafe { ioctl(&self.fd, UFFDIO_CONTINUE, &mut c) } {
                Ok(()) => return Ok(true),
                Err(e) if e.raw_os_error() == Some(libc::EEXIST) => return Ok(false),
                Err(e) if e.raw_os_error() == Some(libc::EAGAIN) => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

const PAGE: u64 = 4096;

/// What a handler did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Served {
    /// Page-fault messages read.
    pub faults: u64,
    /// Pages copied (`UFFDIO_COPY`) or mapped (`UFFDIO_CONTINUE`).
    pub resolved: u64,
    /// Faults on a page that was resolved already (`EEXIST`).
    pub exists: u64,
}

/// A handler thread serving one userfaultfd until stopped.
pub struct Handler {
    stop: OwnedFd,
    thread: Option<JoinHandle<Served>>,
}

impl Handler {
    /// Starts a thread that answers `uffd`'s faults in the range that
    /// starts at `base`: for [`Mode::Missing`] by copying the page at
    /// the same offset of `src`, for [`Mode::Minor`] with
    /// `UFFDIO_CONTINUE`.
    pub fn start(uffd: Arc<Uffd>, mode: Mode, base: u64, src: Option<Arc<Mapping>>) -> Self {
        assert_eq!(mode == Mode::Missing, src.is_some(), "a source for MISSING");
        // SAFETY: a plain system call without pointers.
        let efd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
        if efd < 0 {
            check::<(), _>(Err(io::Error::last_os_error()), "eventfd");
        }
        // SAFETY: eventfd returned a new fd that nothing else owns.
        let stop = unsafe { OwnedFd::from_raw_fd(efd) };
        let stop_raw = stop.as_raw_fd();
        let thread = thread::Builder::new()
            .name("uffd-handler".into())
            .spawn(move || serve(&uffd, mode, base, src.as_deref(), stop_raw))
            .expect("spawn a userfaultfd handler");
        Self {
            stop,
            thread: Some(thread),
        }
    }

    /// Stops the thread and returns what it did.
    pub fn stop(mut self) -> Served {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Served {
        let Some(t) = self.thread.take() else {
            return Served::default();
        };
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from `one` to our eventfd.
        let r = unsafe { libc::write(self.stop.as_raw_fd(), (&one as *const u64).cast(), 8) };
        if r != 8 {
            check::<(), _>(Err(io::Error::last_os_error()), "write eventfd");
        }
        match t.join() {
            Ok(s) => s,
            Err(p) => std::panic::resume_unwind(p),
        }
    }
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.stop_inner();
    }
}

/// The handler loop: waits for faults or the stop event, reads the
/// fault messages and answers each.
fn serve(uffd: &Uffd, mode: Mode, base: u64, src: Option<&Mapping>, stop: i32) -> Served {
    let mut served = Served::default();
    let mut msgs = [UffdMsg::default(); 16];
    loop {
        let mut fds = [
            libc::pollfd {
                fd: uffd.fd.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: stop,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is an array of 2 pollfds for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            check::<(), _>(Err(e), "poll userfaultfd");
        }
        if fds[1].revents != 0 {
            return served;
        }
        if fds[0].revents & (libc::POLLERR | libc::POLLHUP) != 0 {
            check::<(), _>(
                Err(io::Error::other("POLLERR on the userfaultfd")),
                "poll userfaultfd",
            );
        }
        // SAFETY: reads whole messages into `msgs`, which is plain data
        // valid for any bytes.
        let n = unsafe {
            libc::read(
                uffd.fd.as_raw_fd(),
                msgs.as_mut_ptr().cast(),
                size_of::<[UffdMsg; 16]>(),
            )
        };
        if n < 0 {
            let e = io::Error::last_os_error();
            if matches!(e.raw_os_error(), Some(libc::EAGAIN | libc::EINTR)) {
                continue;
            }
            check::<(), _>(Err(e), "read userfaultfd");
        }
        let n = n as usize / size_of::<UffdMsg>();
        for m in &msgs[..n] {
            if m.event != UFFD_EVENT_PAGEFAULT {
                check::<(), _>(
                    Err(io::Error::other(format!("unexpected event {:#x}", m.event))),
                    "read userfaultfd",
                );
            }
            served.faults += 1;
            diag::UFFD_FAULTS.fetch_add(1, Relaxed);
            let addr = m.arg[1] & !(PAGE - 1);
            let done = match mode {
                Mode::Missing => {
                    let src = src.expect("a source for MISSING");
                    let off = addr - base;
                    check(uffd.copy(addr, src.hva() + off), "UFFDIO_COPY")
                }
                Mode::Minor => check(uffd.cont(addr), "UFFDIO_CONTINUE"),
            };
            if done {
                served.resolved += 1;
                diag::UFFD_RESOLVED.fetch_add(1, Relaxed);
            } else {
                served.exists += 1;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The values of `<linux/userfaultfd.h>` (printed by a C program
    /// that includes it).
    #[test]
    fn ioctl_numbers_match_the_header() {
        assert_eq!(UFFDIO_API, 0xc018_aa3f);
        assert_eq!(UFFDIO_REGISTER, 0xc020_aa00);
        assert_eq!(UFFDIO_COPY, 0xc028_aa03);
        assert_eq!(UFFDIO_CONTINUE, 0xc020_aa07);
        assert_eq!(UFFD_FEATURE_MINOR_SHMEM, 0x400);
    }

    /// `offsetof(struct uffd_msg, arg.pagefault.address)` is 16.
    #[test]
    fn fault_address_is_at_byte_16() {
        let m = UffdMsg::default();
        let base = &m as *const UffdMsg as usize;
        assert_eq!(&m.arg[1] as *const u64 as usize - base, 16);
    }
}
