// SPDX-License-Identifier: GPL-2.0

//! working_set: `VMS_CLONE_TOUCHED` says which pages a clone has used.
//!
//! A VMM records a clone's working set with it and prefetches that set
//! in later clones of the image (`vmsctl live-image record`). A page it
//! leaves out streams on demand later (slower); a page it adds costs a
//! read; so the set must be exact for the accesses the module served.
//!
//! - `touched_is_every_access`: of a 1024-page clone, the guest reads
//!   pages 0..100 and writes 200..250 (a first access that writes, which
//!   copies without mapping the image's page), the VMM reads 300..310 and
//!   writes 400..405 through its mapping, and the guest writes page 50
//!   (read before). The bitmap holds exactly those pages, and the count
//!   matches it.
//! - `touched_survives_snapshot_and_reset`: a snapshot moves the clone's
//!   private pages into a live image and a reset drops them; the pages
//!   were still used, and stay set.
//! - `stage2_mark_after_used`: a page first written (marked used only),
//!   moved into a live image by a snapshot, then read by the guest; the
//!   VMM then writes it. The guest must read the VMM's bytes: the read
//!   must have marked the page mapped by stage 2 although it was marked
//!   used already, or the copy-on-write skips the zap.
//! - `touched_subrange`: `first` and `npages` select a window; bits past
//!   `npages` in the last word are 0, and no word past it is written.
//! - `touched_bad_input`: `first` not a multiple of 64, a range past the
//!   end of the clone (also by overflow), nonzero flags, pad or reserved:
//!   EINVAL; a bitmap at an unmapped or read-only address: EFAULT. An
//!   empty range is fine.
//!
//! Skips if `/dev/vms` or `/dev/kvm` is missing.

use vms_selftests::guest::{self, Walk};
use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm;
use vms_selftests::vms::{
    image_create, image_snapshot, require_vms_and_kvm, unique_name, vm_with_clone, vms_open,
    ImageFile, CLONE_GPA, PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};
use vms_uapi::VmsCloneTouched;

const PAGES: u64 = 1024;

fn range(a: u64, b: u64) -> impl Iterator<Item = u64> {
    a..b
}

fn touched_is_every_access() {
    let dev = vms_open();
    let name = unique_name("working_set");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = image.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    test_assert_eq!(
        clone.touched(0, PAGES),
        Vec::<u64>::new(),
        "a new clone has used nothing"
    );

    guest::run(
        &mut vm,
        0,
        &guest::read_check(&Walk::pattern(CLONE_GPA, 0, 100)),
    );
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(CLONE_GPA + 200 * PAGE_SIZE, 50, 0x0a00_0000)),
    );
    for p in 300..310 {
        map.read_u32(p * PAGE_SIZE);
    }
    for p in 400..405 {
        map.write_u32(p * PAGE_SIZE, 0x0b00_0000);
    }
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(CLONE_GPA + 50 * PAGE_SIZE, 1, 0x0c00_0000)),
    );

    let want: Vec<u64> = range(0, 100)
        .chain(200..250)
        .chain(300..310)
        .chain(400..405)
        .collect();
    let got = clone.touched(0, PAGES);
    ksft::ksft_print_msg(&format!(
        "{} pages touched, {} expected",
        got.len(),
        want.len()
    ));
    test_assert_eq!(got, want);
    let s = clone.stats();
    test_assert_eq!(s.private_pages, 50 + 5 + 1);
    drop((vm, map, clone));
    image.delete();
}

fn touched_survives_snapshot_and_reset() {
    let dev = vms_open();
    let name = unique_name("working_set_snap");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let base = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = base.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    // First accesses that write: private pages, never a shared mapping.
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(CLONE_GPA, 64, 0x0a00_0000)),
    );
    let live = image_snapshot(&dev, &unique_name("working_set_live"), &clone);
    test_assert_eq!(
        clone.stats().private_pages,
        0,
        "the snapshot took the private pages"
    );
    test_assert_eq!(
        clone.touched(0, PAGES),
        (0..64).collect::<Vec<_>>(),
        "after the snapshot"
    );
    guest::run(
        &mut vm,
        0,
        &guest::write(&Walk::values(CLONE_GPA + 512 * PAGE_SIZE, 8, 0x0b00_0000)),
    );
    clone.reset();
    test_assert_eq!(clone.stats().private_pages, 0);
    let want: Vec<u64> = range(0, 64).chain(512..520).collect();
    test_assert_eq!(clone.touched(0, PAGES), want, "after the reset");
    drop((vm, map, clone));
    live.delete();
    base.delete();
}

