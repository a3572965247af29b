// SPDX-License-Identifier: GPL-2.0

//! A small VMM: boots a Linux bzImage with an initramfs under KVM, with a
//! serial console and an agent channel, on 1 to 32 vCPUs.
//!
//! # The machine
//!
//! A legacy-free PC without firmware or PCI: the VMM writes what a BIOS
//! would leave behind (the zero page, an MP table, and with `--acpi` the
//! ACPI tables of `acpi.rs`) and enters the kernel in 64-bit mode.
//!
//! Guest-physical memory (one RAM region at 0, one memslot, at most
//! 3 GiB so it stays below the 32-bit PCI hole; see `layout.rs`):
//!
//! ```text
//! 0x0000_0000  RAM, e820 usable
//!     0x500      boot GDT (code 0x10, data 0x18, TSS 0x20); 0x520 empty IDT
//!     0x7000     zero page (struct boot_params, with the e820 map)
//!     0x8ff0     boot stack (grows down)
//!     0x9000     PML4, PDPT (0xa000), PD (0xb000): first GiB identity-mapped
//!     0x2_0000   kernel command line
//! 0x0009_fc00  MP floating pointer and configuration table, e820 reserved
//! 0x000a_0000  legacy hole (VGA, ROMs, BIOS): RAM in the memslot, not in e820
//!     0xe_0000   with --acpi: RSDP, XSDT, FADT, MADT, DSDT; 0xe_f000 VM generation ID
//! 0x0010_0000  RAM, e820 usable: the protected-mode kernel, entered at +0x200
//!   top of RAM   the initramfs, page aligned, as high as the kernel allows
//! 0xd000_0000  virtio-mmio windows, 4 KiB each (virtio-rng, virtio-blk, virtio-net)
//! 0xfec0_0000  IOAPIC (KVM)
//! 0xfee0_0000  local APICs (KVM)
//! 0xfffb_d000  KVM's TSS pages (Intel)
//! ```
//!
//! I/O ports and interrupts. The 8259 PICs, the 8254 PIT (KVM_CREATE_PIT2,
//! speaker dummy, port 0x61) and the IOAPIC are KVM's in-kernel devices;
//! KVM's default routing sends GSI 0-15 to both the PICs and IOAPIC pins
//! 0-15. The VMM emulates, on ports only (`devices.rs`):
//!
//! ```text
//! 0x3f8-0x3ff  COM1, 16550 (vm-superio), IRQ 4: console, guest ttyS0 -> stdout
//! 0x2f8-0x2ff  COM2, 16550 (vm-superio), IRQ 3: agent channel, guest ttyS1
//! 0x64         i8042: writing 0xfe resets the machine (the VM stops);
//!              status reads 0x01 so Linux finds no controller at once
//! other        reads all ones, writes ignored
//! ```
//!
//! The UARTs raise their IRQ through irqfds.
//!
//! MMIO (`virtio/`): a virtio-rng device on the virtio-mmio transport,
//! unless `vmsctl run --no-rng`, a virtio-blk device with
//! `vmsctl run --disk` and a virtio-net device with `--bridge`/`--tap`:
//!
//! ```text
//! 0xd000_0000  virtio-rng registers (4 KiB), ISA IRQ 5 (irqfd)
//! 0xd000_1000  virtio-blk registers (4 KiB), ISA IRQ 6 (irqfd); its
//!              QueueNotify (+0x50) is an ioeventfd served by the disk's
//!              I/O thread
//! 0xd000_2000  virtio-net registers (4 KiB), ISA IRQ 10 (irqfd); its
//!              QueueNotify is an ioeventfd per queue, served with the
//!              tap by the network's I/O thread
//! other        reads all ones, writes ignored
//! ```
//!
//! The guest finds them through `virtio_mmio.device=4K@0xd0000000:5`,
//! `virtio_mmio.device=4K@0xd0001000:6` and so on, on its command line
//! (`CONFIG_VIRTIO_MMIO_CMDLINE_DEVICES`), or with `--acpi` in the DSDT.
//!
//! CPUs: vCPU `i` has local APIC id `i`; vCPU 0 boots, the others wait
//! for INIT/SIPI. The MP table (`mptable.rs`) lists them, the ISA bus,
//! the IOAPIC and ISA IRQs 0-15 on IOAPIC pins 0-15. CPUID is KVM's
//! supported set with the APIC ids and a one-package topology filled in;
//! KVM's paravirtual leaves stay, so the guest uses kvmclock.
//!
//! # The kernel command line
//!
//! [`DEFAULT_CMDLINE`], then what the user adds:
//!
//! - `console=ttyS0`: the console is COM1;
//! - `reboot=k`: reboot through the i8042, the VMM's signal that the
//!   guest is done;
//! - `panic=1`: reboot one second after a panic instead of hanging; the
//!   VMM saw the panic message on the console and reports a failure;
//! - `acpi=off`: there are no ACPI tables, the MP table describes the
//!   machine; also skips the search for them (left out with `--acpi`);
//! - `pci=off`: there is no PCI bus; probing one costs exits;
//! - `8250.nr_uarts=2`: only COM1 and COM2 exist; the driver would probe
//!   four legacy ports;
//! - `no_timer_check`: skips the test of the IOAPIC timer interrupt, which
//!   counts ticks against a busy loop and can misjudge a slow (nested,
//!   emulated) vCPU;
//! - `tsc=reliable`: no TSC watchdog or warp checks against other clocks
//!   that are not more reliable here (kvmclock is the clocksource);
//! - `quiet`: every console byte is a VM exit; boot messages cost boot
//!   time. Errors still print.
//!
//! # How a VM ends
//!
//! The guest resets through the i8042 (`reboot`), halts (`poweroff` or
//! `halt`: without ACPI Linux halts and prints "reboot: ... System
//! halted", which the VMM reads on the console), or triple faults. A
//! panic is reported as such. An exit the VMM cannot handle
//! (KVM_EXIT_INTERNAL_ERROR, KVM_EXIT_FAIL_ENTRY, KVM_EXIT_MEMORY_FAULT
//! with its gpa, a KVM_RUN error) stops the VM with that error. See
//! [`Stop`].
//!
//! # The agent channel
//!
//! COM2 carries one request at a time to the guest agent on ttyS1
//! (`scripts/guest/agent`): the VMM sends `<tag> <command>\n`, the agent
//! runs `sh -c <command>` and answers with the output followed by
//! `\n@@vms-done <tag> <exit status>\n` (`agent.rs`). The guest's init
//! prints `vms-guest: ready` on the console once the agent listens.

