// SPDX-License-Identifier: GPL-2.0

//! The module's debug knobs, `/sys/kernel/debug/vms` (docs/ARCHITECTURE.md,
//! "Debug instruments"): u32 files that make a VMM fault sleep at a chosen
//! point, so that a test holds a race window open instead of hoping to hit
//! it.
//!
//! A test takes the knobs it needs with [`Knob::require`] (which skips
//! when the module has no such knob), sets a delay with [`Knob::set`],
//! waits with [`wait_for_delay`] until a fault sleeps in its window, and
//! sets the knob back to 0 so that no other fault sleeps. A [`Knob`]
//! sets itself back to its default when dropped, also when an assertion
//! unwinds.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;
use std::thread;
use std::time::{Duration, Instant};

use crate::ksft::{self, check};

/// Where the module's knobs are.
pub const KNOB_DIR: &str = "/sys/kernel/debug/vms";
/// A VMM fault that reads the image sleeps this long (ms) after
/// releasing the fault lock, before reading.
pub const VMM_READ_DELAY_MS: &str = "vmm_read_delay_ms";
/// A VMM fault sleeps this long (ms) with the page it returns locked and
/// the clone's state released, before mm maps it.
pub const VMM_MAP_DELAY_MS: &str = "vmm_map_delay_ms";
/// A reset sleeps this long (ms) before it punches the clone's swap file,
/// its pages dropped, its `state` released and eviction held off.
pub const RESET_PUNCH_DELAY_MS: &str = "reset_punch_delay_ms";
/// An eviction sleeps this long (ms) with its pages picked and in
/// writeback, before it writes them to the swap file: a swap disk that
/// hangs.
pub const SWAP_WRITE_DELAY_MS: &str = "swap_write_delay_ms";
/// The next this many reads of an image page for a clone fail with
/// `EIO` without reading, as a read error would.
pub const IMAGE_READ_FAIL: &str = "image_read_fail";
/// Read-only: how many sleeps either VMM delay, or the swap write delay,
/// has begun.
pub const VMM_DELAYS: &str = "vmm_delays";

/// One knob file of [`KNOB_DIR`]; set back to its default on drop if
/// writable (see [`default_of`]).
pub struct Knob {
    path: PathBuf,
    writable: bool,
    default: u32,
}

/// The value the module gives knob `name` at load: 1 for `claim_slots`
/// (claiming memslots is on), 0 for every other knob (no effect).
pub fn default_of(name: &str) -> u32 {
    u32::from(name == "claim_slots")
}

impl Knob {
    /// The knob `name`; skips the test (or subtest) if it is missing: a
    /// module without it, or a kernel without debugfs.
    #[track_caller]
    pub fn require(name: &str) -> Self {
        let path = PathBuf::from(KNOB_DIR).join(name);
        let Ok(meta) = fs::metadata(&path) else {
            ksft::skip(format_args!(
                "{} missing (vms.ko without debug knobs, or debugfs not mounted)",
                path.display()
            ));
        };
        let writable = meta.permissions().mode() & 0o200 != 0;
        Self {
            path,
            writable,
            default: default_of(name),
        }
    }

    /// Its value.
    #[track_caller]
    pub fn get(&self) -> u32 {
        let s = check(fs::read_to_string(&self.path), "read debugfs knob");
        match s.trim().parse() {
            Ok(v) => v,
            Err(_) => ksft::fail(
                std::panic::Location::caller(),
                "debugfs knob is not a u32",
                format_args!("{}: {s:?}", self.path.display()),
                None,
            ),
        }
    }

    /// Sets it to `v`.
    #[track_caller]
    pub fn set(&self, v: u32) {
        check(
            fs::write(&self.path, format!("{v}\n")),
            "write debugfs knob",
        );
    }
}

impl Drop for Knob {
    fn drop(&mut self) {
        if self.writable {
            let _ = fs::write(&self.path, format!("{}\n", self.default));
        }
    }
}

/// Waits until `delays` (the [`VMM_DELAYS`] counter) exceeds `before`,
/// i.e. a fault began to sleep; false if that did not happen in `limit`.
pub fn wait_for_delay(delays: &Knob, before: u32, limit: Duration) -> bool {
    let t0 = Instant::now();
    while delays.get() == before {
        if t0.elapsed() > limit {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
    true
}

/// The debug quarantine (`quarantine_pages`), on for a test: freed private
/// pages are kept filled with a sentinel, which a write through a stage-2
/// or VMM mapping that outlived the page changes; the module then reports
/// "BUG: vms: quarantined page" (a splat) and counts it in
/// `quarantine_bad`. Without the knobs (a module built without debugfs)
/// the test runs without it. The ring goes back to its default on drop.
pub struct Quarantine {
    ring: Option<Knob>,
    bad: Option<(Knob, u32)>,
}

impl Quarantine {
    /// Keeps the last `pages` freed pages in the quarantine.
    pub fn start(pages: u32) -> Self {
        if !PathBuf::from(KNOB_DIR).join("quarantine_pages").exists() {
            ksft::ksft_print_msg("no debug knobs: the test runs without the quarantine");
            return Self { ring: None, bad: None };
        }
        let ring = Knob::require("quarantine_pages");
        ring.set(pages);
        let bad = Knob::require("quarantine_bad");
        let before = bad.get();
        Self { ring: Some(ring), bad: Some((bad, before)) }
    }

    /// How many quarantined pages were written to since [`start`](Self::start)
    /// (0 without the knobs).
    pub fn changed(&self) -> u32 {
        self.bad.as_ref().map_or(0, |(b, before)| b.get() - before)
    }

    /// Prints how many quarantined pages changed, asserts none did, and
    /// empties the quarantine.
    #[track_caller]
    pub fn assert_unchanged(self) {
        let changed = self.changed();
        ksft::ksft_print_msg(&format!("quarantine: {changed} pages changed while free"));
        crate::test_assert_eq!(changed, 0, "pages changed in the quarantine (see the kernel log)");
    }
}

impl Drop for Quarantine {
    fn drop(&mut self) {
        drop(self.ring.take());
    }
}
