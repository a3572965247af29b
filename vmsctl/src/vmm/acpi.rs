// SPDX-License-Identifier: GPL-2.0

//! ACPI tables (`vmsctl run --acpi`): how a stock distro kernel finds the
//! machine's devices, and the VM generation ID that makes a resumed clone
//! reseed its random-number generator in the guest kernel.
//!
//! Debian's kernel builds virtio-mmio as a module without
//! `CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`, so `virtio_mmio.device=` does
//! nothing there; it finds virtio-mmio devices in the DSDT (`_HID
//! "LNRO0005"`), as Firecracker describes them on x86. The tables are
//! built with rust-vmm's `acpi_tables` crate and written into the legacy
//! BIOS area of guest RAM (not in the e820 map), where a BIOS would leave
//! them; the zero page's `acpi_rsdp_addr` points at the RSDP.
//!
//! ```text
//! 0x000e_0000  RSDP -> XSDT -> FADT (hardware-reduced ACPI) -> DSDT
//!                            -> MADT (a local APIC per vCPU, the IOAPIC)
//! 0x000e_f000  the VM generation ID, 16 bytes (VMGENID_START)
//! ```
//!
//! The DSDT, in `\_SB`:
//! - `COM1`, `COM2`: PNP0501 16550s at 0x3f8 (IRQ 4) and 0x2f8 (IRQ 3):
//!   with hardware-reduced ACPI Linux has no legacy PIC and maps ISA IRQs
//!   only for devices that ACPI describes;
//! - `VR0n`: each virtio-mmio window (LNRO0005, 4 KiB, its ISA IRQ,
//!   edge-triggered, active high, as the irqfds inject them);
//! - `VGEN`: the VM generation ID (`_HID "VMGENCTR"`, Linux's `vmgenid`
//!   driver, `CONFIG_VMGENID`, Linux 5.18 and later), whose `ADDR`
//!   method returns the ID's address as a package of two 32-bit halves;
//! - `GED0`: a generic event device (ACPI0013, IRQ [`GED_IRQ`]) whose
//!   `_EVT` notifies `VGEN` (0x80): the hardware-reduced way to signal
//!   "the ID changed". A clone gets a new ID written before its vCPUs
//!   run and the GED interrupt raised at start; the guest kernel then
//!   reseeds its CRNG (`add_vmfork_randomness`) before user space runs
//!   again, which the agent's reseed cannot promise.

use acpi_tables::aml::{
    self, Device, Equal, If, Interrupt, Memory32Fixed, Method, Name, Notify, Package, Path,
    ResourceTemplate, IO,
};
use acpi_tables::fadt::{FADTBuilder, Flags};
use acpi_tables::madt::{EnabledStatus, IoApic, LocalInterruptController, ProcessorLocalApic, MADT};
use acpi_tables::rsdp::Rsdp;
use acpi_tables::sdt::Sdt;
use acpi_tables::xsdt::XSDT;
use acpi_tables::Aml;
use anyhow::{ensure, Context, Result};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    ACPI_START, COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, GED_IRQ, IOAPIC_START, LAPIC_START,
    UART_PORTS, VMGENID_START,
};

const OEM_ID: [u8; 6] = *b"VMS   ";
const OEM_TABLE_ID: [u8; 8] = *b"VMSCTL  ";
const OEM_REVISION: u32 = 1;
/// IAPC_BOOT_ARCH: no VGA (bit 2). No "legacy devices" and no "8042":
/// Linux then skips probing a keyboard controller (the reset port
/// `reboot=k` writes still works: it needs no driver).
const IAPC_NO_VGA: u16 = 1 << 2;
/// Where the RSDP is, for the zero page's `acpi_rsdp_addr`.
pub const RSDP_START: u64 = ACPI_START;

/// Appends `aml` to `v`.
fn bytes(aml: &dyn Aml) -> Vec<u8> {
    let mut v = Vec::new();
    aml.to_aml_bytes(&mut v);
    v
}

