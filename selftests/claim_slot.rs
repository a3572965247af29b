// SPDX-License-Identifier: GPL-2.0

//! claim_slot: an ordinary memslot on a clone mapping is served by the
//! clone at stage-2 fault time, with no flag and no `VMS_CLONE_ATTACH`
//! (issue 17: the in-kernel fast path for a VMM that knows nothing of
//! vms, such as QEMU on `/dev/vms-clone/NAME`). KVM asks vms.ko about
//! every new memslot (patches/0010); vms claims those whose host range is
//! a shared mapping of a clone. Each subtest is a memslot change QEMU
//! makes:
//!
//! - `plain_slot`: a guest reads every page of a clone through a memslot
//!   made with flags 0: every page takes a stage-2 fault of the clone
//!   (`faults`), none goes through the VMM's mapping (`mmap_faults` 0);
//!   a guest write copies the page, and the VMM's mapping sees it.
//! - `split_slots`: two memslots over one mapping with a hole between
//!   them in guest memory, as QEMU splits RAM around the PCI hole.
//! - `delete_recreate`: a memslot deleted and made again (same id, other
//!   gpa), as on a reboot; the clone's private page survives.
//! - `dirty_logging`: dirty logging switched on (a flags-only update, as
//!   for migration) keeps the claim; `KVM_GET_DIRTY_LOG` reports exactly
//!   the pages the guest wrote; switched off again, the slot still works.
//! - `mapping_gone`: once the VMM unmaps the clone and maps other memory
//!   at the same address, the guest reads that memory, never the clone's
//!   pages (the claim lapses, faults go through the host address); and
//!   the clone, kept open, lets the VM go (its debugfs directory
//!   disappears) once the VMM closes it.
//! - `attach_after_lapse`: after a claim lapsed and the guest read the
//!   VMM's new memory there, `VMS_CLONE_ATTACH` of the clone to the same
//!   memslot does not make the clone serve it again (a review found that
//!   it did: a provider page replacing a present mapping, which KVM
//!   `BUG()`s on).
//! - `mprotect_read_only`: a clone mapping made read-only is no longer
//!   served writable: a guest write fails `KVM_RUN` with `EFAULT`, as
//!   through any read-only host address.
//! - `second_clone`: a memslot on another clone of a VM that a clone
//!   already serves is not claimed (one provider per VM) and works through
//!   the VMM's mapping.
//! - `knob_off`: with `claim_slots` 0 nothing is claimed and the same
//!   guest reads the same bytes through the VMM's mapping: the path
//!   without vms.ko's help.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing; `knob_off` skips without
//! the debug knobs.

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vms_selftests::guest::{self, Walk};
use vms_selftests::knob::Knob;
use vms_selftests::ksft::{self, check, Test};
use vms_selftests::kvm::{self, Vm};
use vms_selftests::vms::{
    __vm_map_clone, image_create, pattern_word, require_vms_and_kvm, unique_name, vms_open,
    CloneMap, Image, ImageFile, VmsClone, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// 1 MiB images.
const PAGES: u64 = 256;
const SIZE: u64 = PAGES * PAGE_SIZE;
/// Where the tests put their memslots: 1 GiB, as `CLONE_GPA`.
const GPA: u64 = 0x4000_0000;
const SLOT: u32 = 1;
const KVM_MEM_LOG_DIRTY_PAGES: u32 = 1;

struct Setup {
    _file: ImageFile,
    image: Image,
}

fn setup(tag: &str) -> Setup {
    let dev = vms_open();
    let name = unique_name(tag);
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), SIZE, 0);
    Setup { _file: file, image }
}

/// A VM with one vCPU and memslot `slot` at `gpa` on clone bytes
/// `offset..offset + size`, made with `flags` and nothing else.
#[track_caller]
fn map_slot(
    vm: &mut Vm,
    map: &std::sync::Arc<CloneMap>,
    slot: u32,
    gpa: u64,
    offset: u64,
    size: u64,
    flags: u32,
) {
    check(
        __vm_map_clone(vm, map, slot, gpa, offset, size, flags),
        "KVM_SET_USER_MEMORY_REGION2 (no KVM_MEM_PAGE_PROVIDER)",
    );
}

