// SPDX-License-Identifier: GPL-2.0

//! Direct Linux boot through the 64-bit boot protocol
//! (Documentation/arch/x86/boot.rst): load the protected-mode part of a
//! bzImage at 1 MiB and enter it at `+ 0x200` in long mode, with `rsi`
//! pointing at the zero page (`struct boot_params`). Everything a firmware
//! would leave behind is written here: the zero page with the e820 map,
//! the command line, the initramfs, a GDT and identity page tables.

use std::fs::File;
use std::path::Path;

use anyhow::{bail, Context, Result};
use linux_loader::loader::bootparam::{
    boot_e820_entry, boot_params, setup_header, E820_MAX_ENTRIES_ZEROPAGE, XLF_KERNEL_64,
};
use linux_loader::loader::{load_cmdline, BzImage, Cmdline, KernelLoader};
use vm_memory::{Address, ByteValued, Bytes, GuestAddress, GuestMemoryMmap};

use super::layout::{
    BASE_MEM_END, CMDLINE_START, GDT_START, HIGH_MEM_START, IDT_START, MPTABLE_START, PDPT_START,
    PD_START, PML4_START, ZERO_PAGE_START,
};
use crate::args::format_size;

/// Where the boot vCPU starts: the 64-bit entry point and the zero page.
#[derive(Debug, Clone, Copy)]
pub struct BootEntry {
    /// `rip`: the kernel's 64-bit entry point.
    pub entry: GuestAddress,
    /// `rsi`: the zero page.
    pub zero_page: GuestAddress,
}

/// What to boot.
pub struct BootImages<'a> {
    /// A bzImage.
    pub kernel: &'a Path,
    /// A (compressed) cpio archive.
    pub initrd: &'a Path,
    /// The whole kernel command line.
    pub cmdline: &'a str,
    /// Where the ACPI tables' RSDP is, for the zero page (`--acpi`).
    pub acpi_rsdp: Option<u64>,
}

/// Writes everything the kernel needs into guest RAM (`ram_size` bytes at
/// guest-physical 0) and returns where to enter it.
pub fn load_linux(mem: &GuestMemoryMmap, ram_size: u64, images: &BootImages) -> Result<BootEntry> {
    let (kernel_load, hdr) = load_kernel(mem, images.kernel)?;
    let initrd = load_initrd(mem, ram_size, images.initrd, &hdr, kernel_load)?;
    write_cmdline(mem, images.cmdline, &hdr)?;
    write_zero_page(mem, ram_size, hdr, initrd, images.acpi_rsdp)?;
    write_gdt(mem)?;
    write_page_tables(mem)?;
    Ok(BootEntry {
        entry: kernel_load.unchecked_add(0x200),
        zero_page: GuestAddress(ZERO_PAGE_START),
    })
}

/// Loads the bzImage's protected-mode kernel at 1 MiB; returns where it
/// is and the image's setup header.
fn load_kernel(mem: &GuestMemoryMmap, path: &Path) -> Result<(GuestAddress, setup_header)> {
    let mut file = File::open(path).with_context(|| format!("kernel {}", path.display()))?;
    let loaded = BzImage::load(
        mem,
        Some(GuestAddress(HIGH_MEM_START)),
        &mut file,
        Some(GuestAddress(HIGH_MEM_START)),
    )
    .with_context(|| format!("kernel {}: loading it as a bzImage", path.display()))?;
    let hdr = loaded
        .setup_header
        .context("the bzImage loader returned no setup header")?;
    // Copies: the header is packed.
    let (version, xloadflags) = (hdr.version, hdr.xloadflags);
    if version < 0x020c || xloadflags & XLF_KERNEL_64 == 0 {
        bail!(
            "kernel {}: no 64-bit entry point (boot protocol {}.{:02}, xloadflags {xloadflags:#x})",
            path.display(),
            version >> 8,
            version & 0xff
        );
    }
    Ok((loaded.kernel_load, hdr))
}

