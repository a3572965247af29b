// SPDX-License-Identifier: GPL-2.0

//! Guest programs: tiny hand-assembled 32-bit code for the flat
//! protected-mode vCPUs of [`crate::kvm::vm_create_pm32`], and the host
//! side that runs them and decodes what they report.
//!
//! Each program walks pages (a [`Walk`]) and reports through `out` to an
//! I/O port, with `EAX` as data:
//!
//! - [`PORT_DONE`]: the walk is complete (then `hlt`);
//! - [`PORT_BAD`]: the u32 at byte 0 of the page at `EBX` is `EAX`, not
//!   `EDI` (then `hlt`);
//! - [`PORT_BAD_HI`]: the u32 at byte 2048 is `EAX ^ ESI`, not
//!   `EDI ^ ESI` (then `hlt`);
//! - [`PORT_PROGRESS`]: [`read_write_forever`] passed another 256 pages.
//!
//! [`run`] turns these into an [`Outcome`]; on a mismatch it reads the
//! registers (`KVM_GET_REGS`) to say which page held what.
//!
//! Register use, the same in every program:
//!
//! | reg | use                                                  |
//! |-----|------------------------------------------------------|
//! | EBX | address of the current page                          |
//! | ECX | pages left                                           |
//! | EDI | value expected (or written) at byte 0 of the page    |
//! | ESI | XOR mask: the value at byte 2048 is `EDI ^ ESI`      |
//! | EBP | added to `EDI` from one page to the next             |
//! | EAX | the value read                                       |
//! | EDX | the port of `out`                                    |
//!
//! The encodings are spelled out at each emitter of the private `Asm`,
//! and the unit tests below compare every program with what GNU
//! `as --32` makes of its source.

use std::time::Instant;

use kvm_ioctls::VcpuFd;
use vmm_sys_util::errno;

use crate::ksft::{self, check};
use crate::kvm::{__vcpu_run, vcpu_set_entry, Exit, Vm};
use crate::vms::{pattern_word, HI_OFFSET, PAGE_SIZE};

/// Port of "walk complete".
pub const PORT_DONE: u16 = 0xd0;
/// Port of "wrong value at byte 0".
pub const PORT_BAD: u16 = 0xd1;
/// Port of "wrong value at byte 2048".
pub const PORT_BAD_HI: u16 = 0xd2;
/// Port of "another 256 pages done" ([`read_write_forever`]).
pub const PORT_PROGRESS: u16 = 0xd3;

/// Where vCPU `i`'s program goes: one 4 KiB page each from gpa 0x1000, in
/// the code memory of [`crate::kvm::vm_create_pm32`].
pub fn code_gpa(i: usize) -> u64 {
    assert!(i < 15, "code memory holds 15 programs");
    0x1000 * (i as u64 + 1)
}

/// The pages a program visits and the values it expects (or writes).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Walk {
    /// Guest physical address of the first page.
    pub gpa: u32,
    /// Number of pages, at least 1.
    pub pages: u32,
    /// Bytes from one page to the next: 4096 up, -4096 down.
    pub stride: i32,
    /// The value at byte 0 of the first page.
    pub first: u32,
    /// Added (wrapping) to that value from one page to the next.
    pub step: u32,
    /// The value at byte 2048 is the value at byte 0 XOR this.
    pub xor: u32,
}

impl Walk {
    /// `pages` pages from `gpa` holding the test pattern of image pages
    /// `first_page..` (see [`crate::vms`]).
    pub fn pattern(gpa: u64, first_page: u64, pages: u64) -> Self {
        Self::values(gpa, pages, pattern_word(first_page))
    }

    /// `pages` pages from `gpa` holding the values `first, first + 1, ...`
    /// at byte 0 and their complements at byte 2048, as the pattern does.
    pub fn values(gpa: u64, pages: u64, first: u32) -> Self {
        assert!(gpa + pages * PAGE_SIZE <= 1 << 32, "a 32-bit guest");
        assert!((1..1 << 32).contains(&pages), "1 to 2^32 - 1 pages");
        Self {
            gpa: gpa as u32,
            pages: pages as u32,
            stride: PAGE_SIZE as i32,
            first,
            step: 1,
            xor: !0,
        }
    }

    /// `pages` pages from `gpa` that read as zero.
    pub fn zeros(gpa: u64, pages: u64) -> Self {
        Self {
            first: 0,
            step: 0,
            xor: 0,
            ..Self::values(gpa, pages, 0)
        }
    }

