// SPDX-License-Identifier: GPL-2.0

//! teardown: objects torn down under running vCPUs end cleanly and free
//! everything.
//!
//! Two vCPUs walk a 16 MiB clone forever, one up and one down, reading
//! each page and writing to it (so they take read faults, copy-on-write
//! faults and race on the same pages). A few MiB into their first pass,
//! while they still fault, one subtest each:
//!
//! - deletes the clone's memslot: the vCPUs then exit on their next
//!   access (`KVM_EXIT_MMIO`, or a memory fault), and keep no stale
//!   mapping of the slot;
//! - closes the clone's file descriptor and unmaps it: the vCPUs either
//!   go on (the VM still holds the clone) or fail with a memory fault;
//! - closes the VM file descriptor: the vCPUs go on (they hold the VM);
//!   the vCPU file descriptors are closed after they stop.
//!
//! Then everything is dropped, the image deleted, and free memory
//! (`MemFree` plus the per-CPU free lists, see `host::mem_free`) must
//! come back to within 4 MiB of where it was. Every step is bounded by a
//! watchdog: a hang fails the test.
//!
//! One more subtest, `close_anon_while_running`, has the same shape
//! without vms, for comparison (`scripts/soak`'s `close-anon` arm runs it
//! with vms.ko not loaded): the memslot is 16 MiB of prefilled private
//! anonymous memory, which an inaccessible mapping (`mmap(PROT_NONE,
//! MAP_FIXED)`) replaces under the running vCPUs, freeing its pages.
//! And `close_file_while_running`: the same on a private mapping of the
//! pattern file, so that the stock kernel makes a clone's page traffic
//! (page-cache pages mapped read-only, copy-on-write on first write);
//! it runs only when `KSFT_ONLY` names it (the soak's `close-file` arm).
//!
//! Skips if `/dev/kvm` is missing; the clone subtests skip one by one if
//! `/dev/vms` is.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use kvm_ioctls::{VcpuFd, VmFd};
use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::host::{mem_free, mem_free_settle, mib, Mapping};
use vms_selftests::ksft::{self, check, Test, Watchdog};
use vms_selftests::kvm::{self, delete_memslot, vm_create_pm32, Exit, Vm};
use vms_selftests::vms::{
    image_create, pattern_word, unique_name, vm_with_clone, vms_open, CloneMap, ImageFile,
    VmsClone, CLONE_GPA, CLONE_SLOT, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 16 MiB clone.
const PAGES: u64 = 4096;
/// The vCPUs.
const NR_VCPUS: usize = 2;
/// Progress reports (of 256 pages each) every vCPU makes before the
/// teardown: 1 MiB into the first pass of 16 MiB.
const PROGRESS_BEFORE: u64 = 4;
/// How much free memory may stay below its start.
const SLACK: u64 = 4 << 20;
/// Bound on one subtest; a normal run takes seconds. Three of them fit
/// in the runner's limit for the whole binary (`selftests/settings`).
const LIMIT: Duration = Duration::from_secs(90);

/// How a vCPU thread ended.
#[derive(Debug, Clone, PartialEq, Eq)]
enum End {
    /// It was asked to stop and did.
    Stopped,
    /// `KVM_EXIT_MMIO`: the guest touched a gpa without a memslot.
    Mmio,
    /// `KVM_RUN` failed with `EFAULT` and `KVM_EXIT_MEMORY_FAULT`.
    MemoryFault,
    /// `KVM_RUN` failed with `EFAULT` without a memory-fault exit.
    Efault,
    /// Anything else: a bug.
    Bad(String),
}

/// Runs the guest on `vcpu` until it ends or, at a progress report, `stop`
/// is set; counts the reports in `progress`.
fn vcpu_loop(vcpu: &mut VcpuFd, stop: &AtomicBool, progress: &AtomicU64) -> End {
    loop {
        match guest::__run(vcpu) {
            Ok(Outcome::Progress) => {
                progress.fetch_add(1, Ordering::SeqCst);
                if stop.load(Ordering::SeqCst) {
                    return End::Stopped;
                }
            }
            Ok(Outcome::Exit(Exit::Mmio { gpa, write, .. })) => {
                // Never expected while the memslot exists: show where the
                // guest was (see docs/ARCHITECTURE.md, Known issues).
                ksft::ksft_print_msg(&format!(
                    "KVM_EXIT_MMIO at gpa {gpa:#x} (write {write}); {}",
                    vcpu_state(vcpu)
                ));
                return End::Mmio;
            }
            Ok(Outcome::Exit(Exit::MemoryFault { .. })) => return End::MemoryFault,
            Err(e) if e.errno() == libc::EFAULT => return End::Efault,
            Ok(o) => return End::Bad(format!("{}; {}", guest::describe(&o), vcpu_state(vcpu))),
            Err(e) => return End::Bad(format!("KVM_RUN: {}", ksft::strerror(e.errno()))),
        }
    }
}

/// The guest registers the walk uses, for a report of an unexpected exit:
/// the program's position (`rip`), its page (`ebx`), pages left (`ecx`),
/// the value it expects (`edi`) and the one it read (`eax`).
fn vcpu_state(vcpu: &VcpuFd) -> String {
    match vcpu.get_regs() {
        Ok(r) => format!(
            "rip {:#x} ebx {:#x} ecx {:#x} edi {:#x} eax {:#x}",
            r.rip, r.rbx, r.rcx, r.rdi, r.rax
        ),
        Err(e) => format!("KVM_GET_REGS: {}", ksft::strerror(e.errno())),
    }
}

/// Polls `cond` every millisecond until it holds (the subtest's watchdog
/// bounds the wait).
fn wait_for(mut cond: impl FnMut() -> bool) {
    while !cond() {
        thread::sleep(Duration::from_millis(1));
    }
}

/// Runs the vCPUs of `vm` on threads, each walking the clone forever;
/// calls `act` with the VM fd once every vCPU made [`PROGRESS_BEFORE`]
/// reports; then lets the vCPUs run on until each ended or made two more
/// reports, stops them, and returns how each ended and how many reports
/// it made after `act` returned.
fn run_and(vm: &mut Vm, act: impl FnOnce(&mut Option<VmFd>)) -> Vec<(End, u64)> {
    let stop = AtomicBool::new(false);
    let progress: Vec<AtomicU64> = (0..NR_VCPUS).map(|_| AtomicU64::new(0)).collect();
    let (vcpus, fd) = vm.vcpus_and_fd();
    thread::scope(|s| {
        let threads: Vec<_> = vcpus
            .iter_mut()
            .zip(&progress)
            .map(|(vcpu, p)| {
                let stop = &stop;
                s.spawn(move || vcpu_loop(vcpu, stop, p))
            })
            .collect();
        let ended = |i: usize| threads[i].is_finished();
        let count = |i: usize| progress[i].load(Ordering::SeqCst);

        wait_for(|| (0..NR_VCPUS).all(|i| ended(i) || count(i) >= PROGRESS_BEFORE));
        let t0 = Instant::now();
        act(fd);
        let at_act: Vec<u64> = (0..NR_VCPUS).map(count).collect();
        ksft::ksft_print_msg(&format!(
            "teardown took {} us, progress then {at_act:?}",
            t0.elapsed().as_micros()
        ));
        wait_for(|| (0..NR_VCPUS).all(|i| ended(i) || count(i) >= at_act[i] + 2));
        stop.store(true, Ordering::SeqCst);

        threads
            .into_iter()
            .enumerate()
            .map(|(i, t)| {
                let end = t.join().unwrap_or_else(|_| End::Bad("panicked".into()));
                (end, count(i) - at_act[i])
            })
            .collect()
    })
}

/// The whole scenario around one teardown: measure free memory, build the
/// image, clone, mapping and VM, run the vCPUs, call `teardown` in the
/// middle, check how the vCPUs ended with `check_ends`, drop everything,
/// delete the image and check that the memory came back.
fn scenario(
    teardown: impl FnOnce(&mut Option<VmFd>, &mut Teardown),
    check_ends: impl FnOnce(&[(End, u64)]),
) {
    let _watchdog = Watchdog::start("teardown subtest", LIMIT);
    let dev = vms_open();
    let name = unique_name("teardown");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let free_start = mem_free();
    {
        let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
        let kvm = kvm::open_kvm();
        let clone = image.clone_create();
        let map = clone.map();
        let mut vm = vm_with_clone(&kvm, &clone, &map, NR_VCPUS);
        let up = Walk::pattern(CLONE_GPA, 0, PAGES);
        guest::load(&mut vm, 0, &guest::read_write_forever(&up));
        guest::load(&mut vm, 1, &guest::read_write_forever(&up.reversed()));

        let mut t = Teardown {
            clone: Some(clone),
            map,
        };
        let ends = run_and(&mut vm, |fd| teardown(fd, &mut t));
        ksft::ksft_print_msg(&format!("vCPUs ended: {ends:?}"));
        check_ends(&ends);

        if let Some(clone) = &t.clone {
            let cs = clone.stats();
            ksft::ksft_print_msg(&format!("clone: {cs:?}"));
            test_assert!(cs.faults > 0);
        }
        vm.close_vcpus();
        drop(vm);
        drop(t);
        test_assert_eq!(image.info().clones, 0, "the clone is gone");
        image.delete();
    }
    check_memory_back(free_start);
}

/// Asserts that free memory came back to within [`SLACK`] of
/// `free_start` (waiting up to 10 s for it).
#[track_caller]
fn check_memory_back(free_start: u64) {
    let free_end = mem_free_settle(free_start, SLACK, Duration::from_secs(10));
    ksft::ksft_print_msg(&format!(
        "free memory: {:.1} MiB at the start, {:.1} MiB at the end",
        mib(free_start),
        mib(free_end)
    ));
    test_assert!(
        free_end + SLACK >= free_start,
        "{:.1} MiB not freed",
        mib(free_start - free_end)
    );
}

/// What a teardown may take down besides the VM fd.
struct Teardown {
    clone: Option<VmsClone>,
    map: Arc<CloneMap>,
}

/// Asserts that every vCPU ended in one of `ok`.
#[track_caller]
fn ends_in(ends: &[(End, u64)], ok: &[End]) {
    for (i, (end, _)) in ends.iter().enumerate() {
        test_assert!(ok.contains(end), "vCPU {i} ended with {end:?}");
    }
}

/// Deletes the clone's memslot under the running vCPUs.
fn delete_memslot_while_running() {
    scenario(
        |fd, _| {
            let fd = fd.as_ref().expect("the VM fd is open");
            ksft::check(delete_memslot(fd, CLONE_SLOT), "delete the memslot");
        },
        |ends| {
            ends_in(ends, &[End::Mmio, End::MemoryFault, End::Efault]);
            for (i, (_, after)) in ends.iter().enumerate() {
                // A report that was on its way when the slot went; a
                // second one means 256 pages read through a mapping of a
                // deleted slot.
                test_assert!(*after <= 1, "vCPU {i} went on for {after} reports");
            }
        },
    );
}

/// Closes the clone's fd and unmaps it under the running vCPUs.
fn close_clone_while_running() {
    scenario(
        |_, t| {
            t.map.unmap();
            drop(t.clone.take());
        },
        |ends| ends_in(ends, &[End::Stopped, End::MemoryFault, End::Efault]),
    );
}

/// Closes the VM fd under the running vCPUs; their fds after they stop.
fn close_vm_while_running() {
    scenario(
        |fd, _| drop(fd.take()),
        |ends| ends_in(ends, &[End::Stopped]),
    );
}

/// The shape of [`close_clone_while_running`] on anonymous memory, no
/// vms involved: makes the memslot's prefilled anonymous memory
/// inaccessible (`mmap(PROT_NONE, MAP_FIXED)`, which frees its pages as
/// `munmap` does but keeps the range reserved) under the running vCPUs.
/// Each vCPU must then end with a memory fault (or `EFAULT`) within one
/// progress report, and the pages must come back as free memory.
fn close_anon_while_running() {
    close_mapping_while_running(|| {
        let mem = check(Mapping::anon(PAGES * PAGE_SIZE), "mmap guest memory");
        // The values the walk checks: every page present before the
        // vCPUs run, as a clone's are in its image.
        for p in 0..PAGES {
            mem.write(p * PAGE_SIZE, &pattern_word(p).to_le_bytes());
        }
        (mem, None)
    });
}

/// The shape of [`close_clone_while_running`] with the same page traffic
/// as a clone's, made by the stock kernel instead of vms: the memslot is
/// a private (`MAP_PRIVATE`) mapping of the same pattern file. The
/// vCPUs' reads map the file's page-cache pages into stage 2, their
/// first writes are the kernel's copy-on-write (a new anonymous page,
/// the mmu notifier zapping the read-only SPTE and flushing the remote
/// TLBs), as a clone's are vms's. `scripts/soak`'s `close-file` arm runs
/// it with vms.ko not loaded: does the corruption need vms's code, or
/// only this traffic?
///
/// It tests no vms code and, on the emulated test machine, fails about
/// one run in eleven for the machine's own corruption
/// (docs/ARCHITECTURE.md, Known issues), so the suite skips it: it runs
/// only when `KSFT_ONLY` names it, as the soak's arm does.
fn close_file_while_running() {
    let only = std::env::var("KSFT_ONLY").unwrap_or_default();
    if !only.split(',').any(|n| n == "close_file_while_running") {
        ksft::skip(
            "a soak instrument (scripts/soak arm close-file): runs only when KSFT_ONLY names it",
        );
    }
    close_mapping_while_running(|| {
        let file = ImageFile::with_pattern(&unique_name("teardown-file"), PAGES, 0);
        let mem = check(
            Mapping::file(file.file(), PAGES * PAGE_SIZE, false),
            "mmap the file MAP_PRIVATE",
        );
        (mem, Some(file))
    });
}

/// The non-vms subtests: a memslot on the mapping `make` returns (with
/// the file behind it, kept until the end), two vCPUs walking it, the
/// mapping made inaccessible under them; each vCPU must end with a
/// memory fault (or `EFAULT`) within one progress report, and the memory
/// must come back.
fn close_mapping_while_running(make: impl FnOnce() -> (Mapping, Option<ImageFile>)) {
    let _watchdog = Watchdog::start("teardown subtest", LIMIT);
    let kvm = kvm::open_kvm();
    let free_start = mem_free();
    {
        let size = PAGES * PAGE_SIZE;
        let (mem, file) = make();
        let mem = Arc::new(mem);
        let mut vm = vm_create_pm32(&kvm);
        // SAFETY: `mem` unmaps its range only when dropped, which the VM
        // prevents while it exists (it keeps `mem`);
        // `make_inaccessible` keeps the range reserved.
        let r =
            unsafe { vm.__add_memory_at(CLONE_SLOT, 0, CLONE_GPA, size, mem.hva(), mem.clone()) };
        check(r, "KVM_SET_USER_MEMORY_REGION2");
        for i in 0..NR_VCPUS {
            vm.add_vcpu_pm32(i as u64, guest::code_gpa(i));
        }
        let up = Walk::pattern(CLONE_GPA, 0, PAGES);
        guest::load(&mut vm, 0, &guest::read_write_forever(&up));
        guest::load(&mut vm, 1, &guest::read_write_forever(&up.reversed()));

        let ends = run_and(&mut vm, |_| mem.make_inaccessible());
        ksft::ksft_print_msg(&format!("vCPUs ended: {ends:?}"));
        ends_in(&ends, &[End::MemoryFault, End::Efault]);
        for (i, (_, after)) in ends.iter().enumerate() {
            // As for a deleted memslot: one report on its way at most.
            test_assert!(*after <= 1, "vCPU {i} went on for {after} reports");
        }
        vm.close_vcpus();
        drop(vm);
        drop(mem);
        if let Some(file) = file {
            test_assert!(
                file.first_difference(PAGES, 0).is_none(),
                "a private mapping's writes reached the file"
            );
            drop(file);
        }
    }
    check_memory_back(free_start);
}

fn main() {
    ksft::init();
    // The clone subtests skip one by one without /dev/vms (vms_open);
    // the anonymous one needs KVM only.
    let kvm = kvm::open_kvm();
    drop(kvm::vm_create(&kvm));
    drop(kvm);
    ksft::run(&[
        Test::new("delete_memslot_while_running", delete_memslot_while_running),
        Test::new("close_clone_while_running", close_clone_while_running),
        Test::new("close_vm_while_running", close_vm_while_running),
        Test::new("close_anon_while_running", close_anon_while_running),
        Test::new("close_file_while_running", close_file_while_running),
    ]);
}
