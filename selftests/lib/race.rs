// SPDX-License-Identifier: GPL-2.0

//! A race of guest and VMM over a clone, with the main thread stirring.
//!
//! [`token_race`] runs vCPU 0 of a VM on [`guest::read_write_forever`]
//! over the clone's first pages (it checks word 0 of every page against
//! the test pattern and writes word 4, so each page is read, and copied
//! wherever it is shared), and a VMM thread that, for each page, reads
//! word 0 through one mapping of the clone, writes a new token to byte 8
//! through another and reads it back through the first. The main thread
//! meanwhile calls the test's `stir` (reset, snapshot, change a limit...)
//! until both sides have done enough rounds or time is up.
//!
//! A token read back that is not the one just written means the two
//! mappings showed different pages for one clone page: a stale mapping.
//! A test where an older value is legitimate (a reset in between brings
//! back the image's word) says so with `also_ok`.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::guest::{self, Outcome, Walk};
use crate::knob::Quarantine;
use crate::ksft::{self, check, Watchdog};
use crate::kvm::{self, vcpu_set_entry, Vm};
use crate::vms::{
    image_create, image_dir, image_snapshot, pattern_word, unique_name, vm_with_clone, vms_open, CloneMap,
    ImageFile, VmsClone, CLONE_GPA, PAGE_SIZE,
};
use vms_uapi::VmsCloneFootprint;

/// How a [`token_race`] ended.
#[derive(Debug)]
pub struct RaceResult {
    /// The guest's outcome: [`Outcome::Done`] unless it saw a wrong page.
    pub guest: Outcome,
    /// The VMM thread's finding, if it saw a wrong value.
    pub vmm: Option<String>,
    /// Guest passes over the pages, and VMM rounds.
    pub passes: u64,
    pub vmm_rounds: u64,
}

impl RaceResult {
    /// Asserts that neither side saw a wrong page and both finished at
    /// least one round.
    #[track_caller]
    pub fn assert_clean(&self) {
        crate::test_assert!(
            matches!(self.guest, Outcome::Done),
            "the guest saw a wrong page: {}",
            guest::describe(&self.guest)
        );
        crate::test_assert!(self.vmm.is_none(), "the VMM: {}", self.vmm.clone().unwrap_or_default());
        crate::test_assert!(self.passes > 0, "the guest never finished a pass");
        crate::test_assert!(self.vmm_rounds > 0, "the VMM thread never finished a round");
    }
}

/// What a [`token_race`] runs over, and for how long.
#[derive(Debug, Clone, Copy)]
pub struct RaceSpec {
    /// Clone pages `0..pages`, where the image holds the test pattern.
    pub pages: u64,
    /// At most this long...
    pub time: Duration,
    /// ...or until both sides have done this many rounds.
    pub rounds: u64,
    /// Between two calls of `stir`.
    pub pause: Duration,
}

/// Sets its flag when dropped, also by an unwinding panic.
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::SeqCst);
    }
}

