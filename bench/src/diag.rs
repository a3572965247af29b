// SPDX-License-Identifier: GPL-2.0

//! A watchdog for steps that could hang (a guest waiting for a page that
//! never comes), which says where everything was: every thread of this
//! process with its state and kernel wait channel, the userfaultfd
//! handlers' counters, and the kernel stacks of our threads (sysrq `t`,
//! plus `l` for the CPUs that were running).

use std::fs;
use std::process::{self, Command};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc;
use std::thread::{self, JoinHandle};
use std::time::Duration;

/// Page-fault messages the userfaultfd handlers read, all handlers.
pub static UFFD_FAULTS: AtomicU64 = AtomicU64::new(0);
/// Pages they resolved (`UFFDIO_COPY` or `UFFDIO_CONTINUE`).
pub static UFFD_RESOLVED: AtomicU64 = AtomicU64::new(0);

/// Ends the program with a dump ([`dump`]) and exit status 1 if it is
/// still alive after a time limit; dropping it disarms it.
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl Watchdog {
    pub fn start(what: &str, limit: Duration) -> Self {
        let (tx, rx) = mpsc::channel::<()>();
        let what = what.to_string();
        let thread = thread::Builder::new()
            .name("watchdog".into())
            .spawn(move || {
                if let Err(mpsc::RecvTimeoutError::Timeout) = rx.recv_timeout(limit) {
                    println!("# {what}: still running after {} s", limit.as_secs());
                    dump();
                    println!("Bail out! {what} hangs");
                    process::exit(1);
                }
            })
            .expect("spawn the watchdog");
        Self {
            disarm: Some(tx),
            thread: Some(thread),
        }
    }
}

impl Drop for Watchdog {
    fn drop(&mut self) {
        drop(self.disarm.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Prints (as `# ` lines) where every thread of this process is.
pub fn dump() {
    let say = |s: &str| {
        for l in s.lines() {
            println!("# {l}");
        }
    };
    say(&format!(
        "userfaultfd handlers: {} faults read, {} resolved",
        UFFD_FAULTS.load(Relaxed),
        UFFD_RESOLVED.load(Relaxed)
    ));
    let pid = process::id();
    if let Ok(tasks) = fs::read_dir("/proc/self/task") {
        for t in tasks.flatten() {
            let p = t.path();
            let get = |f: &str| fs::read_to_string(p.join(f)).unwrap_or_default();
            let stat = get("stat");
            // "tid (comm) S ...": the state follows the last ')'.
            let state = stat
                .rsplit_once(") ")
                .and_then(|(_, r)| r.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            say(&format!(
                "thread {} {:<16} state {state} wchan {}",
                t.file_name().to_string_lossy(),
                get("comm").trim(),
                get("wchan").trim()
            ));
        }
    }
    // Kernel stacks: sysrq 'l' (CPUs running now), 't' (every task); keep
    // the blocks of our threads.
    for k in ["l", "t"] {
        let _ = fs::write("/proc/sysrq-trigger", k);
    }
    thread::sleep(Duration::from_secs(2));
    let Ok(out) = Command::new("dmesg").output() else {
        return;
    };
    let log = String::from_utf8_lossy(&out.stdout);
    let tgid = format!("tgid:{pid} ");
    let mut keep = false;
    let mut in_cpu = false;
    for l in log.lines() {
        if l.contains(" task:") {
            keep = l.contains(&tgid);
        }
        if l.contains("NMI backtrace for cpu") || l.contains("Sending NMI") {
            in_cpu = true;
        } else if l.contains("sysrq: Show State") {
            in_cpu = false;
        }
        if keep || in_cpu {
            say(l);
        }
    }
}
