// SPDX-License-Identifier: GPL-2.0

//! `machine.md`: where and how the figures were measured.

use std::fs;
use std::io::{self, Read, Write};
use std::process::Command;
use std::time::Instant;

use vms_selftests::vms::vms_get_version;

use crate::{report, Env};

fn sh(cmd: &str, args: &[&str]) -> Option<String> {
    let out = Command::new(cmd).args(args).output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn read(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string())
}

/// The first value of `field` in `/proc/cpuinfo`.
fn cpuinfo(text: &str, field: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == field)
        .map(|(_, v)| v.trim().to_string())
}

/// Lets the calling thread run on `cpus` only.
fn pin_to(cpus: impl IntoIterator<Item = usize>) -> io::Result<()> {
    // SAFETY: a zeroed cpu_set_t is an empty set; CPU_SET writes inside
    // it (it ignores CPUs beyond the set's size); sched_setaffinity reads
    // `size_of` bytes of it.
    let r = unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set)
    };
    if r == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

fn pin(cpu: usize) -> io::Result<()> {
    pin_to([cpu])
}

/// The round trip of a one-byte ping-pong over two pipes between a
/// thread on CPU `a` and one on CPU `b`, in microseconds (median of 200):
/// the cost of waking a thread, on the same CPU or another one. A
/// userfaultfd page server pays a wake-up each way per fault.
fn ping_pong_us(a: usize, b: usize) -> io::Result<f64> {
    let (mut ping_r, mut ping_w) = io::pipe()?;
    let (mut pong_r, mut pong_w) = io::pipe()?;
    let peer = std::thread::spawn(move || -> io::Result<()> {
        pin(b)?;
        let mut c = [0u8];
        while ping_r.read(&mut c)? == 1 {
            pong_w.write_all(&c)?;
        }
        Ok(())
    });
    pin(a)?;
    let mut c = [0u8];
    let mut times = Vec::new();
    for _ in 0..200 {
        let t = Instant::now();
        ping_w.write_all(&c)?;
        pong_r.read_exact(&mut c)?;
        times.push(t.elapsed().as_secs_f64() * 1e6);
    }
    drop(ping_w);
    peer.join()
        .map_err(|_| io::Error::other("ping-pong thread"))??;
    // Let this thread run anywhere again.
    pin_to(0..std::thread::available_parallelism().map_or(1, |n| n.get()))?;
    Ok(report::Samples(times).median())
}