    /// The same pages and values, visited from the last page down.
    pub fn reversed(self) -> Self {
        let last = self.pages - 1;
        Self {
            gpa: self.gpa.wrapping_add(last.wrapping_mul(self.stride as u32)),
            stride: -self.stride,
            first: self.first.wrapping_add(last.wrapping_mul(self.step)),
            step: self.step.wrapping_neg(),
            ..self
        }
    }

    /// The values at byte 0 and byte 2048 of page `i` of the walk.
    pub fn value(&self, i: u32) -> (u32, u32) {
        let v = self.first.wrapping_add(i.wrapping_mul(self.step));
        (v, v ^ self.xor)
    }
}

/// A 32-bit general register, numbered as in ModRM and `B8+r`.
#[derive(Debug, Clone, Copy)]
enum Reg {
    Eax = 0,
    Ecx = 1,
    Edx = 2,
    Ebx = 3,
    Ebp = 5,
    Esi = 6,
    Edi = 7,
}

/// A jump target of [`Asm`].
#[derive(Debug, Clone, Copy)]
struct Label(usize);

/// An assembler for the handful of instructions the programs use, all in
/// 32-bit code (operand size 32 without prefixes). Jumps are short
/// (`rel8`), patched in [`Asm::finish`].
#[derive(Default)]
struct Asm {
    code: Vec<u8>,
    labels: Vec<Option<usize>>,
    /// (position of a rel8 byte, its label)
    fixups: Vec<(usize, Label)>,
}

impl Asm {
    fn label(&mut self) -> Label {
        self.labels.push(None);
        Label(self.labels.len() - 1)
    }

    fn bind(&mut self, l: Label) {
        self.labels[l.0] = Some(self.code.len());
    }

    fn emit(&mut self, bytes: &[u8]) {
        self.code.extend_from_slice(bytes);
    }

    fn imm32(&mut self, v: u32) {
        self.emit(&v.to_le_bytes());
    }

    /// `mov r, imm32`: `B8+r id`.
    fn mov_imm(&mut self, r: Reg, imm: u32) {
        self.emit(&[0xb8 + r as u8]);
        self.imm32(imm);
    }

    /// `mov r, [ebx + disp32]`: `8B /r`, ModRM = mod 10 (disp32), reg =
    /// `r`, rm = 011 (EBX), then disp32.
    fn load(&mut self, r: Reg, disp: u32) {
        self.emit(&[0x8b, 0x80 | (r as u8) << 3 | Reg::Ebx as u8]);
        self.imm32(disp);
    }

    /// `mov [ebx + disp32], r`: `89 /r`, ModRM as in [`Asm::load`].
    fn store(&mut self, disp: u32, r: Reg) {
        self.emit(&[0x89, 0x80 | (r as u8) << 3 | Reg::Ebx as u8]);
        self.imm32(disp);
    }

    /// A register-to-register ALU instruction `op dst, src` in its
    /// `op r/m32, r32` form: opcode, ModRM = mod 11 (register), reg =
    /// `src`, rm = `dst`. Opcodes: `01` add, `31` xor, `39` cmp,
    /// `89` mov.
    fn alu(&mut self, op: u8, dst: Reg, src: Reg) {
        self.emit(&[op, 0xc0 | (src as u8) << 3 | dst as u8]);
    }

    /// `add ebx, imm32`: `81 /0 id`, ModRM = 11 000 011.
    fn add_ebx_imm(&mut self, imm: u32) {
        self.emit(&[0x81, 0xc3]);
        self.imm32(imm);
    }

    /// `dec ecx`: `48+r` (a one-byte instruction outside 64-bit mode).
    fn dec_ecx(&mut self) {
        self.emit(&[0x48 + Reg::Ecx as u8]);
    }

    /// `test cl, cl`: `84 /r`, ModRM = 11 001 001.
    fn test_cl_cl(&mut self) {
        self.emit(&[0x84, 0xc9]);
    }

    /// A short jump: `op rel8` with `op` = `75` jne/jnz, `74` je/jz,
    /// `EB` jmp.
    fn jump(&mut self, op: u8, to: Label) {
        self.emit(&[op, 0]);
        self.fixups.push((self.code.len() - 1, to));
    }

