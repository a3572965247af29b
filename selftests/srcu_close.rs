// SPDX-License-Identifier: GPL-2.0

//! srcu_close: a clone closed while a vCPU is inside the clone mapping's
//! fault ends cleanly; the fault never drops the last reference to the
//! clone.
//!
//! KVM's emulator reads guest memory through the memslot's userspace
//! address, the VMM's mapping of the clone, inside the vCPU's `kvm->srcu`
//! read section. The guest here runs `rep outsb` from a clone page the
//! image has not read yet: KVM emulates string I/O, so the vCPU thread
//! takes the mapping's fault, which releases the fault lock to read the
//! image. The debug knob `vmm_read_delay_ms` holds the fault there; the
//! test then unmaps the clone and closes its fd. Had the fault kept its
//! own reference to the clone, that would now be the last, and dropping it
//! unregisters the clone from KVM, which waits for SRCU readers: the vCPU
//! thread itself, a deadlock (it hangs in D state).
//!
//! The vCPU must come back from `KVM_RUN` with an exit or an error (the
//! page is gone: an MMIO exit or EFAULT), and the clone must be gone.
//!
//! The scenario runs in a forked child so that a hung vCPU thread cannot
//! keep the test from ending (a process ends only when all its threads
//! do): the parent relays the child's output, gives it [`LIMIT`], and
//! fails if it has not finished; the child is then left behind.
//!
//! Skips if `/dev/vms`, `/dev/kvm` or the knob is missing.

use std::fs;
use std::io::Read;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::panic;
use std::thread;
use std::time::{Duration, Instant};

use vms_selftests::guest;
use vms_selftests::host::last_errno;
use vms_selftests::knob::{wait_for_delay, Knob, VMM_DELAYS, VMM_READ_DELAY_MS};
use vms_selftests::ksft::{self, check, Test, KSFT_FAIL, KSFT_PASS};
use vms_selftests::kvm::{self, Exit};
use vms_selftests::vms::{
    image_create, require_vms_and_kvm, unique_name, vm_with_clone, vms_open, ImageFile, CLONE_GPA,
    PAGE_SIZE,
};
use vms_selftests::{test_assert, test_assert_eq};

/// The image: a few pages of the test pattern.
const PAGES: u64 = 4;
/// The page the guest reads; nothing touches it before.
const PAGE: u64 = 1;
/// How long the fault sleeps with the fault lock released.
const DELAY_MS: u32 = 500;
/// The port of the guest's `rep outsb`.
const PORT: u16 = 0xd5;
/// Bytes the guest sends (`ECX`).
const COUNT: u32 = 4;
/// How long the child may take; a normal run takes about a second.
const LIMIT: Duration = Duration::from_secs(20);

/// The guest: send [`COUNT`] bytes from clone page [`PAGE`] to [`PORT`]
/// with a string instruction, which KVM emulates (reading the bytes
/// through the memslot's userspace address), then stop:
///
/// ```text
///         mov  esi, CLONE_GPA + PAGE * 4096   BE id
///         mov  ecx, COUNT                     B9 id
///         mov  edx, PORT                      BA id
///         rep outsb                           F3 6E
///         hlt                                 F4
/// ```
fn outsb_program() -> Vec<u8> {
    let mut code = vec![0xbe];
    code.extend_from_slice(&((CLONE_GPA + PAGE * PAGE_SIZE) as u32).to_le_bytes());
    code.push(0xb9);
    code.extend_from_slice(&COUNT.to_le_bytes());
    code.push(0xba);
    code.extend_from_slice(&u32::from(PORT).to_le_bytes());
    code.extend_from_slice(&[0xf3, 0x6e, 0xf4]);
    code
}

/// The scenario, in the child: the vCPU faults on the clone mapping and
/// sleeps with the fault lock released; meanwhile the clone is unmapped
/// and closed; the vCPU must return.
fn scenario() {
    let read_delay = Knob::require(VMM_READ_DELAY_MS);
    let delays = Knob::require(VMM_DELAYS);
    let dev = vms_open();
    let name = unique_name("srcu_close");
    let file = ImageFile::with_pattern(&name, PAGES, 0);
    let image = image_create(&dev, &name, file.file(), PAGES * PAGE_SIZE, 0);
    let kvm = kvm::open_kvm();
    let mut clone = Some(image.clone_create());
    let map = clone.as_ref().unwrap().map();
    let mut vm = vm_with_clone(&kvm, clone.as_ref().unwrap(), &map, 1);
    guest::load(&mut vm, 0, &outsb_program());

    let before = delays.get();
    read_delay.set(DELAY_MS);
    let (exit, took) = thread::scope(|s| {
        let vcpu = &mut vm.vcpus_mut()[0];
        let t = s.spawn(move || {
            let t0 = Instant::now();
            (kvm::__vcpu_run(vcpu), t0.elapsed())
        });
        test_assert!(
            wait_for_delay(&delays, before, Duration::from_secs(10)),
            "the vCPU never reached the delayed read (exited: {})",
            t.is_finished()
        );
        // Only this fault sleeps.
        read_delay.set(0);
        test_assert!(!t.is_finished(), "the vCPU returned inside its delay");
        let t0 = Instant::now();
        map.unmap();
        drop(clone.take());
        ksft::ksft_print_msg(&format!(
            "unmapped and closed the clone in {} ms; waiting for the vCPU",
            t0.elapsed().as_millis()
        ));
        t.join().expect("the vCPU thread panicked")
    });
    ksft::ksft_print_msg(&format!(
        "KVM_RUN returned after {} ms: {exit:?}",
        took.as_millis()
    ));
    // The page was unmapped while the fault slept, so the guest's read
    // cannot succeed: an I/O exit with its bytes would mean the fault
    // finished outside the window, and the test proved nothing.
    test_assert!(
        !matches!(exit, Ok(Exit::IoOut { .. })),
        "the guest read the page although it was unmapped: {exit:?}"
    );
    drop(vm);
    test_assert_eq!(image.info().clones, 0, "the clone is gone");
    image.delete();
}

