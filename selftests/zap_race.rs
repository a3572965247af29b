// SPDX-License-Identifier: GPL-2.0

//! zap_race: a page provider's zaps leave no stage-2 mapping behind, even
//! while memslot updates invalidate the VM's roots.
//!
//! A memslot delete or move zaps the VM's stage 2 in two halves (KVM's
//! `kvm_mmu_zap_all_fast()`): it marks the current roots invalid, then
//! zaps them. Between the halves the invalid roots still hold their
//! entries. vms zaps a clone's pages (`kvm_page_provider_invalidate()`) on
//! copy-on-write and on snapshot, and may drop a page once that returns;
//! an entry left in an invalid root would be zapped later, after the page
//! was freed. The debug kernel (`CONFIG_KVM_PROVE_MMU`) checks every root,
//! invalid ones included, after each such zap and warns about any entry
//! left; the kernel log check then fails this test.
//!
//! One vCPU reads a 1 MiB clone over and over (so its pages stay mapped in
//! stage 2); one thread creates and deletes an unrelated memslot in a loop
//! (each delete is a fast zap); the main thread writes every page through
//! the VMM's mapping (copy-on-write: a zap per page) and snapshots the
//! clone (a zap of the whole slot), again and again. The guest must read
//! the image's bytes throughout.
//!
//! Whether a zap lands between the two halves of a memslot delete is up
//! to the scheduler, so a clean run shows less than a failing one: the
//! loop runs for [`ROUNDS`] snapshots or [`TIME`], whichever ends first,
//! and prints how many memslot deletes ran meanwhile. On the kernel
//! without the fix (patches/0009) the first run in a boot warned (the
//! check warns once per boot).
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use vms_selftests::guest::{self, Outcome, Walk};
use vms_selftests::host::Mapping;
use vms_selftests::ksft::{self, check, Test, Watchdog};
use vms_selftests::kvm::{delete_memslot, open_kvm, vcpu_set_entry};
use vms_selftests::vms::{
    image_create, image_snapshot, require_vms_and_kvm, unique_name, vm_with_clone, vms_open,
    ImageFile, CLONE_GPA, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 1 MiB clone.
const PAGES: u64 = 256;
/// Snapshots the main thread takes (each after writing every page).
const ROUNDS: usize = 60;
/// ... or for this long, on a loaded machine.
const TIME: Duration = Duration::from_secs(90);
/// The memslot the churn thread creates and deletes: 64 KiB at 3 GiB.
const CHURN_SLOT: u32 = 7;
const CHURN_GPA: u64 = 0xc000_0000;
const CHURN_SIZE: u64 = 16 * PAGE_SIZE;

fn zaps_during_memslot_deletes() {
    let dev = vms_open();
    let name = unique_name("zap_race");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let base = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let clone = base.clone_create();
    let map = clone.map();
    let kvm = open_kvm();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    let walk = Walk::pattern(CLONE_GPA, 0, PAGES);
    guest::load(&mut vm, 0, &guest::read_check(&walk));
    let churn = check(Mapping::anon(CHURN_SIZE), "mmap for the churn memslot");

    let stop = AtomicBool::new(false);
    let (passes, deletes) = (AtomicU64::new(0), AtomicU64::new(0));
    let mut images = Vec::new();
    let _dog = Watchdog::start("zap_race", Duration::from_secs(240));
    let (vcpus, fd) = vm.vcpus_and_fd();
    let fd = fd.as_ref().expect("the VM fd");
    let outcome = thread::scope(|s| {
        let vcpu = &mut vcpus[0];
        let (stop, passes, deletes) = (&stop, &passes, &deletes);
        let reader = s.spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                check(vcpu_set_entry(vcpu, guest::code_gpa(0)), "KVM_SET_REGS");
                match check(guest::__run(vcpu), "KVM_RUN") {
                    Outcome::Done => passes.fetch_add(1, Ordering::SeqCst),
                    other => return other,
                };
            }
            Outcome::Done
        });
        let churn = &churn;
        s.spawn(move || {
            while !stop.load(Ordering::SeqCst) {
                let region = kvm_bindings::kvm_userspace_memory_region2 {
                    slot: CHURN_SLOT,
                    guest_phys_addr: CHURN_GPA,
                    memory_size: CHURN_SIZE,
                    userspace_addr: churn.hva(),
                    ..Default::default()
                };
                // SAFETY: `churn` maps CHURN_SIZE bytes and outlives the
                // memslot, which this thread deletes before it ends.
                check(
                    unsafe { fd.set_user_memory_region2(region) },
                    "KVM_SET_USER_MEMORY_REGION2 (churn)",
                );
                check(delete_memslot(fd, CHURN_SLOT), "delete the churn memslot");
                deletes.fetch_add(1, Ordering::SeqCst);
            }
        });
        let t0 = Instant::now();
        for round in 0..ROUNDS {
            if reader.is_finished() || t0.elapsed() > TIME {
                break;
            }
            // Copy-on-write of every page, keeping its bytes: a zap each.
            for p in 0..PAGES {
                let v = map.read_u32(p * PAGE_SIZE);
                map.write_u32(p * PAGE_SIZE, v);
            }
            // Every page moves to the new image: a zap of the whole slot.
            images.push(image_snapshot(&dev, &format!("{name}-{round}"), &clone));
        }
        stop.store(true, Ordering::SeqCst);
        reader.join().expect("the vCPU thread")
    });
    ksft::ksft_print_msg(&format!(
        "{} snapshots, {} guest passes, {} memslot deletes",
        images.len(),
        passes.load(Ordering::SeqCst),
        deletes.load(Ordering::SeqCst)
    ));
    test_assert_eq!(outcome, Outcome::Done);
    test_assert!(!images.is_empty());
    test_assert!(passes.load(Ordering::SeqCst) > 0);

    drop((vm, map, clone));
    // Newest first: an image with live images on it cannot be deleted.
    while let Some(image) = images.pop() {
        image.delete();
    }
    base.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[Test::new(
        "zaps_during_memslot_deletes",
        zaps_during_memslot_deletes,
    )]);
}
