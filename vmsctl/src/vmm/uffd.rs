// SPDX-License-Identifier: GPL-2.0

//! A userfaultfd page server for a clone's memory, for benchmarks only
//! (`vmsctl run --baseline uffd`): what a VMM without vms does to start
//! from a snapshot's memory file without reading all of it (Firecracker's
//! UFFD backend), with REAP's prefetch (ASPLOS'21): the recorded working
//! set is read (all of its runs' I/O started at once with `readahead(2)`,
//! then read in sorted runs) and copied in (`UFFDIO_COPY`) before the VM
//! runs; every other page is read from the file and copied in when the
//! guest, KVM or the VMM first touches it (a MISSING fault of anonymous
//! memory, served by a thread).
//!
//! The ABI comes from the workspace's `uffd-abi` crate (why not the
//! `userfaultfd` crate: see there).

use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::FileExt;

use anyhow::{Context, Result};

use super::workingset::WorkingSet;

use uffd_abi::{
    UffdMsg, UffdioApi, UffdioCopy, UffdioRange, UffdioRegister, UFFDIO_API, UFFDIO_COPY, UFFDIO_REGISTER,
    UFFDIO_REGISTER_MODE_MISSING, UFFD_API, UFFD_EVENT_PAGEFAULT,
};

const PAGE: u64 = 4096;

/// `ioctl(fd, request, arg)`.
///
/// # Safety
///
/// `arg` must be the argument type of `request`.
unsafe fn ioctl<T>(fd: &OwnedFd, request: u32, arg: &mut T) -> io::Result<()> {
    // SAFETY: guaranteed by the caller; `fd` is open.
    if unsafe { libc::ioctl(fd.as_raw_fd(), request as libc::Ioctl, arg as *mut T) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Copies `buf` into the registered memory at `dst` (`UFFDIO_COPY`); a
/// page some other copy put there first (EEXIST) is fine.
fn copy(uffd: &OwnedFd, dst: u64, buf: &[u8]) -> io::Result<()> {
    let mut c = UffdioCopy { dst, src: buf.as_ptr() as u64, len: buf.len() as u64, ..Default::default() };
    // SAFETY: a UffdioCopy for UFFDIO_COPY; the kernel reads `buf`'s
    // bytes and writes only into the registered range and `c.copy`.
    match unsafe { ioctl(uffd, UFFDIO_COPY, &mut c) } {
        Err(e) if e.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        r => r,
    }
}

/// Serves the memory at `addr` (`size` bytes of anonymous memory that
/// nothing has touched yet) from `file`, page 0 at `mem_offset`: copies
/// `set`'s pages in first (REAP's prefetch; returns how many), then
/// starts the thread that serves every other page on its first touch.
/// The thread runs until the process ends.
pub fn serve(addr: u64, size: u64, file: File, mem_offset: u64, set: Option<&WorkingSet>) -> Result<u64> {
    // SAFETY: userfaultfd(2) with flags only; it returns a new descriptor.
    let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, libc::O_CLOEXEC) };
    if fd < 0 {
        return Err(io::Error::last_os_error()).context("userfaultfd(2)");
    }
    // SAFETY: a descriptor we just got and own.
    let uffd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
    let mut api = UffdioApi { api: UFFD_API, ..Default::default() };
    // SAFETY: a UffdioApi for UFFDIO_API.
    unsafe { ioctl(&uffd, UFFDIO_API, &mut api) }.context("UFFDIO_API")?;
    let mut reg = UffdioRegister {
        range: UffdioRange { start: addr, len: size },
        mode: UFFDIO_REGISTER_MODE_MISSING,
        ..Default::default()
    };
    // SAFETY: a UffdioRegister for UFFDIO_REGISTER, over our own mapping.
    unsafe { ioctl(&uffd, UFFDIO_REGISTER, &mut reg) }.context("UFFDIO_REGISTER")?;
    let mut prefetched = 0;
    if let Some(set) = set {
        // One large read of the whole set, as REAP reads its working-set
        // file: every run's I/O is started before the first is waited for.
        for &(first, n) in &set.read_runs() {
            // SAFETY: readahead(2) on a descriptor we own.
            unsafe { libc::readahead(file.as_raw_fd(), (mem_offset + first * PAGE) as i64, (n * PAGE) as usize) };
        }
        let mut buf = Vec::new();
        for (first, n) in set.read_runs() {
            buf.resize((n * PAGE) as usize, 0);
            file.read_exact_at(&mut buf, mem_offset + first * PAGE).context("reading the working set")?;
            copy(&uffd, addr + first * PAGE, &buf).context("UFFDIO_COPY of the working set")?;
            prefetched += n;
        }
    }
    std::thread::Builder::new()
        .name("vms-uffd".into())
        .spawn(move || {
            let mut page = vec![0u8; PAGE as usize];
            loop {
                let mut msg = UffdMsg::default();
                // SAFETY: reads one uffd_msg into `msg`, of its size.
                let n = unsafe {
                    libc::read(uffd.as_raw_fd(), (&mut msg as *mut UffdMsg).cast(), std::mem::size_of::<UffdMsg>())
                };
                if n != std::mem::size_of::<UffdMsg>() as isize {
                    if io::Error::last_os_error().raw_os_error() == Some(libc::EINTR) {
                        continue;
                    }
                    eprintln!("vmsctl: userfaultfd server: read: {}", io::Error::last_os_error());
                    return;
                }
                if msg.event != UFFD_EVENT_PAGEFAULT {
                    continue;
                }
                let at = msg.address() & !(PAGE - 1);
                let r = file
                    .read_exact_at(&mut page, mem_offset + (at - addr))
                    .and_then(|()| copy(&uffd, at, &page));
                if let Err(e) = r {
                    // The faulting thread would wait for ever: end the VM.
                    eprintln!("vmsctl: userfaultfd server: page at {at:#x}: {e}");
                    std::process::exit(1);
                }
            }
        })
        .context("starting the userfaultfd server")?;
    Ok(prefetched)
}
