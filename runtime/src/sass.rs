//! SASS disassembly of a CUBIN with the toolchain's `cuobjdump -sass` (or `nvdisasm`), to
//! check the instruction mix (HMMA for `mma.sync`, HGMMA for `wgmma`) without a GPU, and a
//! small control-flow analysis of that text ([`sass_loops`], [`opcode_count_in_loops`]) to
//! check *where* the instructions are: e.g. that the HMMA of an attention kernel sit inside
//! its main loop rather than merely somewhere in the kernel.
//!
//! ```no_run
//! use attnforge_runtime::{compile, opcode_count_in_loops, sass, sass_opcode_count, Arch};
//! let c = compile(r#"extern "C" __global__ void k(float* o) { o[0] = 1.0f; }"#, "k", Arch::Sm90)?;
//! let text = sass(c.cubin.as_deref().unwrap_or_default())?;
//! assert_eq!(sass_opcode_count(&text, "HMMA"), 0);
//! assert_eq!(opcode_count_in_loops(&text, "HMMA")?, 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, HashMap};
use std::process::Command;

use crate::ptxas::{TempFile, ToolError};
use crate::toolchain::Toolchain;

/// Disassembles `cubin` to SASS text using the located toolchain.
pub fn sass(cubin: &[u8]) -> Result<String, ToolError> {
    sass_with(&Toolchain::locate()?, cubin)
}

