// SPDX-License-Identifier: GPL-2.0

//! KVM helpers: a VM with guest memory and real-mode or flat 32-bit
//! protected-mode vCPUs.
//!
//! The shape follows `tools/testing/selftests/kvm/lib/kvm_util.c`:
//! [`vm_create`] gives a [`Vm`], [`Vm::add_memory`] backs a range of guest
//! physical addresses, [`Vm::write`] puts code there, [`Vm::add_vcpu`]
//! starts a vCPU in real mode at a given gpa, and [`vcpu_run`] runs it to
//! its next exit to userspace.
//!
//! For guests that reach memory above 1 MiB, [`vm_create_pm32`] gives a VM
//! with code memory at gpa 0 and [`Vm::add_vcpu_pm32`] starts a vCPU in
//! 32-bit protected mode with flat 4 GiB segments and paging off, so a
//! guest address is a guest physical address up to 4 GiB. Memory that
//! another object maps (a `/dev/vms` clone) becomes a memslot with
//! [`Vm::__add_memory_at`].
//!
//! No in-kernel irqchip is created, so a guest `hlt` exits to userspace
//! ([`Exit::Hlt`]) instead of blocking.

use std::any::Any;
use std::io;
use std::ptr::NonNull;
use std::sync::Arc;

use kvm_bindings::{
    kvm_segment, kvm_userspace_memory_region, kvm_userspace_memory_region2, KVM_EXIT_MEMORY_FAULT,
};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vmm_sys_util::errno;

use crate::ksft::{self, check};

/// The KVM device.
pub const KVM_DEV: &str = "/dev/kvm";

/// Opens [`KVM_DEV`], returning the raw result.
pub fn __open_kvm() -> Result<Kvm, errno::Error> {
    Kvm::new()
}

/// Opens [`KVM_DEV`]; skips the test if it is missing or not accessible.
pub fn open_kvm() -> Kvm {
    match __open_kvm() {
        Ok(kvm) => kvm,
        Err(e)
            if matches!(
                e.errno(),
                libc::ENOENT | libc::ENODEV | libc::ENXIO | libc::EACCES
            ) =>
        {
            ksft::skip(format_args!("{KVM_DEV}: {}", ksft::strerror(e.errno())))
        }
        Err(e) => check(Err(e), "open /dev/kvm"),
    }
}

/// Whether `KVM_CREATE_VM` failing with `errno` means the host cannot run
/// a VM at all (a missing requirement, not a bug):
/// - `ENODEV`, `ENXIO`, `EOPNOTSUPP`: no usable virtualization extension;
/// - `EBUSY`: enabling virtualization failed, e.g. another hypervisor
///   owns VMX/SVM;
/// - `EIO`: enabling virtualization failed on some CPU.
pub fn create_vm_errno_is_no_hw_virt(errno: i32) -> bool {
    matches!(
        errno,
        libc::ENODEV | libc::ENXIO | libc::EOPNOTSUPP | libc::EBUSY | libc::EIO
    )
}

/// A VM, its guest memory and its vCPUs.
///
/// # Invariants
///
/// Every [`GuestMem`] in `mem` stays mapped, and every object in `keep`
/// alive, while `fd` and the vCPUs exist: the fields drop in declaration
/// order (vCPUs, then the VM, then the memory and the objects that own
/// the rest of the guest memory), so KVM never runs the guest on host
/// memory that was unmapped and may have been reused.
pub struct Vm {
    vcpus: Vec<VcpuFd>,
    /// `None` once [`Vm::vcpus_and_fd`] let a test close it early.
    fd: Option<VmFd>,
    mem: Vec<GuestMem>,
    /// Owners of memory mapped by others and installed with
    /// [`Vm::__add_memory_at`].
    keep: Vec<Arc<dyn Any + Send + Sync>>,
}

/// Creates a VM (`KVM_CREATE_VM`), returning the raw result.
pub fn __vm_create(kvm: &Kvm) -> Result<VmFd, errno::Error> {
    kvm.create_vm()
}