/// An image, a clone of it mapped, and a VM with one vCPU; with
/// `whole_slot`, memslot `SLOT` at `GPA` on the whole clone, flags 0.
fn clone_vm(tag: &str, whole_slot: bool) -> (Setup, VmsClone, std::sync::Arc<CloneMap>, Vm) {
    let s = setup(tag);
    let clone = s.image.clone_create();
    let map = clone.map();
    let mut vm = new_vm(&kvm::open_kvm());
    if whole_slot {
        map_slot(&mut vm, &map, SLOT, GPA, 0, SIZE, 0);
    }
    (s, clone, map, vm)
}

fn new_vm(kvm: &kvm_ioctls::Kvm) -> Vm {
    let mut vm = kvm::vm_create_pm32(kvm);
    vm.add_vcpu_pm32(0, guest::code_gpa(0));
    vm
}

/// Stage-2 faults the clone served, and faults of its mappings.
fn faults(clone: &VmsClone) -> (u64, u64) {
    let s = clone.stats();
    (s.faults, s.mmap_faults)
}

fn plain_slot() {
    let (s, clone, map, mut vm) = clone_vm("claim_plain", true);

    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );
    let cs = clone.stats();
    ksft::ksft_print_msg(&format!("after the reads: {cs:?}"));
    test_assert!(
        cs.faults >= PAGES,
        "the clone served fewer stage-2 faults than pages: {cs:?}"
    );
    test_assert_eq!(cs.mmap_faults, 0, "KVM went through the VMM's mapping");
    test_assert_eq!(cs.private_pages, 0);

    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(GPA + 5 * PAGE_SIZE, 1, 0x0c1a_1105)),
    );
    let cs = clone.stats();
    test_assert_eq!(cs.cow_copies, 1, "{cs:?}");
    test_assert_eq!(cs.private_pages, 1, "{cs:?}");
    test_assert_eq!(
        map.read_u32(5 * PAGE_SIZE),
        0x0c1a_1105,
        "the VMM sees the guest's write"
    );
    test_assert_eq!(map.read_u32(6 * PAGE_SIZE), pattern_word(6));
    // The VMM's mapping goes first (the claim lapses and the clone leaves
    // the VM from a workqueue), then the VM and the clone: nothing of the
    // clone may outlive its last file, or the image could not be deleted.
    drop(map);
    drop(vm);
    drop(clone);
    test_assert_eq!(s.image.info().clones, 0, "the clone outlived its files");
}

fn split_slots() {
    let (_s, clone, map, mut vm) = clone_vm("claim_split", false);
    // Clone pages 0..100 at GPA, 100..256 at GPA + 2 MiB: a hole between.
    let low = 100;
    let high_gpa = GPA + 0x20_0000;
    map_slot(&mut vm, &map, SLOT, GPA, 0, low * PAGE_SIZE, 0);
    map_slot(
        &mut vm,
        &map,
        SLOT + 1,
        high_gpa,
        low * PAGE_SIZE,
        SIZE - low * PAGE_SIZE,
        0,
    );
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(GPA, 0, low)));
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(high_gpa, low, PAGES - low)),
    );
    let (f, m) = faults(&clone);
    test_assert!(f >= PAGES, "stage-2 faults {f} < {PAGES}");
    test_assert_eq!(m, 0, "KVM went through the VMM's mapping");
    // A write through the high slot lands on the right clone page.
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(high_gpa + 7 * PAGE_SIZE, 1, 0x0c1a_1107)),
    );
    test_assert_eq!(map.read_u32((low + 7) * PAGE_SIZE), 0x0c1a_1107);
}

