// SPDX-License-Identifier: GPL-2.0

//! vms-bench: vms side by side with userfaultfd page servers,
//! `MAP_PRIVATE` file mappings and plain memory, on the same guests, in
//! one process (issue 5). Runs as root in the test VM with vms.ko loaded;
//! `scripts/bench` builds, boots and collects the results.
//!
//! Each subcommand prints a markdown table per figure; with `--out DIR`
//! it also writes `DIR/<figure>.md`, `DIR/<figure>.svg` and
//! `DIR/machine.md`. Every benchmark checks what its guests saw (the
//! image's pattern, their own writes) and the counters, and exits non-zero
//! if anything is wrong, so `--smoke` is a correctness test.

mod diag;
mod fanout;
mod faults;
mod machine;
mod mem;
mod memory;
mod report;
mod start;
mod uffd;

use std::fs::{self, File};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::OnceLock;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::{Args, Parser, Subcommand};
use kvm_ioctls::Kvm;
use vms_selftests::ksft;
use vms_selftests::kvm::open_kvm;
use vms_selftests::vms::require_vms_and_kvm;

use report::Figure;

/// A size in bytes, written `4096`, `64K`, `256M`, `1G`, `16G`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl FromStr for Size {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let (num, shift) = match s.char_indices().last() {
            Some((i, 'K' | 'k')) => (&s[..i], 10),
            Some((i, 'M' | 'm')) => (&s[..i], 20),
            Some((i, 'G' | 'g')) => (&s[..i], 30),
            _ => (s, 0),
        };
        let n: u64 = num.parse().map_err(|_| format!("bad size {s:?}"))?;
        let v = n
            .checked_mul(1 << shift)
            .ok_or_else(|| format!("size {s:?} too large"))?;
        if v == 0 || !v.is_multiple_of(4096) {
            return Err(format!("size {s:?} is not a non-zero multiple of 4 KiB"));
        }
        Ok(Size(v))
    }
}

/// `64 MiB`, `16 GiB`.
pub fn mib_str(bytes: u64) -> String {
    if bytes >= 1 << 30 && bytes.is_multiple_of(1 << 30) {
        format!("{} GiB", bytes >> 30)
    } else if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes >> 10)
    }
}

/// A progress line on stderr (stdout has the tables), with the seconds
/// since the first one.
pub fn progress(msg: &str) {
    static START: OnceLock<Instant> = OnceLock::new();
    let t = START.get_or_init(Instant::now).elapsed().as_secs();
    eprintln!("[vms-bench +{t}s] {msg}");
}

/// What every benchmark uses.
pub struct Env {
    pub kvm: Kvm,
    /// `/dev/vms`.
    pub dev: File,
    /// Check every page a guest wrote (1), or every n-th.
    pub verify_stride: u64,
}

#[derive(Parser)]
#[command(
    name = "vms-bench",
    version,
    about = "Benchmarks of vms against userfaultfd, MAP_PRIVATE and plain memory",
    long_about = "Benchmarks of vms against userfaultfd page servers, MAP_PRIVATE file \
        mappings and plain anonymous memory, measured side by side in one process on \
        the same guests. Run as root in the test VM with vms.ko loaded (scripts/bench \
        does all of it). Prints a markdown table per figure; --out DIR also writes \
        DIR/<figure>.md, DIR/<figure>.svg and DIR/machine.md. Every run checks what \
        the guests saw and the counters and exits 1 if anything is wrong (4 if /dev/vms \
        or /dev/kvm is missing)."
)]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
    /// Write the figures (markdown and SVG) and machine.md to this directory.
    #[arg(long, global = true)]
    out: Option<PathBuf>,
    /// Tiny sizes and one run: a correctness check, not a measurement
    /// (prints one line per figure; --out still gets everything).
    #[arg(long, global = true)]
    smoke: bool,
}

