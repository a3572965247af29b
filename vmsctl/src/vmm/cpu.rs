// SPDX-License-Identifier: GPL-2.0

//! vCPU setup: CPUID, the MSRs a firmware would set, the local APIC's
//! LINT pins, and for the boot vCPU the registers of the 64-bit entry.
//!
//! The other vCPUs start as KVM creates them with an in-kernel irqchip:
//! waiting for INIT/SIPI, which the guest sends to bring them up; KVM
//! resets their registers then, so only the boot vCPU's are set here.

use anyhow::{bail, Context, Result};
use kvm_bindings::{kvm_fpu, kvm_msr_entry, kvm_regs, kvm_segment, CpuId, Msrs};
use kvm_ioctls::VcpuFd;

use super::boot::{BootEntry, GDT, GDT_CODE, GDT_DATA, GDT_TSS};
use super::layout::{BOOT_STACK_POINTER, GDT_START, IDT_START, PML4_START};

/// Sets up vCPU `index` of `cpus`: its CPUID from `supported` (KVM's
/// `KVM_GET_SUPPORTED_CPUID`), MSRs and LAPIC; and, given the boot entry,
/// the registers that start the kernel.
pub fn configure(
    vcpu: &VcpuFd,
    index: u8,
    cpus: u8,
    supported: &CpuId,
    boot: Option<&BootEntry>,
    acpi: bool,
) -> Result<()> {
    let cpuid = cpuid_for(supported, index, cpus);
    vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
    set_boot_msrs(vcpu)?;
    set_lint(vcpu, acpi)?;
    if let Some(boot) = boot {
        set_boot_registers(vcpu, boot)?;
    }
    Ok(())
}

/// Leaf 1 ECX: running on a hypervisor.
const LEAF1_ECX_HYPERVISOR: u32 = 1 << 31;
/// Leaf 1 EDX: EBX[23:16] (logical processors per package) is valid.
const LEAF1_EDX_HTT: u32 = 1 << 28;
/// Topology level types of leaves 0xB and 0x1F.
const LEVEL_SMT: u32 = 1;
const LEVEL_CORE: u32 = 2;

/// KVM's supported CPUID with the per-vCPU parts filled in: the APIC id
/// (= vCPU index, as KVM numbers the LAPICs) and a topology of `cpus`
/// single-threaded cores in one package, in every leaf Linux reads it
/// from on Intel (1, 0xB, 0x1F) and AMD (1, 0x8000_0008, 0x8000_001E).
/// Everything else is kept, notably KVM's paravirtual leaves
/// (0x4000_0000: signature, 0x4000_0001: features such as kvmclock).
fn cpuid_for(supported: &CpuId, apic_id: u8, cpus: u8) -> CpuId {
    let apic_id = u32::from(apic_id);
    let cpus = u32::from(cpus);
    // Bits of the APIC id that number the cores.
    let core_bits = cpus.next_power_of_two().trailing_zeros();
    let mut cpuid = supported.clone();
    for e in cpuid.as_mut_slice() {
        match e.function {
            1 => {
                e.ebx = (e.ebx & 0x0000_ffff) | apic_id << 24 | cpus.next_power_of_two() << 16;
                e.ecx |= LEAF1_ECX_HYPERVISOR;
                if cpus > 1 {
                    e.edx |= LEAF1_EDX_HTT;
                } else {
                    e.edx &= !LEAF1_EDX_HTT;
                }
            }
            0xb | 0x1f => {
                (e.eax, e.ebx, e.ecx) = match e.index {
                    0 => (0, 1, LEVEL_SMT << 8),
                    1 => (core_bits, cpus, LEVEL_CORE << 8 | 1),
                    n => (0, 0, n),
                };
                e.edx = apic_id;
            }
            0x8000_0008 => {
                // ApicIdCoreIdSize (15:12) and NC, cores - 1 (7:0).
                e.ecx = (e.ecx & !0xf0ff) | core_bits << 12 | (cpus - 1);
            }
            0x8000_001e => {
                e.eax = apic_id; // extended APIC id
                e.ebx = apic_id; // core id; one thread per core (15:8 = 0)
                e.ecx = 0; // node 0, one node per package
            }
            _ => {}
        }
    }
    cpuid
}