/// Loads the initramfs as high as the kernel allows, page aligned, below
/// the top of RAM; returns its address and size. Refuses to place it
/// where the kernel decompresses itself.
fn load_initrd(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    path: &Path,
    hdr: &setup_header,
    kernel_load: GuestAddress,
) -> Result<(GuestAddress, u64)> {
    let what = || format!("initrd {}", path.display());
    let mut file = File::open(path).with_context(what)?;
    let size = file.metadata().with_context(what)?.len();
    let top = ram_size.min(u64::from(hdr.initrd_addr_max) + 1);
    let kernel_end = kernel_extent(hdr, kernel_load);
    let start = top
        .checked_sub(size)
        .map(|s| s & !0xfff)
        .filter(|&s| s >= kernel_end)
        .with_context(|| {
            format!(
                "{}: {} does not fit between the kernel (up to {kernel_end:#x}) and {top:#x}; \
                 give the guest more memory",
                what(),
                format_size(size)
            )
        })?;
    mem.read_exact_volatile_from(GuestAddress(start), &mut file, size as usize)
        .with_context(|| format!("{}: reading it into guest memory", what()))?;
    Ok((GuestAddress(start), size))
}

/// The end of the memory the kernel uses while it decompresses and
/// starts: from where it runs (its load address, or its preferred address
/// if it moves itself there) for `init_size` bytes.
fn kernel_extent(hdr: &setup_header, kernel_load: GuestAddress) -> u64 {
    let (pref, init_size) = (hdr.pref_address, hdr.init_size);
    kernel_load.raw_value().max(pref) + u64::from(init_size)
}

/// Writes the command line, NUL terminated, where the zero page says.
fn write_cmdline(mem: &GuestMemoryMmap, cmdline: &str, hdr: &setup_header) -> Result<()> {
    let max = hdr.cmdline_size as usize;
    let line = Cmdline::try_from(cmdline, max)
        .with_context(|| format!("kernel command line {cmdline:?} (at most {} bytes)", max - 1))?;
    load_cmdline(mem, GuestAddress(CMDLINE_START), &line).context("writing the command line")
}

/// `struct boot_params`, which vm-memory may copy as bytes.
#[derive(Clone, Copy, Default)]
#[repr(transparent)]
struct ZeroPage(boot_params);

// SAFETY: boot_params is plain old data: integers and arrays of them, no
// padding (it is packed), any bit pattern valid.
unsafe impl ByteValued for ZeroPage {}

/// Writes the zero page: the image's setup header with the loader's
/// fields filled in, and the e820 map.
fn write_zero_page(
    mem: &GuestMemoryMmap,
    ram_size: u64,
    mut hdr: setup_header,
    (initrd, initrd_size): (GuestAddress, u64),
    acpi_rsdp: Option<u64>,
) -> Result<()> {
    let mut params = boot_params { acpi_rsdp_addr: acpi_rsdp.unwrap_or(0), ..Default::default() };
    hdr.type_of_loader = 0xff; // "undefined" boot loader
    hdr.cmd_line_ptr = CMDLINE_START as u32;
    hdr.ramdisk_image = initrd.raw_value() as u32;
    hdr.ramdisk_size = initrd_size as u32;
    params.hdr = hdr;
    let map = e820_map(ram_size);
    params.e820_table[..map.len()].copy_from_slice(&map);
    params.e820_entries = map.len() as u8;
    mem.write_obj(ZeroPage(params), GuestAddress(ZERO_PAGE_START))
        .context("writing the zero page")
}

/// e820 type of usable RAM.
const E820_RAM: u32 = 1;
/// e820 type of memory the OS must leave alone.
const E820_RESERVED: u32 = 2;

/// The guest's e820 map: base memory up to the MP table, the MP table
/// reserved, and RAM from 1 MiB to the end. The legacy hole in between
/// (VGA, option ROMs, BIOS) is absent, as on a PC.
fn e820_map(ram_size: u64) -> Vec<boot_e820_entry> {
    let entry = |addr: u64, end: u64, r#type| boot_e820_entry {
        addr,
        size: end - addr,
        r#type,
    };
    let map = vec![
        entry(0, MPTABLE_START, E820_RAM),
        entry(MPTABLE_START, BASE_MEM_END, E820_RESERVED),
        entry(HIGH_MEM_START, ram_size, E820_RAM),
    ];
    debug_assert!(map.len() <= E820_MAX_ENTRIES_ZEROPAGE);
    map
}