#[derive(Subcommand)]
enum Cmd {
    /// Fault service rate (pages/s), reading and writing, per backend.
    Faults(FaultsArgs),
    /// Clone start latency against image size.
    Start(StartArgs),
    /// Fan-out: 1, 8, 32 clones started at once, time until all ran
    /// their first instruction.
    Fanout(FanoutArgs),
    /// Host memory used by N clones that read 90% and write 10%.
    Memory(MemoryArgs),
    /// Every benchmark, then machine.md (and README.md with --out).
    /// An option given twice takes its last value, so that scripts/bench
    /// can append the user's options to its defaults.
    #[command(args_override_self = true)]
    All(AllArgs),
}

#[derive(Args, Clone)]
struct FaultsArgs {
    /// Size of the region the guest walks.
    #[arg(long, default_value = "256M")]
    size: Size,
    /// vCPU counts to measure (the region is split between them).
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    vcpus: Vec<usize>,
    /// Runs per point (median and min-max).
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Only these backends (the ceiling is always measured): anon, zero,
    /// vms-warm, vms-cold, vms-plain (an ordinary memslot that vms.ko claims,
    /// as QEMU's), vms-hva (the same through the host address, unclaimed),
    /// uffd-missing, uffd-missing-cold, uffd-minor, private, private-cold (the
    /// cold rows other than vms-cold need image files on a disk).
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Only this access: read or write.
    #[arg(long, value_delimiter = ',')]
    access: Vec<String>,
    /// Also measure userfaultfd with more than one vCPU (it stalls in the
    /// test VM; see the figure's notes).
    #[arg(long)]
    uffd_smp: bool,
}

#[derive(Args, Clone)]
struct StartArgs {
    /// Sparse image sizes.
    #[arg(long, value_delimiter = ',', default_value = "64M,1G,16G")]
    sizes: Vec<Size>,
    /// Runs per point.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Largest image the "copy" row reads in whole.
    #[arg(long, default_value = "1G")]
    copy_max: Size,
}

#[derive(Args, Clone)]
struct FanoutArgs {
    /// Clone counts: how many start at once.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    fanout: Vec<usize>,
    /// Image size (every page holds the test pattern).
    #[arg(long, default_value = "256M")]
    fanout_size: Size,
    /// Runs per point.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// Largest total (clones times image size) the "copy" row reads.
    #[arg(long, default_value = "2G")]
    copy_max_total: Size,
    /// Only these rows (the floor is always measured): vms, vms-new,
    /// private, copy, and uffd with --uffd.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Also measure userfaultfd (MISSING + UFFDIO_COPY): its clones
    /// stall in the test VM (see the figure's notes).
    #[arg(long)]
    uffd: bool,
}

#[derive(Args, Clone)]
struct MemoryArgs {
    /// Clone counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clones: Vec<usize>,
    /// Image size.
    #[arg(long, default_value = "64M")]
    size: Size,
}

#[derive(Args, Clone)]
struct AllArgs {
    /// faults: region size.
    #[arg(long, default_value = "256M")]
    fault_size: Size,
    /// faults: vCPU counts.
    #[arg(long, value_delimiter = ',', default_value = "1,2")]
    vcpus: Vec<usize>,
    /// faults, start and fanout: runs per point.
    #[arg(long, default_value_t = 5)]
    runs: usize,
    /// start: sparse image sizes.
    #[arg(long, value_delimiter = ',', default_value = "64M,1G,16G")]
    start_sizes: Vec<Size>,
    /// start: largest image the "copy" row reads in whole.
    #[arg(long, default_value = "1G")]
    copy_max: Size,
    /// fanout: clone counts started at once.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    fanout: Vec<usize>,
    /// fanout: image size.
    #[arg(long, default_value = "256M")]
    fanout_size: Size,
    /// fanout: largest total (clones times image size) the "copy" row
    /// reads.
    #[arg(long, default_value = "2G")]
    copy_max_total: Size,
    /// memory: clone counts.
    #[arg(long, value_delimiter = ',', default_value = "1,8,32")]
    clones: Vec<usize>,
    /// memory: image size.
    #[arg(long, default_value = "64M")]
    memory_size: Size,
}