    /// Reports `EAX` on `port`: `mov edx, port` (`BA id`), then
    /// `out dx, eax` (`EF`).
    fn out(&mut self, port: u16) {
        self.mov_imm(Reg::Edx, port.into());
        self.emit(&[0xef]);
    }

    /// Reports `AL` on `port`, an 8-bit port: `out imm8, al` (`E6 ib`),
    /// an instruction that needs no register set up first.
    fn out_imm8(&mut self, port: u8) {
        self.emit(&[0xe6, port]);
    }

    /// `hlt`: `F4`.
    fn hlt(&mut self) {
        self.emit(&[0xf4]);
    }

    fn finish(mut self) -> Vec<u8> {
        for &(at, l) in &self.fixups {
            let to = self.labels[l.0].expect("unbound label");
            // rel8 counts from the end of the jump, the byte after `at`.
            let rel = to as isize - (at as isize + 1);
            let rel = i8::try_from(rel).expect("short jump out of range");
            self.code[at] = rel as u8;
        }
        assert!(self.code.len() <= 0x1000, "a program fits its code page");
        self.code
    }

    /// Loads the walk's registers (see the module's table).
    fn prologue(&mut self, w: &Walk) {
        assert!(w.pages >= 1, "a walk of no pages would run 2^32 times");
        self.mov_imm(Reg::Ebx, w.gpa);
        self.mov_imm(Reg::Ecx, w.pages);
        self.mov_imm(Reg::Edi, w.first);
        self.mov_imm(Reg::Esi, w.xor);
        self.mov_imm(Reg::Ebp, w.step);
    }

    /// On to the next page: `add edi, ebp`, `add ebx, stride`, `dec ecx`
    /// (which sets ZF when no page is left).
    fn next_page(&mut self, w: &Walk) {
        self.alu(0x01, Reg::Edi, Reg::Ebp);
        self.add_ebx_imm(w.stride as u32);
        self.dec_ecx();
    }

    /// `bad: out PORT; hlt`.
    fn fail_with(&mut self, at: Label, port: u16) {
        self.bind(at);
        self.out(port);
        self.hlt();
    }
}

/// Reads every page of the walk and checks the u32 at byte 0 and the one
/// at byte 2048; reports the first mismatch or [`PORT_DONE`]:
///
/// ```text
///         mov  ebx, gpa / ecx, pages / edi, first / esi, xor / ebp, step
/// loop:   mov  eax, [ebx + 0]
///         cmp  eax, edi
///         jne  bad
///         mov  eax, [ebx + 2048]
///         xor  eax, esi
///         cmp  eax, edi
///         jne  bad_hi
///         add  edi, ebp
///         add  ebx, stride
///         dec  ecx
///         jnz  loop
///         mov  edx, PORT_DONE;   out dx, eax;  hlt
/// bad:    mov  edx, PORT_BAD;    out dx, eax;  hlt
/// bad_hi: mov  edx, PORT_BAD_HI; out dx, eax;  hlt
/// ```
pub fn read_check(w: &Walk) -> Vec<u8> {
    let mut a = Asm::default();
    let (top, bad, bad_hi) = (a.label(), a.label(), a.label());
    a.prologue(w);
    a.bind(top);
    a.load(Reg::Eax, 0);
    a.alu(0x39, Reg::Eax, Reg::Edi);
    a.jump(0x75, bad);
    a.load(Reg::Eax, HI_OFFSET as u32);
    a.alu(0x31, Reg::Eax, Reg::Esi);
    a.alu(0x39, Reg::Eax, Reg::Edi);
    a.jump(0x75, bad_hi);
    a.next_page(w);
    a.jump(0x75, top);
    a.out(PORT_DONE);
    a.hlt();
    a.fail_with(bad, PORT_BAD);
    a.fail_with(bad_hi, PORT_BAD_HI);
    a.finish()
}

/// Writes the walk's values to every page (byte 0 and byte 2048), then
/// reports [`PORT_DONE`]:
///
/// ```text
///         mov  ebx, gpa / ecx, pages / edi, first / esi, xor / ebp, step
/// loop:   mov  [ebx + 0], edi
///         mov  eax, edi
///         xor  eax, esi
///         mov  [ebx + 2048], eax
///         add  edi, ebp
///         add  ebx, stride
///         dec  ecx
///         jnz  loop
///         mov  edx, PORT_DONE;   out dx, eax;  hlt
/// ```
pub fn write(w: &Walk) -> Vec<u8> {
    let mut a = Asm::default();
    let top = a.label();
    a.prologue(w);
    a.bind(top);
    a.store(0, Reg::Edi);
    a.alu(0x89, Reg::Eax, Reg::Edi);
    a.alu(0x31, Reg::Eax, Reg::Esi);
    a.store(HI_OFFSET as u32, Reg::Eax);
    a.next_page(w);
    a.jump(0x75, top);
    a.out(PORT_DONE);
    a.hlt();
    a.finish()
}