/// The state and kernel stack of each thread of `pid`, for the report of
/// a hang (the stack needs CONFIG_STACKTRACE; what is missing is left
/// out).
fn threads_of(pid: i32) -> String {
    let mut out = String::new();
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return out;
    };
    for t in tasks.flatten() {
        let dir = t.path();
        let stat = fs::read_to_string(dir.join("stat")).unwrap_or_default();
        // "tid (comm) S ...": the state follows the command's ")".
        let state = stat.rsplit_once(") ").map_or("?", |(_, r)| &r[..1]);
        let wchan = fs::read_to_string(dir.join("wchan")).unwrap_or_default();
        out.push_str(&format!(
            "thread {}: state {state}, wchan {wchan}\n",
            t.file_name().to_string_lossy()
        ));
        if state == "D" {
            if let Ok(stack) = fs::read_to_string(dir.join("stack")) {
                for l in stack.lines().take(20) {
                    out.push_str(&format!("  {l}\n"));
                }
            }
        }
    }
    out
}

/// Relays `pipe`'s lines (the child's output) until it is closed or
/// `limit` passed; returns whether it was closed.
fn relay(pipe: &mut fs::File, limit: Duration) -> bool {
    let t0 = Instant::now();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    let closed = loop {
        let left = limit.saturating_sub(t0.elapsed());
        if left.is_zero() {
            break false;
        }
        let mut pfd = libc::pollfd {
            fd: pipe.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let r = unsafe { libc::poll(&mut pfd, 1, left.as_millis().min(1000) as i32) };
        if r < 0 && last_errno() != libc::EINTR {
            check::<(), _>(Err(std::io::Error::last_os_error()), "poll");
        }
        if r <= 0 {
            continue;
        }
        match pipe.read(&mut chunk) {
            Ok(0) => break true,
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => check(Err(e), "read the child's output"),
        }
        while let Some(nl) = buf.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = buf.drain(..=nl).collect();
            let line = String::from_utf8_lossy(&line[..nl]);
            ksft::ksft_print_msg(line.strip_prefix("# ").unwrap_or(&line));
        }
    };
    if !buf.is_empty() {
        ksft::ksft_print_msg(&String::from_utf8_lossy(&buf));
    }
    closed
}

fn close_during_read_fault() {
    // Requirements in the parent, so that a missing one skips here.
    drop(Knob::require(VMM_READ_DELAY_MS));
    drop(Knob::require(VMM_DELAYS));
    let mut fds = [0; 2];
    // SAFETY: `fds` has room for the two descriptors.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        check::<(), _>(Err(std::io::Error::last_os_error()), "pipe2");
    }
    // SAFETY: pipe2 made both, and nothing else owns them.
    let (pipe_read, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    // The test process has one thread here (ksft::run calls subtests on
    // the main thread, and nothing started another), so the child may do
    // anything the parent could: allocate, start threads, use the
    // helpers.
    // SAFETY: fork has no memory-safety preconditions; see above for
    // what the child may do.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        check::<(), _>(Err(std::io::Error::last_os_error()), "fork");
    }
    if pid == 0 {
        drop(pipe_read);
        // SAFETY: the child's stdout and stderr become the pipe; the
        // inherited ones are closed, so a hung child holds nothing that
        // the test's reader waits on.
        unsafe {
            libc::dup2(write_end.as_raw_fd(), 1);
            libc::dup2(write_end.as_raw_fd(), 2);
        }
        // The requirements were checked above: any unwind is a failure.
        let code = match panic::catch_unwind(scenario) {
            Ok(()) => KSFT_PASS,
            Err(_) => KSFT_FAIL,
        };
        // SAFETY: ends the child at once, without the parent's exit
        // handlers (its TAP totals).
        unsafe { libc::_exit(code) };
    }
    drop(write_end);
    let mut pipe = fs::File::from(pipe_read);
    let ended = relay(&mut pipe, LIMIT);
    if !ended {
        let threads = threads_of(pid);
        // Ends what can end; a thread in D state stays.
        // SAFETY: our own child.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        ksft::fail(
            std::panic::Location::caller(),
            "the vCPU did not come back from the clone's fault",
            format_args!("the child did not finish in {} s:\n{threads}", LIMIT.as_secs()),
            None,
        );
    }
    let mut status = 0;
    // SAFETY: waits for our own child, which has closed its output.
    let r = unsafe { libc::waitpid(pid, &mut status, 0) };
    test_assert_eq!(r, pid, "waitpid");
    test_assert!(libc::WIFEXITED(status), "child status {status:#x}");
    let code = libc::WEXITSTATUS(status);
    test_assert_eq!(code, KSFT_PASS, "the child's scenario failed (see above)");
}

fn main() {
    ksft::init();
    require_vms_and_kvm();
    ksft::run(&[Test::new("close_during_read_fault", close_during_read_fault)]);
}
