//! The kind-specific part of `check`, `run` and `emit`. Each command takes one path for
//! every spec file and reaches what differs between a static kernel ([`SpecFile`]) and a
//! data-dependent pipeline ([`DynSpecFile`]) through [`Variant`] ([`variant`] of an
//! [`AnySpecFile`]).

use attnforge::exec::Backend;
use attnforge::reference::AttnOutput;
use attnforge::specfile::{AnySpecFile, DynSpecFile, Problem, SpecFile};

use super::check::{self, Verdict};
use super::emit::{self, EmitArgs};
use super::run::{self, RunArgs};
use super::{dynamic, CliError};

/// A spec file of either kind, as the commands see it.
pub trait Variant {
    /// Canonical name (static kernels: without the tile suffix).
    fn name(&self) -> String;
    /// The file's path, or the canonical name of a catalog entry (the prefix of messages).
    fn location(&self) -> String;
    /// Element type of q, k, v and the output.
    fn dtype(&self) -> attnforge::codegen::spec::DType;
    /// Head dimension.
    fn head_dim(&self) -> usize;
    /// The `[problem]` table.
    fn problem(&self) -> Problem;
    /// `attnforge check`: its problems (seed: the file's unless given) vs the reference.
    fn check(&self, backend: &Backend, seed: Option<u64>) -> Result<Verdict, CliError>;
    /// `attnforge run`: its output on the command's input files.
    fn run(&self, a: &RunArgs) -> Result<AttnOutput, CliError>;
    /// `attnforge emit` of the spec named `label` on the command line.
    fn emit(&self, label: &str, a: &EmitArgs) -> Result<(), CliError>;
}

/// The [`Variant`] view of a spec file.
pub fn variant(f: &AnySpecFile) -> &dyn Variant {
    match f {
        AnySpecFile::Static(sf) => sf.as_ref(),
        AnySpecFile::Dynamic(df) => df,
    }
}

fn location(path: Option<&std::path::Path>, name: impl FnOnce() -> String) -> String {
    path.map_or_else(name, |p| p.display().to_string())
}

impl Variant for SpecFile {
    fn name(&self) -> String {
        self.spec.canonical_name()
    }
    fn location(&self) -> String {
        location(self.path.as_deref(), || self.name())
    }
    fn dtype(&self) -> attnforge::codegen::spec::DType {
        self.spec.dtype
    }
    fn head_dim(&self) -> usize {
        self.spec.head_dim.get()
    }
    fn problem(&self) -> Problem {
        self.problem
    }
    fn check(&self, backend: &Backend, seed: Option<u64>) -> Result<Verdict, CliError> {
        check::check_static(self, backend, seed.unwrap_or(self.problem.seed))
    }
    fn run(&self, a: &RunArgs) -> Result<AttnOutput, CliError> {
        run::run_static(self, a)
    }
    fn emit(&self, label: &str, a: &EmitArgs) -> Result<(), CliError> {
        emit::emit_static(self, label, a)
    }
}

impl Variant for DynSpecFile {
    fn name(&self) -> String {
        self.spec.canonical_name()
    }
    fn location(&self) -> String {
        location(self.path.as_deref(), || self.name())
    }
    fn dtype(&self) -> attnforge::codegen::spec::DType {
        self.spec.dtype()
    }
    fn head_dim(&self) -> usize {
        self.spec.head_dim().get()
    }
    fn problem(&self) -> Problem {
        self.problem
    }
    fn check(&self, backend: &Backend, seed: Option<u64>) -> Result<Verdict, CliError> {
        dynamic::check_with_extra(self, backend, seed.unwrap_or(self.problem.seed))
    }
    fn run(&self, a: &RunArgs) -> Result<AttnOutput, CliError> {
        run::run_dynamic(self, a)
    }
    fn emit(&self, label: &str, a: &EmitArgs) -> Result<(), CliError> {
        emit::emit_dynamic(self, label, a)
    }
}