/// GDT index of the 64-bit code segment: selector 0x10, the boot
/// protocol's `__BOOT_CS`.
pub const GDT_CODE: usize = 2;
/// GDT index of the data segment: selector 0x18, `__BOOT_DS`.
pub const GDT_DATA: usize = 3;
/// GDT index of the TSS that TR points at (VMX wants a usable TR).
pub const GDT_TSS: usize = 4;

/// The boot GDT: flat 4 GiB segments, code 64-bit.
pub const GDT: [u64; 5] = [
    0,
    0,
    gdt_entry(0xa09b, 0, 0xfffff), // code: present, ring 0, exec/read, L, G
    gdt_entry(0xc093, 0, 0xfffff), // data: present, ring 0, read/write, D/B, G
    gdt_entry(0x808b, 0, 0xfffff), // TSS: present, 64-bit busy TSS, G
];

/// A segment descriptor from its flags (access byte in bits 0-7, flags
/// nibble in bits 12-15), base and 20-bit limit.
pub const fn gdt_entry(flags: u16, base: u32, limit: u32) -> u64 {
    let (flags, base, limit) = (flags as u64, base as u64, limit as u64);
    ((base & 0xff00_0000) << 32)
        | ((flags & 0xf0ff) << 40)
        | ((limit & 0x000f_0000) << 32)
        | ((base & 0x00ff_ffff) << 16)
        | (limit & 0x0000_ffff)
}

/// Writes the GDT and an empty IDT.
fn write_gdt(mem: &GuestMemoryMmap) -> Result<()> {
    for (i, entry) in GDT.iter().enumerate() {
        mem.write_obj(*entry, GuestAddress(GDT_START + 8 * i as u64))
            .context("writing the GDT")?;
    }
    mem.write_obj(0u64, GuestAddress(IDT_START))
        .context("writing the IDT")
}

/// Page table entry bits: present, writable, page size (2 MiB leaf).
const PTE_PRESENT_RW: u64 = 0x3;
const PTE_HUGE: u64 = 0x80;

