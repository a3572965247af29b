// SPDX-License-Identifier: GPL-2.0

//! The vCPU and device state of a paused VM: what a live image holds
//! besides its memory, and what a clone is restored from.
//!
//! Saved in the order Firecracker and Cloud Hypervisor use, for the same
//! reasons: each vCPU is paused with a KVM_RUN that has `immediate_exit`
//! set (which completes a pending port I/O first, see KVM's api.rst), MSRs
//! come before the vCPU events, and the in-kernel devices (PIC, IOAPIC,
//! PIT, kvmclock) with the VM. Restored in the reverse dependency order:
//! CPUID first (it decides which MSRs and XSAVE features exist), then
//! registers, XSAVE, LAPIC, MSRs, events, MP state.
//!
//! The kvm structs serialise as their bytes (kvm-bindings' `serde`
//! feature). The file is postcard, a compact binary serde format, behind
//! a magic: every clone's start reads it, and JSON, which it was until
//! 2026-12-04 (and which is still read), cost the one-CPU test VM about
//! 3 ms of a 12-19 ms start to parse, mostly XSAVE and LAPIC bytes
//! written out as numbers.

use anyhow::{bail, Context, Result};
use kvm_bindings::{
    kvm_clock_data, kvm_cpuid_entry2, kvm_debugregs, kvm_irqchip, kvm_lapic_state, kvm_mp_state,
    kvm_msr_entry, kvm_pit_state2, kvm_regs, kvm_sregs, kvm_vcpu_events, kvm_xcrs, kvm_xsave,
    CpuId, Msrs, KVM_IRQCHIP_IOAPIC, KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE,
};
use kvm_ioctls::{Cap, Kvm, VcpuFd, VmFd};
use serde::{Deserialize, Serialize};

/// Version of the state format; a file of another version is refused.
pub const STATE_VERSION: u32 = 1;

/// One vCPU's architectural state.
#[derive(Serialize, Deserialize)]
pub struct VcpuState {
    pub cpuid: Vec<kvm_cpuid_entry2>,
    pub regs: kvm_regs,
    pub sregs: kvm_sregs,
    pub xsave: kvm_xsave,
    pub xcrs: kvm_xcrs,
    pub debugregs: kvm_debugregs,
    pub lapic: kvm_lapic_state,
    pub msrs: Vec<(u32, u64)>,
    pub events: kvm_vcpu_events,
    pub mp_state: kvm_mp_state,
    pub tsc_khz: Option<u32>,
}

/// The in-kernel devices of the VM.
#[derive(Serialize, Deserialize)]
pub struct VmDevices {
    pub clock: kvm_clock_data,
    pub pic_master: kvm_irqchip,
    pub pic_slave: kvm_irqchip,
    pub ioapic: kvm_irqchip,
    pub pit: kvm_pit_state2,
}

/// A 16550 UART's registers and unread input (vm-superio's SerialState).
#[derive(Serialize, Deserialize, Clone, Default)]
pub struct UartState {
    pub baud_divisor_low: u8,
    pub baud_divisor_high: u8,
    pub interrupt_enable: u8,
    pub interrupt_identification: u8,
    pub line_control: u8,
    pub line_status: u8,
    pub modem_control: u8,
    pub modem_status: u8,
    pub scratch: u8,
    pub in_buffer: Vec<u8>,
    /// Input the VMM had queued behind the FIFO.
    #[serde(default)]
    pub pending: Vec<u8>,
}

impl From<&vm_superio::serial::SerialState> for UartState {
    fn from(s: &vm_superio::serial::SerialState) -> Self {
        UartState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
            pending: Vec::new(),
        }
    }
}