/// MSRs and values a firmware leaves behind: no SYSENTER/SYSCALL targets
/// yet, fast string operations on, and MTRRs enabled with write-back as
/// the default memory type (without it all memory would be uncached on
/// hosts that honour guest MTRRs).
const BOOT_MSRS: [(u32, u64); 10] = [
    (0x174, 0),          // IA32_SYSENTER_CS
    (0x175, 0),          // IA32_SYSENTER_ESP
    (0x176, 0),          // IA32_SYSENTER_EIP
    (0xc000_0081, 0),    // STAR
    (0xc000_0082, 0),    // LSTAR
    (0xc000_0083, 0),    // CSTAR
    (0xc000_0084, 0),    // SYSCALL_MASK
    (0xc000_0102, 0),    // KERNEL_GS_BASE
    (0x1a0, 1),          // IA32_MISC_ENABLE: fast strings
    (0x2ff, 1 << 11 | 6), // MTRRdefType: enabled, write-back
];

fn set_boot_msrs(vcpu: &VcpuFd) -> Result<()> {
    let entries: Vec<kvm_msr_entry> = BOOT_MSRS
        .iter()
        .map(|&(index, data)| kvm_msr_entry {
            index,
            data,
            ..Default::default()
        })
        .collect();
    let msrs = Msrs::from_entries(&entries).context("building the boot MSR list")?;
    let set = vcpu.set_msrs(&msrs).context("KVM_SET_MSRS")?;
    if set != entries.len() {
        bail!(
            "KVM_SET_MSRS: KVM refused MSR {:#x} (set {set} of {})",
            entries[set].index,
            entries.len()
        );
    }
    Ok(())
}

/// LAPIC register offsets of the LINT0 and LINT1 local vector table
/// entries, and their delivery modes on a PC.
const APIC_LVT0: usize = 0x350;
const APIC_LVT1: usize = 0x360;
const DELIVERY_EXTINT: u32 = 0x7;
const DELIVERY_NMI: u32 = 0x4;

/// LVT mask bit.
const LVT_MASKED: u32 = 1 << 16;

/// Wires the LAPIC as on a PC (and as the MP table says): LINT0 takes
/// the 8259 PIC's interrupts (ExtINT), LINT1 is the NMI pin.
///
/// With ACPI (hardware-reduced: no legacy PIC for Linux, which never
/// programs it) LINT0 starts masked: Linux keeps the boot CPU's LINT0 as
/// it finds it when unmasked, and KVM's PIC, which also receives every
/// ISA IRQ in its default routing, would then inject them as ExtINT
/// vectors the guest never set up.
fn set_lint(vcpu: &VcpuFd, acpi: bool) -> Result<()> {
    let mut lapic = vcpu.get_lapic().context("KVM_GET_LAPIC")?;
    for (offset, mode) in [(APIC_LVT0, DELIVERY_EXTINT), (APIC_LVT1, DELIVERY_NMI)] {
        let reg = &mut lapic.regs[offset..offset + 4];
        let value = u32::from_le_bytes([reg[0] as u8, reg[1] as u8, reg[2] as u8, reg[3] as u8]);
        let mut value = (value & !0x700) | mode << 8;
        if acpi && offset == APIC_LVT0 {
            value |= LVT_MASKED;
        }
        for (dst, src) in reg.iter_mut().zip(value.to_le_bytes()) {
            *dst = src as _;
        }
    }
    vcpu.set_lapic(&lapic).context("KVM_SET_LAPIC")
}

/// CR0: protection, paging; cache disable and not-write-through (set at
/// reset) cleared.
const CR0_PE: u64 = 1 << 0;
const CR0_NW: u64 = 1 << 29;
const CR0_CD: u64 = 1 << 30;
const CR0_PG: u64 = 1 << 31;
/// CR4: physical address extension (needed for long mode).
const CR4_PAE: u64 = 1 << 5;
/// EFER: long mode enabled and active.
const EFER_LME: u64 = 1 << 8;
const EFER_LMA: u64 = 1 << 10;

/// The boot vCPU's registers for the 64-bit entry: long mode with the
/// identity page tables, flat segments from the boot GDT, `rip` at the
/// entry point, `rsi` at the zero page, interrupts off.
fn set_boot_registers(vcpu: &VcpuFd, boot: &BootEntry) -> Result<()> {
    let regs = kvm_regs {
        rflags: 0x2, // bit 1 is always set
        rip: boot.entry.0,
        rsp: BOOT_STACK_POINTER,
        rbp: BOOT_STACK_POINTER,
        rsi: boot.zero_page.0,
        ..Default::default()
    };
    vcpu.set_regs(&regs).context("KVM_SET_REGS")?;

    let mut sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    let code = segment(GDT_CODE);
    let data = segment(GDT_DATA);
    sregs.cs = code;
    (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss) = (data, data, data, data, data);
    sregs.tr = segment(GDT_TSS);
    sregs.gdt.base = GDT_START;
    sregs.gdt.limit = (std::mem::size_of_val(&GDT) - 1) as u16;
    sregs.idt.base = IDT_START;
    sregs.idt.limit = 7;
    sregs.cr0 = (sregs.cr0 | CR0_PE | CR0_PG) & !(CR0_CD | CR0_NW);
    sregs.cr3 = PML4_START;
    sregs.cr4 |= CR4_PAE;
    sregs.efer |= EFER_LME | EFER_LMA;
    vcpu.set_sregs(&sregs).context("KVM_SET_SREGS")?;

    let fpu = kvm_fpu {
        fcw: 0x37f,     // x87 reset control word: all exceptions masked
        mxcsr: 0x1f80, // SSE reset: all exceptions masked
        ..Default::default()
    };
    vcpu.set_fpu(&fpu).context("KVM_SET_FPU")
}

