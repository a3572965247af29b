// SPDX-License-Identifier: GPL-2.0

//! An Intel MultiProcessor table (MP spec 1.4, chapter 4), which tells
//! the guest about its CPUs and interrupt wiring without ACPI:
//!
//! - the MP floating pointer structure, at [`MPTABLE_START`], where Linux
//!   searches (the last KiB of base memory);
//! - right after it, the MP configuration table: one processor entry per
//!   vCPU (local APIC id = vCPU index, the first one the bootstrap
//!   processor), one ISA bus, one I/O APIC (KVM's, id = number of vCPUs),
//!   an I/O interrupt entry for each ISA IRQ 0-15 wired to the I/O APIC
//!   input of the same number (KVM's default GSI routing), and the local
//!   interrupt entries of a PC: LINT0 ExtINT (the 8259 PIC), LINT1 NMI.
//!
//! The table is built as bytes (every field little-endian, no padding, as
//! the spec lays it out) so its layout is visible here and testable.

use anyhow::{ensure, Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{BASE_MEM_END, IOAPIC_START, LAPIC_START, MPTABLE_START};

/// The most vCPUs the table (1 KiB below [`BASE_MEM_END`]) describes.
pub const MAX_CPUS: u8 = 32;

/// Spec revision 1.4.
const SPEC_REV: u8 = 4;
/// Entry types of the configuration table.
const ENTRY_PROCESSOR: u8 = 0;
const ENTRY_BUS: u8 = 1;
const ENTRY_IOAPIC: u8 = 2;
const ENTRY_IO_INTERRUPT: u8 = 3;
const ENTRY_LOCAL_INTERRUPT: u8 = 4;
/// Interrupt types of interrupt entries.
const INT_VECTORED: u8 = 0;
const INT_NMI: u8 = 1;
const INT_EXTINT: u8 = 3;
/// Interrupt flags: polarity and trigger mode "conform to the bus" (ISA:
/// active high, edge).
const INT_FLAGS_CONFORM: u16 = 0;
/// Processor flags: enabled, bootstrap processor.
const CPU_ENABLED: u8 = 1;
const CPU_BSP: u8 = 2;
/// Local APIC and I/O APIC versions (KVM's: integrated APIC, 82093AA).
const LAPIC_VERSION: u8 = 0x14;
const IOAPIC_VERSION: u8 = 0x11;
/// CPU signature and feature flags of the processor entries: family 6,
/// FPU and APIC. Informational; Linux reads the real ones from CPUID.
const CPU_SIGNATURE: u32 = 6 << 8;
const CPU_FEATURES: u32 = 1 << 0 | 1 << 9;
/// The ISA bus's id, referenced by the interrupt entries.
const ISA_BUS_ID: u8 = 0;
/// How many ISA IRQs there are.
const ISA_IRQS: u8 = 16;
/// "All local APICs" in a local interrupt entry.
const ALL_LAPICS: u8 = 0xff;

/// Size of the floating pointer structure.
const FLOATING_POINTER_SIZE: usize = 16;
/// Size of the configuration table header.
const HEADER_SIZE: usize = 44;

/// Writes the MP table for `cpus` vCPUs into guest memory.
pub fn write(mem: &GuestMemoryMmap, cpus: u8) -> Result<()> {
    let table = build(cpus)?;
    mem.write_slice(&table, GuestAddress(MPTABLE_START))
        .context("writing the MP table")
}

/// The floating pointer and configuration table for `cpus` vCPUs, to be
/// placed at [`MPTABLE_START`].
fn build(cpus: u8) -> Result<Vec<u8>> {
    ensure!(
        (1..=MAX_CPUS).contains(&cpus),
        "an MP table describes 1 to {MAX_CPUS} vCPUs, not {cpus}"
    );
    let config_start = MPTABLE_START + FLOATING_POINTER_SIZE as u64;
    let mut table = floating_pointer(config_start as u32).to_vec();
    table.extend(config_table(cpus));
    ensure!(
        MPTABLE_START + table.len() as u64 <= BASE_MEM_END,
        "the MP table for {cpus} vCPUs does not fit below {BASE_MEM_END:#x}"
    );
    Ok(table)
}

/// The MP floating pointer structure, pointing at the table at `config`.
fn floating_pointer(config: u32) -> [u8; FLOATING_POINTER_SIZE] {
    let mut fp = [0u8; FLOATING_POINTER_SIZE];
    fp[0..4].copy_from_slice(b"_MP_");
    fp[4..8].copy_from_slice(&config.to_le_bytes());
    fp[8] = 1; // length in 16-byte paragraphs
    fp[9] = SPEC_REV;
    // fp[11]: feature byte 1 = 0, a configuration table is present;
    // fp[12]: IMCRP clear, virtual wire mode (no IMCR to program).
    fp[10] = checksum(&fp);
    fp
}

/// The configuration table: header, then the entries in the order the
/// spec asks for (processors, buses, I/O APICs, interrupts).
fn config_table(cpus: u8) -> Vec<u8> {
    let ioapic_id = cpus;
    let mut entries = Vec::new();
    let mut count: u16 = 0;
    let mut add = |entry: &[u8]| {
        entries.extend_from_slice(entry);
        count += 1;
    };
    for id in 0..cpus {
        add(&processor(id));
    }
    add(&isa_bus());
    add(&ioapic(ioapic_id));
    for irq in 0..ISA_IRQS {
        add(&io_interrupt(irq, ioapic_id));
    }
    add(&local_interrupt(INT_EXTINT, 0));
    add(&local_interrupt(INT_NMI, 1));

    let length = (HEADER_SIZE + entries.len()) as u16;
    let mut table = Vec::with_capacity(length as usize);
    table.extend_from_slice(b"PCMP");
    table.extend_from_slice(&length.to_le_bytes());
    table.push(SPEC_REV);
    table.push(0); // checksum, below
    table.extend_from_slice(b"VMS     "); // OEM id, 8 bytes
    table.extend_from_slice(b"VMSCTL      "); // product id, 12 bytes
    table.extend_from_slice(&0u32.to_le_bytes()); // OEM table pointer
    table.extend_from_slice(&0u16.to_le_bytes()); // OEM table size
    table.extend_from_slice(&count.to_le_bytes());
    table.extend_from_slice(&(LAPIC_START as u32).to_le_bytes());
    table.extend_from_slice(&0u16.to_le_bytes()); // extended table length
    table.push(0); // extended table checksum
    table.push(0); // reserved
    debug_assert_eq!(table.len(), HEADER_SIZE);
    table.extend_from_slice(&entries);
    table[7] = checksum(&table);
    table
}

/// A processor entry: local APIC `id`, enabled, the BSP if `id` is 0.
fn processor(id: u8) -> [u8; 20] {
    let mut e = [0u8; 20];
    e[0] = ENTRY_PROCESSOR;
    e[1] = id;
    e[2] = LAPIC_VERSION;
    e[3] = CPU_ENABLED | if id == 0 { CPU_BSP } else { 0 };
    e[4..8].copy_from_slice(&CPU_SIGNATURE.to_le_bytes());
    e[8..12].copy_from_slice(&CPU_FEATURES.to_le_bytes());
    e
}

/// The ISA bus entry.
fn isa_bus() -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0] = ENTRY_BUS;
    e[1] = ISA_BUS_ID;
    e[2..8].copy_from_slice(b"ISA   ");
    e
}