/// Disassembles `cubin` with `toolchain`'s `cuobjdump -sass`, else `nvdisasm`.
pub fn sass_with(toolchain: &Toolchain, cubin: &[u8]) -> Result<String, ToolError> {
    if cubin.is_empty() {
        return Err(ToolError::Failed {
            tool: "cuobjdump",
            status: "not run".to_owned(),
            input: "<empty cubin>".to_owned(),
            stderr: "the CUBIN is empty; compile for a real architecture (Arch::Sm80/Sm90) to \
                     get one"
                .to_owned(),
        });
    }
    let (tool, path, args): (&'static str, _, &[&str]) =
        match (&toolchain.cuobjdump, &toolchain.nvdisasm) {
            (Some(p), _) => ("cuobjdump", p, &["-sass"]),
            (None, Some(p)) => ("nvdisasm", p, &[]),
            (None, None) => {
                return Err(ToolError::NotInstalled {
                    tool: "cuobjdump/nvdisasm",
                })
            }
        };
    let input = TempFile::new("kernel", "cubin", cubin)?;
    let out = Command::new(path)
        .args(args)
        .arg(&input.0)
        .output()
        .map_err(|e| ToolError::Io {
            path: path.clone(),
            reason: e.to_string(),
        })?;
    if !out.status.success() {
        return Err(ToolError::Failed {
            tool,
            status: out.status.to_string(),
            input: input.0.display().to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Number of SASS instructions whose opcode is `opcode` or starts with `opcode.`
/// (`HMMA` counts `HMMA.16816.F32`; predicates like `@P0` are skipped).
pub fn sass_opcode_count(sass: &str, opcode: &str) -> usize {
    sass.lines()
        .filter_map(|l| {
            // Instruction lines look like `/*00d0*/  @P0 HMMA.16816.F32 R8, ... ;`.
            let rest = l.trim_start().strip_prefix("/*")?;
            let (_, ins) = rest.split_once("*/")?;
            let mut words = ins.split_whitespace();
            let mut op = words.next()?;
            if op.starts_with('@') {
                op = words.next()?;
            }
            Some(op)
        })
        .filter(|op| opcode_matches(op, opcode))
        .count()
}

/// `op` (a full mnemonic such as `HMMA.16816.F32`) is `opcode` or `opcode` plus modifiers.
pub(crate) fn opcode_matches(op: &str, opcode: &str) -> bool {
    op == opcode || op.strip_prefix(opcode).is_some_and(|r| r.starts_with('.'))
}

// ---- control flow: loops of the SASS text ----

/// Why SASS text could not be analysed by [`sass_loops`] / [`opcode_count_in_loops`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SassError {
    /// The text holds no instruction line (`/*<hex offset>*/ [@pred] OPCODE operands ;`).
    #[error(
        "no SASS instructions found (expected lines like `/*0040*/ @P0 BRA 0x10 ;` from \
         cuobjdump -sass or nvdisasm)"
    )]
    NoInstructions,
    /// A line that looks like an instruction (starts with `/*`) could not be parsed.
    #[error("SASS line {line}: {reason}: `{text}`")]
    Malformed {
        /// 1-based line number in the text.
        line: usize,
        /// What is wrong with it.
        reason: String,
        /// The line, trimmed.
        text: String,
    },
}

/// One loop of a SASS function: a backward branch (`[@P] BRA target` with target offset
/// `<=` the branch's own offset) and its body, the instructions at offsets
/// `start..=end` of the same function.
///
/// Every backward branch gives one `SassLoop`, so a loop with two back edges (a `continue`)
/// appears twice and nested loops appear once each; [`opcode_count_in_loops`] counts the
/// union of the bodies.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SassLoop {
    /// The function (`Function : <name>` of cuobjdump, `.text.<name>` of nvdisasm); empty
    /// when the text has no function header.
    pub function: String,
    /// Offset of the loop head: the branch target.
    pub start: u64,
    /// Offset of the backward branch, the last instruction of the body.
    pub end: u64,
    /// The backward branch carries a guard predicate (`@P0 BRA`, `@!P1 BRA`) or a predicate
    /// operand (`BRA P2, ...`); an unconditional `BRA` to itself at the end of a function is
    /// the compiler's trap padding and also counts as a (one-instruction) loop.
    pub predicated: bool,
    /// Number of instructions in the body (both ends included).
    pub instructions: usize,
    /// Full mnemonic (`HMMA.16816.F32.BF16`, predicate removed) to its count in the body.
    pub opcodes: BTreeMap<String, usize>,
}

impl SassLoop {
    /// Instructions of the body whose opcode is `opcode` or `opcode.<modifiers>`, like
    /// [`sass_opcode_count`].
    pub fn count(&self, opcode: &str) -> usize {
        self.opcodes
            .iter()
            .filter(|(op, _)| opcode_matches(op, opcode))
            .map(|(_, n)| n)
            .sum()
    }

    /// `other` lies within this loop's body (same function, `start..=end` included).
    pub fn contains(&self, other: &SassLoop) -> bool {
        self.function == other.function && self.start <= other.start && other.end <= self.end
    }
}

/// One parsed instruction.
#[derive(Debug)]
pub(crate) struct Ins {
    pub(crate) offset: u64,
    pub(crate) opcode: String,
    /// The operands as written (after the opcode, before `;`).
    pub(crate) operands: String,
    /// The guard predicate without `@` (`P0`, `!P1`); `None` when absent or `@PT`.
    pub(crate) guard: Option<String>,
    pub(crate) predicated: bool,
    /// Direct branch target (`BRA`/`JMP`), resolved to an offset; `None` for other
    /// instructions and for indirect branches (`BRX`, `JMX`), which cannot form a loop here.
    pub(crate) target: Option<u64>,
    /// 1-based line, for errors.
    pub(crate) line: usize,
}

/// A branch target as written: an offset (cuobjdump) or a label (nvdisasm).
#[derive(Debug)]
enum Target {
    Offset(u64),
    Label(String),
}

#[derive(Debug, Default)]
pub(crate) struct Func {
    pub(crate) name: String,
    pub(crate) ins: Vec<Ins>,
    /// Unresolved label targets, by index into `ins`.
    label_refs: Vec<(usize, String)>,
    labels: HashMap<String, u64>,
    /// Labels seen since the last instruction: they name the next one.
    pending: Vec<String>,
}

impl Func {
    fn new(name: &str) -> Self {
        Func {
            name: name.to_owned(),
            ..Func::default()
        }
    }

    /// Resolves the label targets; labels after the last instruction name the end.
    fn finish(mut self) -> Result<Self, SassError> {
        let end = self.ins.last().map_or(0, |i| i.offset.saturating_add(1));
        for l in self.pending.drain(..) {
            self.labels.insert(l, end);
        }
        for (i, label) in std::mem::take(&mut self.label_refs) {
            let ins = &mut self.ins[i];
            ins.target = Some(
                *self
                    .labels
                    .get(&label)
                    .ok_or_else(|| SassError::Malformed {
                        line: ins.line,
                        reason: format!("branch to the undefined label `{label}`"),
                        text: format!("{} `({label})", ins.opcode),
                    })?,
            );
        }
        Ok(self)
    }
}

fn malformed(line: usize, text: &str, reason: impl Into<String>) -> SassError {
    SassError::Malformed {
        line,
        reason: reason.into(),
        text: text.trim().to_owned(),
    }
}

/// Parses the target operand of a direct branch: the last operand, `0x<hex>` or
/// `` `(<label>) `` (a bare `.label` is accepted too).
fn parse_target(operands: &str) -> Option<Target> {
    let last = operands.rsplit(',').next()?.trim();
    if let Some(hex) = last.strip_prefix("0x") {
        return u64::from_str_radix(hex, 16).ok().map(Target::Offset);
    }
    // nvdisasm writes `` `(.L_x_3) ``; a bare `.L_x_3` is accepted too
    let label = last
        .strip_prefix("`(")
        .and_then(|l| l.strip_suffix(')'))
        .unwrap_or(last);
    let ok = label.len() > 1
        && label.starts_with('.')
        && label
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '$'));
    ok.then(|| Target::Label(label.to_owned()))
}

