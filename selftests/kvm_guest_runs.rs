// SPDX-License-Identifier: GPL-2.0

//! kvm_guest_runs: KVM can run a real-mode guest on this kernel.
//!
//! A baseline for every other test: a guest at gpa 0x1000 writes one byte
//! to the COM1 port and halts, on one vCPU and then on two vCPUs running
//! at once. Skips if there is no `/dev/kvm` or no usable hardware
//! virtualization.

use std::panic;
use std::thread;

use vms_selftests::ksft::{self, Test};
use vms_selftests::kvm::{self, code_out_hlt, vcpu_run, vm_create, Exit, COM1};
use vms_selftests::test_assert_eq;

/// Where the single vCPU's code goes: above the real-mode IVT and BDA.
const CODE_GPA: u64 = 0x1000;
/// Guest memory: one memslot of 64 KiB at gpa 0.
const MEM_SIZE: usize = 0x1_0000;

/// One vCPU: `out 'V' to 0x3f8`, then `hlt`.
fn one_vcpu_out_then_hlt() {
    let kvm = kvm::open_kvm();
    let mut vm = vm_create(&kvm);
    vm.add_memory(0, 0, MEM_SIZE);
    vm.write(CODE_GPA, &code_out_hlt(b'V'));
    vm.add_vcpu(0, CODE_GPA);

    let vcpu = vm.vcpu(0);
    test_assert_eq!(
        vcpu_run(vcpu),
        Exit::IoOut {
            port: COM1,
            data: b"V".to_vec()
        }
    );
    test_assert_eq!(vcpu_run(vcpu), Exit::Hlt);
}

/// Two vCPUs, each on its own thread with its own code: vCPU i writes
/// `'0' + i`, then halts.
fn two_vcpus_out_then_hlt() {
    const NR_VCPUS: u8 = 2;
    let kvm = kvm::open_kvm();
    let mut vm = vm_create(&kvm);
    vm.add_memory(0, 0, MEM_SIZE);
    for i in 0..NR_VCPUS {
        let gpa = CODE_GPA + u64::from(i) * 0x100;
        vm.write(gpa, &code_out_hlt(b'0' + i));
        vm.add_vcpu(u64::from(i), gpa);
    }

    thread::scope(|s| {
        let handles: Vec<_> = vm
            .vcpus_mut()
            .iter_mut()
            .zip(0u8..)
            .map(|(vcpu, i)| {
                s.spawn(move || {
                    test_assert_eq!(
                        vcpu_run(vcpu),
                        Exit::IoOut {
                            port: COM1,
                            data: vec![b'0' + i]
                        },
                        "vCPU {i}"
                    );
                    test_assert_eq!(vcpu_run(vcpu), Exit::Hlt, "vCPU {i}");
                })
            })
            .collect();
        // Join every thread, then pass the first failure on to the harness
        // (resume_unwind: the panic hook already printed it).
        let mut first_failure = None;
        for h in handles {
            if let Err(p) = h.join() {
                first_failure.get_or_insert(p);
            }
        }
        if let Some(p) = first_failure {
            panic::resume_unwind(p);
        }
    });
}

fn main() {
    ksft::init();
    // Requirements, checked once before the plan so that a host without
    // KVM skips the whole test: /dev/kvm opens and a VM can be created.
    let kvm = kvm::open_kvm();
    drop(vm_create(&kvm));
    drop(kvm);

    ksft::run(&[
        Test::new("one_vcpu_out_then_hlt", one_vcpu_out_then_hlt),
        Test::new("two_vcpus_out_then_hlt", two_vcpus_out_then_hlt),
    ]);
}