mod acpi;
pub mod agent;
pub mod qmp;
mod boot;
pub mod control;
mod cpu;
pub mod devices;
pub mod imagefile;
pub mod layout;
pub mod memory;
mod mptable;
mod run;
pub mod serial;
pub mod state;
pub mod status;
pub mod uffd;
pub mod virtio;
pub mod workingset;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use kvm_bindings::{kvm_pit_config, KVM_MAX_CPUID_ENTRIES, KVM_PIT_SPEAKER_DUMMY};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};

pub use agent::{Agent, Reply};
pub use boot::BootImages;
pub use memory::GuestRam;
pub use mptable::MAX_CPUS;
pub use status::Stop;

use agent::AgentOutput;
use devices::Devices;
use layout::KVM_TSS_ADDRESS;
use run::VcpuThreads;
pub use status::Status;

/// The kernel command line every guest gets; see the module
/// documentation for why each parameter is there.
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 reboot=k panic=1 acpi=off pci=off \
                                   8250.nr_uarts=2 no_timer_check tsc=reliable quiet";

/// The memslot of guest RAM.
const RAM_SLOT: u32 = 0;

/// A VM that is set up but not running: KVM's VM and vCPUs, the guest's
/// RAM and the emulated devices.
pub struct Vm {
    // Fields drop in this order: the vCPUs and the VM before the RAM
    // they map.
    vcpus: Vec<VcpuFd>,
    devices: Arc<Devices>,
    vm_fd: VmFd,
    kvm: Kvm,
    ram: GuestRam,
    status: Arc<Status>,
    agent_output: Arc<AgentOutput>,
    /// The guest has ACPI tables (`acpi.rs`).
    acpi: bool,
    /// A restored VM with ACPI got a new VM generation ID: raise the
    /// generic event device's interrupt as it starts.
    new_generation: bool,
    /// How long [`Vm::create`] took for KVM's VM (with its memslot,
    /// irqchip and PIT), for the devices, and for the vCPUs.
    setup: SetupTimes,
}