fn sizes(v: &[Size]) -> String {
    v.iter()
        .map(|s| mib_str(s.0))
        .collect::<Vec<_>>()
        .join(", ")
}

fn faults_params(a: &FaultsArgs, smoke: bool) -> faults::Params {
    faults::Params {
        size: if smoke { Size(4 << 20) } else { a.size },
        vcpus: a.vcpus.clone(),
        runs: if smoke { 1 } else { a.runs },
        only: a.only.clone(),
        access: a.access.clone(),
        uffd_smp: a.uffd_smp,
    }
}

fn start_params(a: &StartArgs, smoke: bool) -> start::Params {
    if smoke {
        start::Params {
            sizes: vec![Size(4 << 20), Size(1 << 30)],
            runs: 1,
            copy_max: Size(4 << 20),
        }
    } else {
        start::Params {
            sizes: a.sizes.clone(),
            runs: a.runs,
            copy_max: a.copy_max,
        }
    }
}

fn fanout_params(a: &FanoutArgs, smoke: bool) -> fanout::Params {
    if smoke {
        // The copy row runs for one clone and is "not run" for two.
        fanout::Params {
            fanout: vec![1, 2],
            size: Size(4 << 20),
            runs: 1,
            copy_max_total: Size(4 << 20),
            only: a.only.clone(),
            uffd: a.uffd,
        }
    } else {
        fanout::Params {
            fanout: a.fanout.clone(),
            size: a.fanout_size,
            runs: a.runs,
            copy_max_total: a.copy_max_total,
            only: a.only.clone(),
            uffd: a.uffd,
        }
    }
}

fn memory_params(a: &MemoryArgs, smoke: bool) -> memory::Params {
    if smoke {
        memory::Params {
            clones: vec![1, 3],
            size: Size(4 << 20),
        }
    } else {
        memory::Params {
            clones: a.clones.clone(),
            size: a.size,
        }
    }
}