/// Runs the race that `spec` describes, calling `stir` from this thread
/// between pauses; a `stir` that returns false ends the race early.
/// `also_ok(page)` is a value besides the token that the VMM may read
/// back at byte 8 of `page`.
pub fn token_race(
    vm: &mut Vm,
    write_map: &CloneMap,
    read_map: &CloneMap,
    spec: RaceSpec,
    also_ok: impl Fn(u64) -> Option<u32> + Sync,
    mut stir: impl FnMut() -> bool,
) -> RaceResult {
    let RaceSpec { pages, time, rounds, pause } = spec;
    guest::load(vm, 0, &guest::read_write_forever(&Walk::pattern(CLONE_GPA, 0, pages)));
    let stop = AtomicBool::new(false);
    let (passes, vmm_rounds) = (AtomicU64::new(0), AtomicU64::new(0));
    let (vcpus, _fd) = vm.vcpus_and_fd();
    let (guest, vmm) = thread::scope(|s| {
        let vcpu = &mut vcpus[0];
        let (stop, passes, vmm_rounds, also_ok) = (&stop, &passes, &vmm_rounds, &also_ok);
        let guest = s.spawn(move || {
            check(vcpu_set_entry(vcpu, guest::code_gpa(0)), "KVM_SET_REGS");
            while !stop.load(Ordering::SeqCst) {
                match check(guest::__run(vcpu), "KVM_RUN") {
                    Outcome::Progress => passes.fetch_add(1, Ordering::SeqCst),
                    other => return other,
                };
            }
            Outcome::Done
        });
        let vmm = s.spawn(move || {
            let mut token = 0xc000_0000u32;
            while !stop.load(Ordering::SeqCst) {
                for p in 0..pages {
                    let v = read_map.read_u32(p * PAGE_SIZE);
                    if v != pattern_word(p) {
                        return Some(format!("page {p}: word 0 is {v:#010x}"));
                    }
                    token += 1;
                    write_map.write_u32(p * PAGE_SIZE + 8, token);
                    let back = read_map.read_u32(p * PAGE_SIZE + 8);
                    if back != token && Some(back) != also_ok(p) {
                        return Some(format!(
                            "page {p}: wrote token {token:#010x} through one mapping, read {back:#010x} \
                             through the other"
                        ));
                    }
                }
                vmm_rounds.fetch_add(1, Ordering::SeqCst);
            }
            None
        });
        // Stops both threads however this thread leaves the scope: a
        // `stir` that fails an assertion unwinds, and the scope would then
        // wait for ever for threads that never saw `stop` (until the
        // test's watchdog called it a hang).
        let _stop = StopOnDrop(stop);
        let t0 = Instant::now();
        while t0.elapsed() < time
            && (passes.load(Ordering::SeqCst) < rounds || vmm_rounds.load(Ordering::SeqCst) < rounds)
            && !guest.is_finished()
            && !vmm.is_finished()
            && stir()
        {
            thread::sleep(pause);
        }
        stop.store(true, Ordering::SeqCst);
        (guest.join().expect("the vCPU thread"), vmm.join().expect("the VMM thread"))
    });
    RaceResult {
        guest,
        vmm,
        passes: passes.load(Ordering::SeqCst),
        vmm_rounds: vmm_rounds.load(Ordering::SeqCst),
    }
}

/// The clone pages of an [`eviction_race`].
pub const EVICTION_RACE_PAGES: u64 = 256;

/// A [`token_race`] over a clone with a swap file and a limit of `limit`
/// pages (0: none), with the debug quarantine on, for 40 s or 20 rounds;
/// between pauses, `stir(round, clone)` (a new limit, `drop_caches`...),
/// and every 5th round a snapshot (6 at most), whose clones of the live
/// image are never started. Asserts that neither side saw a wrong page
/// and no freed page changed, and returns the clone's footprint at the
/// end of the race. Names start with `prefix`.
#[track_caller]
pub fn eviction_race(prefix: &str, limit: u64, mut stir: impl FnMut(u32, &VmsClone)) -> VmsCloneFootprint {
    const SPEC: RaceSpec = RaceSpec {
        pages: EVICTION_RACE_PAGES,
        time: Duration::from_secs(40),
        rounds: 20,
        pause: Duration::from_millis(20),
    };
    let dev = vms_open();
    let name = unique_name(prefix);
    let file = ImageFile::with_pattern(&name, EVICTION_RACE_PAGES, 0);
    let image = image_create(&dev, &name, file.file(), EVICTION_RACE_PAGES * PAGE_SIZE, 0);
    let quarantine = Quarantine::start(64);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let other = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    clone.set_limit(limit, Some(&image_dir()));
    let mut lives = Vec::new();
    let _dog = Watchdog::start(&format!("{prefix} races"), Duration::from_secs(240));
    let mut n = 0u32;
    // No reset here: the VMM must read back exactly its token.
    let r = token_race(&mut vm, &map, &other, SPEC, |_| None, || {
        n += 1;
        stir(n, &clone);
        if n.is_multiple_of(5) && lives.len() < 6 {
            lives.push(image_snapshot(&dev, &unique_name(&format!("{prefix}_live")), &clone));
        }
        true
    });
    let f = clone.footprint();
    ksft::ksft_print_msg(&format!(
        "{} snapshots, {} guest passes, {} VMM rounds; {f:?}",
        lives.len(),
        r.passes,
        r.vmm_rounds,
    ));
    r.assert_clean();
    drop((vm, map, other, clone));
    for live in lives.into_iter().rev() {
        live.delete();
    }
    quarantine.assert_unchanged();
    image.delete();
    f
}