/// The first whitespace-separated word of `s` and the trimmed rest.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim();
    match s.split_once(char::is_whitespace) {
        Some((w, rest)) => (w, rest.trim()),
        None => (s, ""),
    }
}

/// Splits SASS text into functions of parsed instructions.
pub(crate) fn parse_functions(text: &str) -> Result<Vec<Func>, SassError> {
    let mut funcs: Vec<Func> = Vec::new();
    // `None` while inside a non-code section of nvdisasm output.
    let mut cur: Option<Func> = Some(Func::new(""));
    for (n, raw) in text.lines().enumerate() {
        let line = n + 1;
        let t = raw.trim();
        // function headers: `Function : name` (cuobjdump), `.section .text.name,...` (nvdisasm)
        if let Some(name) = t.strip_prefix("Function :") {
            funcs.extend(cur.take().map(Func::finish).transpose()?);
            cur = Some(Func::new(name.trim()));
            continue;
        }
        // (not `.sectionflags` / `.sectioninfo`, which follow `.section`)
        if let (".section", sec) = split_word(t) {
            funcs.extend(cur.take().map(Func::finish).transpose()?);
            let sec = sec.split(',').next().unwrap_or_default();
            cur = sec.strip_prefix(".text.").map(Func::new);
            continue;
        }
        let Some(f) = cur.as_mut() else { continue };
        if let Some(rest) = t.strip_prefix("/*") {
            let Some((addr, ins)) = rest.split_once("*/") else {
                // a wrapped encoding comment never starts a line with `/*` without `*/`
                return Err(malformed(line, raw, "unterminated offset comment"));
            };
            let ins = ins.trim();
            // encoding-only lines (`/* 0x000fe2... */`) and data directives (`.byte`)
            if addr.trim().starts_with("0x") || ins.is_empty() || ins.starts_with('.') {
                continue;
            }
            let offset = u64::from_str_radix(addr.trim(), 16)
                .map_err(|_| malformed(line, raw, "the offset is not hexadecimal"))?;
            let Some((body, _)) = ins.split_once(';') else {
                return Err(malformed(
                    line,
                    raw,
                    "the instruction has no terminating `;`",
                ));
            };
            // `[@pred] OPCODE operands`
            let (mut op, mut operands) = split_word(body);
            let mut predicated = false;
            let mut guard = None;
            if let Some(p) = op.strip_prefix('@') {
                predicated = p != "PT";
                guard = predicated.then(|| p.to_owned());
                (op, operands) = split_word(operands);
            }
            if op.is_empty() {
                return Err(malformed(line, raw, "no opcode"));
            }
            if !op.starts_with(|c: char| c.is_ascii_uppercase())
                || !op
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_'))
            {
                return Err(malformed(line, raw, format!("`{op}` is not an opcode")));
            }
            if let Some(prev) = f.ins.last() {
                if offset <= prev.offset {
                    return Err(malformed(
                        line,
                        raw,
                        format!(
                            "offset {offset:#x} does not follow {:#x} of the same function",
                            prev.offset
                        ),
                    ));
                }
            }
            let base = op.split('.').next().unwrap_or(op);
            let mut target = None;
            if matches!(base, "BRA" | "JMP") {
                // a predicate operand (`BRA P2, 0x950`, `BRA !P2, ...`) guards it too
                if operands.contains(',') {
                    predicated = true;
                }
                match parse_target(operands) {
                    Some(Target::Offset(o)) => target = Some(o),
                    Some(Target::Label(l)) => f.label_refs.push((f.ins.len(), l)),
                    None => {
                        return Err(malformed(
                            line,
                            raw,
                            format!("cannot read the target of `{op} {operands}`"),
                        ))
                    }
                }
            }
            for l in f.pending.drain(..) {
                f.labels.insert(l, offset);
            }
            f.ins.push(Ins {
                offset,
                opcode: op.to_owned(),
                operands: operands.to_owned(),
                guard,
                predicated,
                target,
                line,
            });
        } else if let Some(label) = t.strip_suffix(':') {
            if !label.is_empty() && !label.contains(char::is_whitespace) {
                f.pending.push(label.to_owned());
            }
        }
    }
    funcs.extend(cur.take().map(Func::finish).transpose()?);
    funcs.retain(|f| !f.ins.is_empty());
    if funcs.is_empty() {
        return Err(SassError::NoInstructions);
    }
    Ok(funcs)
}