fn delete_recreate() {
    let (_s, clone, map, mut vm) = clone_vm("claim_recreate", true);
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(GPA + 3 * PAGE_SIZE, 1, 0x0c1a_1103)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA + 4 * PAGE_SIZE, 4, 10)),
    );
    let (f1, _) = faults(&clone);

    // Delete (size 0), then the same id elsewhere, as after a reboot.
    map_slot(&mut vm, &map, SLOT, GPA, 0, 0, 0);
    let gpa2 = GPA + 0x100_0000;
    map_slot(&mut vm, &map, SLOT, gpa2, 0, SIZE, 0);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::values(gpa2 + 3 * PAGE_SIZE, 1, 0x0c1a_1103)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(gpa2 + 4 * PAGE_SIZE, 4, PAGES - 4)),
    );
    let (f2, m2) = faults(&clone);
    test_assert!(
        f2 >= f1 + PAGES - 4,
        "the new slot's reads took {} stage-2 faults",
        f2 - f1
    );
    test_assert_eq!(m2, 0, "KVM went through the VMM's mapping");
    // And once more at the first address.
    map_slot(&mut vm, &map, SLOT, gpa2, 0, 0, 0);
    map_slot(&mut vm, &map, SLOT, GPA, 0, SIZE, 0);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::values(GPA + 3 * PAGE_SIZE, 1, 0x0c1a_1103)),
    );
    test_assert_eq!(clone.stats().mmap_faults, 0);
}

fn dirty_logging() {
    let (_s, clone, map, mut vm) = clone_vm("claim_dirty", true);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );

    map_slot(&mut vm, &map, SLOT, GPA, 0, SIZE, KVM_MEM_LOG_DIRTY_PAGES);
    // Read the log once to start from a clean bitmap.
    check(
        vm.fd().get_dirty_log(SLOT, SIZE as usize),
        "KVM_GET_DIRTY_LOG",
    );
    let (f0, _) = faults(&clone);
    for page in [3u64, 7, 200] {
        guest::run(
            &mut vm,
            0,
            &guest::write(&Walk::values(
                GPA + page * PAGE_SIZE,
                1,
                0x0d00_0000 | page as u32,
            )),
        );
    }
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA + 8 * PAGE_SIZE, 8, 100)),
    );
    let log = check(
        vm.fd().get_dirty_log(SLOT, SIZE as usize),
        "KVM_GET_DIRTY_LOG",
    );
    let dirty: Vec<u64> = (0..PAGES)
        .filter(|&p| log[(p / 64) as usize] >> (p % 64) & 1 != 0)
        .collect();
    ksft::ksft_print_msg(&format!("dirty pages: {dirty:?}"));
    test_assert_eq!(dirty, vec![3, 7, 200], "the dirty log");
    let cs = clone.stats();
    test_assert!(
        cs.faults > f0,
        "the writes took no stage-2 fault of the clone: {cs:?}"
    );
    test_assert_eq!(cs.mmap_faults, 0, "KVM went through the VMM's mapping");
    test_assert_eq!(cs.private_pages, 3, "{cs:?}");
    for page in [3u64, 7, 200] {
        test_assert_eq!(map.read_u32(page * PAGE_SIZE), 0x0d00_0000 | page as u32);
    }

    // Off again. (The reads of the VMM's mapping above faulted it.)
    map_slot(&mut vm, &map, SLOT, GPA, 0, SIZE, 0);
    let (f1, m1) = faults(&clone);
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(GPA + 9 * PAGE_SIZE, 1, 0x0d00_0009)),
    );
    let (f2, m2) = faults(&clone);
    test_assert!(f2 > f1, "the write took no stage-2 fault of the clone");
    test_assert_eq!(m2, m1, "KVM went through the VMM's mapping");
    test_assert_eq!(map.read_u32(9 * PAGE_SIZE), 0x0d00_0009);
}

/// `/sys/kernel/debug/kvm/PID-FD`, KVM's directory for a VM, which goes
/// when the VM is destroyed.
fn vm_debugfs_dir(vm: &Vm) -> PathBuf {
    PathBuf::from(format!(
        "/sys/kernel/debug/kvm/{}-{}",
        std::process::id(),
        vm.fd().as_raw_fd()
    ))
}

