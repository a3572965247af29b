// SPDX-License-Identifier: GPL-2.0

//! The devices the VMM emulates: on I/O ports COM1 (console), COM2
//! (agent channel) and the part of the i8042 keyboard controller that
//! resets the machine; in MMIO, a virtio-rng device (virtio-mmio,
//! [`super::virtio`]). The PIC, PIT, IOAPIC and LAPICs are KVM's.
//!
//! Any other port reads as all ones and ignores writes, like an ISA port
//! with nothing behind it; so does any other MMIO address.

use std::io::Write;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use kvm_ioctls::VmFd;
use vm_memory::GuestMemoryMmap;

use super::state::UartState;
use super::virtio::mmio::{MmioState, MmioTransport, WINDOW};
use super::virtio::rng::Rng;

use super::agent::{AgentOutput, AgentWriter};
use super::layout::{
    COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, I8042_COMMAND_PORT, I8042_DATA_PORT, UART_PORTS,
    VIRTIO_RNG_BASE, VIRTIO_RNG_IRQ,
};
use super::serial::{Console, IrqLine, Uart};
use super::status::{Status, Stop};

/// The i8042 command that pulses the CPU reset line.
const I8042_RESET: u8 = 0xfe;
/// What the i8042 status register reads: "output buffer full" and never
/// anything to read. Linux's i8042 driver then finds no controller at
/// once (its flush gives up after 16 reads) instead of timing out on
/// commands, while its reboot code, which waits for "input buffer full"
/// to clear, writes the reset command without delay.
const I8042_STATUS: u8 = 0x01;

/// The emulated devices.
pub struct Devices {
    console: Mutex<Uart<Console>>,
    agent: Mutex<Uart<AgentWriter>>,
    rng: Option<Mutex<MmioTransport<Rng>>>,
    /// Guest memory, where the virtio devices find their rings.
    mem: GuestMemoryMmap,
    status: Arc<Status>,
}

/// Which virtio devices a VM gets.
pub enum Virtio<'a> {
    /// A booting VM: with or without virtio-rng.
    Fresh { rng: bool },
    /// A VM resuming from a snapshot: the devices it had, as they were.
    Restore(&'a [MmioState]),
}

