// SPDX-License-Identifier: GPL-2.0

//! A small client of QEMU's machine protocol (QMP) on a unix socket:
//! what `vmsctl qemu` needs to pause a QEMU guest, save its device state
//! and resume it elsewhere.
//!
//! QMP is lines of JSON: a greeting, `qmp_capabilities` to enter command
//! mode, then one `{"execute": ...}` per line, each answered by a line
//! with `return` or `error`; `event` lines may come between. Written by
//! hand rather than with the `qapi` crate, whose generated bindings of
//! the whole QAPI schema are far larger than the six commands used here
//! (`stop`, `cont`, `query-status`, `migrate-set-capabilities`,
//! `migrate`/`migrate-incoming`, `query-migrate`).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

/// A QMP connection in command mode.
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    what: String,
}

impl Qmp {
    /// Connects to the QMP socket `path`, waiting up to `wait` for QEMU
    /// to make it, and enters command mode.
    pub fn connect(path: &Path, wait: Duration) -> Result<Self> {
        let what = format!("QMP {}", path.display());
        let deadline = Instant::now() + wait;
        let stream = loop {
            match UnixStream::connect(path) {
                Ok(s) => break s,
                Err(e) if Instant::now() < deadline => {
                    let _ = e;
                    std::thread::sleep(Duration::from_millis(20));
                }
                Err(e) => return Err(e).with_context(|| format!("{what}: connecting")),
            }
        };
        stream.set_read_timeout(Some(Duration::from_secs(60))).context("a socket timeout")?;
        let writer = stream.try_clone().context("a socket")?;
        let mut qmp = Self { reader: BufReader::new(stream), writer, what };
        let greeting = qmp.read_line()?;
        if greeting.get("QMP").is_none() {
            bail!("{}: not a QMP greeting: {greeting}", qmp.what);
        }
        qmp.execute("qmp_capabilities", json!({}))?;
        Ok(qmp)
    }

    fn read_line(&mut self) -> Result<Value> {
        let mut line = String::new();
        let n = self.reader.read_line(&mut line).with_context(|| format!("{}: reading", self.what))?;
        if n == 0 {
            bail!("{}: QEMU closed the connection", self.what);
        }
        serde_json::from_str(&line).with_context(|| format!("{}: not JSON: {line}", self.what))
    }

    /// Runs `command` with `arguments`; returns its `return` value, or
    /// QEMU's error as ours.
    pub fn execute(&mut self, command: &str, arguments: Value) -> Result<Value> {
        let mut msg = json!({ "execute": command });
        if arguments.as_object().is_some_and(|o| !o.is_empty()) {
            msg["arguments"] = arguments;
        }
        let mut line = msg.to_string();
        line.push('\n');
        self.writer.write_all(line.as_bytes()).with_context(|| format!("{}: sending {command}", self.what))?;
        loop {
            let reply = self.read_line()?;
            if let Some(r) = reply.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = reply.get("error") {
                bail!(
                    "{}: {command}: {} ({})",
                    self.what,
                    e["desc"].as_str().unwrap_or("?"),
                    e["class"].as_str().unwrap_or("?")
                );
            }
            // An event: not ours.
        }
    }

    /// The VM's run state (`running`, `paused`, `postmigrate`, ...).
    pub fn status(&mut self) -> Result<String> {
        let r = self.execute("query-status", json!({}))?;
        Ok(r["status"].as_str().unwrap_or("?").to_owned())
    }

    /// Waits until the migration in progress (either way) ends, at most
    /// `limit`; fails if it failed.
    pub fn wait_migration(&mut self, limit: Duration) -> Result<()> {
        let deadline = Instant::now() + limit;
        loop {
            let r = self.execute("query-migrate", json!({}))?;
            match r["status"].as_str().unwrap_or("") {
                "completed" => return Ok(()),
                "failed" | "cancelled" => bail!(
                    "{}: the migration {}: {}",
                    self.what,
                    r["status"].as_str().unwrap_or("?"),
                    r["error-desc"].as_str().unwrap_or("no reason given")
                ),
                _ if Instant::now() > deadline => bail!("{}: the migration did not end within {} s", self.what, limit.as_secs()),
                _ => std::thread::sleep(Duration::from_millis(10)),
            }
        }
    }