/// The DSDT's AML: the UARTs, the virtio-mmio windows
/// `(base, irq)`, the generation ID and the GED that announces it.
fn dsdt_aml(virtio: &[(u64, u32)]) -> Vec<u8> {
    let uart = |name: &str, uid: u8, port: u16, irq: u32| {
        let (io, int) = (IO::new(port, port, 1, UART_PORTS as u8), Interrupt::new(true, true, false, false, irq));
        let crs = ResourceTemplate::new(vec![&io, &int]);
        bytes(&Device::new(
            name.into(),
            vec![
                &Name::new("_HID".into(), &aml::EISAName::new("PNP0501")),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CRS".into(), &crs),
            ],
        ))
    };
    let mut sb = Vec::new();
    sb.extend(uart("COM1", 0, COM1_PORT, COM1_IRQ));
    sb.extend(uart("COM2", 1, COM2_PORT, COM2_IRQ));
    for (i, &(base, irq)) in virtio.iter().enumerate() {
        let mem = Memory32Fixed::new(true, base as u32, 0x1000);
        let int = Interrupt::new(true, true, false, false, irq);
        let crs = ResourceTemplate::new(vec![&mem, &int]);
        let uid = i as u8;
        sb.extend(bytes(&Device::new(
            format!("VR{i:02}").as_str().into(),
            vec![
                &Name::new("_HID".into(), &"LNRO0005"),
                &Name::new("_UID".into(), &uid),
                &Name::new("_CCA".into(), &aml::ONE),
                &Name::new("_CRS".into(), &crs),
            ],
        )));
    }
    // The generation ID: ADDR returns Package { low 32 bits, high 32 bits }.
    let lo = (VMGENID_START & 0xffff_ffff) as u32;
    let hi = (VMGENID_START >> 32) as u32;
    let addr = Package::new(vec![&lo, &hi]);
    sb.extend(bytes(&Device::new(
        "VGEN".into(),
        vec![
            &Name::new("_HID".into(), &"VMGENCTR"),
            &Name::new("_CID".into(), &"VM_Gen_Counter"),
            &Name::new("_DDN".into(), &"VM_Gen_Counter"),
            &Name::new("ADDR".into(), &addr),
        ],
    )));
    // The generic event device: its interrupt runs _EVT(GSI).
    let ged_int = Interrupt::new(true, true, false, false, GED_IRQ);
    let ged_crs = ResourceTemplate::new(vec![&ged_int]);
    let vgen = Path::new("\\_SB_.VGEN");
    let notify = Notify::new(&vgen, &0x80u8);
    let arg0 = aml::Arg(0);
    let is_ged = Equal::new(&arg0, &GED_IRQ);
    let if_ged = If::new(&is_ged, vec![&notify]);
    let evt = Method::new("_EVT".into(), 1, true, vec![&if_ged]);
    sb.extend(bytes(&Device::new(
        "GED0".into(),
        vec![
            &Name::new("_HID".into(), &"ACPI0013"),
            &Name::new("_UID".into(), &aml::ZERO),
            &Name::new("_CRS".into(), &ged_crs),
            &evt,
        ],
    )));
    aml::Scope::raw("\\_SB_".into(), sb)
}

/// The tables, laid out from [`ACPI_START`]: `(guest address, bytes)`.
fn tables(cpus: u8, virtio: &[(u64, u32)]) -> Result<Vec<(u64, Vec<u8>)>> {
    let align = |a: u64| (a + 15) & !15;
    let rsdp_len = Rsdp::len() as u64;
    let xsdt_at = align(ACPI_START + rsdp_len);
    // The XSDT names two tables: its size is known before their places.
    let xsdt_len = 36 + 2 * 8;
    let fadt_at = align(xsdt_at + xsdt_len);
    let madt_at = align(fadt_at + acpi_tables::fadt::FADT::len() as u64);

    let mut madt = MADT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION, LocalInterruptController::Address(LAPIC_START as u32));
    for i in 0..cpus {
        madt.add_structure(ProcessorLocalApic::new(i, i, EnabledStatus::Enabled));
    }
    // The IOAPIC's id follows the CPUs', as in the MP table.
    madt.add_structure(IoApic::new(cpus, IOAPIC_START as u32, 0));
    let madt = bytes(&madt);
    let dsdt_at = align(madt_at + madt.len() as u64);

    let mut dsdt = Sdt::new(*b"DSDT", 36, 6, OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    for b in dsdt_aml(virtio) {
        acpi_tables::AmlSink::byte(&mut dsdt, b);
    }
    dsdt.update_checksum();
    let dsdt = dsdt.as_slice().to_vec();

    let fadt = FADTBuilder::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION)
        .flag(Flags::HwReducedAcpi)
        .flag(Flags::PwrButton)
        .flag(Flags::SlpButton)
        .dsdt_64(dsdt_at);
    let mut fadt = fadt;
    fadt.iapc_boot_arch = IAPC_NO_VGA.into();
    let fadt = bytes(&fadt.finalize());

    let mut xsdt = XSDT::new(OEM_ID, OEM_TABLE_ID, OEM_REVISION);
    xsdt.add_entry(fadt_at);
    xsdt.add_entry(madt_at);
    let xsdt = bytes(&xsdt);
    ensure!(xsdt.len() as u64 == xsdt_len, "XSDT of {} bytes", xsdt.len());

    let rsdp = bytes(&Rsdp::new(OEM_ID, xsdt_at));
    let end = dsdt_at + dsdt.len() as u64;
    ensure!(end <= VMGENID_START, "the ACPI tables end at {end:#x}, past {VMGENID_START:#x}");
    Ok(vec![(ACPI_START, rsdp), (xsdt_at, xsdt), (fadt_at, fadt), (madt_at, madt), (dsdt_at, dsdt)])
}

