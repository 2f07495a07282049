//! SASS disassembly of a CUBIN with the toolchain's `cuobjdump -sass` (or `nvdisasm`), to
//! check the instruction mix (HMMA for `mma.sync`, HGMMA for `wgmma`) without a GPU.
//!
//! ```no_run
//! use attnforge_kernels::{compile, sass, sass_opcode_count, Arch};
//! let c = compile(r#"extern "C" __global__ void k(float* o) { o[0] = 1.0f; }"#, "k", Arch::Sm90)?;
//! let text = sass(c.cubin.as_deref().unwrap_or_default())?;
//! assert_eq!(sass_opcode_count(&text, "HMMA"), 0);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

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
        .filter(|op| *op == opcode || op.strip_prefix(opcode).is_some_and(|r| r.starts_with('.')))
        .count()
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
