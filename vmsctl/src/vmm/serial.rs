// SPDX-License-Identifier: GPL-2.0

//! The two 16550 UARTs (vm-superio's model) and where their output goes.
//!
//! Each UART raises its ISA IRQ through an irqfd, so an interrupt costs
//! the vCPU thread one `write(2)` and no exit. Input waits in a queue of
//! our own and enters the UART's 64-byte FIFO as the guest drains it.

use std::collections::VecDeque;
use std::io::{self, Write};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use vm_superio::serial::{NoEvents, SerialState};
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

use super::status::Status;

/// A UART's interrupt line: an eventfd that KVM turns into an edge on
/// the UART's GSI (irqfd).
pub struct IrqLine(EventFd);

impl IrqLine {
    /// A new line, not yet connected to a GSI.
    pub fn new() -> Result<Self> {
        Ok(Self(
            EventFd::new(libc::EFD_NONBLOCK).context("creating an eventfd for an IRQ")?,
        ))
    }

    /// The eventfd, to register with KVM.
    pub fn eventfd(&self) -> &EventFd {
        &self.0
    }

    /// A line on an eventfd made elsewhere: a reset device's, on the
    /// eventfd KVM already knows as an irqfd (or a test's clone of
    /// another line's, to watch it).
    pub fn from_eventfd(fd: EventFd) -> Self {
        Self(fd)
    }
}

impl Trigger for IrqLine {
    type E = io::Error;

    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// A 16550 UART whose output goes to `W`.
pub struct Uart<W: Write> {
    serial: Serial<IrqLine, NoEvents, W>,
    /// Input the FIFO had no room for yet.
    pending: VecDeque<u8>,
    /// The FIFO's capacity when empty.
    fifo_size: usize,
}

impl<W: Write> Uart<W> {
    /// A UART in its reset state.
    pub fn new(irq: IrqLine, out: W) -> Self {
        let serial = Serial::new(irq, out);
        let fifo_size = serial.fifo_capacity();
        Self {
            serial,
            pending: VecDeque::new(),
            fifo_size,
        }
    }

    /// A UART as a snapshot left it: registers, FIFO and the input queued
    /// behind it. Raises its interrupt if one was pending.
    pub fn from_state(irq: IrqLine, out: W, state: &SerialState, pending: &[u8]) -> Result<Self> {
        let serial = Serial::from_state(state, irq, NoEvents, out)
            .map_err(|e| anyhow::anyhow!("{e:?}"))
            .context("restoring a UART")?;
        // The FIFO's capacity when empty: what is free plus what it holds.
        let fifo_size = serial.fifo_capacity() + state.in_buffer.len();
        Ok(Self {
            serial,
            pending: pending.iter().copied().collect(),
            fifo_size,
        })
    }

    /// A guest read of register `offset`.
    pub fn read(&mut self, offset: u8) -> u8 {
        let value = self.serial.read(offset);
        if offset == 0 && self.serial.fifo_capacity() == self.fifo_size {
            self.refill();
        }
        value
    }

    /// A guest write of `value` to register `offset`. Output that cannot
    /// be written (e.g. a closed stdout) is dropped, as a UART with no
    /// cable would; an interrupt that cannot be raised is an error.
    pub fn write(&mut self, offset: u8, value: u8) -> Result<()> {
        match self.serial.write(offset, value) {
            Ok(()) | Err(vm_superio::serial::Error::IOError(_)) => Ok(()),
            Err(e) => Err(anyhow::anyhow!("{e}")).context("raising the UART's interrupt"),
        }
    }

    /// Queues `bytes` of input for the guest.
    pub fn queue_input(&mut self, bytes: &[u8]) {
        self.pending.extend(bytes);
        if self.serial.fifo_capacity() == self.fifo_size {
            self.refill();
        }
    }

    /// Moves queued input into the (empty) FIFO and raises the receive
    /// interrupt; done when the guest has read everything, so it gets one
    /// interrupt per FIFO-full rather than one per byte.
    fn refill(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = self.pending.len().min(self.fifo_size);
        let chunk: Vec<u8> = self.pending.drain(..n).collect();
        // Cannot be FullFifo (the FIFO is empty); a failed interrupt
        // leaves the data readable when the guest next polls.
        let _ = self.serial.enqueue_raw_bytes(&chunk);
    }

    /// The registers and the FIFO, for a snapshot.
    pub fn state(&self) -> SerialState {
        self.serial.state()
    }

    /// Input the guest has not read yet: in the FIFO and queued behind it.
    pub fn input_unread(&self) -> usize {
        self.fifo_size - self.serial.fifo_capacity() + self.pending.len()
    }