/// Creates a VM; skips the test if the host has no usable hardware
/// virtualization (see [`create_vm_errno_is_no_hw_virt`]).
#[track_caller]
pub fn vm_create(kvm: &Kvm) -> Vm {
    let fd = match __vm_create(kvm) {
        Ok(fd) => fd,
        Err(e) if create_vm_errno_is_no_hw_virt(e.errno()) => ksft::skip(format_args!(
            "KVM_CREATE_VM: {} (no usable hardware virtualization)",
            ksft::strerror(e.errno())
        )),
        Err(e) => check(Err(e), "KVM_CREATE_VM"),
    };
    Vm {
        vcpus: Vec::new(),
        fd: Some(fd),
        mem: Vec::new(),
        keep: Vec::new(),
    }
}

/// Size of the code memory of [`vm_create_pm32`]: slot [`CODE_SLOT`] at
/// gpa 0.
pub const CODE_MEM_SIZE: usize = 0x1_0000;
/// The memslot of the code memory of [`vm_create_pm32`].
pub const CODE_SLOT: u32 = 0;

/// Creates a VM for 32-bit protected-mode guests: [`vm_create`] plus
/// [`CODE_MEM_SIZE`] bytes of anonymous memory at gpa 0 in memslot
/// [`CODE_SLOT`], for the guests' code. Add vCPUs with
/// [`Vm::add_vcpu_pm32`].
#[track_caller]
pub fn vm_create_pm32(kvm: &Kvm) -> Vm {
    let mut vm = vm_create(kvm);
    vm.add_memory(CODE_SLOT, 0, CODE_MEM_SIZE);
    vm
}

/// Anonymous, private, zero-filled host memory that backs guest memory.
///
/// # Invariants
///
/// `ptr` is the start of a mapping of `size` bytes, readable and writable,
/// owned by this value and unmapped on drop.
pub struct GuestMem {
    ptr: NonNull<u8>,
    size: usize,
    gpa: u64,
}

impl GuestMem {
    /// Maps `size` bytes of anonymous memory for guest physical address
    /// `gpa`.
    pub fn new(gpa: u64, size: usize) -> io::Result<Self> {
        // SAFETY: a new anonymous mapping at an address the kernel picks;
        // it aliases nothing.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                size,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        // INVARIANT: mmap succeeded: `p` maps `size` bytes read/write.
        Ok(Self {
            ptr: NonNull::new(p.cast()).expect("mmap returned NULL"),
            size,
            gpa,
        })
    }

    /// The host address of the mapping.
    pub fn hva(&self) -> u64 {
        self.ptr.as_ptr() as u64
    }

    /// The mapping as a byte slice.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        // SAFETY: by the type invariant the mapping is `size` bytes,
        // readable and writable, and `&mut self` makes this the only
        // reference from this process (the guest may write it too, but
        // only while a vCPU runs, which needs `&mut` on the Vm).
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.size) }
    }
}

impl Drop for GuestMem {
    fn drop(&mut self) {
        // SAFETY: by the type invariant we own this mapping and nothing
        // refers to it any more.
        unsafe { libc::munmap(self.ptr.as_ptr().cast(), self.size) };
    }
}

// SAFETY: GuestMem owns its mapping like a Box<[u8]> owns its buffer.
unsafe impl Send for GuestMem {}

impl Vm {
    /// The VM file descriptor.
    ///
    /// Panics if a test closed it through [`Vm::vcpus_and_fd`].
    pub fn fd(&self) -> &VmFd {
        self.fd.as_ref().expect("the VM fd was closed")
    }

    /// The vCPUs and the VM file descriptor, borrowed apart: threads can
    /// run the vCPUs while the caller changes memslots through the VM fd,
    /// or closes it by setting it to `None` (the VM lives on in its vCPUs
    /// and the guest memory stays mapped: it belongs to `self`).
    pub fn vcpus_and_fd(&mut self) -> (&mut [VcpuFd], &mut Option<VmFd>) {
        (&mut self.vcpus, &mut self.fd)
    }

    /// Closes the vCPU file descriptors (the VM goes away with the last
    /// of them and its own fd).
    pub fn close_vcpus(&mut self) {
        self.vcpus.clear();
    }

    /// Maps `size` bytes of anonymous memory and installs it as memslot
    /// `slot` at `gpa` (`KVM_SET_USER_MEMORY_REGION2`), returning the raw
    /// result.
    pub fn __add_memory(&mut self, slot: u32, gpa: u64, size: usize) -> Result<(), errno::Error> {
        self.__add_memory_flags(slot, 0, gpa, size)
    }