/// Where [`Vm::create`]'s time went (a clone's start phases).
#[derive(Clone, Copy, Debug, Default)]
pub struct SetupTimes {
    pub kvm: std::time::Duration,
    pub devices: std::time::Duration,
    pub vcpus: std::time::Duration,
    /// [`Vm::start`]'s connection of the devices.
    pub connect: std::time::Duration,
}

impl Vm {
    /// A KVM VM with `cpus` vCPUs and `ram` as its memory
    /// (memslot flags `memslot_flags`, e.g. the vms flag for a clone's
    /// memory), an in-kernel irqchip and PIT, and the serial ports. Its
    /// vCPUs are created but not set up: see [`Vm::boot_linux`].
    ///
    /// With `uarts`, the serial ports continue from a snapshot's states;
    /// `virtio` says which virtio devices it gets; with `acpi`, the guest
    /// is described by ACPI tables (written by [`Vm::boot_linux`]) and
    /// gets their generic event device.
    pub fn create(
        cpus: u8,
        ram: GuestRam,
        memslot_flags: u32,
        uarts: Option<&[state::UartState]>,
        virtio: devices::Virtio,
        acpi: bool,
    ) -> Result<Self> {
        ensure!(
            (1..=MAX_CPUS).contains(&cpus),
            "{cpus} vCPUs: from 1 to {MAX_CPUS} are supported"
        );
        let t0 = std::time::Instant::now();
        let kvm = Kvm::new().context("opening /dev/kvm")?;
        check_capabilities(&kvm)?;
        let vm_fd = kvm.create_vm().context("KVM_CREATE_VM")?;
        vm_fd
            .set_tss_address(KVM_TSS_ADDRESS as usize)
            .context("KVM_SET_TSS_ADDR")?;
        let slot = ram.memslot(RAM_SLOT, memslot_flags);
        // SAFETY: the memslot maps `ram`, which the returned Vm owns and
        // drops after `vm_fd` and every vCPU (field order), and which stays
        // mapped for its life (GuestRam's invariant). KVM only reaches the
        // memory through the mapping, so nothing else is affected.
        unsafe { vm_fd.set_user_memory_region2(slot) }.with_context(|| {
            format!("KVM_SET_USER_MEMORY_REGION2 (slot {RAM_SLOT}, flags {memslot_flags:#x})")
        })?;
        vm_fd.create_irq_chip().context("KVM_CREATE_IRQCHIP")?;
        let pit = kvm_pit_config {
            flags: KVM_PIT_SPEAKER_DUMMY,
            ..Default::default()
        };
        vm_fd.create_pit2(pit).context("KVM_CREATE_PIT2")?;

        let t1 = std::time::Instant::now();
        let status = Arc::new(Status::new());
        let agent_output = Arc::new(AgentOutput::default());
        let devices = Arc::new(Devices::new(
            status.clone(),
            agent_output.clone(),
            uarts,
            ram.memory().clone(),
            virtio,
            acpi,
        )?);
        let t2 = std::time::Instant::now();
        let vcpus = (0..cpus)
            .map(|id| {
                let vcpu = vm_fd
                    .create_vcpu(u64::from(id))
                    .with_context(|| format!("KVM_CREATE_VCPU {id}"))?;
                // The host's rate, and KVM's scaling ratio with it (see
                // `set_tsc_rate`); a restore asks for the saved rate.
                state::set_tsc_rate(&vcpu, None);
                Ok(vcpu)
            })
            .collect::<Result<Vec<_>>>()?;
        let setup = SetupTimes { kvm: t1 - t0, devices: t2 - t1, vcpus: t2.elapsed(), connect: Default::default() };
        Ok(Self {
            vcpus,
            devices,
            vm_fd,
            kvm,
            ram,
            status,
            agent_output,
            acpi,
            new_generation: false,
            setup,
        })
    }