/// Writes the ACPI tables for `cpus` vCPUs and the virtio-mmio windows
/// `virtio` (`(base, irq)`), and a first generation ID, into `mem`.
pub fn write(mem: &GuestMemoryMmap, cpus: u8, virtio: &[(u64, u32)]) -> Result<()> {
    for (at, t) in tables(cpus, virtio)? {
        mem.write_slice(&t, GuestAddress(at))
            .with_context(|| format!("writing an ACPI table at {at:#x}"))?;
    }
    write_generation_id(mem)
}

/// Writes a new, random VM generation ID: a clone's, before it runs.
pub fn write_generation_id(mem: &GuestMemoryMmap) -> Result<()> {
    let mut id = [0u8; 16];
    super::virtio::rng::fill_random(&mut id).context("a VM generation ID")?;
    mem.write_slice(&id, GuestAddress(VMGENID_START))
        .context("writing the VM generation ID")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sum(b: &[u8]) -> u8 {
        b.iter().fold(0u8, |a, x| a.wrapping_add(*x))
    }

    #[test]
    fn every_table_sums_to_zero_and_fits() {
        let t = tables(2, &[(0xd000_0000, 5), (0xd000_1000, 6)]).unwrap();
        let (at, rsdp) = &t[0];
        assert_eq!(*at, ACPI_START);
        assert_eq!(&rsdp[..8], b"RSD PTR ");
        assert_eq!(sum(&rsdp[..20]), 0, "RSDP checksum");
        assert_eq!(sum(rsdp), 0, "RSDP extended checksum");
        for (at, table) in &t[1..] {
            assert_eq!(sum(table), 0, "checksum of {:?}", std::str::from_utf8(&table[..4]));
            let len = u32::from_le_bytes(table[4..8].try_into().unwrap()) as usize;
            assert_eq!(len, table.len(), "length of {:?}", std::str::from_utf8(&table[..4]));
            assert_eq!(at % 8, 0);
        }
        let sigs: Vec<_> = t[1..].iter().map(|(_, b)| b[..4].to_vec()).collect();
        assert_eq!(sigs, [b"XSDT".to_vec(), b"FACP".to_vec(), b"APIC".to_vec(), b"DSDT".to_vec()]);
        // The FADT: hardware-reduced, and X_DSDT names the DSDT.
        let fadt = &t[2].1;
        let flags = u32::from_le_bytes(fadt[112..116].try_into().unwrap());
        assert_ne!(flags & (1 << 20), 0, "HW_REDUCED_ACPI");
        let x_dsdt = u64::from_le_bytes(fadt[140..148].try_into().unwrap());
        assert_eq!(x_dsdt, t[4].0);
    }

    /// The DSDT decompiles with ACPICA's iasl (if installed: acpica-tools)
    /// and holds what Linux looks for.
    #[test]
    fn the_dsdt_decompiles() {
        let Ok(out) = std::process::Command::new("iasl").arg("-v").output() else {
            eprintln!("SKIP: no iasl (Debian package acpica-tools)");
            return;
        };
        assert!(out.status.success());
        let dir = std::env::temp_dir().join(format!("vms-acpi-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let t = tables(1, &[(0xd000_0000, 5)]).unwrap();
        let dat = dir.join("dsdt.dat");
        std::fs::write(&dat, &t[4].1).unwrap();
        let out = std::process::Command::new("iasl").arg("-d").arg(&dat).output().unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let dsl = std::fs::read_to_string(dir.join("dsdt.dsl")).unwrap();
        if std::env::var_os("VMS_KEEP_DSL").is_some() { eprintln!("{dsl}"); }
        std::fs::remove_dir_all(&dir).unwrap();
        for want in ["\"LNRO0005\"", "0xD0000000", "\"VMGENCTR\"", "\"ACPI0013\"", "Notify (\\_SB.VGEN, 0x80)", "PNP0501"] {
            assert!(dsl.contains(want), "{want} not in\n{dsl}");
        }
    }
}