/// A page first written (marked used only), then moved into a live image
/// by a snapshot, then read by the guest: the read must still record that
/// stage 2 maps the shared page, or the VMM's copy-on-write of it later
/// skips the zap and the guest goes on reading the old page.
fn stage2_mark_after_used() {
    const N: u64 = 64;
    let dev = vms_open();
    let name = unique_name("working_set_marks");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let base = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let clone = base.clone_create();
    let map = clone.map();
    let mut vm = vm_with_clone(&kvm, &clone, &map, 1);
    let first = Walk::values(CLONE_GPA, N, 0x0a00_0000);
    guest::run(&mut vm, 0, &guest::write(&first));
    let live = image_snapshot(&dev, &unique_name("working_set_marks_live"), &clone);
    guest::run(&mut vm, 0, &guest::read_check(&first));
    // The VMM writes both words the guest checks, as the guest's write
    // walk does: a copy-on-write of each page, which must zap stage 2.
    let vmm = Walk::values(CLONE_GPA, N, 0x0b00_0000);
    for i in 0..N {
        let (lo, hi) = vmm.value(i as u32);
        map.write_u32(i * PAGE_SIZE, lo);
        map.write_u32(i * PAGE_SIZE + vms_selftests::vms::HI_OFFSET, hi);
    }
    guest::run(&mut vm, 0, &guest::read_check(&vmm));
    drop((vm, map, clone));
    live.delete();
    base.delete();
}

fn touched_subrange() {
    let dev = vms_open();
    let name = unique_name("working_set_sub");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    for p in [63, 64, 65, 127, 128, 129, 1000, 1023] {
        map.read_u32(p * PAGE_SIZE);
    }
    test_assert_eq!(clone.touched(64, 65), vec![64, 65, 127, 128]);
    test_assert_eq!(clone.touched(64, 66), vec![64, 65, 127, 128, 129]);
    test_assert_eq!(clone.touched(0, 1), Vec::<u64>::new());
    test_assert_eq!(clone.touched(960, 64), vec![1000, 1023]);
    test_assert_eq!(
        clone.touched(0, PAGES),
        vec![63, 64, 65, 127, 128, 129, 1000, 1023]
    );
    test_assert_eq!(
        clone.touched(1024, 0),
        Vec::<u64>::new(),
        "an empty range at the end"
    );
    drop((map, clone));
    image.delete();
}

fn touched_bad_input() {
    let dev = vms_open();
    let name = unique_name("working_set_bad");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let clone = image.clone_create();
    let map = clone.map();
    map.read_u32(0);
    let mut words = vec![0u64; 32];
    let good = VmsCloneTouched {
        bitmap: words.as_mut_ptr() as u64,
        npages: 64,
        ..VmsCloneTouched::zeroed()
    };
    let einval = |what: &str, a: VmsCloneTouched| {
        let mut a = a;
        let e = clone.__touched(&mut a).expect_err(what);
        test_assert_eq!(e.raw_os_error(), Some(libc::EINVAL), "{what}: {e}");
    };
    einval(
        "first not a multiple of 64",
        VmsCloneTouched { first: 1, ..good },
    );
    einval(
        "past the end",
        VmsCloneTouched {
            first: 1024,
            npages: 1,
            ..good
        },
    );
    einval(
        "past the end by one",
        VmsCloneTouched {
            first: 0,
            npages: 1025,
            ..good
        },
    );
    einval(
        "overflow",
        VmsCloneTouched {
            first: 64,
            npages: u64::MAX - 32,
            ..good
        },
    );
    einval("flags", VmsCloneTouched { flags: 1, ..good });
    einval("pad", VmsCloneTouched { pad: 1, ..good });
    einval(
        "reserved",
        VmsCloneTouched {
            reserved: [0, 0, 0, 1],
            ..good
        },
    );
    let efault = |what: &str, a: VmsCloneTouched| {
        let mut a = a;
        let e = clone.__touched(&mut a).expect_err(what);
        test_assert_eq!(e.raw_os_error(), Some(libc::EFAULT), "{what}: {e}");
    };
    efault("a null bitmap", VmsCloneTouched { bitmap: 0, ..good });
    efault(
        "a kernel address",
        VmsCloneTouched {
            bitmap: 0xffff_8000_0000_0000,
            ..good
        },
    );
    // A read-only page: the clone's 16 words would fit in it.
    // SAFETY: a new private anonymous read-only mapping; nothing aliases it.
    let ro = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            4096,
            libc::PROT_READ,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    test_assert!(ro != libc::MAP_FAILED, "mmap");
    efault(
        "a read-only bitmap",
        VmsCloneTouched {
            bitmap: ro as u64,
            npages: PAGES,
            ..good
        },
    );
    // SAFETY: unmapping what we mapped above.
    unsafe { libc::munmap(ro, 4096) };
    // The good argument still works, and nothing was changed by the bad ones.
    let mut a = good;
    ksft::check(clone.__touched(&mut a), "VMS_CLONE_TOUCHED");
    test_assert_eq!(a.touched, 1);
    test_assert_eq!(words[0], 1);
    test_assert_eq!(words[1], 0, "a word past npages was written");
    let mut empty = VmsCloneTouched { npages: 0, ..good };
    ksft::check(clone.__touched(&mut empty), "VMS_CLONE_TOUCHED of nothing");
    test_assert_eq!(empty.touched, 0);
    drop((map, clone));
    image.delete();
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[
        Test::new("touched_is_every_access", touched_is_every_access),
        Test::new(
            "touched_survives_snapshot_and_reset",
            touched_survives_snapshot_and_reset,
        ),
        Test::new("stage2_mark_after_used", stage2_mark_after_used),
        Test::new("touched_subrange", touched_subrange),
        Test::new("touched_bad_input", touched_bad_input),
    ]);
}