    /// Input queued behind the FIFO, for a snapshot.
    pub fn pending_input(&self) -> Vec<u8> {
        self.pending.iter().copied().collect()
    }

    /// Where the output goes.
    #[cfg(test)]
    pub fn output(&self) -> &W {
        self.serial.writer()
    }
}

/// The console: COM1's output, copied to our stdout as it comes and
/// watched line by line for what the guest tells the VMM
/// ([`Status::console_line`]).
pub struct Console {
    status: Arc<Status>,
    line: Vec<u8>,
}

/// Lines longer than this are looked at in pieces.
const MAX_LINE: usize = 1024;

impl Console {
    /// A console that reports to `status`.
    pub fn new(status: Arc<Status>) -> Self {
        Self {
            status,
            line: Vec::new(),
        }
    }

    fn scan(&mut self, byte: u8) {
        if byte == b'\n' || self.line.len() >= MAX_LINE {
            self.status
                .console_line(&String::from_utf8_lossy(&self.line));
            self.line.clear();
        }
        if byte != b'\n' {
            self.line.push(byte);
        }
    }
}

/// The VM process's standard output, which the guest's console shares
/// with the lines vmsctl prints itself ([`print_line`]): whether the
/// console's last byte ended a line, and a line of vmsctl's waiting for
/// the console's line to end.
struct Out {
    at_line_start: bool,
    waiting: Option<String>,
}

static OUT: Mutex<Out> = Mutex::new(Out { at_line_start: true, waiting: None });

/// Prints `line` on a line of its own between the guest console's lines:
/// at once if the console is at the start of a line, else right after
/// the console ends its line, or after `wait` on a new line of its own
/// (a guest may leave a line unfinished). Otherwise a guest printing
/// byte by byte would have its line cut in two (`vms-guest: resu`,
/// `vms-vm-ready`, `med as c-1`), and whoever reads the log for it, a
/// test or a person, would not find it.
pub fn print_line(line: &str, wait: Duration) {
    {
        let mut out = OUT.lock().unwrap_or_else(|e| e.into_inner());
        if out.at_line_start {
            let _ = writeln!(io::stdout().lock(), "{line}");
            return;
        }
        out.waiting = Some(line.to_owned());
    }
    let deadline = Instant::now() + wait;
    while Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(1));
        if OUT.lock().unwrap_or_else(|e| e.into_inner()).waiting.is_none() {
            return;
        }
    }
    let mut out = OUT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(line) = out.waiting.take() {
        let _ = writeln!(io::stdout().lock(), "\n{line}");
        out.at_line_start = true;
    }
}

impl Write for Console {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        // Output first, so that what the VMM prints when it sees a line
        // comes after the line.
        let written = {
            let mut out = OUT.lock().unwrap_or_else(|e| e.into_inner());
            let mut stdout = io::stdout().lock();
            let mut written = Ok(());
            // Up to each end of line, then a line of vmsctl's that waits.
            for piece in buf.split_inclusive(|&b| b == b'\n') {
                written = written.and_then(|()| stdout.write_all(piece));
                out.at_line_start = piece.ends_with(b"\n");
                if out.at_line_start {
                    if let Some(line) = out.waiting.take() {
                        written = written.and_then(|()| writeln!(stdout, "{line}"));
                    }
                }
            }
            written
        };
        for &b in buf {
            self.scan(b);
        }
        written.map(|()| buf.len())
    }

    /// The UART flushes after every byte: the guest's output reaches the
    /// terminal or pipe at once, not when a line (or buffer) is full.
    fn flush(&mut self) -> io::Result<()> {
        io::stdout().lock().flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Reads everything the guest would see, as the 8250 driver does.
    fn drain(uart: &mut Uart<Vec<u8>>) -> Vec<u8> {
        let mut got = Vec::new();
        while uart.read(5) & 1 != 0 {
            got.push(uart.read(0));
        }
        got
    }

    #[test]
    fn input_larger_than_the_fifo_arrives_whole() {
        let mut uart = Uart::new(IrqLine::new().unwrap(), Vec::new());
        uart.write(1, 1).unwrap(); // IER: receive interrupt on
        let input: Vec<u8> = (0..200u8).collect();
        uart.queue_input(&input);
        let mut queued = uart.state().in_buffer;
        queued.extend(uart.pending_input());
        assert_eq!(queued, input);
        assert_eq!(drain(&mut uart), input);
        uart.queue_input(b"more");
        assert_eq!(drain(&mut uart), b"more");
    }

    #[test]
    fn output_goes_to_the_writer() {
        let mut uart = Uart::new(IrqLine::new().unwrap(), Vec::new());
        for &b in b"hi\n" {
            uart.write(0, b).unwrap();
        }
        assert_eq!(uart.output(), b"hi\n");
    }
}