    /// Like [`Vm::__add_memory`], with memslot flags `flags`
    /// (`KVM_MEM_*`).
    pub fn __add_memory_flags(
        &mut self,
        slot: u32,
        flags: u32,
        gpa: u64,
        size: usize,
    ) -> Result<(), errno::Error> {
        let mem = GuestMem::new(gpa, size)?;
        // KVM_SET_USER_MEMORY_REGION2: the v1 ioctl refuses flags newer
        // than KVM_MEM_READONLY.
        let region = kvm_userspace_memory_region2 {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size as u64,
            userspace_addr: mem.hva(),
            ..Default::default()
        };
        // SAFETY: `region` describes `mem`, which `self.mem` keeps mapped
        // for as long as the VM exists (type invariant of `Vm`).
        unsafe { self.fd().set_user_memory_region2(region) }?;
        self.mem.push(mem);
        Ok(())
    }

    /// Installs memslot `slot` at `gpa` for `size` bytes of host memory
    /// at `hva` that `owner` maps, with memslot flags `flags`
    /// (`KVM_SET_USER_MEMORY_REGION2`), returning the raw result. The VM
    /// keeps `owner` until it is dropped.
    ///
    /// # Safety
    ///
    /// `hva..hva + size` must stay mapped, or at least reserved (never
    /// reused for other memory of this process), for as long as `owner`
    /// is alive.
    pub unsafe fn __add_memory_at(
        &mut self,
        slot: u32,
        flags: u32,
        gpa: u64,
        size: u64,
        hva: u64,
        owner: Arc<dyn Any + Send + Sync>,
    ) -> Result<(), errno::Error> {
        // KVM_SET_USER_MEMORY_REGION2: the v1 ioctl refuses flags newer
        // than KVM_MEM_READONLY, KVM_MEM_PAGE_PROVIDER among them.
        let region = kvm_userspace_memory_region2 {
            slot,
            flags,
            guest_phys_addr: gpa,
            memory_size: size,
            userspace_addr: hva,
            ..Default::default()
        };
        // SAFETY: the caller guarantees the range stays mapped or reserved
        // while `owner` lives, and `self.keep` keeps it alive for as long
        // as the VM exists (type invariant of `Vm`).
        unsafe { self.fd().set_user_memory_region2(region) }?;
        self.keep.push(owner);
        Ok(())
    }

    /// Like [`Vm::__add_memory`], asserting that it worked.
    #[track_caller]
    pub fn add_memory(&mut self, slot: u32, gpa: u64, size: usize) {
        check(
            self.__add_memory(slot, gpa, size),
            "KVM_SET_USER_MEMORY_REGION",
        );
    }

    /// Copies `bytes` into guest memory at `gpa`; the range must lie in
    /// one region added with [`Vm::add_memory`].
    #[track_caller]
    pub fn write(&mut self, gpa: u64, bytes: &[u8]) {
        let end = gpa + bytes.len() as u64;
        let Some(m) = self
            .mem
            .iter_mut()
            .find(|m| m.gpa <= gpa && end <= m.gpa + m.size as u64)
        else {
            ksft::fail(
                std::panic::Location::caller(),
                "guest write outside guest memory",
                format_args!("gpa {gpa:#x}, {} bytes", bytes.len()),
                None,
            )
        };
        let off = (gpa - m.gpa) as usize;
        m.as_mut_slice()[off..off + bytes.len()].copy_from_slice(bytes);
    }

    /// The host address of guest physical address `gpa` in memory that
    /// [`Vm::add_memory`] installed (the memslot's `userspace_addr` plus
    /// the offset).
    #[track_caller]
    pub fn mem_hva(&self, gpa: u64) -> u64 {
        match self.mem.iter().find(|m| m.gpa <= gpa && gpa < m.gpa + m.size as u64) {
            Some(m) => m.hva() + (gpa - m.gpa),
            None => ksft::fail(
                std::panic::Location::caller(),
                "address outside guest memory",
                format_args!("gpa {gpa:#x}"),
                None,
            ),
        }
    }

