// SPDX-License-Identifier: GPL-2.0

//! `vms-bench fanout`: N clones started at once, time until all of them
//! ran their first instruction.
//!
//! N threads, each starting its own VM (one vCPU) exactly as `vms-bench
//! start` does ([`start::start_one`]: memory, `KVM_CREATE_VM`, memslot,
//! vCPU, `KVM_RUN` until the guest's first instruction, an `out` from
//! image page 0, exits), are released together by a barrier. The figure
//! is the wall time from the release to the last first instruction, and
//! the median of the N start times within that batch. The VMs stay alive
//! until every thread is done, so no teardown is timed.

use std::sync::Barrier;
use std::time::Instant;

use vms_selftests::guest;
use vms_selftests::ksft::check;
use vms_selftests::vms::{image_create, unique_name, ImageFile};

use crate::mem::fadvise_dontneed;
use crate::report::{num, ratio, spread, Bar, Chart, Figure, Samples, Section, Table};
use crate::start::{start_one, How, HOWS};
use crate::{mib_str, progress, Env, Size};

use std::os::unix::fs::FileExt;

/// What to measure.
pub struct Params {
    /// Clones started at once.
    pub counts: Vec<usize>,
    /// Size of the (sparse) image.
    pub size: Size,
    pub runs: usize,
    /// The "copy" row only where clones x size is at most this.
    pub copy_max_total: Size,
}

/// One batch: (wall ms from the release to the last first instruction,
/// median ms of one start within the batch).
fn batch(
    env: &Env,
    how: How,
    n: usize,
    p: &Params,
    f: &ImageFile,
    image: &vms_selftests::vms::Image,
    code: &[u8],
) -> (f64, f64) {
    let go = Barrier::new(n + 1);
    let done = Barrier::new(n + 1);
    let ends = std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|_| {
                s.spawn(|| {
                    go.wait();
                    let t0 = Instant::now();
                    let (t1, vm) = start_one(&env.kvm, how, p.size.0, f, image, code);
                    done.wait();
                    drop(vm);
                    (t0, t1)
                })
            })
            .collect();
        go.wait();
        let release = Instant::now();
        done.wait();
        let ends: Vec<(Instant, Instant)> = handles
            .into_iter()
            .map(|h| h.join().expect("a start thread panicked"))
            .collect();
        (release, ends)
    });
    let (release, ends) = ends;
    // The release is the earliest moment any thread could start.
    let release = ends
        .iter()
        .map(|e| e.0)
        .min()
        .unwrap_or(release)
        .min(release);
    let last = ends.iter().map(|e| e.1).max().expect("at least one clone");
    let mut each = Samples::default();
    for (t0, t1) in &ends {
        each.push((*t1 - *t0).as_secs_f64() * 1e3);
    }
    ((last - release).as_secs_f64() * 1e3, each.median())
}

pub fn run(env: &Env, p: &Params) -> Figure {
    progress(&format!(
        "fanout: {:?} clones at once of a {} image, {} runs",
        p.counts,
        mib_str(p.size.0),
        p.runs
    ));
    let code = guest::report_done();
    let name = unique_name("bench-fanout");
    let f = ImageFile::create(&name);
    check(f.file().set_len(p.size.0), "ftruncate image file");
    check(f.file().write_all_at(&code, 0), "write image file");
    fadvise_dontneed(f.file());
    let image = image_create(&env.dev, &name, f.file(), p.size.0, 0);

    // wall[count][how], each[count][how]
    let mut wall = vec![vec![Samples::default(); HOWS.len()]; p.counts.len()];
    let mut each = wall.clone();
    for run in 0..p.runs {
        for (ci, &n) in p.counts.iter().enumerate() {
            for (hi, &how) in HOWS.iter().enumerate() {
                if how == How::Copy && (n as u64) * p.size.0 > p.copy_max_total.0 {
                    continue;
                }
                let (w, e) = batch(env, how, n, p, &f, &image, &code);
                progress(&format!(
                    "fanout run {}/{}: {} x {}: all in {} ms, one {} ms (median)",
                    run + 1,
                    p.runs,
                    n,
                    how.name(),
                    num(w),
                    num(e)
                ));
                wall[ci][hi].push(w);
                each[ci][hi].push(e);
            }
        }
    }
    let is = image.info();
    image.delete();
    drop(f);
    // Every vms start streamed page 0 once at most: the clones share it.
    vms_selftests::test_assert!(is.cached_pages <= 1 && is.read_errors == 0, "{is:?}");
    figure(p, &wall, &each)
}