/// Walks the pages again and again, forever: checks the u32 at byte 0 of
/// each page and writes the page count left (`ECX`) to byte 4, so that
/// every page is read and written; reports [`PORT_PROGRESS`] every 256
/// pages and at the end of each pass, a mismatch on [`PORT_BAD`]:
///
/// ```text
/// start:  mov  ebx, gpa / ecx, pages / edi, first / esi, xor / ebp, step
/// loop:   mov  eax, [ebx + 0]
///         cmp  eax, edi
///         jne  bad
///         mov  [ebx + 4], ecx
///         add  edi, ebp
///         add  ebx, stride
///         dec  ecx
///         jz   pass
///         test cl, cl
///         jnz  loop
///         mov  edx, PORT_PROGRESS; out dx, eax
///         jmp  loop
/// pass:   mov  edx, PORT_PROGRESS; out dx, eax
///         jmp  start
/// bad:    mov  edx, PORT_BAD;      out dx, eax;  hlt
/// ```
pub fn read_write_forever(w: &Walk) -> Vec<u8> {
    let mut a = Asm::default();
    let (start, top, pass, bad) = (a.label(), a.label(), a.label(), a.label());
    a.bind(start);
    a.prologue(w);
    a.bind(top);
    a.load(Reg::Eax, 0);
    a.alu(0x39, Reg::Eax, Reg::Edi);
    a.jump(0x75, bad);
    a.store(4, Reg::Ecx);
    a.next_page(w);
    a.jump(0x74, pass);
    a.test_cl_cl();
    a.jump(0x75, top);
    a.out(PORT_PROGRESS);
    a.jump(0xeb, top);
    a.bind(pass);
    a.out(PORT_PROGRESS);
    a.jump(0xeb, start);
    a.fail_with(bad, PORT_BAD);
    a.finish()
}

/// Reports [`PORT_DONE`] at once: its first instruction is the `out`,
/// so the exit marks the moment the vCPU ran its first instruction (the
/// clone start benchmark):
///
/// ```text
///         out  PORT_DONE, al
///         hlt
/// ```
pub fn report_done() -> Vec<u8> {
    let mut a = Asm::default();
    a.out_imm8(PORT_DONE as u8);
    a.hlt();
    a.finish()
}

/// What a program reported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It reached its end ([`PORT_DONE`], then `hlt`).
    Done,
    /// [`PORT_PROGRESS`]; run it again to go on.
    Progress,
    /// A page held the wrong value.
    Mismatch {
        /// Guest physical address of the page.
        gpa: u32,
        /// 0 or 2048.
        offset: u32,
        /// The value the walk expected.
        expected: u32,
        /// The value the guest read.
        found: u32,
    },
    /// Any other exit to userspace (an MMIO access, a memory fault, ...).
    Exit(Exit),
}

/// Loads `code` as vCPU `i`'s program ([`code_gpa`]`(i)`) and points the
/// vCPU at it, with every general register zero.
#[track_caller]
pub fn load(vm: &mut Vm, i: usize, code: &[u8]) {
    let gpa = code_gpa(i);
    vm.write(gpa, code);
    check(vcpu_set_entry(vm.vcpu(i), gpa), "KVM_SET_REGS");
}

/// Runs `vcpu` to its next report, returning the raw result (the errno of
/// `KVM_RUN` or `KVM_GET_REGS` if one failed).
pub fn __run(vcpu: &mut VcpuFd) -> Result<Outcome, errno::Error> {
    __run_timed(vcpu).map(|(outcome, _)| outcome)
}

/// Runs `vcpu` past its progress reports ([`Outcome::Progress`]) to the
/// first other outcome, returning the raw result.
pub fn __run_to_end(vcpu: &mut VcpuFd) -> Result<Outcome, errno::Error> {
    loop {
        match __run(vcpu) {
            Ok(Outcome::Progress) => continue,
            other => return other,
        }
    }
}

