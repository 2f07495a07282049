//! The crate's error type.

use attnforge_reference::RefError;

use crate::comm::CommError;

/// An error of a context-parallel run or plan.
#[derive(Debug, thiserror::Error)]
pub enum CpError {
    /// A communicator failed (names the rank and operation).
    #[error(transparent)]
    Comm(#[from] CommError),
    /// The reference (or a step engine built on it) rejected its input.
    #[error(transparent)]
    Reference(#[from] RefError),
    /// A bad argument of this crate.
    #[error("{field} = {value}: {fix}")]
    Invalid {
        /// The argument or field.
        field: &'static str,
        /// Its value.
        value: String,
        /// How to fix it.
        fix: &'static str,
    },
}

pub(crate) fn invalid(field: &'static str, value: impl ToString, fix: &'static str) -> CpError {
    CpError::Invalid {
        field,
        value: value.to_string(),
        fix,
    }
}