    /// Where [`Vm::create`]'s time went.
    pub fn setup_times(&self) -> SetupTimes {
        self.setup
    }

    /// Loads Linux into guest RAM, writes the MP table (and the ACPI
    /// tables if the VM has ACPI) and sets up the vCPUs so that vCPU 0
    /// enters the kernel.
    pub fn boot_linux(&mut self, images: &BootImages) -> Result<()> {
        let cpus = self.vcpus.len() as u8;
        let images = BootImages { acpi_rsdp: self.acpi.then_some(acpi::RSDP_START), ..*images };
        let entry = boot::load_linux(self.ram.memory(), self.ram.size(), &images)?;
        mptable::write(self.ram.memory(), cpus)?;
        if self.acpi {
            acpi::write(self.ram.memory(), cpus, &self.devices.virtio_windows())?;
        }
        let supported = self
            .kvm
            .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
            .context("KVM_GET_SUPPORTED_CPUID")?;
        for (index, vcpu) in self.vcpus.iter().enumerate() {
            let boot = (index == 0).then_some(&entry);
            cpu::configure(vcpu, index as u8, cpus, &supported, boot, self.acpi)
                .with_context(|| format!("setting up vCPU {index}"))?;
        }
        Ok(())
    }

    /// Puts the VM and its vCPUs in the state a snapshot saved (its
    /// memory is the clone of the live image, already attached).
    pub fn restore(&mut self, s: &state::MachineState) -> Result<()> {
        ensure!(
            s.vcpus.len() == self.vcpus.len(),
            "the snapshot has {} vCPUs, the VM {}",
            s.vcpus.len(),
            self.vcpus.len()
        );
        ensure!(s.acpi == self.acpi, "the snapshot's VM had ACPI: {}, this VM: {}", s.acpi, self.acpi);
        state::restore_devices(&self.vm_fd, &s.devices)?;
        if self.acpi {
            // A new generation ID before the clone runs: its kernel
            // reseeds when the GED interrupt at start tells it to look.
            acpi::write_generation_id(self.ram.memory())?;
            self.new_generation = true;
        }
        for (index, (vcpu, vs)) in self.vcpus.iter().zip(&s.vcpus).enumerate() {
            state::restore_vcpu(&self.kvm, vcpu, vs)
                .with_context(|| format!("restoring vCPU {index}"))?;
        }
        Ok(())
    }

    /// Maps guest pages `first..first + n` of each run into stage 2 before
    /// the vCPUs run (`KVM_PRE_FAULT_MEMORY` on vCPU 0, which faults them
    /// in as a read would: through vms's provider for a clone). Returns
    /// the pages mapped. Stops at the first run KVM refuses (a kernel
    /// without the ioctl, a page the image cannot read) with its error;
    /// the guest's own faults then map the rest.
    ///
    /// KVM maps them for access tracking (a prefetch), which costs no exit
    /// where EPT/NPT has accessed bits (NPT always does). Memslots must
    /// not change meanwhile: KVM retries a fault on a slot being deleted
    /// until a signal comes (nothing here changes them).
    pub fn pre_fault(&mut self, runs: &[(u64, u64)]) -> Result<u64> {
        vmm_sys_util::ioctl_iowr_nr!(KVM_PRE_FAULT_MEMORY, kvm_bindings::KVMIO, 0xd5, kvm_bindings::kvm_pre_fault_memory);
        let vcpu = self.vcpus.first_mut().context("no vCPU")?;
        let r = Self::pre_fault_runs(vcpu, runs, KVM_PRE_FAULT_MEMORY());
        if r.is_err() {
            // A provider's error left KVM_EXIT_MEMORY_FAULT in the run
            // area, which kvm-ioctls would report for a later, unrelated
            // EFAULT of KVM_RUN.
            vcpu.get_kvm_run().exit_reason = kvm_bindings::KVM_EXIT_UNKNOWN;
        }
        r
    }

