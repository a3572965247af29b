// SPDX-License-Identifier: GPL-2.0

//! The agent channel: COM2 on our side, `/dev/ttyS1` in the guest, where
//! the guest agent (`scripts/guest/agent`) runs commands for the VMM.
//!
//! The protocol is lines of text, one request at a time (the tty is raw,
//! without echo):
//!
//! ```text
//! VMM -> guest   <tag> <command>\n
//! guest -> VMM   <output of sh -c "<command>", stdout and stderr>
//!                \n@@vms-done <tag> <exit status>\n
//! ```
//!
//! `<tag>` is a number that pairs a reply with its request. The output is
//! every byte before the `\n` that starts the done line, so output that
//! ends without a newline comes back as it is.
//!
//! One request goes the other way: a command that writes the line
//! `@@vms-time?` (at the start of a line) gets the line `@@vms-time NS`,
//! the host's `CLOCK_REALTIME` in nanoseconds, on the agent channel (the
//! guest's `vms-resume` reads it from `/dev/ttyS1`; the agent skips lines
//! that start with `@@`, should one arrive late), so
//! a clone's clock is set to the host's time as it is when the guest asks,
//! not when the command was sent (the first command in a fresh clone can
//! take seconds to start in an emulated test machine). The request line
//! is not part of the command's output.