/// Like [`__run`], also returning the moment the report's exit reached
/// userspace: the end of the program's work, before a [`PORT_DONE`]
/// report is resumed to its `hlt` (benchmarks time programs with it).
pub fn __run_timed(vcpu: &mut VcpuFd) -> Result<(Outcome, Instant), errno::Error> {
    let exit = __vcpu_run(vcpu)?;
    let at = Instant::now();
    Ok((__outcome(vcpu, exit)?, at))
}

/// What `exit`, the exit that ended a `KVM_RUN` of a program, reports:
/// resumes a [`PORT_DONE`] report to its `hlt`, reads the registers of a
/// mismatch; returns the raw result. For callers that run the vCPU
/// themselves.
pub fn __outcome(vcpu: &mut VcpuFd, exit: Exit) -> Result<Outcome, errno::Error> {
    let outcome = match exit {
        Exit::IoOut { port, data: _ } if port == PORT_PROGRESS => Outcome::Progress,
        Exit::IoOut { port, data: _ } if port == PORT_DONE => match __vcpu_run(vcpu)? {
            Exit::Hlt => Outcome::Done,
            other => Outcome::Exit(other),
        },
        Exit::IoOut { port, data: _ } if port == PORT_BAD || port == PORT_BAD_HI => {
            let r = vcpu.get_regs()?;
            let (ebx, eax, edi, esi) = (r.rbx as u32, r.rax as u32, r.rdi as u32, r.rsi as u32);
            if port == PORT_BAD {
                Outcome::Mismatch {
                    gpa: ebx,
                    offset: 0,
                    expected: edi,
                    found: eax,
                }
            } else {
                Outcome::Mismatch {
                    gpa: ebx,
                    offset: HI_OFFSET as u32,
                    expected: edi ^ esi,
                    found: eax ^ esi,
                }
            }
        }
        other => Outcome::Exit(other),
    };
    Ok(outcome)
}

/// Loads `code` for vCPU `i`, runs it, and asserts that it reached its
/// end ([`Outcome::Done`]).
#[track_caller]
pub fn run(vm: &mut Vm, i: usize, code: &[u8]) {
    load(vm, i, code);
    let outcome = check(__run(vm.vcpu(i)), "KVM_RUN");
    if outcome != Outcome::Done {
        ksft::fail(
            std::panic::Location::caller(),
            "guest program did not complete",
            format_args!("vCPU {i}: {}", describe(&outcome)),
            None,
        );
    }
}

/// An outcome in words, for diagnostics.
pub fn describe(o: &Outcome) -> String {
    match o {
        Outcome::Mismatch {
            gpa,
            offset,
            expected,
            found,
        } => format!("gpa {gpa:#x} (+{offset}): read {found:#010x}, expected {expected:#010x}"),
        other => format!("{other:?}"),
    }
}

#[cfg(test)]
mod tests {
    //! Each program, for one walk, against GNU as. The expected bytes come
    //! from the source in the comment above each array: put it in t.s
    //! after `.code32` and the prologue
    //!
    //! ```text
    //! start: mov $0x40000000,%ebx; mov $0x1000,%ecx; mov $0x56000000,%edi
    //!        mov $0xffffffff,%esi; mov $1,%ebp
    //! ```
    //!
    //! then `as --32 t.s -o t.o && objcopy -O binary t.o t.bin && xxd -i
    //! t.bin`, and drop the 25 bytes of the prologue. `{disp32}` makes `as`
    //! use the disp32 form that [`Asm::load`] and [`Asm::store`] always
    //! emit.

    use super::*;

    const W: Walk = Walk {
        gpa: 0x4000_0000,
        pages: 0x1000,
        stride: 0x1000,
        first: 0x5600_0000,
        step: 1,
        xor: 0xffff_ffff,
    };

    /// The prologue for `W` (see above; each is `mov r32, imm32`).
    const PROLOGUE: [u8; 25] = [
        0xbb, 0x00, 0x00, 0x00, 0x40, 0xb9, 0x00, 0x10, 0x00, 0x00, 0xbf, 0x00, 0x00, 0x00, 0x56,
        0xbe, 0xff, 0xff, 0xff, 0xff, 0xbd, 0x01, 0x00, 0x00, 0x00,
    ];

    fn with_prologue(body: &[u8]) -> Vec<u8> {
        [&PROLOGUE[..], body].concat()
    }