    fn pre_fault_runs(vcpu: &VcpuFd, runs: &[(u64, u64)], request: std::os::raw::c_ulong) -> Result<u64> {
        let mut pages = 0;
        for &(first, n) in runs {
            let mut arg = kvm_bindings::kvm_pre_fault_memory { gpa: first * 4096, size: n * 4096, ..Default::default() };
            while arg.size > 0 {
                // SAFETY: KVM_PRE_FAULT_MEMORY reads and updates `arg`, a
                // `kvm_pre_fault_memory`, and touches no memory of ours.
                let r = unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(vcpu, request, &mut arg) };
                if r < 0 {
                    let e = std::io::Error::last_os_error();
                    if matches!(e.raw_os_error(), Some(libc::EINTR | libc::EAGAIN)) {
                        continue;
                    }
                    let done = n - arg.size / 4096;
                    return Err(e).with_context(|| {
                        format!("KVM_PRE_FAULT_MEMORY at gpa {:#x} ({} pages mapped before)", arg.gpa, pages + done)
                    });
                }
            }
            pages += n;
        }
        Ok(pages)
    }

    /// Starts the vCPUs.
    pub fn start(mut self) -> Result<RunningVm> {
        // Only now: a restored VM's interrupt controllers are restored.
        let t = std::time::Instant::now();
        self.devices.connect(&self.vm_fd)?;
        self.setup.connect = t.elapsed();
        if self.new_generation {
            self.devices.raise_ged()?;
        }
        let vcpus = std::mem::take(&mut self.vcpus);
        let threads = run::start(vcpus, &self.devices, &self.status)?;
        // (on an error, dropping `threads` stops the vCPUs)
        self.devices.start_io()?;
        let agent = Agent::new(
            self.devices.clone(),
            self.agent_output.clone(),
            self.status.clone(),
        );
        Ok(RunningVm {
            threads,
            agent,
            pauser: std::sync::Mutex::new(()),
            vm: self,
        })
    }

    /// KVM's VM.
    pub fn vm_fd(&self) -> &VmFd {
        &self.vm_fd
    }

    /// The guest's RAM.
    #[allow(dead_code)] // For snapshots.
    pub fn ram(&self) -> &GuestRam {
        &self.ram
    }

    /// The emulated devices.
    #[allow(dead_code)] // For snapshots.
    pub fn devices(&self) -> &Devices {
        &self.devices
    }
}

/// What the VMM needs from KVM beyond the basics.
fn check_capabilities(kvm: &Kvm) -> Result<()> {
    for (cap, name) in [
        (Cap::Irqchip, "KVM_CAP_IRQCHIP"),
        (Cap::Pit2, "KVM_CAP_PIT2"),
        (Cap::Irqfd, "KVM_CAP_IRQFD"),
        (Cap::ImmediateExit, "KVM_CAP_IMMEDIATE_EXIT"),
        (Cap::UserMemory2, "KVM_CAP_USER_MEMORY2 (Linux 6.8 or later)"),
    ] {
        if !kvm.check_extension(cap) {
            bail!("KVM lacks {name}");
        }
    }
    Ok(())
}

/// A VM whose vCPUs run. Dropping it stops the vCPUs and waits for their
/// threads before anything else goes.
pub struct RunningVm {
    threads: VcpuThreads,
    agent: Agent,
    /// One pause at a time: a snapshot's or a reset's, from its start to
    /// its resume (each control request has its own thread).
    pauser: std::sync::Mutex<()>,
    vm: Vm,
}

impl RunningVm {
    /// Waits until the guest prints [`READY_MARKER`] on its console;
    /// returns the time from the VM's creation.
    pub fn wait_ready(&self, timeout: Duration) -> Result<Duration> {
        self.vm.status.wait_ready(timeout)
    }

    /// The agent channel.
    pub fn agent(&self) -> &Agent {
        &self.agent
    }

