// SPDX-License-Identifier: GPL-2.0

//! Where things are in the guest's physical address space and I/O ports.
//! The module documentation of [`super`] shows the same map as a picture.

/// Guest RAM starts at guest-physical 0 and is one region.
pub const RAM_START: u64 = 0;
/// The most RAM a guest gets: everything must fit below the 32-bit PCI
/// hole (3 GiB .. 4 GiB), where the IOAPIC, the LAPIC and KVM's TSS live.
pub const RAM_MAX: u64 = 3 << 30;
/// The least RAM a guest gets: the kernel decompresses itself in place
/// and needs room for the initramfs besides.
pub const RAM_MIN: u64 = 32 << 20;
/// Guest RAM sizes are multiples of this (2 MiB: the identity map and a
/// future huge-page backing like it).
pub const RAM_ALIGN: u64 = 2 << 20;

/// The GDT the vCPUs boot with (boot.rs).
pub const GDT_START: u64 = 0x500;
/// An empty IDT: the kernel loads its own before enabling interrupts.
pub const IDT_START: u64 = 0x520;
/// The zero page: `struct boot_params` (Linux boot protocol).
pub const ZERO_PAGE_START: u64 = 0x7000;
/// The initial stack pointer of the boot vCPU.
pub const BOOT_STACK_POINTER: u64 = 0x8ff0;
/// The identity page tables: PML4, PDPT and one page directory.
pub const PML4_START: u64 = 0x9000;
/// See [`PML4_START`].
pub const PDPT_START: u64 = 0xa000;
/// See [`PML4_START`]: 512 2 MiB pages, the first GiB.
pub const PD_START: u64 = 0xb000;
/// The kernel command line (at most the kernel's `cmdline_size`).
pub const CMDLINE_START: u64 = 0x2_0000;
/// The MP table: in the last KiB of base memory, where Linux looks for
/// the floating pointer (639 KiB, the traditional EBDA start).
pub const MPTABLE_START: u64 = 0x9_fc00;
/// The ACPI tables (`vmsctl run --acpi`, `acpi.rs`): the RSDP and the
/// tables after it, in the BIOS area of the legacy hole (RAM in the
/// memslot, not in the e820 map), where Linux also looks for an RSDP.
pub const ACPI_START: u64 = 0xe_0000;
/// The VM generation ID (16 bytes) the ACPI `VGEN` device points at.
pub const VMGENID_START: u64 = 0xe_f000;
/// End of base (conventional) memory; from here to 1 MiB is the legacy
/// VGA and BIOS hole, not RAM.
pub const BASE_MEM_END: u64 = 0xa_0000;
/// Start of high memory, where the protected-mode kernel is loaded.
pub const HIGH_MEM_START: u64 = 0x10_0000;

/// The virtio-mmio devices' register windows, 4 KiB each from here:
/// above the most RAM, below KVM's TSS, the IOAPIC and the LAPICs.
pub const VIRTIO_MMIO_START: u64 = 0xd000_0000;
/// virtio-rng: the first window, and ISA IRQ 5 (free on this machine:
/// COM1 and COM2 take 4 and 3, the PIT 0, the RTC 8).
pub const VIRTIO_RNG_BASE: u64 = VIRTIO_MMIO_START;
/// See [`VIRTIO_RNG_BASE`].
pub const VIRTIO_RNG_IRQ: u32 = 5;
/// virtio-blk: the second window, and ISA IRQ 6 (the floppy's on a PC;
/// there is none).
pub const VIRTIO_BLK_BASE: u64 = VIRTIO_MMIO_START + 0x1000;
/// See [`VIRTIO_BLK_BASE`].
pub const VIRTIO_BLK_IRQ: u32 = 6;
/// virtio-net: the third window, and ISA IRQ 10 (free on a PC).
pub const VIRTIO_NET_BASE: u64 = VIRTIO_MMIO_START + 0x2000;
/// See [`VIRTIO_NET_BASE`].
pub const VIRTIO_NET_IRQ: u32 = 10;

/// The ACPI generic event device's IRQ (with `--acpi`): raised when a
/// clone's VM generation ID changed.
pub const GED_IRQ: u32 = 7;

/// KVM's three-page TSS region (needed by Intel VMX), above the RAM.
pub const KVM_TSS_ADDRESS: u64 = 0xfffb_d000;
/// The IOAPIC's registers (KVM's in-kernel IOAPIC).
pub const IOAPIC_START: u64 = 0xfec0_0000;
/// The local APICs' registers (KVM's in-kernel LAPICs).
pub const LAPIC_START: u64 = 0xfee0_0000;

/// COM1, the console: ports and ISA IRQ.
pub const COM1_PORT: u16 = 0x3f8;
/// See [`COM1_PORT`].
pub const COM1_IRQ: u32 = 4;
/// COM2, the agent channel: ports and ISA IRQ.
pub const COM2_PORT: u16 = 0x2f8;
/// See [`COM2_PORT`].
pub const COM2_IRQ: u32 = 3;
/// A 16550 has eight registers.
pub const UART_PORTS: u16 = 8;
/// The i8042 keyboard controller's data port.
pub const I8042_DATA_PORT: u16 = 0x60;
/// The i8042's command (write) and status (read) port.
pub const I8042_COMMAND_PORT: u16 = 0x64;