fn mapping_gone() {
    let (_s, clone, map, mut vm) = clone_vm("claim_gone", true);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );
    let dir = vm_debugfs_dir(&vm);
    let have_dir = dir.exists();

    // The VMM puts other memory where the clone was.
    anon_over(&map);
    let (f0, _) = faults(&clone);
    let touched = PAGES - UNTOUCHED;
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::values(GPA, touched, 0x0e00_0000)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::zeros(GPA + touched * PAGE_SIZE, UNTOUCHED)),
    );
    let (f1, _) = faults(&clone);
    test_assert_eq!(
        f1,
        f0,
        "the clone still served the slot after its mapping went"
    );

    // The clone stays open; the VM goes with its last file descriptor.
    drop(vm);
    if have_dir {
        let end = Instant::now() + Duration::from_secs(10);
        while dir.exists() && Instant::now() < end {
            std::thread::sleep(Duration::from_millis(20));
        }
        test_assert!(
            !dir.exists(),
            "the VM lives on ({} still there): the clone holds it",
            dir.display()
        );
    } else {
        ksft::ksft_print_msg("no KVM debugfs: not checking that the VM went");
    }
    drop(clone);
}

/// Pages at the end of [`anon_over`]'s memory that stay untouched: they
/// read as zeros, through the shared zero page, which stage 2 then maps
/// read-only.
const UNTOUCHED: u64 = 16;

/// Puts anonymous memory where `map` was, as a VMM that maps other memory
/// over a clone would: page `p` holds `0x0e00_0000 + p` (and its
/// complement at byte 2048), but the last [`UNTOUCHED`] pages are never
/// written.
fn anon_over(map: &CloneMap) {
    map.unmap();
    let p = map.ptr_at(0);
    // SAFETY: the range is the CloneMap's reserved anonymous mapping,
    // which nothing else uses; it stays reserved while `map` lives.
    let r = unsafe { libc::mprotect(p.cast(), SIZE as usize, libc::PROT_READ | libc::PROT_WRITE) };
    test_assert_eq!(r, 0, "mprotect");
    for page in 0..PAGES - UNTOUCHED {
        let v = 0x0e00_0000u32 + page as u32;
        // SAFETY: inside the range made writable above.
        unsafe {
            (p.add((page * PAGE_SIZE) as usize) as *mut u32).write_volatile(v);
            (p.add((page * PAGE_SIZE + 2048) as usize) as *mut u32).write_volatile(!v);
        }
    }
}

/// The review's case: a claim lapses, the guest reads the VMM's new
/// memory (stage 2 maps it), and the VMM then attaches the clone to the
/// same memslot by hand. The clone must not start serving the slot: its
/// page would replace a present mapping of the VMM's memory (KVM BUG()s
/// on a leaf changing pfn), and the guest would see the clone instead of
/// what the VMM maps.
fn attach_after_lapse() {
    let (_s, clone, map, mut vm) = clone_vm("claim_attach", true);
    guest::run(&mut vm, 0, &guest::read_check(&Walk::pattern(GPA, 0, 4)));
    anon_over(&map);
    // Stage 2 maps the untouched pages read-only (the zero page).
    let touched = PAGES - UNTOUCHED;
    let zeros = GPA + touched * PAGE_SIZE;
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::zeros(zeros, UNTOUCHED)),
    );
    // Let the clone leave the VM (a workqueue), then attach it again.
    std::thread::sleep(Duration::from_millis(300));
    let r = clone.__attach(&vms_selftests::vms::clone_attach_arg(
        vm.fd().as_raw_fd(),
        SLOT,
        0,
        SIZE,
    ));
    ksft::ksft_print_msg(&format!("VMS_CLONE_ATTACH on the lapsed slot: {r:?}"));
    let (f0, _) = faults(&clone);
    // A write to a page stage 2 maps read-only: it faults, and must go to
    // the host address, not the clone.
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(zeros + PAGE_SIZE, 1, 0x0f00_0002)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::values(GPA, touched, 0x0e00_0000)),
    );
    let (f1, _) = faults(&clone);
    test_assert_eq!(
        f1,
        f0,
        "the clone served a slot whose host address maps other memory"
    );
    // SAFETY: inside the anonymous range `anon_over` made writable.
    let got = unsafe { (map.ptr_at((touched + 1) * PAGE_SIZE) as *const u32).read_volatile() };
    test_assert_eq!(
        got,
        0x0f00_0002,
        "the guest's write reached the VMM's memory"
    );
}

