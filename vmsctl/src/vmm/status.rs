// SPDX-License-Identifier: GPL-2.0

//! What the VM is doing, as the VMM's threads learn it: the guest said it
//! is ready, the guest panicked, and why the VM stopped. Written by the
//! vCPU threads (device emulation, exits) and read by the thread that
//! runs the VM.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

/// The line the guest's init prints on the console once it runs and its
/// agent listens.
pub const READY_MARKER: &str = "vms-guest: ready";
/// What Linux prints when it panics (then reboots, with `panic=1`).
const PANIC_MARKER: &str = "Kernel panic - not syncing";
/// What Linux prints as its last words when it halts or powers off (this
/// machine has no ACPI, so a power off becomes a halt): the guest is done.
const HALT_MARKERS: [&str; 3] = [
    "reboot: System halted",
    "reboot: Power off not available: System halted instead",
    "reboot: Power down",
];

/// Why a VM stopped.
#[derive(Debug)]
pub enum Stop {
    /// The guest reset the machine through the keyboard controller (how
    /// Linux reboots with `reboot=k`).
    Reset,
    /// The guest halted or powered off (`poweroff`, `halt`).
    PowerOff,
    /// A triple fault (KVM_EXIT_SHUTDOWN): a reset, either asked for
    /// (`reboot=t`) or a crash too early for a panic message.
    TripleFault,
    /// The guest kernel panicked (the message) and then reset.
    Panic(String),
    /// The VMM stopped the VM (e.g. after an error of its own).
    Requested,
    /// A vCPU failed: an exit the VMM cannot handle, or a KVM error.
    Failed(anyhow::Error),
}

impl Stop {
    /// Whether the guest ended the way a guest may end.
    pub fn is_clean(&self) -> bool {
        matches!(self, Stop::Reset | Stop::PowerOff | Stop::TripleFault)
    }
}

impl fmt::Display for Stop {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Stop::Reset => write!(f, "the guest rebooted (i8042 reset)"),
            Stop::PowerOff => write!(f, "the guest powered off"),
            Stop::TripleFault => write!(f, "the guest reset by triple fault (KVM_EXIT_SHUTDOWN)"),
            Stop::Panic(line) => write!(f, "the guest kernel panicked: {line}"),
            Stop::Requested => write!(f, "stopped by vmsctl"),
            Stop::Failed(e) => write!(f, "{e:#}"),
        }
    }
}

/// The VM's status, shared by its threads.
pub struct Status {
    started: Instant,
    /// Set once a stop is decided; vCPU threads check it before each
    /// KVM_RUN.
    stopping: AtomicBool,
    inner: Mutex<Inner>,
    changed: Condvar,
}

#[derive(Default)]
struct Inner {
    /// When the guest printed [`READY_MARKER`], since `started`.
    ready_after: Option<Duration>,
    /// The guest's panic message, if it panicked.
    panic: Option<String>,
    /// Why the VM stops; the first reason wins. Taken by [`Status::wait`].
    stop: Option<Stop>,
}

impl Status {
    /// A VM that starts now.
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            stopping: AtomicBool::new(false),
            inner: Mutex::new(Inner::default()),
            changed: Condvar::new(),
        }
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        // A panicking thread cannot leave Inner inconsistent: every
        // update is a single assignment.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Decides that the VM stops, for `why`, unless it already stops for
    /// another reason. A reset after a panic is reported as the panic.
    pub fn stop(&self, why: Stop) {
        let mut inner = self.lock();
        if self.stopping.swap(true, Ordering::SeqCst) {
            return;
        }
        inner.stop = Some(match (why, inner.panic.take()) {
            (Stop::Reset | Stop::TripleFault, Some(line)) => Stop::Panic(line),
            (why, _) => why,
        });
        self.changed.notify_all();
    }

    /// Whether the VM stops.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    /// Looks at one line the guest printed on its console.
    pub fn console_line(&self, line: &str) {
        if line.contains(READY_MARKER) {
            let mut inner = self.lock();
            inner.ready_after.get_or_insert(self.started.elapsed());
            self.changed.notify_all();
        } else if let Some(at) = line.find(PANIC_MARKER) {
            self.lock().panic.get_or_insert(line[at..].trim_end().to_owned());
        } else if HALT_MARKERS.iter().any(|m| line.contains(m)) {
            self.stop(Stop::PowerOff);
        }
    }

    /// Waits until the guest is ready; returns how long it took from the
    /// start. Fails if the VM stops first or `timeout` passes.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        let deadline = Instant::now() + timeout;
        let mut inner = self.lock();
        loop {
            if let Some(after) = inner.ready_after {
                return Ok(after);
            }
            if self.is_stopping() {
                bail!("the VM stopped before the guest was ready");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                bail!(
                    "the guest did not print {READY_MARKER:?} within {} s",
                    timeout.as_secs()
                );
            }
            inner = self
                .changed
                .wait_timeout(inner, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }

    /// Waits until the VM stops, at most `timeout` if given; returns why
    /// (once: a second call after a stop returns [`Stop::Requested`]), or
    /// `None` on timeout.
    pub fn wait(&self, timeout: Option<Duration>) -> Option<Stop> {
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut inner = self.lock();
        while !self.is_stopping() {
            inner = match deadline {
                None => self.changed.wait(inner).unwrap_or_else(|e| e.into_inner()),
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return None;
                    }
                    self.changed
                        .wait_timeout(inner, left)
                        .unwrap_or_else(|e| e.into_inner())
                        .0
                }
            };
        }
        Some(inner.stop.take().unwrap_or(Stop::Requested))
    }
}

impl Default for Status {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_stop_wins() {
        let s = Status::new();
        s.stop(Stop::PowerOff);
        s.stop(Stop::Reset);
        assert!(s.is_stopping());
        assert!(matches!(s.wait(None), Some(Stop::PowerOff)));
    }

    #[test]
    fn a_reset_after_a_panic_is_a_panic() {
        let s = Status::new();
        s.console_line("[    1.0] Kernel panic - not syncing: No working init found.\r");
        s.stop(Stop::Reset);
        match s.wait(Some(Duration::ZERO)) {
            Some(Stop::Panic(line)) => {
                assert_eq!(line, "Kernel panic - not syncing: No working init found.")
            }
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn ready_and_halt_come_from_the_console() {
        let s = Status::new();
        assert!(s.wait_ready(Duration::ZERO).is_err());
        s.console_line("vms-guest: ready");
        assert!(s.wait_ready(Duration::ZERO).is_ok());
        assert!(s.wait(Some(Duration::ZERO)).is_none());
        s.console_line("[   12.3] reboot: Power off not available: System halted instead");
        assert!(matches!(s.wait(None), Some(Stop::PowerOff)));
        assert!(Stop::PowerOff.is_clean());
    }
}
