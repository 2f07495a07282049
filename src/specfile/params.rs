//! The `[params]` table of a static spec file against the tables: the mask parameters of
//! the mask table, the user parameters of the spec's user functions, and the user functions
//! themselves (Rust-subset source translated by `attnforge-dsl`).

use std::collections::BTreeMap;
use std::sync::Arc;

use attnforge_dsl::{FnKind, ParamKind};
use attnforge_runtime::codegen::check::MaskParams;
use attnforge_runtime::codegen::masks::{self, ParamType, MASKS};
use attnforge_runtime::codegen::spec::{
    KernelSpec, Mask, UserFunction, UserParam, UserParamKind, UserSource,
};
use attnforge_runtime::exec::UserValue;

use super::error::FieldErr;
use super::raw::ParamsRaw;
use super::{default_seq, HostFn};

pub(crate) fn user_fn(
    src: &str,
    kind: FnKind,
    field: &str,
) -> Result<(UserFunction, HostFn), FieldErr> {
    let (def, eval) = attnforge_dsl::eval::translate_and_compile(src, kind).map_err(|errs| {
        (
            field.to_string(),
            errs.iter()
                .map(|e| format!("line {}, column {}: {}", e.line, e.column, e.message))
                .collect::<Vec<_>>()
                .join("; "),
            "write the function in the supported Rust subset (docs/spec-files.md)".to_string(),
        )
    })?;
    let mut params = Vec::new();
    for p in &def.params {
        if ["b", "h", "q_pos", "kv_pos", "score"].contains(&p.name.as_str()) {
            return Err((
                field.into(),
                format!(
                    "user parameter `{}` collides with an argument of the device function",
                    p.name
                ),
                "rename it (b, h, q_pos, kv_pos and score are taken)".into(),
            ));
        }
        let k = match p.kind {
            ParamKind::U32 => UserParamKind::U32,
            ParamKind::I32 => UserParamKind::I32,
            ParamKind::F32 => UserParamKind::F32,
            ParamKind::Bool => UserParamKind::Bool,
            ParamKind::SliceU32 => UserParamKind::ArrayU32,
            ParamKind::SliceI32 => UserParamKind::ArrayI32,
            ParamKind::SliceF32 => UserParamKind::ArrayF32,
            ParamKind::I64 | ParamKind::U64 => {
                return Err((
                    field.into(),
                    format!(
                        "user parameter `{}` has type {}: kernels take 32-bit scalars only",
                        p.name,
                        p.kind.rust_type()
                    ),
                    "declare it as i32 or u32 (positions may stay i64)".into(),
                ))
            }
        };
        params.push(UserParam {
            name: p.name.clone(),
            kind: k,
        });
    }
    let host = HostFn {
        name: def.name.clone(),
        params: def
            .params
            .iter()
            .map(|p| (p.name.clone(), p.kind))
            .collect(),
        eval,
        fault: Arc::default(),
    };
    Ok((
        UserFunction {
            name: def.name,
            source: UserSource::Function(def.cuda),
            params,
            grad: None,
        },
        host,
    ))
}

/// Splits `[params]` into the mask parameters (any parameter name of the mask table, a
/// number) and the other keys (checked by serde, unknown keys rejected).
pub(crate) fn split_params(
    table: toml::Table,
) -> Result<(ParamsRaw, BTreeMap<String, f64>), FieldErr> {
    let names = masks::all_param_names();
    let mut values = BTreeMap::new();
    let mut rest = toml::Table::new();
    for (k, v) in table {
        if !names.contains(&k.as_str()) {
            rest.insert(k, v);
            continue;
        }
        let float_ok = MASKS
            .iter()
            .flat_map(|d| d.params)
            .any(|p| p.name == k && p.ty == ParamType::Float);
        let n = match &v {
            toml::Value::Integer(i) => *i as f64,
            toml::Value::Float(f) if float_ok => *f,
            _ => {
                return Err((
                    format!("params.{k}"),
                    format!(
                        "`{k}` must be {}: got {v}",
                        if float_ok { "a number" } else { "an integer" }
                    ),
                    format!(
                        "give `{k} = <{}>`",
                        if float_ok { "number" } else { "integer" }
                    ),
                ))
            }
        };
        values.insert(k, n);
    }
    let one = |t: toml::Table| toml::Value::Table(t).try_into::<ParamsRaw>();
    let p = one(rest.clone()).map_err(|e| {
        let msg = e.message().to_string();
        // The key at fault: named by serde (unknown field), else the first that fails alone.
        let field = msg
            .find("unknown field `")
            .and_then(|i| msg[i + 15..].split('`').next().map(str::to_string))
            .or_else(|| {
                rest.iter()
                    .find(|(k, v)| {
                        let mut t = toml::Table::new();
                        t.insert((*k).clone(), (*v).clone());
                        one(t).is_err()
                    })
                    .map(|(k, _)| format!("params.{k}"))
            })
            .unwrap_or_else(|| "params".into());
        (
            field,
            msg.replace('\n', " ").trim().to_string(),
            "see docs/spec-files.md for the fields and their types".to_string(),
        )
    })?;
    Ok((p, values))
}