    /// The VM's status: wait on it for the VM to stop, or stop it.
    pub fn status(&self) -> &Arc<Status> {
        &self.vm.status
    }

    /// When a vCPU first entered KVM_RUN.
    pub fn first_run(&self) -> Option<std::time::Instant> {
        self.threads.first_run()
    }

    /// How long connecting the devices took at the start (irqfds,
    /// ioeventfds, I/O threads).
    pub fn connect_time(&self) -> std::time::Duration {
        self.vm.setup.connect
    }

    /// Pauses the VM and saves its whole state except memory (vCPUs,
    /// in-kernel devices, serial ports), calls `with_paused` (which takes
    /// the memory, e.g. makes a live image of it), then resumes. Returns
    /// the state, `with_paused`'s result and how long the VM was paused.
    ///
    /// A writable disk is frozen in the pause: `freeze` says where the VM
    /// goes on (see [`devices::Quiet::disk_for_image`]).
    pub fn snapshot<T>(
        &self,
        cmdline: &str,
        freeze: Option<(&std::path::Path, Option<&std::path::Path>)>,
        with_paused: impl FnOnce(&state::MachineState) -> Result<T>,
    ) -> Result<(state::MachineState, T, Duration)> {
        // Which MSRs to save is a property of the host: learn it before
        // pausing (a vCPU is needed to probe; KVM allows reads of a vCPU
        // from another thread only while it is not in KVM_RUN, so the
        // list comes from KVM's index list, probed by the vCPUs when
        // they save).
        let msrs = self.msr_list()?;
        let _one = self.pauser.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = std::time::Instant::now();
        let vcpus = self.threads.pause(&msrs);
        let result = vcpus.and_then(|vcpus| {
            // Held until the memory is taken: the disk's I/O thread is
            // kept out as the vCPUs are.
            let mut quiet = self.vm.devices.quiesce();
            let devices = state::save_devices(self.vm.vm_fd())?;
            let s = state::MachineState {
                version: state::STATE_VERSION,
                mem_size: self.vm.ram.size(),
                vcpus,
                devices,
                uarts: self.vm.devices.uart_states(),
                virtio: quiet.virtio_states(),
                disk: quiet.disk_for_image(freeze)?,
                cmdline: cmdline.to_owned(),
                acpi: self.vm.acpi,
                net: None,
            };
            let t = with_paused(&s)?;
            Ok((s, t))
        });
        self.threads.resume();
        let paused = t0.elapsed();
        let (s, t) = result?;
        Ok((s, t, paused))
    }