/// The ports of a UART at `base`.
fn uart_ports(base: u16) -> Range<u16> {
    base..base + UART_PORTS
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // Device models stay usable after a panic in another vCPU thread:
    // the VM is being torn down then anyway.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Devices {
    /// Creates the devices of VM `vm` (which has an in-kernel irqchip):
    /// the UARTs' interrupts are irqfds on their ISA IRQs; COM2's output
    /// goes to `agent_output`.
    ///
    /// With `uarts`, COM1 and COM2 continue from a snapshot's states.
    ///
    /// The virtio devices are `virtio`'s, on guest memory `mem`.
    pub fn new(
        vm: &VmFd,
        status: Arc<Status>,
        agent_output: Arc<AgentOutput>,
        uarts: Option<&[UartState]>,
        mem: GuestMemoryMmap,
        virtio: Virtio,
    ) -> Result<Self> {
        let console_out = Console::new(status.clone());
        let agent_out = AgentWriter(agent_output);
        let (console, agent) = match uarts {
            None => (
                Uart::new(irq_line(vm, COM1_IRQ)?, console_out),
                Uart::new(irq_line(vm, COM2_IRQ)?, agent_out),
            ),
            Some([com1, com2]) => (
                Uart::from_state(irq_line(vm, COM1_IRQ)?, console_out, &com1.into(), &com1.pending)?,
                Uart::from_state(irq_line(vm, COM2_IRQ)?, agent_out, &com2.into(), &com2.pending)?,
            ),
            Some(other) => anyhow::bail!("the snapshot has {} UARTs, this VMM 2", other.len()),
        };
        let rng = match virtio {
            Virtio::Fresh { rng: false } => None,
            Virtio::Fresh { rng: true } => Some(MmioTransport::new(Rng::new(), irq_line(vm, VIRTIO_RNG_IRQ)?)?),
            Virtio::Restore([]) => None,
            Virtio::Restore([rng]) => Some(
                MmioTransport::from_state(Rng::new(), irq_line(vm, VIRTIO_RNG_IRQ)?, rng)
                    .context("restoring the virtio-rng device")?,
            ),
            Virtio::Restore(other) => {
                anyhow::bail!("the snapshot has {} virtio devices, this VMM at most 1", other.len())
            }
        };
        Ok(Self {
            console: Mutex::new(console),
            agent: Mutex::new(agent),
            rng: rng.map(Mutex::new),
            mem,
            status,
        })
    }

    /// A guest `in` from `port`: fills `data`.
    pub fn pio_read(&self, port: u16, data: &mut [u8]) {
        if uart_ports(COM1_PORT).contains(&port) {
            let mut uart = lock(&self.console);
            data.iter_mut()
                .for_each(|b| *b = uart.read((port - COM1_PORT) as u8));
        } else if uart_ports(COM2_PORT).contains(&port) {
            let mut uart = lock(&self.agent);
            data.iter_mut()
                .for_each(|b| *b = uart.read((port - COM2_PORT) as u8));
        } else if port == I8042_COMMAND_PORT {
            data.fill(I8042_STATUS);
        } else if port == I8042_DATA_PORT {
            data.fill(0);
        } else {
            data.fill(0xff);
        }
    }

    /// A guest `out` of `data` to `port`.
    pub fn pio_write(&self, port: u16, data: &[u8]) -> Result<()> {
        if uart_ports(COM1_PORT).contains(&port) {
            let mut uart = lock(&self.console);
            for &b in data {
                uart.write((port - COM1_PORT) as u8, b)
                    .context("COM1 (console)")?;
            }
        } else if uart_ports(COM2_PORT).contains(&port) {
            let mut uart = lock(&self.agent);
            for &b in data {
                uart.write((port - COM2_PORT) as u8, b)
                    .context("COM2 (agent channel)")?;
            }
        } else if port == I8042_COMMAND_PORT && data.first() == Some(&I8042_RESET) {
            self.status.stop(Stop::Reset);
        }
        Ok(())
    }

    /// A guest read of `data.len()` bytes at guest-physical `addr`
    /// outside RAM.
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) {
        match &self.rng {
            Some(rng) if (VIRTIO_RNG_BASE..VIRTIO_RNG_BASE + WINDOW).contains(&addr) => {
                lock(rng).read(addr - VIRTIO_RNG_BASE, data)
            }
            _ => data.fill(0xff),
        }
    }

    /// A guest write of `data` at guest-physical `addr` outside RAM.
    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> Result<()> {
        match &self.rng {
            Some(rng) if (VIRTIO_RNG_BASE..VIRTIO_RNG_BASE + WINDOW).contains(&addr) => lock(rng)
                .write(addr - VIRTIO_RNG_BASE, data, &self.mem)
                .context("virtio-rng"),
            _ => Ok(()),
        }
    }

    /// The virtio devices' states, for a snapshot (taken with the vCPUs
    /// paused: a device serves its queues in a vCPU's MMIO exit, so none
    /// is in the middle of a request then).
    pub fn virtio_states(&self) -> Vec<MmioState> {
        self.rng.iter().map(|t| lock(t).state()).collect()
    }

    /// Queues input for the guest on COM2 (the agent channel).
    pub fn queue_agent_input(&self, bytes: &[u8]) {
        lock(&self.agent).queue_input(bytes);
    }

    /// The UARTs' states (COM1, COM2) with the input queued behind their
    /// FIFOs, for a snapshot.
    pub fn uart_states(&self) -> Vec<UartState> {
        vec![uart_state(&self.console), uart_state(&self.agent)]
    }
}

fn uart_state<W: Write>(uart: &Mutex<Uart<W>>) -> UartState {
    let uart = lock(uart);
    let mut s = UartState::from(&uart.state());
    s.pending = uart.pending_input();
    s
}

/// An interrupt line to ISA IRQ `irq` (= GSI `irq` in KVM's default
/// routing, to both the PIC and the IOAPIC).
fn irq_line(vm: &VmFd, irq: u32) -> Result<IrqLine> {
    let line = IrqLine::new()?;
    vm.register_irqfd(line.eventfd(), irq)
        .with_context(|| format!("KVM_IRQFD for IRQ {irq}"))?;
    Ok(line)
}
