// SPDX-License-Identifier: GPL-2.0

//! Process plumbing that is not `/dev/vms`: reporting a `SIGBUS` from a
//! clone mapping, and waiting until the user releases a held clone.

use std::io;
use std::mem::MaybeUninit;
use std::sync::atomic::{AtomicU64, Ordering};

/// The page being touched, `page << 1 | is_write`, for the `SIGBUS`
/// handler; [`NOT_TOUCHING`] outside of touches.
static TOUCH: AtomicU64 = AtomicU64::new(NOT_TOUCHING);
const NOT_TOUCHING: u64 = u64::MAX;

/// Records that page `page` of the clone is about to be read or written,
/// so a `SIGBUS` can be reported for it.
pub fn touching(page: u64, write: bool) {
    TOUCH.store(page << 1 | u64::from(write), Ordering::Relaxed);
}

/// Records that no page is being touched any more.
pub fn touched() {
    TOUCH.store(NOT_TOUCHING, Ordering::Relaxed);
}

/// Makes a `SIGBUS` print which page of the clone the module could not
/// provide, then exit with status 1, instead of killing vmsctl with the
/// shell's terse "Bus error".
pub fn report_sigbus() -> io::Result<()> {
    // SAFETY: an all-zero `sigaction` is a valid value: no flags, empty
    // mask, and the handler set below.
    let mut act: libc::sigaction = unsafe { MaybeUninit::zeroed().assume_init() };
    act.sa_sigaction = on_sigbus as extern "C" fn(libc::c_int) as libc::sighandler_t;
    // SAFETY: `act` is initialized; the handler only does async-signal-safe
    // things (atomic load, write(2), _exit(2)).
    if unsafe { libc::sigaction(libc::SIGBUS, &act, std::ptr::null_mut()) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The `SIGBUS` handler: formats the message in a stack buffer (no
/// allocation in a handler), writes it, and exits.
extern "C" fn on_sigbus(_signo: libc::c_int) {
    let touch = TOUCH.load(Ordering::Relaxed);
    let mut buf = [0u8; 256];
    let mut len = 0;
    let mut put = |bytes: &[u8]| {
        let n = bytes.len().min(buf.len() - len);
        buf[len..len + n].copy_from_slice(&bytes[..n]);
        len += n;
    };
    if touch == NOT_TOUCHING {
        put(b"vmsctl: SIGBUS outside of the clone mapping\n");
    } else {
        put(b"vmsctl: clone: ");
        put(if touch & 1 != 0 {
            b"writing"
        } else {
            b"reading"
        });
        put(b" page ");
        let mut digits = [0u8; 20];
        let mut i = digits.len();
        let mut page = touch >> 1;
        loop {
            i -= 1;
            digits[i] = b'0' + (page % 10) as u8;
            page /= 10;
            if page == 0 {
                break;
            }
        }
        put(&digits[i..]);
        put(
            b": SIGBUS: the module could not provide the page (can it read \
              the image file? see io_errors and read_errors)\n",
        );
    }
    // SAFETY: write(2) and _exit(2) are async-signal-safe; `buf[..len]` is
    // initialized.
    unsafe {
        libc::write(libc::STDERR_FILENO, buf.as_ptr().cast(), len);
        libc::_exit(1);
    }
}

/// What ended [`wait_for_release`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Release {
    /// Standard input reached end of file or was closed.
    Eof,
    /// `SIGINT` or `SIGTERM` arrived.
    Signal(i32),
}

/// Blocks until standard input reaches end of file (or is closed), or
/// `SIGINT` or `SIGTERM` arrives; input before the end is read and thrown
/// away. The signals are caught, not fatal, while this runs.
pub fn wait_for_release() -> io::Result<Release> {
    let signals = SignalFd::new(&[libc::SIGINT, libc::SIGTERM])?;
    loop {
        let mut fds = [
            libc::pollfd {
                fd: libc::STDIN_FILENO,
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: signals.fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: `fds` is a valid array of two pollfds for the call.
        let r = unsafe { libc::poll(fds.as_mut_ptr(), 2, -1) };
        if r < 0 {
            let e = io::Error::last_os_error();
            if e.kind() == io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if fds[1].revents & libc::POLLIN != 0 {
            return signals.read().map(Release::Signal);
        }
        let stdin = fds[0].revents;
        if stdin & libc::POLLNVAL != 0 {
            return Ok(Release::Eof);
        }
        if stdin & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0 {
            let mut buf = [0u8; 4096];
            // SAFETY: `buf` is writable for its length.
            let n = unsafe { libc::read(libc::STDIN_FILENO, buf.as_mut_ptr().cast(), buf.len()) };
            if n == 0 {
                return Ok(Release::Eof);
            }
            if n < 0 {
                let e = io::Error::last_os_error();
                match e.kind() {
                    io::ErrorKind::Interrupted | io::ErrorKind::WouldBlock => {}
                    // An unreadable stdin cannot hold the clone any longer.
                    _ => return Ok(Release::Eof),
                }
            }
        }
    }
}

/// A `signalfd` for some signals, which are blocked while it lives.
///
/// # Invariants
///
/// `fd` is an open signalfd that only this value closes; `old` is the
/// signal mask to restore.
struct SignalFd {
    fd: libc::c_int,
    old: libc::sigset_t,
}

impl SignalFd {
    /// Blocks `signals` in this thread and opens a signalfd for them.
    /// vmsctl is single-threaded, so no other thread takes them instead.
    fn new(signals: &[libc::c_int]) -> io::Result<Self> {
        let mut set = MaybeUninit::<libc::sigset_t>::uninit();
        let mut old = MaybeUninit::<libc::sigset_t>::uninit();
        // SAFETY: sigemptyset initializes `set`; sigaddset then takes valid
        // signal numbers.
        let set = unsafe {
            libc::sigemptyset(set.as_mut_ptr());
            for &s in signals {
                libc::sigaddset(set.as_mut_ptr(), s);
            }
            set.assume_init()
        };
        // SAFETY: `set` is initialized; `old` is written by the call.
        let r = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, old.as_mut_ptr()) };
        if r != 0 {
            return Err(io::Error::from_raw_os_error(r));
        }
        // SAFETY: pthread_sigmask succeeded, so it wrote `old`.
        let old = unsafe { old.assume_init() };
        // SAFETY: `set` is initialized; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC) };
        if fd < 0 {
            let e = io::Error::last_os_error();
            // SAFETY: restores the mask pthread_sigmask returned.
            unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
            return Err(e);
        }
        // INVARIANT: a new signalfd, owned here, and the previous mask.
        Ok(Self { fd, old })
    }

    /// Reads one pending signal; returns its number.
    fn read(&self) -> io::Result<i32> {
        let mut info = MaybeUninit::<libc::signalfd_siginfo>::uninit();
        let size = size_of::<libc::signalfd_siginfo>();
        // SAFETY: `info` is writable for `size` bytes; `self.fd` is open by
        // the type invariant.
        let n = unsafe { libc::read(self.fd, info.as_mut_ptr().cast(), size) };
        if n != size as isize {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the read filled all of `info`.
        let info = unsafe { info.assume_init() };
        Ok(info.ssi_signo as i32)
    }
}

impl Drop for SignalFd {
    fn drop(&mut self) {
        // SAFETY: by the type invariant, `fd` is ours to close and `old`
        // is the mask to restore. A signal that arrived but was not read
        // stays pending and is delivered (default action) on unblocking.
        unsafe {
            libc::close(self.fd);
            libc::pthread_sigmask(libc::SIG_SETMASK, &self.old, std::ptr::null_mut());
        }
    }
}
