//! Errors of spec files: one error names the file, the field, what is wrong and the fix;
//! a dynamic spec file reports all of its errors at once.

use std::fmt;

/// An error in a spec file: which file, which field, what is wrong and how to fix it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecFileError {
    /// The file (or `<catalog>` / `<input>`).
    pub file: String,
    /// Dotted field path (`params.window_left`, `mask.function.source`), or `toml` for
    /// syntax errors.
    pub field: String,
    /// What is wrong (with line/column where known).
    pub message: String,
    /// How to fix it.
    pub fix: String,
}

impl fmt::Display for SpecFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}: field `{}`: {}\n  fix: {}",
            self.file, self.field, self.message, self.fix
        )
    }
}

impl std::error::Error for SpecFileError {}

/// Every error of a spec file at once (data-dependent families report all of them; a static
/// spec reports its first).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SpecFileErrors(pub Vec<SpecFileError>);

impl fmt::Display for SpecFileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.len() > 1 {
            writeln!(f, "{} errors:", self.0.len())?;
        }
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for SpecFileErrors {}

impl From<SpecFileError> for SpecFileErrors {
    fn from(e: SpecFileError) -> Self {
        SpecFileErrors(vec![e])
    }
}

/// An error before its file is known: (field, message, fix). The loaders add the file.
pub(crate) type FieldErr = (String, String, String);

/// A [`FieldErr`] from its three parts.
pub(crate) fn field_err(
    field: impl Into<String>,
    message: impl Into<String>,
    fix: impl Into<String>,
) -> FieldErr {
    (field.into(), message.into(), fix.into())
}