/// Writes page tables that identity-map the first GiB with 2 MiB pages:
/// the kernel, the zero page and the command line are all in it, which
/// is what the 64-bit entry needs; the kernel builds its own tables next.
fn write_page_tables(mem: &GuestMemoryMmap) -> Result<()> {
    let write = |value: u64, addr: u64| {
        mem.write_obj(value, GuestAddress(addr))
            .context("writing the boot page tables")
    };
    write(PDPT_START | PTE_PRESENT_RW, PML4_START)?;
    write(PD_START | PTE_PRESENT_RW, PDPT_START)?;
    for i in 0..512 {
        write((i << 21) | PTE_PRESENT_RW | PTE_HUGE, PD_START + i * 8)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use vm_memory::GuestMemoryBackend;

    #[test]
    fn gdt_entries_encode_like_the_kernel() {
        // GDT_ENTRY_INIT(0xa09b, 0, 0xfffff) in the kernel's boot code.
        assert_eq!(GDT[GDT_CODE], 0x00af_9b00_0000_ffff);
        assert_eq!(GDT[GDT_DATA], 0x00cf_9300_0000_ffff);
        assert_eq!(GDT[GDT_TSS], 0x008f_8b00_0000_ffff);
        assert_eq!(gdt_entry(0x9b, 0x1234_5678, 0xabcde), 0x120a_9b34_5678_bcde);
    }

    #[test]
    fn e820_covers_ram_but_not_the_legacy_hole() {
        let map = e820_map(256 << 20);
        let ram: u64 = map
            .iter()
            .filter(|e| e.r#type == E820_RAM)
            .map(|e| e.size)
            .sum();
        assert_eq!(ram, (256 << 20) - (HIGH_MEM_START - MPTABLE_START));
        for pair in map.windows(2) {
            let (a, b) = (pair[0], pair[1]);
            assert!(a.addr + a.size <= b.addr);
        }
        let last = map.last().unwrap();
        assert_eq!(last.addr + last.size, 256 << 20);
    }

    /// A minimal bzImage: a setup header that says "64-bit entry", one
    /// setup sector, and a recognisable payload.
    fn fake_bzimage(dir: &Path) -> std::path::PathBuf {
        let mut image = vec![0u8; 2 * 512];
        image[0x1f1] = 1; // setup_sects
        image[0x1fe..0x200].copy_from_slice(&0xaa55u16.to_le_bytes());
        image[0x202..0x206].copy_from_slice(b"HdrS");
        image[0x206..0x208].copy_from_slice(&0x020fu16.to_le_bytes());
        image[0x211] = 1; // loadflags: LOADED_HIGH
        image[0x214..0x218].copy_from_slice(&0x10_0000u32.to_le_bytes()); // code32_start
        image[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes()); // initrd_addr_max
        image[0x236..0x238].copy_from_slice(&XLF_KERNEL_64.to_le_bytes());
        image[0x238..0x23c].copy_from_slice(&2048u32.to_le_bytes()); // cmdline_size
        image[0x260..0x264].copy_from_slice(&(4u32 << 20).to_le_bytes()); // init_size
        image.extend_from_slice(b"KERNEL!!");
        let path = dir.join("bzImage");
        File::create(&path).unwrap().write_all(&image).unwrap();
        path
    }

    #[test]
    fn a_bzimage_boots_with_the_zero_page_filled_in() {
        let dir = std::env::temp_dir().join(format!("vmsctl-boot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = fake_bzimage(&dir);
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, vec![0x5a; 5000]).unwrap();
        let size = 64u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let images = BootImages {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: "console=ttyS0",
            acpi_rsdp: None,
        };
        let boot = load_linux(&mem, size, &images).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();

        assert_eq!(boot.entry, GuestAddress(0x10_0200));
        let mut payload = [0u8; 8];
        mem.read_slice(&mut payload, GuestAddress(HIGH_MEM_START))
            .unwrap();
        assert_eq!(&payload, b"KERNEL!!");
        let zp: ZeroPage = mem.read_obj(boot.zero_page).unwrap();
        let hdr = zp.0.hdr;
        let (image, rd_size, loader) = (hdr.ramdisk_image, hdr.ramdisk_size, hdr.type_of_loader);
        assert_eq!(rd_size, 5000);
        assert_eq!(u64::from(image), (size - 5000) & !0xfff);
        assert_eq!(loader, 0xff);
        assert_eq!(
            mem.read_obj::<u8>(GuestAddress(u64::from(image))).unwrap(),
            0x5a
        );
        let mut line = [0u8; 14];
        mem.read_slice(&mut line, GuestAddress(CMDLINE_START))
            .unwrap();
        assert_eq!(&line, b"console=ttyS0\0");
        assert_eq!(zp.0.e820_entries, 3);
        let pde: u64 = mem.read_obj(GuestAddress(PD_START + 8)).unwrap();
        assert_eq!(pde, (1 << 21) | 0x83);
        assert!(mem.last_addr().raw_value() == size - 1);
    }

    #[test]
    fn an_initrd_that_does_not_fit_is_refused() {
        let dir = std::env::temp_dir().join(format!("vmsctl-boot2-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let kernel = fake_bzimage(&dir);
        let initrd = dir.join("initrd");
        std::fs::write(&initrd, vec![0; 30 << 20]).unwrap();
        let size = 32u64 << 20;
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), size as usize)]).unwrap();
        let images = BootImages {
            kernel: &kernel,
            initrd: &initrd,
            cmdline: "",
            acpi_rsdp: None,
        };
        let e = load_linux(&mem, size, &images).unwrap_err();
        std::fs::remove_dir_all(&dir).unwrap();
        assert!(format!("{e:#}").contains("does not fit"), "{e:#}");
    }
}
