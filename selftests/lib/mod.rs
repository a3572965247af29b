// SPDX-License-Identifier: GPL-2.0

//! The library of the vms selftests, in the manner of the kernel's
//! `tools/testing/selftests/kvm/lib/`.
//!
//! - [`ksft`]: the TAP/kselftest harness, assertions, skips and a
//!   watchdog;
//! - [`kvm`]: a VM with guest memory and real-mode or 32-bit
//!   protected-mode vCPUs;
//! - [`guest`]: hand-assembled guest programs that walk pages, and the
//!   host side that runs them;
//! - [`vms`]: `/dev/vms` and its ioctls, test images, clones and their
//!   mappings, a VM served by a clone;
//! - [`host`]: free memory, forked children;
//! - [`knob`]: the module's debug knobs, which hold race windows open;
//! - [`race`]: a guest and a VMM thread racing over a clone while the
//!   test stirs (resets, snapshots, limits).
//!
//! Naming follows the KVM selftests: `__foo()` returns the raw result for a
//! test that checks the error itself, `foo()` asserts that it worked (or
//! skips when a requirement is missing).
//!
//! Each test is a binary (`selftests/<name>.rs`) that prints TAP and exits
//! with [`ksft::KSFT_PASS`], [`ksft::KSFT_FAIL`] or [`ksft::KSFT_SKIP`].

pub mod guest;
pub mod host;
pub mod knob;
pub mod ksft;
pub mod kvm;
pub mod race;
pub mod vms;