/// A claim is for a writable mapping: once the VMM makes it read-only,
/// the slot behaves as its host address does (reads work, a guest write
/// fails KVM_RUN with EFAULT), never writable through the clone.
fn mprotect_read_only() {
    let (_s, clone, map, mut vm) = clone_vm("claim_mprotect", true);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );
    // SAFETY: our own clone mapping; nothing of ours is in it.
    let r = unsafe { libc::mprotect(map.ptr_at(0).cast(), SIZE as usize, libc::PROT_READ) };
    test_assert_eq!(r, 0, "mprotect(PROT_READ)");
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );
    guest::load(
        &mut vm,
        0,
        &guest::write(&Walk::values(GPA + 4 * PAGE_SIZE, 1, 0x0f00_0004)),
    );
    let r = guest::__run(vm.vcpu(0));
    ksft::ksft_print_msg(&format!("a guest write to the read-only mapping: {r:?}"));
    test_assert!(
        matches!(&r, Err(e) if e.errno() == libc::EFAULT),
        "a guest write to a read-only clone mapping did not fail with EFAULT: {r:?}"
    );
    test_assert_eq!(
        map.read_u32(4 * PAGE_SIZE),
        pattern_word(4),
        "the page changed"
    );
    test_assert_eq!(clone.stats().private_pages, 0);
}

fn second_clone() {
    let s = setup("claim_second");
    let a = s.image.clone_create();
    let b = s.image.clone_create();
    let a_map = a.map();
    let b_map = b.map();
    let kvm = kvm::open_kvm();
    let mut vm = new_vm(&kvm);
    map_slot(&mut vm, &a_map, SLOT, GPA, 0, SIZE, 0);
    let b_gpa = GPA + 0x100_0000;
    map_slot(&mut vm, &b_map, SLOT + 1, b_gpa, 0, SIZE, 0);
    b_map.write_u32(2 * PAGE_SIZE, 0x0b0b_0002);
    b_map.write_u32(2 * PAGE_SIZE + 2048, !0x0b0b_0002);
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(b_gpa + 3 * PAGE_SIZE, 3, PAGES - 3)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::values(b_gpa + 2 * PAGE_SIZE, 1, 0x0b0b_0002)),
    );
    let (fa, ma) = faults(&a);
    let (fb, mb) = faults(&b);
    ksft::ksft_print_msg(&format!("a: {fa} stage-2, {ma} mmap faults; b: {fb}, {mb}"));
    test_assert!(fa >= PAGES && ma == 0, "clone a serves its slot");
    test_assert!(
        fb == 0 && mb >= PAGES - 3,
        "clone b's slot goes through the VMM's mapping"
    );
}

fn knob_off() {
    let knob = Knob::require("claim_slots");
    let (_s, clone, map, mut vm) = clone_vm("claim_off", false);
    knob.set(0);
    let r = __vm_map_clone(&mut vm, &map, SLOT, GPA, 0, SIZE, 0);
    knob.set(1);
    check(r, "KVM_SET_USER_MEMORY_REGION2");
    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(GPA, 0, PAGES)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(GPA + 5 * PAGE_SIZE, 1, 0x0c1a_1105)),
    );
    test_assert_eq!(map.read_u32(5 * PAGE_SIZE), 0x0c1a_1105);
    let (f, m) = faults(&clone);
    test_assert_eq!(f, 0, "a slot made with the knob off was claimed");
    test_assert!(
        m >= PAGES,
        "{m} faults of the VMM's mapping for {PAGES} pages"
    );
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("plain_slot", plain_slot),
        Test::new("split_slots", split_slots),
        Test::new("delete_recreate", delete_recreate),
        Test::new("dirty_logging", dirty_logging),
        Test::new("mapping_gone", mapping_gone),
        Test::new("attach_after_lapse", attach_after_lapse),
        Test::new("mprotect_read_only", mprotect_read_only),
        Test::new("second_clone", second_clone),
        Test::new("knob_off", knob_off),
    ]);
}