    /// Puts the running VM back in live image state `s` (a reset):
    /// pauses it; puts its disk back at the image's disk (its writes
    /// since dropped); calls `reset_memory`, which drops the clone's
    /// private pages (`VMS_CLONE_RESET`); puts the in-kernel devices,
    /// the vCPUs, the serial ports and the virtio devices in `s`'s
    /// states; gives it a new VM generation ID (with ACPI); and resumes
    /// it. The network device stays off its link: the caller gives the
    /// guest its identity again, as to a new clone, holding the agent
    /// channel from before the reset ([`Agent::hold_for_reset`]).
    /// Returns how long the VM was paused.
    ///
    /// Before the disk is touched, `s` is checked against the VM (vCPUs,
    /// memory size, ACPI, the host's XSAVE size, the UARTs and the virtio
    /// devices with their queues); an error there, or while the disk is
    /// put back, leaves the VM running as it was. An error after that
    /// stops the VM: it would be left half in one state, half in another.
    /// (KVM refuses a CPUID that differs from the vCPU's after it ran; the
    /// image's is the one the VM was started or booted with.)
    pub fn reset(&self, mut s: state::MachineState, reset_memory: impl FnOnce() -> Result<()>) -> Result<Duration> {
        ensure!(
            s.vcpus.len() == self.threads.len(),
            "the live image's VM had {} vCPUs, this one {}",
            s.vcpus.len(),
            self.threads.len()
        );
        ensure!(
            s.mem_size == self.vm.ram.size(),
            "the live image's VM had {} bytes of memory, this one {}",
            s.mem_size,
            self.vm.ram.size()
        );
        ensure!(s.acpi == self.vm.acpi, "the live image's VM had ACPI: {}, this one: {}", s.acpi, self.vm.acpi);
        self.vm.devices.quiesce().check_states(&s.virtio)?;
        devices::check_uarts(&s.uarts)?;
        let xsave_size = self.vm.kvm.check_extension_int(Cap::Xsave2);
        ensure!(
            xsave_size <= std::mem::size_of::<kvm_bindings::kvm_xsave>() as i32,
            "this host's XSAVE area needs {xsave_size} bytes; vmsctl saves 4096"
        );
        let _one = self.pauser.lock().unwrap_or_else(|e| e.into_inner());
        let t0 = std::time::Instant::now();
        // No MSRs: what the pause saves is not kept.
        if let Err(e) = self.threads.pause(&[]) {
            self.threads.resume();
            return Err(e.context("pausing the VM"));
        }
        let mut committed = false;
        let result = (|| -> Result<()> {
            let mut quiet = self.vm.devices.quiesce();
            quiet.reset_disk(s.disk.as_ref()).context("putting the disk back at the live image's")?;
            committed = true;
            reset_memory()?;
            state::restore_devices(self.vm.vm_fd(), &s.devices)?;
            self.threads.load(std::mem::take(&mut s.vcpus), xsave_size)?;
            // Only now, with the interrupt controllers and LAPICs
            // restored: the devices raise the interrupts pending in the
            // image as they are restored.
            self.vm.devices.restore_uarts(&s.uarts)?;
            quiet.restore_virtio(&s.virtio)?;
            if self.vm.acpi {
                acpi::write_generation_id(self.vm.ram.memory())?;
            }
            Ok(())
        })();
        if let Err(e) = result {
            if committed {
                let e = e.context("resetting the VM (it is stopped: it was half reset)");
                self.vm.status.stop(Stop::Failed(anyhow::anyhow!("{e:#}")));
                self.threads.resume();
                return Err(e);
            }
            self.threads.resume();
            return Err(e);
        }
        self.threads.resume();
        let paused = t0.elapsed();
        let kicked = self.vm.devices.kick_queues();
        let raised = if self.vm.acpi { self.vm.devices.raise_ged() } else { Ok(()) };
        if let Err(e) = kicked.and(raised) {
            let e = e.context("resetting the VM (it is stopped: its devices could not be started again)");
            self.vm.status.stop(Stop::Failed(anyhow::anyhow!("{e:#}")));
            return Err(e);
        }
        Ok(paused)
    }

    /// The VM's disk, if it has one.
    pub fn disk(&self) -> Option<virtio::blk::DiskConfig> {
        self.vm.devices.disk()
    }

    /// Puts the network device on its link, or takes it off.
    pub fn set_net_muted(&self, muted: bool) {
        self.vm.devices.set_net_muted(muted);
    }

    /// The network device's frame counters, if the VM has one.
    pub fn net_counters(&self) -> Option<virtio::net::NetCounters> {
        self.vm.devices.net_counters()
    }

    /// The MSRs a snapshot saves: KVM's list (KVM_GET_MSR_INDEX_LIST).
    fn msr_list(&self) -> Result<Vec<u32>> {
        let list = self.vm.kvm.get_msr_index_list().context("KVM_GET_MSR_INDEX_LIST")?;
        Ok(list.as_slice().to_vec())
    }

    /// Waits until the VM stops, at most `timeout` if given; then stops
    /// every vCPU and returns why it stopped. `None`: still running.
    pub fn wait(&mut self, timeout: Option<Duration>) -> Option<Stop> {
        let stop = self.vm.status.wait(timeout)?;
        self.threads.stop();
        Some(stop)
    }

    /// Stops the VM now, unless it stops already; returns why it stopped.
    pub fn shutdown(mut self) -> Stop {
        self.threads.stop();
        self.vm
            .status
            .wait(Some(Duration::ZERO))
            .unwrap_or(Stop::Requested)
    }
}
