// SPDX-License-Identifier: GPL-2.0

//! The devices the VMM emulates, all on I/O ports: COM1 (console), COM2
//! (agent channel) and the part of the i8042 keyboard controller that
//! resets the machine. The PIC, PIT, IOAPIC and LAPICs are KVM's.
//!
//! Any other port reads as all ones and ignores writes, like an ISA port
//! with nothing behind it.

use std::io::Write;
use std::ops::Range;
use std::sync::{Arc, Mutex, MutexGuard};

use anyhow::{Context, Result};
use kvm_ioctls::VmFd;
use super::state::UartState;

use super::agent::{AgentOutput, AgentWriter};
use super::layout::{
    COM1_IRQ, COM1_PORT, COM2_IRQ, COM2_PORT, I8042_COMMAND_PORT, I8042_DATA_PORT, UART_PORTS,
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

/// The port-mapped devices.
pub struct Devices {
    console: Mutex<Uart<Console>>,
    agent: Mutex<Uart<AgentWriter>>,
    status: Arc<Status>,
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
    pub fn new(
        vm: &VmFd,
        status: Arc<Status>,
        agent_output: Arc<AgentOutput>,
        uarts: Option<&[UartState]>,
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
        Ok(Self {
            console: Mutex::new(console),
            agent: Mutex::new(agent),
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