/// The loop bodies of `f` as index ranges `first..=last` into `f.ins`, with the back edge.
fn loop_bodies(f: &Func) -> Result<Vec<(std::ops::RangeInclusive<usize>, &Ins)>, SassError> {
    let mut out = Vec::new();
    for (i, b) in f.ins.iter().enumerate() {
        let Some(target) = b.target else { continue };
        if target > b.offset {
            continue;
        }
        let first = f
            .ins
            .binary_search_by_key(&target, |x| x.offset)
            .map_err(|_| SassError::Malformed {
                line: b.line,
                reason: format!(
                    "backward branch to {target:#x}, which is not an instruction offset of `{}`",
                    f.name
                ),
                text: format!("{} {target:#x}", b.opcode),
            })?;
        out.push((first..=i, b));
    }
    Ok(out)
}

/// The loops of SASS text from [`sass`] (cuobjdump) or nvdisasm: one [`SassLoop`] per
/// backward direct branch (`BRA`, `BRA.U`, `BRA.DIV`, `JMP`, guarded or not, target given
/// as an offset or an nvdisasm label), in text order. Indirect branches (`BRX`), calls and
/// `BSSY` reconvergence targets are not loops.
///
/// Errors (never panics) when the text holds no instruction, an instruction line cannot be
/// read, offsets of a function do not increase, or a branch target is unreadable / undefined.
///
/// ```
/// use attnforge_runtime::{opcode_count_in_loops, sass_loops};
/// let text = "
///         /*0000*/                   MOV R2, RZ ;
///         /*0010*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
///         /*0020*/                   IADD3 R2, R2, 0x1, RZ ;
///         /*0030*/                   ISETP.GE.AND P0, PT, R2, 0x4, PT ;
///         /*0040*/              @!P0 BRA 0x10 ;
///         /*0050*/                   HMMA.16816.F32 R4, R8, R12, R4 ;
///         /*0060*/                   EXIT ;
/// ";
/// let loops = sass_loops(text)?;
/// assert_eq!(loops.len(), 1);
/// assert_eq!((loops[0].start, loops[0].end, loops[0].instructions), (0x10, 0x40, 4));
/// assert!(loops[0].predicated);
/// assert_eq!(loops[0].count("HMMA"), 1);
/// assert_eq!(opcode_count_in_loops(text, "HMMA")?, 1); // the HMMA after the loop is not
/// assert!(sass_loops("not SASS at all").is_err());
/// # Ok::<(), attnforge_runtime::SassError>(())
/// ```
pub fn sass_loops(text: &str) -> Result<Vec<SassLoop>, SassError> {
    let mut out = Vec::new();
    for f in parse_functions(text)? {
        for (range, b) in loop_bodies(&f)? {
            let body = &f.ins[range];
            let mut opcodes = BTreeMap::new();
            for i in body {
                *opcodes.entry(i.opcode.clone()).or_insert(0) += 1;
            }
            out.push(SassLoop {
                function: f.name.clone(),
                start: body[0].offset,
                end: b.offset,
                predicated: b.predicated,
                instructions: body.len(),
                opcodes,
            });
        }
    }
    Ok(out)
}