    /// Creates vCPU `id` (`KVM_CREATE_VCPU`) in real mode with its first
    /// instruction at `gpa` (below 1 MiB), returning the raw result. The
    /// vCPU is then reached with [`Vm::vcpu`]`(id)`.
    pub fn __add_vcpu(&mut self, id: u64, gpa: u64) -> Result<(), errno::Error> {
        assert!(gpa < 0x10_0000, "real-mode code must start below 1 MiB");
        let vcpu = self.fd().create_vcpu(id)?;

        // Real mode: the address is cs.base + ip, with cs.base =
        // cs.selector << 4. Reset state has cs.base = 0xffff0000; put cs
        // on the 64 KiB segment holding `gpa`.
        let mut sregs = vcpu.get_sregs()?;
        sregs.cs.base = gpa & !0xffff;
        sregs.cs.selector = (sregs.cs.base >> 4) as u16;
        vcpu.set_sregs(&sregs)?;

        let mut regs = vcpu.get_regs()?;
        regs.rip = gpa & 0xffff;
        regs.rflags = 0x2; // bit 1 is reserved and must be set
        vcpu.set_regs(&regs)?;

        self.vcpus.push(vcpu);
        Ok(())
    }

    /// Like [`Vm::__add_vcpu`], asserting that it worked.
    #[track_caller]
    pub fn add_vcpu(&mut self, id: u64, gpa: u64) {
        check(
            self.__add_vcpu(id, gpa),
            "KVM_CREATE_VCPU and register setup",
        );
    }

    /// Creates vCPU `id` (`KVM_CREATE_VCPU`) in 32-bit protected mode with
    /// flat 4 GiB segments and paging off (see [`set_flat_pm32`]), its
    /// first instruction at `gpa`, returning the raw result. The vCPU is
    /// then reached with [`Vm::vcpu`].
    pub fn __add_vcpu_pm32(&mut self, id: u64, gpa: u64) -> Result<(), errno::Error> {
        let vcpu = self.fd().create_vcpu(id)?;
        set_flat_pm32(&vcpu)?;
        vcpu_set_entry(&vcpu, gpa)?;
        self.vcpus.push(vcpu);
        Ok(())
    }

    /// Like [`Vm::__add_vcpu_pm32`], asserting that it worked.
    #[track_caller]
    pub fn add_vcpu_pm32(&mut self, id: u64, gpa: u64) {
        check(
            self.__add_vcpu_pm32(id, gpa),
            "KVM_CREATE_VCPU and protected-mode setup",
        );
    }

    /// Deletes memslot `slot` (`KVM_SET_USER_MEMORY_REGION` with size 0),
    /// returning the raw result.
    pub fn __delete_memslot(&self, slot: u32) -> Result<(), errno::Error> {
        delete_memslot(self.fd(), slot)
    }

    /// The vCPUs, in the order they were added.
    pub fn vcpus_mut(&mut self) -> &mut [VcpuFd] {
        &mut self.vcpus
    }

    /// The `i`-th vCPU added.
    pub fn vcpu(&mut self, i: usize) -> &mut VcpuFd {
        &mut self.vcpus[i]
    }
}

/// Deletes memslot `slot` of the VM `fd` (`KVM_SET_USER_MEMORY_REGION`
/// with size 0), returning the raw result. Usable while vCPUs run.
pub fn delete_memslot(fd: &VmFd, slot: u32) -> Result<(), errno::Error> {
    let region = kvm_userspace_memory_region {
        slot,
        ..Default::default()
    };
    // SAFETY: a region of size 0 deletes the memslot; KVM maps no host
    // memory for it.
    unsafe { fd.set_user_memory_region(region) }
}

/// A flat 4 GiB segment with base 0 for `KVM_SET_SREGS`: granularity 4 KiB
/// (`g`) with limit 0xffffffff, 32-bit (`db`), a code or data segment
/// (`s`), present, DPL 0. `type_` is 0xb for code (execute/read,
/// accessed) and 0x3 for data (read/write, accessed).
fn flat_segment(selector: u16, type_: u8) -> kvm_segment {
    kvm_segment {
        base: 0,
        limit: 0xffff_ffff,
        selector,
        type_,
        present: 1,
        dpl: 0,
        db: 1,
        s: 1,
        l: 0,
        g: 1,
        avl: 0,
        unusable: 0,
        padding: 0,
    }
}

