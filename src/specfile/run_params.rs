//! The runtime parameters of a loaded static spec file: document ids, block lists, user
//! values and the host twins of its user functions (for the reference).

use std::collections::BTreeMap;
use std::sync::Arc;

use attnforge_dsl::eval::Value;
use attnforge_runtime::codegen::spec::Mask;
use attnforge_runtime::exec::{RunParams, UserValue};

use super::{DocSource, HostFn, SpecFile, SpecFileError};

impl SpecFile {
    /// Runtime parameters for a problem with `batch` and `seq_k` (document ids are checked
    /// against `seq_k`; `doc_override` replaces the file's ids, e.g. `attnforge run --doc`).
    pub fn run_params(
        &self,
        seq_k: usize,
        doc_override: Option<Vec<i32>>,
    ) -> Result<RunParams, SpecFileError> {
        let mut rp = RunParams {
            mask: Some(self.mask_params.clone()),
            softcap: self.softcap,
            alibi_slopes: self.alibi_slopes.clone(),
            block_lists: self.block_lists.clone(),
            user: self.user.clone(),
            ..RunParams::default()
        };
        let doc = match (doc_override, &self.doc) {
            (Some(d), _) => Some(d),
            (None, Some(DocSource::Ids(d))) => Some(d.clone()),
            (None, Some(DocSource::Segments(s))) => {
                let total = s.iter().try_fold(0usize, |t, &n| t.checked_add(n));
                if total != Some(seq_k) {
                    let total = total.map_or("more than 2^64".into(), |t| t.to_string());
                    return Err(self.error(
                        "params.doc_segments",
                        format!("segments sum to {total} but the key length is {seq_k}"),
                        "make the segment lengths sum to seq_k",
                    ));
                }
                Some(
                    s.iter()
                        .enumerate()
                        .flat_map(|(i, n)| std::iter::repeat_n(i as i32, *n))
                        .collect(),
                )
            }
            (None, Some(DocSource::File(f))) => Some(crate::npy::read_i32(f).map_err(|e| {
                self.error(
                    "params.doc_file",
                    e.to_string(),
                    "give an .npy file of int32 ids",
                )
            })?),
            (None, None) => None,
        };
        if self.spec.mask.reads_doc() && doc.is_none() {
            return Err(self.error(
                "params.doc",
                format!("mask `{}` needs per-token document ids", self.spec.mask.tag()),
                "add `doc_segments = [..]`, `doc = [..]` or `doc_file = \"ids.npy\"` to [params] (or pass --doc)",
            ));
        }
        if matches!(self.spec.mask, Mask::BlockSparse { .. }) && self.block_lists.is_none() {
            return Err(self.error(
                "params.block_lists",
                "mask `block_sparse` needs explicit block lists and the spec file has none".into(),
                "add a [params.block_lists] table (batches, heads, rows, cols, width, full_num, full_idx, partial_num, partial_idx; see examples/specs/block_sparse.toml and docs/spec-files.md)",
            ));
        }
        rp.doc = doc;
        let user = self.user.clone();
        if let Some(h) = &self.host_mask {
            let vals = host_values(h, &user).map_err(|m| {
                self.error(
                    "params.user",
                    m,
                    "give every parameter of the mask function in [params.user]",
                )
            })?;
            let (f, name, fault) = (h.eval.clone(), h.name.clone(), h.fault.clone());
            rp.host_mask = Some(Arc::new(move |b, hh, q, kv| {
                if fault.get().is_some() {
                    return false;
                }
                f.mask(b, hh, q, kv, &vals).unwrap_or_else(|e| {
                    let _ = fault.set(format!(
                        "user mask function `{name}` failed at b = {b}, h = {hh}, q = {q}, kv = {kv}: {e}"
                    ));
                    false
                })
            }));
        }
        if let Some(h) = &self.host_score {
            let vals = host_values(h, &user).map_err(|m| {
                self.error(
                    "params.user",
                    m,
                    "give every parameter of the score function in [params.user]",
                )
            })?;
            let (f, name, fault) = (h.eval.clone(), h.name.clone(), h.fault.clone());
            rp.host_score = Some(Arc::new(move |s, b, hh, q, kv| {
                if fault.get().is_some() {
                    return f64::NAN;
                }
                f.score(s, b, hh, q, kv, &vals).map_or_else(
                    |e| {
                        let _ = fault.set(format!(
                            "user score function `{name}` failed at score = {s}, b = {b}, h = {hh}, q = {q}, kv = {kv}: {e}"
                        ));
                        f64::NAN
                    },
                    f64::from,
                )
            }));
        }
        Ok(rp)
    }

    /// The first evaluation error of a user function (given as source) in the closures of
    /// [`SpecFile::run_params`]: any result computed after it is meaningless.
    pub fn user_fn_failure(&self) -> Option<SpecFileError> {
        [
            (&self.host_mask, "mask.function.source"),
            (&self.host_score, "score.function.source"),
        ]
        .into_iter()
        .find_map(|(h, field)| {
            let msg = h.as_ref()?.fault.get()?;
            Some(self.error(
                field,
                msg.clone(),
                "guard the operation in the function (`if d == 0 { .. }`; keep indices \
                     below the array's length) or change the values in [params.user] \
                     (docs/dsl.md, \"User-function semantics\")",
            ))
        })
    }
}

fn host_values(h: &HostFn, user: &BTreeMap<String, UserValue>) -> Result<Vec<Value>, String> {
    h.params
        .iter()
        .map(|(n, _)| {
            Ok(match user.get(n) {
                Some(UserValue::Int(i)) => Value::Int(i64::from(*i)),
                Some(UserValue::Float(f)) => Value::Float(*f),
                Some(UserValue::Ints(a)) => Value::Ints(a.clone()),
                Some(UserValue::Floats(a)) => Value::Floats(a.clone()),
                None => return Err(format!("missing value of user parameter `{n}`")),
            })
        })
        .collect()
}