/// The mask parameters of `[params]` against the mask table: each given one must be a
/// parameter of the spec's mask, each required one given (optional ones take their
/// default).
pub(crate) fn mask_params(
    mask: &Mask,
    given: &BTreeMap<String, f64>,
) -> Result<MaskParams, FieldErr> {
    let tag = mask.tag();
    let params = mask.def().map_or(&[][..], |d| d.params);
    let list = mask.def().map(|d| d.param_list()).unwrap_or_default();
    if let Some(n) = given.keys().find(|n| !params.iter().any(|p| &p.name == n)) {
        return Err((
            format!("params.{n}"),
            format!("`{n}` is not a parameter of mask `{tag}`"),
            if params.is_empty() {
                "remove it".to_string()
            } else {
                format!("remove it; mask `{tag}` takes {list}")
            },
        ));
    }
    let mut out = MaskParams::new();
    for p in params {
        match given.get(p.name) {
            Some(v) => out.set(p.name, *v),
            None if p.optional => out.set(p.name, p.default.at(default_seq())),
            None => {
                return Err((
                    format!("params.{}", p.name),
                    format!("mask `{tag}` needs `{}` ({})", p.name, p.doc),
                    format!(
                        "add `{} = {}` to [params]",
                        p.name,
                        p.default.at(default_seq())
                    ),
                ))
            }
        }
    }
    Ok(out)
}

pub(crate) fn user_values(
    spec: &KernelSpec,
    raw: &BTreeMap<String, toml::Value>,
) -> Result<BTreeMap<String, UserValue>, FieldErr> {
    let declared: Vec<&UserParam> = spec
        .user_functions()
        .iter()
        .flat_map(|(_, f)| f.params.iter())
        .collect();
    let mut out = BTreeMap::new();
    for (name, v) in raw {
        let field = format!("params.user.{name}");
        let Some(p) = declared.iter().find(|p| &p.name == name) else {
            return Err((
                field,
                format!("`{name}` is not a parameter of the spec's user functions"),
                if declared.is_empty() {
                    "remove it (and [params.user] with it): the spec has no user function with parameters, so none are declared".to_string()
                } else {
                    format!(
                        "remove it; declared parameters: {}",
                        declared
                            .iter()
                            .map(|p| p.name.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )
                },
            ));
        };
        let bad = || {
            (
                field.clone(),
                format!("value {v} does not fit the declared type {:?}", p.kind),
                "give an integer, float, bool or array matching the declared type".to_string(),
            )
        };
        let int = |x: &toml::Value| -> Option<i32> {
            match x {
                toml::Value::Integer(i) => i32::try_from(*i).ok(),
                toml::Value::Boolean(b) => Some(i32::from(*b)),
                _ => None,
            }
        };
        let flt = |x: &toml::Value| -> Option<f32> {
            match x {
                toml::Value::Integer(i) => Some(*i as f32),
                toml::Value::Float(f) => Some(*f as f32),
                _ => None,
            }
        };
        let uv = match (p.kind, v) {
            (UserParamKind::I32 | UserParamKind::U32 | UserParamKind::Bool, x) => {
                UserValue::Int(int(x).ok_or_else(bad)?)
            }
            (UserParamKind::F32, x) => UserValue::Float(flt(x).ok_or_else(bad)?),
            (UserParamKind::ArrayI32 | UserParamKind::ArrayU32, toml::Value::Array(a)) => {
                UserValue::Ints(a.iter().map(int).collect::<Option<_>>().ok_or_else(bad)?)
            }
            (UserParamKind::ArrayF32, toml::Value::Array(a)) => {
                UserValue::Floats(a.iter().map(flt).collect::<Option<_>>().ok_or_else(bad)?)
            }
            _ => return Err(bad()),
        };
        out.insert(name.clone(), uv);
    }
    for p in declared {
        if !out.contains_key(&p.name) {
            return Err((
                format!("params.user.{}", p.name),
                format!("missing value of user parameter `{}`", p.name),
                format!("add `{} = ...` under [params.user]", p.name),
            ));
        }
    }
    Ok(out)
}