/// Puts `vcpu` in 32-bit protected mode with paging off: CR0 = PE | ET
/// (caches on), CS a flat code segment, DS/ES/FS/GS/SS flat data
/// segments, EFER = 0, CR4 = 0. KVM loads the segments' hidden parts
/// from `KVM_SET_SREGS`, so no GDT is needed as long as the guest loads
/// no segment register.
pub fn set_flat_pm32(vcpu: &VcpuFd) -> Result<(), errno::Error> {
    const CR0_PE: u64 = 1 << 0;
    const CR0_ET: u64 = 1 << 4;
    let mut sregs = vcpu.get_sregs()?;
    sregs.cs = flat_segment(0x08, 0xb);
    let data = flat_segment(0x10, 0x3);
    sregs.ds = data;
    sregs.es = data;
    sregs.fs = data;
    sregs.gs = data;
    sregs.ss = data;
    sregs.cr0 = CR0_PE | CR0_ET;
    sregs.cr4 = 0;
    sregs.efer = 0;
    vcpu.set_sregs(&sregs)
}

/// Points a protected-mode `vcpu` at `gpa`: EIP = `gpa`, EFLAGS = 0x2
/// (bit 1 is reserved and must be set; interrupts off), the general
/// registers zero.
pub fn vcpu_set_entry(vcpu: &VcpuFd, gpa: u64) -> Result<(), errno::Error> {
    let regs = kvm_bindings::kvm_regs {
        rip: gpa,
        rflags: 0x2,
        ..Default::default()
    };
    vcpu.set_regs(&regs)
}

/// An exit of `KVM_RUN` to userspace, owned (unlike [`VcpuExit`], which
/// borrows the vCPU's `kvm_run` page), so tests can compare and print it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Exit {
    /// `KVM_EXIT_IO`, out: the port and the bytes written.
    IoOut {
        /// I/O port.
        port: u16,
        /// Bytes written (size * count).
        data: Vec<u8>,
    },
    /// `KVM_EXIT_IO`, in: the port and the number of bytes read (returned
    /// as zeros).
    IoIn {
        /// I/O port.
        port: u16,
        /// Number of bytes read.
        len: usize,
    },
    /// `KVM_EXIT_MMIO`: the address, whether it was a write, and the data.
    Mmio {
        /// Guest physical address.
        gpa: u64,
        /// True for a write.
        write: bool,
        /// Bytes written, or the size of the read (returned as zeros).
        data: Vec<u8>,
    },
    /// `KVM_EXIT_HLT`.
    Hlt,
    /// `KVM_EXIT_SHUTDOWN` (a triple fault).
    Shutdown,
    /// `KVM_EXIT_FAIL_ENTRY`: the hardware entry failure reason.
    FailEntry(u64),
    /// `KVM_EXIT_INTERNAL_ERROR`.
    InternalError,
    /// `KVM_EXIT_MEMORY_FAULT`: gpa and size.
    MemoryFault {
        /// Guest physical address.
        gpa: u64,
        /// Size of the range.
        size: u64,
    },
    /// Any other exit, as `Debug` prints it.
    Other(String),
}

impl From<VcpuExit<'_>> for Exit {
    fn from(e: VcpuExit<'_>) -> Self {
        match e {
            VcpuExit::IoOut(port, data) => Exit::IoOut {
                port,
                data: data.to_vec(),
            },
            VcpuExit::IoIn(port, data) => {
                data.fill(0);
                Exit::IoIn {
                    port,
                    len: data.len(),
                }
            }
            VcpuExit::MmioWrite(gpa, data) => Exit::Mmio {
                gpa,
                write: true,
                data: data.to_vec(),
            },
            VcpuExit::MmioRead(gpa, data) => {
                data.fill(0);
                Exit::Mmio {
                    gpa,
                    write: false,
                    data: vec![0; data.len()],
                }
            }
            VcpuExit::Hlt => Exit::Hlt,
            VcpuExit::Shutdown => Exit::Shutdown,
            VcpuExit::FailEntry(reason, _cpu) => Exit::FailEntry(reason),
            VcpuExit::InternalError => Exit::InternalError,
            VcpuExit::MemoryFault { gpa, size, .. } => Exit::MemoryFault { gpa, size },
            other => Exit::Other(format!("{other:?}")),
        }
    }
}

