//! A spec file of either kind (static kernel or data-dependent pipeline), told apart by a
//! top-level `family` key.

use std::path::Path;

use super::{DynSpecFile, SpecFile, SpecFileError, SpecFileErrors};

/// A spec file of either kind: a static kernel ([`SpecFile`]) or a data-dependent
/// pipeline ([`DynSpecFile`]). A file with a top-level `family` key is dynamic.
#[derive(Clone, Debug)]
pub enum AnySpecFile {
    /// Dense, masks, block-sparse, LM-Infinite: one `KernelSpec`.
    Static(Box<SpecFile>),
    /// Landmark, HAX, CCA, top-k, lse merge: one `DynamicSpec`.
    Dynamic(DynSpecFile),
}

impl AnySpecFile {
    /// Read and parse a spec file of either kind.
    pub fn load(path: &Path) -> Result<AnySpecFile, SpecFileErrors> {
        let text = std::fs::read_to_string(path).map_err(|e| SpecFileError {
            file: path.display().to_string(),
            field: "-".into(),
            message: format!("cannot read the spec file: {e}"),
            fix: "give the path of an existing TOML spec file or a catalog name (`attnforge list`)"
                .into(),
        })?;
        Self::parse(&text, Some(path))
    }

    /// Parse spec-file text of either kind.
    pub fn parse(text: &str, path: Option<&Path>) -> Result<AnySpecFile, SpecFileErrors> {
        if is_dynamic_text(text) {
            DynSpecFile::parse(text, path).map(AnySpecFile::Dynamic)
        } else {
            SpecFile::parse(text, path)
                .map(|s| AnySpecFile::Static(Box::new(s)))
                .map_err(SpecFileErrors::from)
        }
    }

    /// The canonical name (the CUDA symbol of a static kernel without its tile suffix; the
    /// pipeline name of a dynamic spec).
    pub fn canonical_name(&self) -> String {
        match self {
            AnySpecFile::Static(s) => s.spec.canonical_name(),
            AnySpecFile::Dynamic(d) => d.spec.canonical_name(),
        }
    }
}

/// Whether spec-file text declares a data-dependent family (a top-level `family` key).
pub(crate) fn is_dynamic_text(text: &str) -> bool {
    toml::from_str::<toml::Table>(text).is_ok_and(|t| t.contains_key("family"))
}
