// SPDX-License-Identifier: GPL-2.0

//! Guest RAM: one region at guest-physical 0, held as a host mapping that
//! the VMM writes through (vm-memory) and KVM maps into the guest (one
//! memslot).
//!
//! The mapping is either the VMM's own anonymous memory
//! ([`GuestRam::anonymous`]) or one made elsewhere and handed in
//! ([`GuestRam::from_raw`]): a `MAP_SHARED` mapping of a vms clone, whose
//! memslot then carries the vms flag so KVM asks the module for pages.

use std::any::Any;
use std::ptr::NonNull;

use anyhow::{bail, Context, Result};
use kvm_bindings::kvm_userspace_memory_region2;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap, MmapRegion};

use super::layout::{RAM_ALIGN, RAM_MAX, RAM_MIN, RAM_START};
use crate::args::format_size;

/// Who unmaps the region.
#[allow(dead_code)] // External: for vms-backed memory.
enum Backing {
    /// Our own anonymous mapping: unmapped on drop.
    Anonymous,
    /// A mapping made elsewhere (built by vms-backed memory, to come); the value keeps it alive and unmaps it
    /// (if it does) when dropped, after our last use.
    External {
        _keep: Box<dyn Any + Send + Sync>,
    },
}

/// The guest's RAM.
///
/// # Invariants
///
/// `addr..addr + size` is a readable and writable mapping in this process
/// for as long as the value lives; `size` passed [`check_size`];
/// `memory` is one region over exactly that range at guest address 0.
pub struct GuestRam {
    addr: NonNull<u8>,
    size: u64,
    memory: GuestMemoryMmap,
    backing: Backing,
}

// SAFETY: the region is plain memory owned by (or kept alive by) the
// value; concurrent access goes through vm-memory's volatile accessors or
// the guest, as with any guest RAM. The backing is `Send + Sync` itself.
unsafe impl Send for GuestRam {}
// SAFETY: as above.
unsafe impl Sync for GuestRam {}

/// Checks that `size` bytes can be the guest's RAM.
pub fn check_size(size: u64) -> Result<()> {
    if size < RAM_MIN {
        bail!(
            "{}: too small, a guest needs at least {}",
            format_size(size),
            format_size(RAM_MIN)
        );
    }
    if size > RAM_MAX {
        bail!(
            "{}: too large, guest RAM must fit below the 32-bit PCI hole (at most {})",
            format_size(size),
            format_size(RAM_MAX)
        );
    }
    if !size.is_multiple_of(RAM_ALIGN) {
        bail!(
            "{}: not a multiple of {}",
            format_size(size),
            format_size(RAM_ALIGN)
        );
    }
    Ok(())
}

impl GuestRam {
    /// New, zero-filled anonymous memory of `size` bytes (private,
    /// populated on first touch, not reserved in swap).
    pub fn anonymous(size: u64) -> Result<Self> {
        Self::own_mapping(size, libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE, -1, 0)
    }

    /// A private (copy-on-write) mapping of `size` bytes of `file` from
    /// `offset`, as a VMM that maps a snapshot's memory file with
    /// `MAP_PRIVATE` has it (Firecracker's file backend, Kata's
    /// templates): pages fault in from the file's page cache, and the
    /// guest's writes go to anonymous copies. For benchmarks against vms.
    pub fn private_file(file: &std::fs::File, offset: u64, size: u64) -> Result<Self> {
        use std::os::fd::AsRawFd;
        Self::own_mapping(size, libc::MAP_PRIVATE | libc::MAP_NORESERVE, file.as_raw_fd(), offset)
    }