/// The KVM view of boot GDT entry `index`.
fn segment(index: usize) -> kvm_segment {
    let e = GDT[index];
    let bit = |n: u32| ((e >> n) & 1) as u8;
    let g = bit(55);
    let raw_limit = ((e >> 32) & 0x000f_0000) as u32 | (e & 0xffff) as u32;
    let limit = if g == 1 {
        raw_limit << 12 | 0xfff
    } else {
        raw_limit
    };
    kvm_segment {
        base: ((e >> 32) & 0xff00_0000) | ((e >> 16) & 0x00ff_ffff),
        limit,
        selector: (index * 8) as u16,
        type_: ((e >> 40) & 0xf) as u8,
        present: bit(47),
        dpl: ((e >> 45) & 3) as u8,
        db: bit(54),
        s: bit(44),
        l: bit(53),
        g,
        avl: bit(52),
        unusable: 1 - bit(47),
        padding: 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kvm_bindings::kvm_cpuid_entry2;

    fn leaf(function: u32, index: u32) -> kvm_cpuid_entry2 {
        kvm_cpuid_entry2 {
            function,
            index,
            ..Default::default()
        }
    }

    fn find(cpuid: &CpuId, function: u32, index: u32) -> kvm_cpuid_entry2 {
        *cpuid
            .as_slice()
            .iter()
            .find(|e| e.function == function && e.index == index)
            .unwrap()
    }

    #[test]
    fn each_vcpu_gets_its_apic_id_and_the_paravirt_leaves_stay() {
        let mut kvm_leaf = leaf(0x4000_0001, 0);
        kvm_leaf.eax = 0x1234;
        let mut one = leaf(1, 0);
        one.ebx = 0xaabb_0800;
        let supported = CpuId::from_entries(&[
            one,
            leaf(0xb, 0),
            leaf(0xb, 1),
            leaf(0xb, 2),
            kvm_leaf,
            leaf(0x8000_0008, 0),
            leaf(0x8000_001e, 0),
        ])
        .unwrap();
        let c = cpuid_for(&supported, 2, 3);
        let one = find(&c, 1, 0);
        assert_eq!(one.ebx, 0x0204_0800);
        assert_ne!(one.ecx & LEAF1_ECX_HYPERVISOR, 0);
        assert_ne!(one.edx & LEAF1_EDX_HTT, 0);
        let smt = find(&c, 0xb, 0);
        assert_eq!((smt.eax, smt.ebx, smt.ecx, smt.edx), (0, 1, 0x100, 2));
        let core = find(&c, 0xb, 1);
        assert_eq!((core.eax, core.ebx, core.ecx, core.edx), (2, 3, 0x201, 2));
        let end = find(&c, 0xb, 2);
        assert_eq!((end.ebx, end.ecx >> 8, end.edx), (0, 0, 2));
        assert_eq!(find(&c, 0x4000_0001, 0).eax, 0x1234);
        assert_eq!(find(&c, 0x8000_0008, 0).ecx, 0x2002);
        assert_eq!(find(&c, 0x8000_001e, 0).eax, 2);
    }

    #[test]
    fn boot_segments_are_flat() {
        let code = segment(GDT_CODE);
        assert_eq!(
            (code.selector, code.l, code.db, code.limit),
            (0x10, 1, 0, 0xffff_ffff)
        );
        assert_eq!((code.type_, code.present, code.s), (0xb, 1, 1));
        let data = segment(GDT_DATA);
        assert_eq!(
            (data.selector, data.l, data.db, data.type_),
            (0x18, 0, 1, 3)
        );
        let tss = segment(GDT_TSS);
        assert_eq!((tss.selector, tss.s, tss.type_), (0x20, 0, 0xb));
    }
}