use std::io::{self, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use anyhow::{bail, ensure, Context, Result};

use super::devices::Devices;
use super::status::Status;

/// The start of the line that ends a reply.
const DONE: &str = "\n@@vms-done ";
/// Output kept while waiting for a reply; older bytes are dropped.
const MAX_OUTPUT: usize = 16 << 20;
/// How often a waiting [`Agent::exec`] checks that the VM still runs.
const POLL: Duration = Duration::from_millis(100);
/// A command asks for the host's time (see the module documentation),
/// on a line of its own.
const TIME_REQUEST: &[u8] = b"@@vms-time?\n";

/// The answer to a time request: the host's `CLOCK_REALTIME` now.
fn time_answer() -> String {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("@@vms-time {now}\n")
}

/// Where a time request starts in `buf`: at its start (the output is
/// cleared when a command is sent) or after a newline.
fn find_time_request(buf: &[u8]) -> Option<usize> {
    if buf.starts_with(TIME_REQUEST) {
        return Some(0);
    }
    let mut line = Vec::with_capacity(TIME_REQUEST.len() + 1);
    line.push(b'\n');
    line.extend_from_slice(TIME_REQUEST);
    find(buf, &line).map(|at| at + 1)
}

/// What the guest wrote on the agent channel and nobody has read yet.
#[derive(Default)]
pub struct AgentOutput {
    buf: Mutex<Vec<u8>>,
    grew: Condvar,
}

impl AgentOutput {
    fn lock(&self) -> MutexGuard<'_, Vec<u8>> {
        self.buf.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// COM2's output: appends to the shared [`AgentOutput`].
pub struct AgentWriter(pub Arc<AgentOutput>);

impl Write for AgentWriter {
    fn write(&mut self, bytes: &[u8]) -> io::Result<usize> {
        let mut buf = self.0.lock();
        buf.extend_from_slice(bytes);
        if buf.len() > MAX_OUTPUT {
            let excess = buf.len() - MAX_OUTPUT;
            buf.drain(..excess);
        }
        self.0.grew.notify_all();
        Ok(bytes.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// A command's result.
#[derive(Debug, PartialEq, Eq)]
pub struct Reply {
    /// Its exit status, as the guest's shell reports it (128 + N when
    /// killed by signal N).
    pub status: i32,
    /// Its standard output and error, interleaved.
    pub output: Vec<u8>,
}

/// The VMM's end of the agent channel.
pub struct Agent {
    devices: Arc<Devices>,
    output: Arc<AgentOutput>,
    status: Arc<Status>,
    next_tag: AtomicU64,
    /// Bumped by [`reset`](Self::reset): a request sent before fails.
    resets: AtomicU64,
    /// One request at a time.
    busy: Mutex<()>,
}

impl Agent {
    /// The agent channel of a VM whose COM2 writes to `output`.
    pub fn new(devices: Arc<Devices>, output: Arc<AgentOutput>, status: Arc<Status>) -> Self {
        Self {
            devices,
            output,
            status,
            // A random start: a clone resumes with its parent's agent,
            // which may have been running a request of the parent's when
            // the image was made; its reply must not pass for a reply to
            // one of the clone's.
            next_tag: AtomicU64::new(first_tag()),
            resets: AtomicU64::new(0),
            busy: Mutex::new(()),
        }
    }

    /// Runs `command` (one line of `sh`) in the guest and waits at most
    /// `timeout` for it to finish.
    pub fn exec(&self, command: &str, timeout: Duration) -> Result<Reply> {
        let _one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        self.exec_one(command, timeout)
    }

    fn exec_one(&self, command: &str, timeout: Duration) -> Result<Reply> {
        let resets = self.resets.load(Ordering::SeqCst);
        let tag = self.send(command)?;
        self.wait_reply(tag, resets, timeout)
    }

    /// For a reset to a live image: a request in flight fails at once
    /// (the guest that runs it is about to go) and output not yet read
    /// goes; then the channel is the caller's until the returned hold
    /// drops, so that the guest's first command after the reset is the
    /// one that gives it its identity ([`AgentHold::exec`]), not another
    /// caller's.
    pub fn hold_for_reset(&self) -> AgentHold<'_> {
        self.resets.fetch_add(1, Ordering::SeqCst);
        self.output.lock().clear();
        self.output.grew.notify_all();
        let one = self.busy.lock().unwrap_or_else(|e| e.into_inner());
        // Output of a request that ended meanwhile.
        self.output.lock().clear();
        AgentHold { agent: self, _one: one }
    }

    /// Sends `command` without waiting for its reply (e.g. a command that
    /// powers the guest off); returns its tag. Output not yet read is
    /// dropped.
    pub fn send(&self, command: &str) -> Result<u64> {
        ensure!(
            !command.contains(['\n', '\r']),
            "agent command {command:?}: a command is one line"
        );
        ensure!(!command.trim().is_empty(), "agent command: empty");
        if self.status.is_stopping() {
            bail!("agent command {command:?}: the VM is stopping");
        }
        let tag = self.next_tag.fetch_add(1, Ordering::Relaxed);
        self.output.lock().clear();
        self.devices
            .queue_agent_input(format!("{tag} {command}\n").as_bytes());
        Ok(tag)
    }

    /// Waits for the reply to request `tag`.
    fn wait_reply(&self, tag: u64, resets: u64, timeout: Duration) -> Result<Reply> {
        let deadline = Instant::now() + timeout;
        let mut buf = self.output.lock();
        // What the guest did with the request, for an error.
        let (mut wrote, mut asked_time) = (0usize, false);
        loop {
            if let Some(at) = find_time_request(&buf) {
                asked_time = true;
                wrote += TIME_REQUEST.len();
                buf.drain(at..at + TIME_REQUEST.len());
                // Not under the output's lock: the UART takes it as the
                // guest writes (lock order UART, then output).
                drop(buf);
                self.devices.queue_agent_input(time_answer().as_bytes());
                buf = self.output.lock();
                continue;
            }
            if let Some((reply, used)) = parse_reply(&buf, tag) {
                buf.drain(..used);
                return Ok(reply);
            }
            if self.status.is_stopping() {
                bail!("agent request {tag}: the VM stopped before the command finished");
            }
            if self.resets.load(Ordering::SeqCst) != resets {
                bail!("agent request {tag}: the VM was reset to its live image before the command finished");
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                // Not under the output's lock (lock order UART, then output).
                wrote += buf.len();
                let last = buf.to_vec();
                drop(buf);
                let unread = self.devices.agent_input_unread();
                let seen = if unread > 0 {
                    format!(
                        "the guest has not read the last {unread} bytes of the request: its agent does not \
                         read ttyS1, or the guest does not run"
                    )
                } else {
                    format!(
                        "the guest read the request, and wrote {wrote} bytes since{}: the command is still \
                         running, or the guest is too slow; its last output: {:?}",
                        if asked_time { " (it asked for the time, and got it)" } else { "" },
                        String::from_utf8_lossy(&last[last.len().saturating_sub(300)..])
                    )
                };
                bail!("agent request {tag}: no reply within {} s ({seen})", timeout.as_secs());
            }
            buf = self
                .output
                .grew
                .wait_timeout(buf, left.min(POLL))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// The agent channel, held by a reset ([`Agent::hold_for_reset`]).
pub struct AgentHold<'a> {
    agent: &'a Agent,
    _one: MutexGuard<'a, ()>,
}

impl AgentHold<'_> {
    /// [`Agent::exec`], on the held channel.
    pub fn exec(&self, command: &str, timeout: Duration) -> Result<Reply> {
        self.agent.exec_one(command, timeout)
    }
}

/// Runs `command` through a guest agent reached by a byte stream (a
/// QEMU guest's COM2 on a unix socket, `vmsctl qemu`): the same protocol
/// as [`Agent::exec`], time requests included, at most `timeout`.
pub fn exec_on_stream(stream: &mut std::os::unix::net::UnixStream, command: &str, timeout: Duration) -> Result<Reply> {
    use std::io::Read;
    ensure!(!command.contains(['\n', '\r']), "agent command {command:?}: a command is one line");
    ensure!(!command.trim().is_empty(), "agent command: empty");
    let tag = first_tag();
    stream.write_all(format!("{tag} {command}\n").as_bytes()).context("writing to the agent")?;
    let deadline = Instant::now() + timeout;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        if let Some(at) = find_time_request(&buf) {
            buf.drain(at..at + TIME_REQUEST.len());
            stream.write_all(time_answer().as_bytes()).context("writing to the agent")?;
            continue;
        }
        if let Some((mut reply, _)) = parse_reply(&buf, tag) {
            // Output of an earlier request (one that timed out, still
            // running when this one was sent) ends at its done line.
            if let Some(at) = reply.output.windows(DONE.len()).rposition(|w| w == DONE.as_bytes()) {
                let rest = &reply.output[at + DONE.len()..];
                let eol = rest.iter().position(|&b| b == b'\n').map_or(rest.len(), |e| e + 1);
                reply.output = rest[eol..].to_vec();
            }
            return Ok(reply);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            bail!(
                "agent request {tag}: no reply within {} s ({} bytes came back: {:?})",
                timeout.as_secs(),
                buf.len(),
                String::from_utf8_lossy(&buf[buf.len().saturating_sub(300)..])
            );
        }
        stream.set_read_timeout(Some(left.min(POLL))).context("a socket timeout")?;
        match stream.read(&mut chunk) {
            Ok(0) => bail!("agent request {tag}: the agent's socket closed"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted) => {}
            Err(e) => return Err(e).context("reading from the agent"),
        }
    }
}

/// A random first tag, below 2^48 so tags stay short (from the clock
/// if the host's CRNG failed, which it does not once booted).
fn first_tag() -> u64 {
    let mut b = [0u8; 8];
    if super::virtio::rng::fill_random(&mut b).is_err() {
        b = (std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(1) as u64)
            .to_le_bytes();
    }
    (u64::from_le_bytes(b) >> 16).max(1)
}

/// Finds the reply to `tag` in `buf`: returns it and how many bytes of
/// `buf` it took, or `None` if its done line is not complete yet.
fn parse_reply(buf: &[u8], tag: u64) -> Option<(Reply, usize)> {
    let marker = format!("{DONE}{tag} ");
    let at = find(buf, marker.as_bytes())?;
    let rest = &buf[at + marker.len()..];
    let eol = rest.iter().position(|&b| b == b'\n')?;
    let status = std::str::from_utf8(&rest[..eol])
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(-1);
    let reply = Reply {
        status,
        output: buf[..at].to_vec(),
    };
    Some((reply, at + marker.len() + eol + 1))
}

/// The position of `needle` in `haystack`.
fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An agent on devices of their own, and the output its guest writes.
    fn agent() -> (Agent, Arc<AgentOutput>) {
        use vm_memory::{GuestAddress, GuestMemoryMmap};
        let output = Arc::new(AgentOutput::default());
        let status = Arc::new(Status::new());
        let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x1_0000)]).unwrap();
        let fresh = super::super::devices::Virtio::Fresh { rng: false, disk: None, net: None };
        let devices = Arc::new(Devices::new(status.clone(), output.clone(), None, mem, fresh, false).unwrap());
        (Agent::new(devices, output.clone(), status), output)
    }

    /// What a guest's agent writes for the request with tag `tag`.
    fn answer(output: &AgentOutput, tag: u64, text: &str) {
        let mut buf = output.lock();
        buf.extend_from_slice(format!("{text}\n@@vms-done {tag} 0\n").as_bytes());
        output.grew.notify_all();
    }

    /// A reset fails the request in flight at once, then holds the
    /// channel: another caller's request waits until the reset's own
    /// (the identity) is done and the hold drops.
    #[test]
    fn a_reset_fails_the_request_in_flight_and_holds_the_channel() {
        let (agent, output) = agent();
        let agent = Arc::new(agent);
        let first = agent.next_tag.load(Ordering::Relaxed);
        let a = agent.clone();
        let inflight = std::thread::spawn(move || a.exec("sleep 40", Duration::from_secs(60)));
        while agent.next_tag.load(Ordering::Relaxed) == first {
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let hold = agent.hold_for_reset();
        let e = inflight.join().unwrap().expect_err("failed by the reset");
        assert!(format!("{e:#}").contains("reset"), "{e:#}");
        assert!(t.elapsed() < Duration::from_secs(5), "it failed at once");
        // Another caller's request waits for the hold.
        let a = agent.clone();
        let other = std::thread::spawn(move || a.exec("hostname", Duration::from_secs(60)));
        std::thread::sleep(Duration::from_millis(300));
        assert_eq!(agent.next_tag.load(Ordering::Relaxed), first + 1, "nothing sent past the hold");
        // The reset's own request goes first.
        let (o, a) = (output.clone(), agent.clone());
        let answerer = std::thread::spawn(move || {
            // Once it is sent (sending clears the output).
            while a.next_tag.load(Ordering::Relaxed) == first + 1 {
                std::thread::sleep(Duration::from_millis(1));
            }
            answer(&o, first + 1, "reseeded")
        });
        let reply = hold.exec("vms-identity 1 c-1 00", Duration::from_secs(10)).unwrap();
        answerer.join().unwrap();
        assert_eq!(reply.output, b"reseeded");
        drop(hold);
        while agent.next_tag.load(Ordering::Relaxed) == first + 2 {
            std::thread::sleep(Duration::from_millis(1));
        }
        std::thread::sleep(Duration::from_millis(50));
        answer(&output, first + 2, "c-1");
        assert_eq!(other.join().unwrap().unwrap().output, b"c-1");
    }

    #[test]
    fn a_time_request_is_a_line_of_its_own() {
        assert_eq!(find_time_request(b"@@vms-time?\nrest"), Some(0));
        assert_eq!(find_time_request(b"seeded\n@@vms-time?\n"), Some(7));
        assert_eq!(find_time_request(b"strings: x@@vms-time?\n"), None, "not at a line's start");
        assert_eq!(find_time_request(b"@@vms-time?"), None, "not yet a whole line");
    }

    #[test]
    fn replies_are_split_off_at_the_done_line() {
        let buf = b"Linux vms-guest\n\n@@vms-done 7 0\nnext";
        let (reply, used) = parse_reply(buf, 7).unwrap();
        assert_eq!(reply.status, 0);
        assert_eq!(reply.output, b"Linux vms-guest\n");
        assert_eq!(&buf[used..], b"next");
    }

    #[test]
    fn output_without_a_final_newline_is_kept_as_is() {
        let (reply, _) = parse_reply(b"no newline\n@@vms-done 3 127\n", 3).unwrap();
        assert_eq!(reply.output, b"no newline");
        assert_eq!(reply.status, 127);
        let (reply, _) = parse_reply(b"\n@@vms-done 4 1\n", 4).unwrap();
        assert_eq!(reply.output, b"");
    }

    #[test]
    fn incomplete_or_foreign_replies_are_not_taken() {
        assert!(parse_reply(b"out\n@@vms-done 3 0", 3).is_none());
        assert!(parse_reply(b"out\n@@vms-done 31 0\n", 3).is_none());
        assert!(parse_reply(b"out", 3).is_none());
    }
}