impl From<&UartState> for vm_superio::serial::SerialState {
    fn from(s: &UartState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Everything but memory: what `live-image create` saves next to the
/// image and `live-image start` restores each clone from.
#[derive(Serialize, Deserialize)]
pub struct MachineState {
    pub version: u32,
    /// Guest RAM size in bytes (the image's size).
    pub mem_size: u64,
    pub vcpus: Vec<VcpuState>,
    pub devices: VmDevices,
    pub uarts: Vec<UartState>,
    /// The virtio devices (virtio-mmio transports with their queues), in
    /// window order; none in images made before they existed.
    #[serde(default)]
    pub virtio: Vec<super::virtio::MmioState>,
    /// The disk the virtio-blk device serves: a read-only one as it is,
    /// a writable one's frozen layer, of which each clone gets its own
    /// copy-on-write overlay (`virtio/disk.rs`).
    #[serde(default)]
    pub disk: Option<super::virtio::blk::DiskConfig>,
    /// The kernel command line the VM booted with (for `list`/`info`).
    pub cmdline: String,
    /// The VM was described by ACPI tables (`vmsctl run --acpi`): a clone
    /// gets a new VM generation ID.
    #[serde(default)]
    pub acpi: bool,
    /// The VM's network (`vmsctl run --bridge`/`--tap`): each clone gets
    /// a tap of its own on the same bridge, and its own MAC and address.
    #[serde(default)]
    pub net: Option<super::virtio::net::NetConfig>,
}

/// What a machine state file starts with (then postcard).
const STATE_MAGIC: &[u8; 8] = b"VMSSTATE";

impl MachineState {
    /// The state as a file holds it: [`STATE_MAGIC`], then postcard.
    pub fn to_bytes(&self) -> Result<Vec<u8>> {
        let mut out = STATE_MAGIC.to_vec();
        out.extend(postcard::to_stdvec(self).context("encoding the machine state")?);
        Ok(out)
    }

    /// A state file's contents: postcard behind [`STATE_MAGIC`], or the
    /// JSON of a vmsctl from before 2026-12-04.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self> {
        let s: MachineState = if let Some(body) = bytes.strip_prefix(STATE_MAGIC) {
            postcard::from_bytes(body).context("decoding the machine state")?
        } else if bytes.first() == Some(&b'{') {
            serde_json::from_slice(bytes).context("decoding the machine state (JSON)")?
        } else {
            bail!("not a machine state (neither {:?} nor JSON)", std::str::from_utf8(STATE_MAGIC).unwrap_or(""));
        };
        if s.version != STATE_VERSION {
            bail!("machine state version {} (this vmsctl reads {STATE_VERSION})", s.version);
        }
        Ok(s)
    }
}

/// Save a paused vCPU (its last KVM_RUN had `immediate_exit` set).
pub fn save_vcpu(vcpu: &VcpuFd, msr_indices: &[u32]) -> Result<VcpuState> {
    // MP state first: reading it settles pending INIT/SIPI (as Firecracker).
    let mp_state = vcpu.get_mp_state().context("KVM_GET_MP_STATE")?;
    let regs = vcpu.get_regs().context("KVM_GET_REGS")?;
    let sregs = vcpu.get_sregs().context("KVM_GET_SREGS")?;
    let xsave = vcpu.get_xsave().context("KVM_GET_XSAVE")?;
    let xcrs = vcpu.get_xcrs().context("KVM_GET_XCRS")?;
    let debugregs = vcpu.get_debug_regs().context("KVM_GET_DEBUGREGS")?;
    let lapic = vcpu.get_lapic().context("KVM_GET_LAPIC")?;
    let tsc_khz = vcpu.get_tsc_khz().ok();
    let cpuid = vcpu
        .get_cpuid2(kvm_bindings::KVM_MAX_CPUID_ENTRIES)
        .context("KVM_GET_CPUID2")?
        .as_slice()
        .to_vec();
    // KVM's list holds MSRs this vCPU may not have (KVM_GET_MSRS stops at
    // the first it cannot read): read in batches, skipping those.
    let mut msrs = Vec::with_capacity(msr_indices.len());
    let mut rest = msr_indices;
    while !rest.is_empty() {
        let chunk = &rest[..rest.len().min(64)];
        let entries: Vec<kvm_msr_entry> = chunk
            .iter()
            .map(|&index| kvm_msr_entry { index, ..Default::default() })
            .collect();
        let mut m = Msrs::from_entries(&entries).context("building an MSR list")?;
        let n = vcpu.get_msrs(&mut m).context("KVM_GET_MSRS")?;
        msrs.extend(m.as_slice()[..n].iter().map(|e| (e.index, e.data)));
        // Past the batch, or past the one it stopped at.
        rest = if n == chunk.len() { &rest[n..] } else { &rest[n + 1..] };
    }
    // After the MSRs: KVM_GET_VCPU_EVENTS reflects what they may change.
    let events = vcpu.get_vcpu_events().context("KVM_GET_VCPU_EVENTS")?;
    Ok(VcpuState {
        cpuid,
        regs,
        sregs,
        xsave,
        xcrs,
        debugregs,
        lapic,
        msrs,
        events,
        mp_state,
        tsc_khz,
    })
}

/// Give a vCPU its TSC rate: `khz` (the parent's, saved with its state)
/// where KVM can, else the host's. Called on every vCPU, a new VM's too
/// (`khz` None): KVM 6.12 writes a vCPU's TSC scaling ratio only when it
/// accepts a rate, and the rate it tries at `KVM_CREATE_VCPU` is the
/// host's TSC rate as first calibrated when KVM loaded. On a host without
/// a constant TSC whose calibration was refined after that by more than
/// 250 ppm, and without TSC scaling, it refuses that rate ("user requested
/// TSC rate below hardware speed") and leaves the ratio 0: KVM then
/// counts the guest's TSC as frozen, saves it as 0 and gives the guest a
/// kvmclock that jumps ahead by the host's uptime. Asking for rate 0
/// means the host's current rate, which KVM always accepts with the
/// default ratio. The test VM (emulated, no constant TSC) hits this on
/// boots whose first calibration misses: a clone's uptime then started
/// about the parent VM's age ahead of the parent's (docs/ARCHITECTURE.md,
/// "Known issues").
pub fn set_tsc_rate(vcpu: &VcpuFd, khz: Option<u32>) {
    // The saved rate where the host can give it (its own rate, or
    // scaling); otherwise the guest sees the host's rate, as after a live
    // migration without scaling.
    if khz.is_some_and(|khz| vcpu.set_tsc_khz(khz).is_ok()) {
        return;
    }
    // Best effort: fails only on a host whose TSC was never calibrated,
    // and KVM then writes the default ratio all the same.
    let _ = vcpu.set_tsc_khz(0);
}

/// Restore a vCPU created but never run.
pub fn restore_vcpu(kvm: &Kvm, vcpu: &VcpuFd, s: &VcpuState) -> Result<()> {
    restore_vcpu_state(kvm.check_extension_int(Cap::Xsave2), vcpu, s)
}

/// Restore a vCPU, new or paused (a reset: KVM takes the same CPUID
/// again after `KVM_RUN`, and refuses a different one), on a host whose
/// XSAVE area is `xsave_size` bytes (`KVM_CAP_XSAVE2`).
pub fn restore_vcpu_state(xsave_size: i32, vcpu: &VcpuFd, s: &VcpuState) -> Result<()> {
    let cpuid = CpuId::from_entries(&s.cpuid).context("building the CPUID")?;
    vcpu.set_cpuid2(&cpuid).context("KVM_SET_CPUID2")?;
    set_tsc_rate(vcpu, s.tsc_khz);
    vcpu.set_regs(&s.regs).context("KVM_SET_REGS")?;
    vcpu.set_sregs(&s.sregs).context("KVM_SET_SREGS")?;
    let xsave2 = xsave_size;
    if xsave2 > std::mem::size_of::<kvm_xsave>() as i32 {
        bail!("this host's XSAVE area needs {xsave2} bytes; vmsctl saves 4096");
    }
    // SAFETY: `s.xsave` is a whole 4 KiB kvm_xsave and the host's XSAVE
    // area fits in it (checked above), so KVM reads no more than we own.
    unsafe { vcpu.set_xsave(&s.xsave) }.context("KVM_SET_XSAVE")?;
    vcpu.set_xcrs(&s.xcrs).context("KVM_SET_XCRS")?;
    vcpu.set_debug_regs(&s.debugregs).context("KVM_SET_DEBUGREGS")?;
    vcpu.set_lapic(&s.lapic).context("KVM_SET_LAPIC")?;
    let entries: Vec<kvm_msr_entry> = s
        .msrs
        .iter()
        .map(|&(index, data)| kvm_msr_entry { index, data, ..Default::default() })
        .collect();
    for chunk in entries.chunks(64) {
        let m = Msrs::from_entries(chunk).context("building an MSR list")?;
        let n = vcpu.set_msrs(&m).context("KVM_SET_MSRS")?;
        if n != chunk.len() {
            bail!("KVM_SET_MSRS wrote {n} of {} MSRs (refused {:#x})", chunk.len(), chunk[n].index);
        }
    }
    vcpu.set_vcpu_events(&s.events).context("KVM_SET_VCPU_EVENTS")?;
    vcpu.set_mp_state(s.mp_state).context("KVM_SET_MP_STATE")?;
    Ok(())
}

fn irqchip(vm: &VmFd, id: u32) -> Result<kvm_irqchip> {
    let mut c = kvm_irqchip { chip_id: id, ..Default::default() };
    vm.get_irqchip(&mut c).with_context(|| format!("KVM_GET_IRQCHIP {id}"))?;
    Ok(c)
}

/// Save the in-kernel devices of a paused VM.
pub fn save_devices(vm: &VmFd) -> Result<VmDevices> {
    Ok(VmDevices {
        pit: vm.get_pit2().context("KVM_GET_PIT2")?,
        clock: vm.get_clock().context("KVM_GET_CLOCK")?,
        pic_master: irqchip(vm, KVM_IRQCHIP_PIC_MASTER)?,
        pic_slave: irqchip(vm, KVM_IRQCHIP_PIC_SLAVE)?,
        ioapic: irqchip(vm, KVM_IRQCHIP_IOAPIC)?,
    })
}

/// Restore the in-kernel devices of a new VM (irqchip and PIT created).
pub fn restore_devices(vm: &VmFd, d: &VmDevices) -> Result<()> {
    vm.set_pit2(&d.pit).context("KVM_SET_PIT2")?;
    // The clock continues from the snapshot: no KVM_CLOCK_REALTIME
    // adjustment, so a clone's uptime picks up where the parent paused.
    let clock = kvm_clock_data { clock: d.clock.clock, ..Default::default() };
    vm.set_clock(&clock).context("KVM_SET_CLOCK")?;
    vm.set_irqchip(&d.pic_master).context("KVM_SET_IRQCHIP (PIC master)")?;
    vm.set_irqchip(&d.pic_slave).context("KVM_SET_IRQCHIP (PIC slave)")?;
    vm.set_irqchip(&d.ioapic).context("KVM_SET_IRQCHIP (IOAPIC)")?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state() -> MachineState {
        let mut xsave = kvm_xsave::default();
        xsave.region[7] = 0xdead_beef;
        let vcpu = VcpuState {
            cpuid: vec![kvm_cpuid_entry2 { function: 0xd, eax: 7, ..Default::default() }; 3],
            regs: kvm_regs { rip: 0xffff_ffff_8100_0000, ..Default::default() },
            sregs: Default::default(),
            xsave,
            xcrs: Default::default(),
            debugregs: Default::default(),
            lapic: Default::default(),
            msrs: vec![(0x10, 12345), (0xc000_0080, 0xd01)],
            events: Default::default(),
            mp_state: kvm_mp_state { mp_state: 3 },
            tsc_khz: Some(2_000_000),
        };
        MachineState {
            version: STATE_VERSION,
            mem_size: 256 << 20,
            vcpus: vec![vcpu],
            devices: VmDevices {
                clock: kvm_clock_data { clock: 42, ..Default::default() },
                pic_master: Default::default(),
                pic_slave: Default::default(),
                ioapic: Default::default(),
                pit: Default::default(),
            },
            uarts: vec![UartState { in_buffer: b"12 hostname\n".to_vec(), ..Default::default() }, UartState::default()],
            virtio: vec![],
            disk: None,
            cmdline: "console=ttyS0".into(),
            acpi: true,
            net: None,
        }
    }

    fn same(a: &MachineState, b: &MachineState) {
        assert_eq!(a.mem_size, b.mem_size);
        assert_eq!(a.vcpus[0].regs.rip, b.vcpus[0].regs.rip);
        assert_eq!(a.vcpus[0].xsave.region[7], b.vcpus[0].xsave.region[7]);
        assert_eq!(a.vcpus[0].cpuid.len(), b.vcpus[0].cpuid.len());
        assert_eq!(a.vcpus[0].msrs, b.vcpus[0].msrs);
        assert_eq!(a.vcpus[0].tsc_khz, b.vcpus[0].tsc_khz);
        assert_eq!(a.devices.clock.clock, b.devices.clock.clock);
        assert_eq!(a.uarts[0].in_buffer, b.uarts[0].in_buffer);
        assert_eq!((a.cmdline.as_str(), a.acpi), (b.cmdline.as_str(), b.acpi));
    }

    /// The file round-trips; an older vmsctl's JSON is still read; other
    /// bytes, a truncated file and another version are refused.
    #[test]
    fn the_state_file_round_trips_and_reads_old_json() {
        let s = state();
        let bytes = s.to_bytes().unwrap();
        assert!(bytes.starts_with(STATE_MAGIC));
        same(&s, &MachineState::from_bytes(&bytes).unwrap());
        let json = serde_json::to_vec(&s).unwrap();
        assert!(json.len() > 2 * bytes.len(), "JSON {} bytes, postcard {}", json.len(), bytes.len());
        same(&s, &MachineState::from_bytes(&json).unwrap());
        assert!(MachineState::from_bytes(b"garbage").is_err());
        assert!(MachineState::from_bytes(&bytes[..bytes.len() / 2]).is_err());
        let mut old = state();
        old.version = STATE_VERSION + 1;
        let e = MachineState::from_bytes(&old.to_bytes().unwrap()).err().map(|e| format!("{e:#}"));
        assert!(e.is_some_and(|e| e.contains("version")));
    }
}