    #[test]
    fn read_check_matches_gnu_as() {
        // loop:   {disp32} mov 0(%ebx),%eax; cmp %edi,%eax; jne bad
        //         mov 0x800(%ebx),%eax; xor %esi,%eax; cmp %edi,%eax
        //         jne bad_hi; add %ebp,%edi; add $0x1000,%ebx; dec %ecx
        //         jne loop; mov $0xd0,%edx; out %eax,(%dx); hlt
        // bad:    mov $0xd1,%edx; out %eax,(%dx); hlt
        // bad_hi: mov $0xd2,%edx; out %eax,(%dx); hlt
        let body = [
            0x8b, 0x83, 0x00, 0x00, 0x00, 0x00, 0x39, 0xf8, 0x75, 0x1e, 0x8b, 0x83, 0x00, 0x08,
            0x00, 0x00, 0x31, 0xf0, 0x39, 0xf8, 0x75, 0x19, 0x01, 0xef, 0x81, 0xc3, 0x00, 0x10,
            0x00, 0x00, 0x49, 0x75, 0xdf, 0xba, 0xd0, 0x00, 0x00, 0x00, 0xef, 0xf4, 0xba, 0xd1,
            0x00, 0x00, 0x00, 0xef, 0xf4, 0xba, 0xd2, 0x00, 0x00, 0x00, 0xef, 0xf4,
        ];
        assert_eq!(read_check(&W), with_prologue(&body));
    }

    #[test]
    fn write_matches_gnu_as() {
        // loop:   {disp32} mov %edi,0(%ebx); mov %edi,%eax; xor %esi,%eax
        //         mov %eax,0x800(%ebx); add %ebp,%edi; add $0x1000,%ebx
        //         dec %ecx; jne loop; mov $0xd0,%edx; out %eax,(%dx); hlt
        let body = [
            0x89, 0xbb, 0x00, 0x00, 0x00, 0x00, 0x89, 0xf8, 0x31, 0xf0, 0x89, 0x83, 0x00, 0x08,
            0x00, 0x00, 0x01, 0xef, 0x81, 0xc3, 0x00, 0x10, 0x00, 0x00, 0x49, 0x75, 0xe5, 0xba,
            0xd0, 0x00, 0x00, 0x00, 0xef, 0xf4,
        ];
        assert_eq!(write(&W), with_prologue(&body));
    }

    #[test]
    fn read_write_forever_matches_gnu_as() {
        // loop:   {disp32} mov 0(%ebx),%eax; cmp %edi,%eax; jne bad
        //         {disp32} mov %ecx,4(%ebx); add %ebp,%edi
        //         add $0x1000,%ebx; dec %ecx; je pass; test %cl,%cl
        //         jne loop; mov $0xd3,%edx; out %eax,(%dx); jmp loop
        // pass:   mov $0xd3,%edx; out %eax,(%dx); jmp start
        // bad:    mov $0xd1,%edx; out %eax,(%dx); hlt
        let body = [
            0x8b, 0x83, 0x00, 0x00, 0x00, 0x00, 0x39, 0xf8, 0x75, 0x25, 0x89, 0x8b, 0x04, 0x00,
            0x00, 0x00, 0x01, 0xef, 0x81, 0xc3, 0x00, 0x10, 0x00, 0x00, 0x49, 0x74, 0x0c, 0x84,
            0xc9, 0x75, 0xe1, 0xba, 0xd3, 0x00, 0x00, 0x00, 0xef, 0xeb, 0xd9, 0xba, 0xd3, 0x00,
            0x00, 0x00, 0xef, 0xeb, 0xb8, 0xba, 0xd1, 0x00, 0x00, 0x00, 0xef, 0xf4,
        ];
        assert_eq!(read_write_forever(&W), with_prologue(&body));
    }

    #[test]
    fn report_done_matches_gnu_as() {
        // out %al,$0xd0; hlt (no prologue: the out comes first)
        assert_eq!(report_done(), [0xe6, 0xd0, 0xf4]);
    }

    #[test]
    fn reversed_walk_visits_the_same_pages() {
        let w = Walk::pattern(0x4000_0000, 7, 16);
        let r = w.reversed();
        assert_eq!(r.gpa, 0x4000_0000 + 15 * 0x1000);
        assert_eq!(r.stride, -0x1000);
        assert_eq!(r.value(0), w.value(15));
        assert_eq!(r.value(15), w.value(0));
    }
}