/// The I/O APIC entry: enabled, at its usual address.
fn ioapic(id: u8) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0] = ENTRY_IOAPIC;
    e[1] = id;
    e[2] = IOAPIC_VERSION;
    e[3] = 1; // enabled
    e[4..8].copy_from_slice(&(IOAPIC_START as u32).to_le_bytes());
    e
}

/// An I/O interrupt entry: ISA `irq` drives input `irq` of the I/O APIC.
fn io_interrupt(irq: u8, ioapic_id: u8) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0] = ENTRY_IO_INTERRUPT;
    e[1] = INT_VECTORED;
    e[2..4].copy_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
    e[4] = ISA_BUS_ID;
    e[5] = irq;
    e[6] = ioapic_id;
    e[7] = irq;
    e
}

/// A local interrupt entry: `kind` arrives at LINT`lint` of every local
/// APIC.
fn local_interrupt(kind: u8, lint: u8) -> [u8; 8] {
    let mut e = [0u8; 8];
    e[0] = ENTRY_LOCAL_INTERRUPT;
    e[1] = kind;
    e[2..4].copy_from_slice(&INT_FLAGS_CONFORM.to_le_bytes());
    e[4] = ISA_BUS_ID;
    e[5] = 0;
    e[6] = ALL_LAPICS;
    e[7] = lint;
    e
}