    /// Runs `f` with migration capability `name` on, and puts it back
    /// as it was afterwards, whatever `f` returned: left on, a later
    /// ordinary migration of the VM would leave its shared RAM out. A
    /// migration `f` leaves running (a timeout) is cancelled first: the
    /// capability cannot change during one, and the caller is giving up.
    pub fn with_capability<T>(&mut self, name: &str, f: impl FnOnce(&mut Self) -> Result<T>) -> Result<T> {
        let caps = self.execute("query-migrate-capabilities", json!({}))?;
        let was = caps
            .as_array()
            .and_then(|a| a.iter().find(|c| c["capability"] == name))
            .and_then(|c| c["state"].as_bool())
            .unwrap_or(false);
        self.set_capability(name, true)?;
        let result = f(self);
        if result.is_err() {
            let _ = self.execute("migrate_cancel", json!({}));
            let deadline = Instant::now() + Duration::from_secs(30);
            while Instant::now() < deadline {
                let r = self.execute("query-migrate", json!({}));
                match r.as_ref().ok().and_then(|r| r["status"].as_str()) {
                    Some("active" | "setup" | "cancelling" | "device" | "pre-switchover") => {
                        std::thread::sleep(Duration::from_millis(20))
                    }
                    _ => break,
                }
            }
        }
        let restored = if was { Ok(()) } else { self.set_capability(name, false) };
        let t = result?;
        restored.with_context(|| format!("{}: turning {name} off again", self.what))?;
        Ok(t)
    }

    /// Sets migration capability `name` on or off.
    pub fn set_capability(&mut self, name: &str, on: bool) -> Result<()> {
        self.execute(
            "migrate-set-capabilities",
            json!({ "capabilities": [ { "capability": name, "state": on } ] }),
        )
        .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    /// A fake QEMU: greets, then answers each command from `answers`
    /// (an event first, to be skipped), recording what it got.
    fn fake(path: &Path, answers: Vec<Value>) -> std::thread::JoinHandle<Vec<Value>> {
        let l = UnixListener::bind(path).unwrap();
        std::thread::spawn(move || {
            let (s, _) = l.accept().unwrap();
            let mut w = s.try_clone().unwrap();
            let mut r = BufReader::new(s);
            writeln!(w, "{}", json!({"QMP": {"version": {}, "capabilities": []}})).unwrap();
            let mut got = Vec::new();
            for a in std::iter::once(json!({"return": {}})).chain(answers) {
                let mut line = String::new();
                if r.read_line(&mut line).unwrap() == 0 {
                    break;
                }
                got.push(serde_json::from_str(&line).unwrap());
                writeln!(w, "{}", json!({"event": "STOP", "timestamp": {}})).unwrap();
                writeln!(w, "{a}").unwrap();
            }
            got
        })
    }

    #[test]
    fn commands_errors_events_and_migration() {
        let path = std::env::temp_dir().join(format!("vms-qmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let qemu = fake(
            &path,
            vec![
                json!({"return": {"status": "running", "running": true}}),
                json!({"error": {"class": "GenericError", "desc": "no such thing"}}),
                json!({"return": {"status": "active"}}),
                json!({"return": {"status": "completed"}}),
                json!({"return": {}}),
            ],
        );
        let mut q = Qmp::connect(&path, Duration::from_secs(5)).unwrap();
        assert_eq!(q.status().unwrap(), "running");
        let e = q.execute("nope", json!({})).unwrap_err();
        assert!(format!("{e:#}").contains("no such thing (GenericError)"), "{e:#}");
        q.wait_migration(Duration::from_secs(5)).unwrap();
        q.set_capability("x-ignore-shared", true).unwrap();
        drop(q);
        let got = qemu.join().unwrap();
        assert_eq!(got[0]["execute"], "qmp_capabilities");
        assert_eq!(got[1]["execute"], "query-status");
        assert_eq!(got[5]["arguments"]["capabilities"][0]["capability"], "x-ignore-shared");
        let _ = std::fs::remove_file(&path);
    }
}