fn figure(p: &Params, wall: &[Vec<Samples>], each: &[Vec<Samples>]) -> Figure {
    let mut t = Table::new(&[
        "clones at once",
        "how",
        "all started, ms (median)",
        "min–max",
        "÷ floor",
        "one start within the batch, ms (median)",
    ]);
    for (ci, &n) in p.counts.iter().enumerate() {
        let floor = wall[ci][0].median();
        for (hi, how) in HOWS.iter().enumerate() {
            let x = &wall[ci][hi];
            if x.0.is_empty() {
                t.row(vec![
                    n.to_string(),
                    how.name().into(),
                    format!("not run (> {} in all)", mib_str(p.copy_max_total.0)),
                    "".into(),
                    "".into(),
                    "".into(),
                ]);
                continue;
            }
            t.row(vec![
                n.to_string(),
                how.name().into(),
                num(x.median()),
                spread(x),
                ratio(x.median() / floor),
                num(each[ci][hi].median()),
            ]);
        }
    }
    let mut md = String::from("## Fan-out: clones started at once\n\n");
    md.push_str(&format!(
        "N clones of one {} sparse image (page 0 holds the guest's code) started at the \
         same moment, each by its own thread, each its own VM with one vCPU: the time from \
         the release of all threads to the exit of the last guest's first instruction (an \
         `out`). Each start does what one start in the *start* figure does (memory, \
         `KVM_CREATE_VM`, memslot, vCPU, `KVM_RUN`); the VMs stay up until all have run, so \
         no teardown is timed. Median and min–max over {} run(s); `÷ floor` divides by \
         `anon, empty` with the same N. The last column is one clone's own start time \
         inside the batch (median over the batch, then over the runs). The test VM has 2 \
         vCPUs: with more clones than CPUs the starts queue for them, which the floor row \
         shows too.\n\n",
        mib_str(p.size.0),
        p.runs
    ));
    md.push_str(&t.markdown());
    md.push_str(
        "\n- **vms clone**: `VMS_CLONE_CREATE` + `mmap` of the clone + a \
         `KVM_MEM_PAGE_PROVIDER` memslot; all N clones share the image's one cached copy \
         of page 0 (the figure checks the image cached at most 1 page).\n\
         - **MAP_PRIVATE of the file**, **copy the file into anon memory** (each clone \
         reads the whole image first; only while N x size fits the limit above), \
         **anon, empty**: as in the *start* figure.\n",
    );
    let sections = p
        .counts
        .iter()
        .enumerate()
        .map(|(ci, n)| Section {
            title: format!("{n} at once"),
            bars: HOWS
                .iter()
                .enumerate()
                .filter(|(hi, _)| !wall[ci][*hi].0.is_empty())
                .map(|(hi, how)| {
                    let x = &wall[ci][hi];
                    Bar {
                        label: how.name().into(),
                        value: x.median(),
                        lo: x.min(),
                        hi: x.max(),
                        series: hi,
                    }
                })
                .collect(),
        })
        .collect();
    Figure {
        name: "fanout",
        markdown: md,
        chart: Chart {
            title: format!(
                "Fan-out: N clones of a {} image at once, until all ran (median, min–max, {} runs)",
                mib_str(p.size.0),
                p.runs
            ),
            unit: "ms".into(),
            log: true,
            series: HOWS.iter().map(|h| h.name().to_string()).collect(),
            sections,
        },
    }
}