/// The byte that makes `bytes` sum to zero (mod 256), given that its own
/// place in `bytes` holds zero.
fn checksum(bytes: &[u8]) -> u8 {
    0u8.wrapping_sub(bytes.iter().fold(0u8, |sum, b| sum.wrapping_add(*b)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(bytes: &[u8]) -> u8 {
        bytes.iter().fold(0u8, |s, b| s.wrapping_add(*b))
    }

    fn u16_at(b: &[u8], at: usize) -> u16 {
        u16::from_le_bytes([b[at], b[at + 1]])
    }

    fn u32_at(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    /// Walks the configuration table as Linux's mpparse does; returns the
    /// entries as (type, bytes).
    fn entries(cpus: u8) -> Vec<(u8, Vec<u8>)> {
        let table = build(cpus).unwrap();
        let fp = &table[..16];
        assert_eq!(&fp[..4], b"_MP_");
        assert_eq!(sum(fp), 0);
        let config = u32_at(fp, 4) as u64 - MPTABLE_START;
        let config = &table[config as usize..];
        assert_eq!(&config[..4], b"PCMP");
        let length = u16_at(config, 4) as usize;
        assert_eq!(length, config.len());
        assert_eq!(sum(&config[..length]), 0);
        assert_eq!(u32_at(config, 36), LAPIC_START as u32);
        let count = u16_at(config, 34);
        let mut at = HEADER_SIZE;
        let mut out = Vec::new();
        for _ in 0..count {
            let size = if config[at] == ENTRY_PROCESSOR { 20 } else { 8 };
            out.push((config[at], config[at..at + size].to_vec()));
            at += size;
        }
        assert_eq!(at, length);
        out
    }

    #[test]
    fn one_processor_entry_per_vcpu_and_the_first_boots() {
        let e = entries(4);
        let cpus: Vec<_> = e.iter().filter(|(t, _)| *t == ENTRY_PROCESSOR).collect();
        assert_eq!(cpus.len(), 4);
        for (i, (_, cpu)) in cpus.iter().enumerate() {
            assert_eq!(cpu[1], i as u8);
            assert_eq!(cpu[3] & CPU_ENABLED, CPU_ENABLED);
            assert_eq!(cpu[3] & CPU_BSP != 0, i == 0);
        }
    }

    #[test]
    fn isa_irqs_go_to_the_same_ioapic_pin() {
        let e = entries(2);
        let ioapic = e.iter().find(|(t, _)| *t == ENTRY_IOAPIC).unwrap();
        assert_eq!(ioapic.1[1], 2, "IOAPIC id after the CPUs");
        assert_eq!(u32_at(&ioapic.1, 4), IOAPIC_START as u32);
        let ints: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == ENTRY_IO_INTERRUPT)
            .collect();
        assert_eq!(ints.len(), 16);
        for (irq, (_, int)) in ints.iter().enumerate() {
            assert_eq!((int[5], int[6], int[7]), (irq as u8, 2, irq as u8));
        }
        let lints: Vec<_> = e
            .iter()
            .filter(|(t, _)| *t == ENTRY_LOCAL_INTERRUPT)
            .map(|(_, l)| (l[1], l[6], l[7]))
            .collect();
        assert_eq!(lints, [(INT_EXTINT, 0xff, 0), (INT_NMI, 0xff, 1)]);
    }

    #[test]
    fn the_largest_table_fits_in_base_memory() {
        assert!(build(MAX_CPUS).is_ok());
        assert!(build(0).is_err());
        assert!(build(MAX_CPUS + 1).is_err());
    }
}