/// Runs `vcpu` (`KVM_RUN`) until it exits to userspace, returning the raw
/// result. An interrupted run (`EINTR`, `KVM_EXIT_INTR`) is retried.
pub fn __vcpu_run(vcpu: &mut VcpuFd) -> Result<Exit, errno::Error> {
    loop {
        match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => continue,
            Ok(VcpuExit::Intr) => continue,
            Ok(exit) => return Ok(exit.into()),
            Err(e) => return Err(e),
        }
    }
}

/// Like [`__vcpu_run`], asserting that `KVM_RUN` succeeded.
#[track_caller]
pub fn vcpu_run(vcpu: &mut VcpuFd) -> Exit {
    check(__vcpu_run(vcpu), "KVM_RUN")
}

/// What `KVM_RUN` gave, for tests of runs that must fail.
#[derive(Debug)]
pub struct RawRun {
    /// The result as [`__vcpu_run`] returns it. kvm-ioctls turns a failed
    /// `KVM_RUN` (`EFAULT` or `EHWPOISON`) with exit reason
    /// `KVM_EXIT_MEMORY_FAULT` into `Ok(`[`Exit::MemoryFault`]`)`.
    pub result: Result<Exit, errno::Error>,
    /// The errno of `KVM_RUN`, 0 if it succeeded.
    pub errno: i32,
    /// `kvm_run.exit_reason` after the run (stale if `KVM_RUN` failed
    /// with anything but a memory fault).
    pub exit_reason: u32,
}

/// Runs `vcpu` like [`__vcpu_run`], also returning the errno and the exit
/// reason of the last `KVM_RUN`.
pub fn __vcpu_run_raw(vcpu: &mut VcpuFd) -> RawRun {
    loop {
        let (result, errno) = match vcpu.run() {
            Err(e) if e.errno() == libc::EINTR => continue,
            Ok(VcpuExit::Intr) => continue,
            Ok(VcpuExit::MemoryFault {
                flags: _,
                gpa,
                size,
            }) => {
                // KVM_RUN returned -1: nothing ran since, so errno is
                // still its errno.
                let errno = errno::Error::last().errno();
                (Ok(Exit::MemoryFault { gpa, size }), errno)
            }
            Ok(exit) => (Ok(exit.into()), 0),
            Err(e) => (Err(e), e.errno()),
        };
        let exit_reason = vcpu.get_kvm_run().exit_reason;
        return RawRun {
            result,
            errno,
            exit_reason,
        };
    }
}

/// Runs `vcpu`, asserting that `KVM_RUN` fails with `EFAULT` and exit
/// reason `KVM_EXIT_MEMORY_FAULT` (39), as it does when KVM cannot get a
/// page for a guest access; returns the fault's gpa and size.
#[track_caller]
pub fn vcpu_run_memory_fault(vcpu: &mut VcpuFd) -> (u64, u64) {
    let r = __vcpu_run_raw(vcpu);
    match r.result {
        Ok(Exit::MemoryFault { gpa, size })
            if r.errno == libc::EFAULT && r.exit_reason == KVM_EXIT_MEMORY_FAULT =>
        {
            (gpa, size)
        }
        _ => ksft::fail(
            std::panic::Location::caller(),
            "KVM_RUN did not fail with EFAULT and KVM_EXIT_MEMORY_FAULT",
            format_args!(
                "got {:?}, exit_reason {} (want {KVM_EXIT_MEMORY_FAULT})",
                r.result, r.exit_reason
            ),
            (r.errno != 0).then_some(r.errno),
        ),
    }
}

/// Real-mode guest code that writes `byte` to the COM1 data port and halts:
///
/// ```text
/// ba f8 03    mov  $0x3f8, %dx    (B8+r: mov imm16 to r16, r = 2 = DX)
/// b0 XX       mov  $byte, %al     (B0+r: mov imm8 to r8, r = 0 = AL)
/// ee          out  %al, (%dx)     (out AL to the port in DX)
/// f4          hlt
/// ```
pub fn code_out_hlt(byte: u8) -> [u8; 7] {
    [0xba, 0xf8, 0x03, 0xb0, byte, 0xee, 0xf4]
}

/// The COM1 data port the guest code writes to.
pub const COM1: u16 = 0x3f8;