/// The description, in markdown. `sizes` says what was measured.
pub fn describe(env: &Env, sizes: &str) -> String {
    let mut md = String::from("## Machine\n\n");
    let mut item = |k: &str, v: String| md.push_str(&format!("- **{k}**: {v}\n"));

    item(
        "where",
        "the test VM of `scripts/vm`: QEMU with `-accel tcg,thread=multi -cpu max` (TCG, \
         no hardware acceleration), which gives the guest AMD SVM with nested paging; \
         KVM and vms.ko run inside it and the benchmark's guests are nested VMs. \
         Absolute rates are those of an emulated machine; compare rows, not machines."
            .into(),
    );
    let cmd: Vec<String> = std::env::args().collect();
    item("command (in the test VM)", format!("`{}`", cmd.join(" ")));
    if let Ok(c) = std::env::var("VMS_BENCH_COMMAND") {
        item("command (on the host)", format!("`{c}`"));
    }
    let commit = std::env::var("VMS_BENCH_COMMIT")
        .ok()
        .or_else(|| sh("git", &["rev-parse", "HEAD"]))
        .unwrap_or_else(|| "unknown".into());
    item("git commit", format!("`{commit}`"));
    if let Ok(d) = std::env::var("VMS_BENCH_DIRTY") {
        if !d.is_empty() {
            item("work tree", format!("uncommitted changes to: {d}"));
        }
    }
    item("sizes", sizes.into());
    let dir = vms_selftests::vms::image_dir();
    item(
        "image files",
        format!("in `{}`: {}", dir.display(), crate::mem::mount_of(&dir)),
    );
    if let Some(d) = sh("date", &["-u", "+%Y-%m-%d %H:%M:%S UTC"]) {
        item("date", d);
    }
    if let Some(u) = sh("uname", &["-a"]) {
        item("uname -a", format!("`{u}`"));
    }
    if let Some(r) = sh("uname", &["-r"]) {
        item(
            "kernel",
            format!("{r} (Linux 6.12 with the patches of `patches/`)"),
        );
    }
    let v = vms_get_version(&env.dev);
    let mv = String::from_utf8_lossy(&v.module_version);
    item(
        "vms.ko",
        format!(
            "module {}, ABI {}",
            mv.trim_end_matches('\0'),
            v.abi_version
        ),
    );
    if let Some(ci) = read("/proc/cpuinfo") {
        let cpus = ci.lines().filter(|l| l.starts_with("processor")).count();
        if let Some(m) = cpuinfo(&ci, "model name") {
            item("CPU", format!("{m} ({cpus} vCPUs in /proc/cpuinfo)"));
        }
        if let Some(flags) = cpuinfo(&ci, "flags") {
            let f: Vec<&str> = flags.split_whitespace().collect();
            let interesting = [
                "svm",
                "npt",
                "vmx",
                "ept",
                "hypervisor",
                "nrip_save",
                "flushbyasid",
                "decodeassists",
                "avx2",
                "avx512f",
                "pdpe1gb",
                "pcid",
                "invpcid",
            ];
            let have: Vec<&str> = interesting
                .iter()
                .copied()
                .filter(|x| f.contains(x))
                .collect();
            item(
                "CPU flags",
                format!("{} flags; of note: {}", f.len(), have.join(" ")),
            );
        }
    }
    if let Ok(n) = std::thread::available_parallelism() {
        item("nproc", n.to_string());
    }
    if std::thread::available_parallelism().is_ok_and(|n| n.get() >= 2) {
        match (ping_pong_us(0, 0), ping_pong_us(0, 1)) {
            (Ok(same), Ok(cross)) => item(
                "thread wake-up round trip (pipe ping-pong)",
                format!(
                    "{} µs on one CPU, {} µs between CPU 0 and CPU 1, measured \
                     after the benchmarks. Every cross-CPU wake-up in the test VM \
                     needs both QEMU vCPU threads running on the host at once: on \
                     a busy host it costs a host timeslice. The userfaultfd rows \
                     pay two wake-ups per fault (vCPU thread to handler and back) \
                     and follow this number.",
                    report::num(same),
                    report::num(cross)
                ),
            ),
            (Err(e), _) | (_, Err(e)) => item("thread wake-up round trip", format!("failed: {e}")),
        }
    }
    if let Some(m) = read("/proc/meminfo").and_then(|t| {
        t.lines()
            .find(|l| l.starts_with("MemTotal:"))
            .map(|l| l.to_string())
    }) {
        item(
            "memory",
            m.split_whitespace().skip(1).collect::<Vec<_>>().join(" "),
        );
    }
    if let Some(c) = read("/proc/cmdline") {
        item("kernel command line", format!("`{c}`"));
    }
    for k in ["npt", "nested", "avic"] {
        if let Some(v) = read(&format!("/sys/module/kvm_amd/parameters/{k}")) {
            item(&format!("kvm_amd.{k}"), v);
        }
    }
    if let Some(v) = read("/sys/module/kvm/parameters/tdp_mmu") {
        item("kvm.tdp_mmu", v);
    }
    // scripts/vm leaves the QEMU command line in the run directory.
    match read("/run/vms/qemu") {
        Some(q) => item("QEMU command line", format!("`{q}`")),
        None => item(
            "QEMU command line",
            "not recorded (run through `scripts/bench` to get it)".into(),
        ),
    }
    md
}