/// Number of instructions with opcode `opcode` (or `opcode.<modifiers>`, as
/// [`sass_opcode_count`]) that lie inside at least one loop of [`sass_loops`]: each
/// instruction counts once however many loops (nested, or one loop with several back edges)
/// contain it. Errors as [`sass_loops`].
///
/// ```
/// use attnforge_runtime::opcode_count_in_loops;
/// // an inner loop 0x10..=0x20 inside an outer loop 0x00..=0x30: HMMA counted once
/// let text = "/*0000*/ MOV R0, RZ ;\n/*0010*/ HMMA.16816.F32 R4, R8, R12, R4 ;\n\
///             /*0020*/ @P0 BRA 0x10 ;\n/*0030*/ @P1 BRA 0x0 ;\n/*0040*/ EXIT ;\n";
/// assert_eq!(opcode_count_in_loops(text, "HMMA")?, 1);
/// # Ok::<(), attnforge_runtime::SassError>(())
/// ```
pub fn opcode_count_in_loops(text: &str, opcode: &str) -> Result<usize, SassError> {
    let mut n = 0;
    for f in parse_functions(text)? {
        let mut inside = vec![false; f.ins.len()];
        for (range, _) in loop_bodies(&f)? {
            inside[range].iter_mut().for_each(|x| *x = true);
        }
        n += f
            .ins
            .iter()
            .zip(&inside)
            .filter(|(i, &ins)| ins && opcode_matches(&i.opcode, opcode))
            .count();
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_opcodes_with_modifiers_and_predicates() {
        let text = "        /*00d0*/                   HMMA.16816.F32 R8, R8, R6, RZ ;  /* 0x0 */\n\
                    \x20       /*00e0*/              @P0 HMMA.16816.F32 R8, R8, R6, R8 ;\n\
                    \x20       /*00f0*/                   HMMAX R1 ;\n\
                    \x20                                                   /* 0x000fe20000000800 */\n\
                    \t\tFunction : HMMA\n";
        assert_eq!(sass_opcode_count(text, "HMMA"), 2);
        assert_eq!(sass_opcode_count(text, "HGMMA"), 0);
    }

    /// SASS lines in cuobjdump layout (offset comment, instruction, encoding comment).
    fn cuobjdump(lines: &[(u64, &str)]) -> String {
        let mut s = String::from(
            "\n\tcode for sm_80\n\t\tFunction : k\n\t.headerflags\t@\"EF_CUDA_SM80\"\n",
        );
        for (off, ins) in lines {
            s.push_str(&format!(
                "        /*{off:04x}*/                   {ins} ;   /* 0x000fe20000000800 */\n\
                 \x20                                                          /* 0x000fe20000000800 */\n"
            ));
        }
        s
    }

    const MMA: &str = "HMMA.16816.F32 R8, R12, R16, R8";

    #[test]
    fn no_loop() {
        let t = cuobjdump(&[
            (0x00, "MOV R1, c[0x0][0x28]"),
            (0x10, MMA),
            (0x20, "@P0 BRA 0x40"),
            (0x30, MMA),
            (0x40, "EXIT"),
        ]);
        assert_eq!(sass_loops(&t).unwrap(), vec![]);
        assert_eq!(opcode_count_in_loops(&t, "HMMA").unwrap(), 0);
        assert_eq!(sass_opcode_count(&t, "HMMA"), 2);
    }

    #[test]
    fn one_loop() {
        let t = cuobjdump(&[
            (0x00, "MOV R2, RZ"),
            (0x10, MMA),
            (0x20, MMA),
            (0x30, "IADD3 R2, R2, 0x1, RZ"),
            (0x40, "ISETP.GE.AND P0, PT, R2, 0x4, PT"),
            (0x50, "@!P0 BRA 0x10"),
            (0x60, "EXIT"),
        ]);
        let l = sass_loops(&t).unwrap();
        assert_eq!(l.len(), 1);
        assert_eq!(l[0].function, "k");
        assert_eq!((l[0].start, l[0].end, l[0].instructions), (0x10, 0x50, 5));
        assert!(l[0].predicated);
        assert_eq!(l[0].count("HMMA"), 2);
        assert_eq!(l[0].count("BRA"), 1);
        assert_eq!(l[0].opcodes.get("HMMA.16816.F32"), Some(&2));
        assert_eq!(opcode_count_in_loops(&t, "HMMA").unwrap(), 2);
        assert_eq!(opcode_count_in_loops(&t, "EXIT").unwrap(), 0);
    }

    #[test]
    fn nested_loops_count_each_instruction_once() {
        let t = cuobjdump(&[
            (0x00, "MOV R2, RZ"),
            (0x10, MMA), // outer head
            (0x20, MMA), // inner head
            (0x30, "@P1 BRA 0x20"),
            (0x40, MMA),
            (0x50, "@P2 BRA 0x10"),
            (0x60, MMA),
            (0x70, "EXIT"),
        ]);
        let l = sass_loops(&t).unwrap();
        assert_eq!(l.len(), 2);
        let (inner, outer) = (&l[0], &l[1]);
        assert_eq!((inner.start, inner.end), (0x20, 0x30));
        assert_eq!((outer.start, outer.end), (0x10, 0x50));
        assert!(outer.contains(inner) && !inner.contains(outer));
        assert_eq!(inner.count("HMMA") + outer.count("HMMA"), 4);
        // union: 0x10, 0x20, 0x40, not 0x60 after the outer loop
        assert_eq!(opcode_count_in_loops(&t, "HMMA").unwrap(), 3);
    }

    #[test]
    fn hmma_only_outside_the_loop_counts_zero() {
        let t = cuobjdump(&[
            (0x00, MMA),
            (0x10, "IADD3 R2, R2, 0x1, RZ"),
            (0x20, "ISETP.GE.AND P0, PT, R2, 0x4, PT"),
            (0x30, "@!P0 BRA 0x10"),
            (0x40, MMA),
            (0x50, "EXIT"),
        ]);
        assert_eq!(sass_loops(&t).unwrap().len(), 1);
        assert_eq!(sass_opcode_count(&t, "HMMA"), 2);
        assert_eq!(opcode_count_in_loops(&t, "HMMA").unwrap(), 0);
    }

    #[test]
    fn predicated_and_conditional_backward_branches() {
        // forms seen in NVRTC 12.9 output: `@P0 BRA`, `@!P3 BRA`, `@!P1 BRA P2, addr`, an
        // unconditional `BRA addr;` (no space before `;`) to itself as trap padding; and
        // `BRA.U` / `BRA.DIV` of other compilers
        let t = cuobjdump(&[
            (0x00, MMA),
            (0x10, "@P0 BRA 0x0"),
            (0x20, MMA),
            (0x30, "@!P1 BRA P2, 0x20"),
            (0x40, MMA),
            (0x50, "BRA.U !UP0, 0x40"),
            (0x60, MMA),
            (0x70, "@P3 BRA.DIV UR4, 0x60"),
            (0x80, MMA),
            (0x90, "@PT BRA 0x80"),
            (0xa0, "EXIT"),
        ])
            + "        /*00b0*/                   BRA 0xb0;        /* 0xfffffff000007947 */\n";
        let l = sass_loops(&t).unwrap();
        let got: Vec<_> = l.iter().map(|l| (l.start, l.end, l.predicated)).collect();
        assert_eq!(
            got,
            vec![
                (0x00, 0x10, true),
                (0x20, 0x30, true),
                (0x40, 0x50, true),
                (0x60, 0x70, true),
                (0x80, 0x90, false),
                (0xb0, 0xb0, false),
            ]
        );
        assert_eq!(opcode_count_in_loops(&t, "HMMA").unwrap(), 5);
    }

    #[test]
    fn nvdisasm_labels_and_several_functions() {
        let t = "\t.section\t.nv.info.k,\"\",@\"SHT_CUDA_INFO\"\n\
                 .L_0:\n\
                 \x20       /*0000*/ \t.byte\t0x04, 0x2f\n\
                 //--------------------- .text.k --------------------------\n\
                 \t.section\t.text.k,\"ax\",@progbits\n\
                 \t.sectionflags\t@\"SHF_BARRIERS=1\"\n\
                 \t.sectioninfo\t@\"SHI_REGISTERS=139\"\n\
                 k:\n\
                 .text.k:\n\
                 \x20       /*0000*/                   MOV R2, RZ ;\n\
                 .L_x_0:\n\
                 \x20       /*0010*/                   HMMA.16816.F32.BF16 R4, R8, R12, R4 ;\n\
                 \x20       /*0020*/              @!P0 BRA `(.L_x_0) ;\n\
                 \x20       /*0030*/                   BRA `(.L_x_1) ;\n\
                 .L_x_1:\n\
                 \x20       /*0040*/                   EXIT ;\n\
                 \t.section\t.text.j,\"ax\",@progbits\n\
                 \x20       /*0000*/                   HMMA.16816.F32 R4, R8, R12, R4 ;\n\
                 \x20       /*0010*/               @P0 BRA 0x0 ;\n\
                 \x20       /*0020*/                   EXIT ;\n\
                 .L_x_9:\n";
        let l = sass_loops(t).unwrap();
        let got: Vec<_> = l
            .iter()
            .map(|l| (l.function.as_str(), l.start, l.end))
            .collect();
        assert_eq!(got, vec![("k", 0x10, 0x20), ("j", 0x0, 0x10)]);
        assert_eq!(opcode_count_in_loops(t, "HMMA").unwrap(), 2);
    }

    #[test]
    fn unparseable_text_is_an_error_not_a_panic() {
        let bad = |t: &str| {
            let e = sass_loops(t).unwrap_err();
            assert_eq!(opcode_count_in_loops(t, "HMMA").unwrap_err(), e);
            e
        };
        assert_eq!(bad(""), SassError::NoInstructions);
        assert_eq!(bad("hello\nworld:\n"), SassError::NoInstructions);
        assert_eq!(bad("/*0000*/ .byte 0x1, 0x2\n"), SassError::NoInstructions);
        for t in [
            "/*00zz*/ MOV R1, RZ ;",                  // offset not hex
            "/*0000 MOV R1, RZ ;",                    // unterminated comment
            "/*0000*/ MOV R1, RZ",                    // no `;`
            "/*0000*/ @P0 ;",                         // predicate without opcode
            "/*0000*/ mov r1, rz ;",                  // not an opcode
            "/*0000*/ BRA ;",                         // no target
            "/*0000*/ BRA 0xq0 ;",                    // bad hex target
            "/*0000*/ BRA `(.L_x_7) ;",               // undefined label
            "/*0010*/ NOP ;\n/*0010*/ NOP ;",         // offsets do not increase
            "/*0000*/ NOP ;\n/*0010*/ @P0 BRA 0x8 ;", // target between instructions
        ] {
            assert!(
                matches!(bad(t), SassError::Malformed { line: 1 | 2, .. }),
                "{t}"
            );
        }
        let msg = bad("/*0000*/ BRA ;").to_string();
        assert!(msg.contains("line 1") && msg.contains("BRA"), "{msg}");
    }

    proptest::proptest! {
        /// Arbitrary text, and SASS-like lines mixed from real fragments, give a result or an
        /// error, never a panic; every loop lies inside its function's offsets.
        #[test]
        fn never_panics(
            junk in ".{0,200}",
            lines in proptest::collection::vec(
                (0u64..0x100, proptest::sample::select(vec![
                    "NOP ;", "@P0 BRA 0x10 ;", "BRA `(.L_x_1) ;", ".L_x_1:", "HMMA.16816.F32 R0, R2, R4, R0 ;",
                    "@!P1 BRA P2, 0x0 ;", "BRA.DIV UR4, 0x20 ;", "EXIT", "BRA ;", "@ ;", "Function : f",
                ])),
                0..12,
            ),
        ) {
            let _ = sass_loops(&junk);
            let _ = opcode_count_in_loops(&junk, "HMMA");
            let t: String = lines
                .iter()
                .map(|(o, l)| if l.ends_with(':') || l.starts_with('F') {
                    format!("{l}\n")
                } else {
                    format!("/*{:04x}*/ {l}\n", o * 16)
                })
                .collect();
            if let Ok(loops) = sass_loops(&t) {
                for l in &loops {
                    proptest::prop_assert!(l.start <= l.end && l.instructions >= 1);
                    proptest::prop_assert!(l.count("HMMA") <= l.instructions);
                }
                let n = opcode_count_in_loops(&t, "HMMA").unwrap();
                proptest::prop_assert!(n <= sass_opcode_count(&t, "HMMA"));
            }
        }
    }

    #[test]
    fn empty_cubin_is_an_error_not_a_tool_run() {
        let tc = Toolchain {
            root: "/none".into(),
            nvrtc_lib: "/none".into(),
            include_dir: "/none".into(),
            ptxas: "/none".into(),
            cuobjdump: None,
            nvdisasm: None,
        };
        assert!(matches!(sass_with(&tc, &[]), Err(ToolError::Failed { .. })));
        assert!(matches!(
            sass_with(&tc, &[1, 2, 3]),
            Err(ToolError::NotInstalled { .. })
        ));
    }
}