fn write_machine(env: &Env, out: Option<&Path>, desc: &str) -> Result<String> {
    let md = machine::describe(env, desc);
    if let Some(dir) = out {
        let p = dir.join("machine.md");
        fs::write(&p, &md).with_context(|| format!("writing {}", p.display()))?;
    }
    Ok(md)
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    // Assertions print a diagnostic and exit 1; a missing /dev/vms or
    // /dev/kvm exits 4 (skip), as in the selftests.
    ksft::init_tool();
    require_vms_and_kvm();
    let env = Env {
        kvm: open_kvm(),
        dev: vms_selftests::vms::vms_open(),
        verify_stride: if cli.smoke { 1 } else { 16 },
    };
    let out = cli.out.as_deref();
    if let Some(dir) = out {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let smoke = cli.smoke;
    let mut figures: Vec<Figure> = Vec::new();
    let desc = match &cli.cmd {
        Cmd::Faults(a) => {
            let p = faults_params(a, smoke);
            figures.push(faults::run(&env, &p));
            format!("faults: {} region, {} run(s)", mib_str(p.size.0), p.runs)
        }
        Cmd::Start(a) => {
            let p = start_params(a, smoke);
            figures.push(start::run(&env, &p));
            format!("start: {}, {} run(s)", sizes(&p.sizes), p.runs)
        }
        Cmd::Fanout(a) => {
            let p = fanout_params(a, smoke);
            figures.push(fanout::run(&env, &p));
            format!(
                "fanout: {:?} clones of {} (copy up to {} in all), {} run(s)",
                p.fanout,
                mib_str(p.size.0),
                mib_str(p.copy_max_total.0),
                p.runs
            )
        }
        Cmd::Memory(a) => {
            let p = memory_params(a, smoke);
            figures.push(memory::run(&env, &p));
            format!("memory: {:?} clones of {}", p.clones, mib_str(p.size.0))
        }
        Cmd::All(a) => {
            let f = faults_params(
                &FaultsArgs {
                    size: a.fault_size,
                    vcpus: a.vcpus.clone(),
                    runs: a.runs,
                    only: Vec::new(),
                    access: Vec::new(),
                    uffd_smp: false,
                },
                smoke,
            );
            let s = start_params(
                &StartArgs {
                    sizes: a.start_sizes.clone(),
                    runs: a.runs,
                    copy_max: a.copy_max,
                },
                smoke,
            );
            let fo = fanout_params(
                &FanoutArgs {
                    fanout: a.fanout.clone(),
                    fanout_size: a.fanout_size,
                    runs: a.runs,
                    copy_max_total: a.copy_max_total,
                    only: Vec::new(),
                    uffd: false,
                },
                smoke,
            );
            let m = memory_params(
                &MemoryArgs {
                    clones: a.clones.clone(),
                    size: a.memory_size,
                },
                smoke,
            );
            for (name, fig) in [
                (
                    "faults",
                    Box::new(|| faults::run(&env, &f)) as Box<dyn Fn() -> Figure>,
                ),
                ("start", Box::new(|| start::run(&env, &s))),
                ("fanout", Box::new(|| fanout::run(&env, &fo))),
                ("memory", Box::new(|| memory::run(&env, &m))),
            ] {
                let fig = fig();
                progress(&format!("{name} done"));
                fig.emit(out, smoke)?;
                figures.push(fig);
            }
            format!(
                "faults: {} region, vCPUs {:?}, {} run(s); start: {} (copy up to {}), \
                 {} run(s); fanout: {:?} clones of {} (copy up to {} in all), {} run(s); \
                 memory: {:?} clones of {}",
                mib_str(f.size.0),
                f.vcpus,
                f.runs,
                sizes(&s.sizes),
                mib_str(s.copy_max.0),
                s.runs,
                fo.fanout,
                mib_str(fo.size.0),
                mib_str(fo.copy_max_total.0),
                fo.runs,
                m.clones,
                mib_str(m.size.0)
            )
        }
    };
    if !matches!(cli.cmd, Cmd::All(_)) {
        for f in &figures {
            f.emit(out, smoke)?;
        }
    }
    let machine = write_machine(&env, out, &desc)?;
    if !smoke {
        println!("{machine}");
    }
    if let (Some(dir), Cmd::All(_)) = (out, &cli.cmd) {
        // One page with everything, which a directory link shows first.
        let mut md = String::from("# vms benchmarks\n\n");
        md.push_str(
            "vms against userfaultfd page servers, MAP_PRIVATE file mappings and plain \
             memory, measured side by side by `vms-bench all` (issue 5). Each figure is also \
             in its own file with its chart: [faults](faults.md), [start](start.md), \
             [fanout](fanout.md), [memory](memory.md), and [machine](machine.md).\n\n",
        );
        for f in &figures {
            md.push_str(&f.markdown);
            md.push_str(&format!("\n![{}]({}.svg)\n\n", f.name, f.name));
        }
        md.push_str(&machine);
        let p = dir.join("README.md");
        fs::write(&p, md).with_context(|| format!("writing {}", p.display()))?;
    }
    if smoke {
        progress("smoke run passed: every backend gave the guests the right data");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!("4096".parse::<Size>(), Ok(Size(4096)));
        assert_eq!("64K".parse::<Size>(), Ok(Size(64 << 10)));
        assert_eq!("256M".parse::<Size>(), Ok(Size(256 << 20)));
        assert_eq!("16G".parse::<Size>(), Ok(Size(16 << 30)));
        assert!("0".parse::<Size>().is_err());
        assert!("100".parse::<Size>().is_err());
        assert!("1X".parse::<Size>().is_err());
        assert_eq!(mib_str(16 << 30), "16 GiB");
        assert_eq!(mib_str(64 << 20), "64 MiB");
    }

    #[test]
    fn shares_cover_the_region() {
        let s = mem::shares_of(10 * 4096, 3);
        assert_eq!(
            s,
            vec![(0, 3 * 4096), (3 * 4096, 3 * 4096), (6 * 4096, 4 * 4096)]
        );
    }

    #[test]
    fn cli_parses() {
        use clap::CommandFactory;
        Cli::command().debug_assert();
    }
}