    /// A new mapping of ours (`fd` -1 for anonymous memory), unmapped on
    /// drop.
    fn own_mapping(size: u64, flags: i32, fd: i32, offset: u64) -> Result<Self> {
        check_size(size)?;
        // SAFETY: a new mapping at an address the kernel picks; no
        // existing memory is affected.
        let addr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size as usize,
                libc::PROT_READ | libc::PROT_WRITE,
                flags,
                fd,
                offset as libc::off_t,
            )
        };
        if addr == libc::MAP_FAILED {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("mapping {} of guest RAM", format_size(size)));
        }
        let addr = NonNull::new(addr.cast()).context("mmap returned NULL")?;
        // SAFETY: the mapping was just made, read-write, `size` bytes, with
        // these flags; it is ours until `Drop` unmaps it.
        let memory = unsafe { region(addr, size, flags) };
        let memory = match memory {
            Ok(m) => m,
            Err(e) => {
                // SAFETY: unmaps the mapping made above, used by nothing.
                unsafe { libc::munmap(addr.as_ptr().cast(), size as usize) };
                return Err(e);
            }
        };
        // INVARIANT: our own mapping of `size` checked bytes.
        Ok(Self {
            addr,
            size,
            memory,
            backing: Backing::Anonymous,
        })
    }

    /// Guest RAM over an existing shared mapping, e.g. of a vms clone.
    ///
    /// # Safety
    ///
    /// `addr..addr + size` must be a readable and writable `MAP_SHARED`
    /// mapping that stays mapped, and is not unmapped or remapped by
    /// anyone, until `keep` is dropped. `keep` is dropped with the
    /// returned value, after the VM that uses it.
    #[allow(dead_code)] // For vms-backed memory.
    pub unsafe fn from_raw(
        addr: NonNull<u8>,
        size: u64,
        keep: Box<dyn Any + Send + Sync>,
    ) -> Result<Self> {
        check_size(size)?;
        if !(addr.as_ptr() as usize).is_multiple_of(4096) {
            bail!("guest RAM mapping at {addr:p} is not page aligned");
        }
        // SAFETY: the caller guarantees a live read-write shared mapping
        // of `size` bytes, kept alive by `keep`, which we hold.
        let memory = unsafe { region(addr, size, libc::MAP_SHARED) }?;
        // INVARIANT: as the caller guarantees, for as long as `keep` lives.
        Ok(Self {
            addr,
            size,
            memory,
            backing: Backing::External { _keep: keep },
        })
    }

    /// Size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The host address of guest-physical 0.
    #[allow(dead_code)] // For vms-backed memory.
    pub fn host_addr(&self) -> NonNull<u8> {
        self.addr
    }

    /// The RAM as vm-memory guest memory, for the loaders and the tables
    /// the VMM writes.
    pub fn memory(&self) -> &GuestMemoryMmap {
        &self.memory
    }

    /// The memslot that maps all of the RAM at guest-physical 0, as
    /// `KVM_SET_USER_MEMORY_REGION2` takes it.
    pub fn memslot(&self, slot: u32, flags: u32) -> kvm_userspace_memory_region2 {
        kvm_userspace_memory_region2 {
            slot,
            flags,
            guest_phys_addr: RAM_START,
            memory_size: self.size,
            userspace_addr: self.addr.as_ptr() as u64,
            ..Default::default()
        }
    }
}

/// A vm-memory view of `size` bytes at `addr`, guest address 0.
///
/// # Safety
///
/// `addr..addr + size` must be a read-write mapping made with `flags` that
/// outlives the returned value.
unsafe fn region(addr: NonNull<u8>, size: u64, flags: i32) -> Result<GuestMemoryMmap> {
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: guaranteed by the caller. A region built from a raw pointer
    // does not unmap it on drop.
    let mapping = unsafe { MmapRegion::build_raw(addr.as_ptr(), size as usize, prot, flags) }
        .context("describing guest RAM to vm-memory")?;
    let region = GuestRegionMmap::new(mapping, GuestAddress(RAM_START))
        .context("guest RAM overflows the address space")?;
    GuestMemoryMmap::from_regions(vec![region]).context("building guest memory")
}

impl Drop for GuestRam {
    fn drop(&mut self) {
        if let Backing::Anonymous = self.backing {
            // SAFETY: by the invariant the mapping is ours; nothing uses it
            // any more (`memory` only describes it and does not unmap).
            unsafe { libc::munmap(self.addr.as_ptr().cast(), self.size as usize) };
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::Bytes;

    #[test]
    fn sizes_are_checked() {
        assert!(check_size(256 << 20).is_ok());
        assert!(check_size(3 << 30).is_ok());
        assert!(check_size((3 << 30) + (2 << 20)).is_err());
        assert!(check_size(16 << 20).is_err());
        assert!(check_size((256 << 20) + 4096).is_err());
    }

    #[test]
    fn anonymous_ram_reads_back_what_is_written() {
        let ram = GuestRam::anonymous(64 << 20).unwrap();
        ram.memory()
            .write_obj(0xdead_beef_u32, GuestAddress(0x1000))
            .unwrap();
        let v: u32 = ram.memory().read_obj(GuestAddress(0x1000)).unwrap();
        assert_eq!(v, 0xdead_beef);
        assert!(ram
            .memory()
            .write_obj(0u8, GuestAddress(ram.size()))
            .is_err());
        let slot = ram.memslot(0, 0);
        assert_eq!(slot.memory_size, 64 << 20);
        assert_eq!(slot.userspace_addr, ram.host_addr().as_ptr() as u64);
    }
}
