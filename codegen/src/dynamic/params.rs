//! The data-dependent families' parameter tables: one [`Family`] per family with its
//! modes and parameters (name, range, default, meaning, fix). Validation
//! ([`super::validate_dynamic`]), spec files, the CLI listing and the `kernel!` macro's
//! `family:` arm all read these tables; nothing else lists a family's parameters.
//!
//! ```
//! use attnforge_codegen::dynamic::{family, DynamicSpec, FAMILIES};
//! let hax = family("hax").unwrap();
//! let names: Vec<_> = hax.params_of(None).iter().map(|p| p.name).collect();
//! assert_eq!(names, ["k_lsh", "k_ks", "hash_bits"]);
//! assert_eq!(hax.params[2].missing_fix(), "add `hash_bits = 8` (hyperplanes, 1..=12; official default 8)");
//! assert_eq!(FAMILIES.len(), 7);
//! let spec = DynamicSpec::with_defaults(family("topk").unwrap(), Some("split"),
//!     attnforge_codegen::spec::DType::F16, attnforge_codegen::spec::HeadDim::D64).unwrap();
//! assert_eq!(spec.canonical_name(), "topk_split_d64_f16");
//! ```

use super::{DynamicSpec, LandmarkMode, MAX_HASH_BITS, MAX_K_KS, MAX_SELECT_K};
use crate::spec::{DType, HeadDim};

/// Largest value of a parameter that travels as an `int` kernel argument.
const I32_MAX: usize = i32::MAX as usize;

/// One integer parameter of a family (all family parameters are non-negative integers).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyParam {
    /// Its name in spec files (`[params] name = ..`), the macro (`name: ..`) and the CLI.
    pub name: &'static str,
    /// Smallest valid value.
    pub min: usize,
    /// Largest valid value.
    pub max: usize,
    /// The papers' default (the catalog's value and the examples').
    pub default: usize,
    /// What it means, for fixes and listings.
    pub about: &'static str,
    /// How to fix an out-of-range value.
    pub range_fix: &'static str,
}

impl FamilyParam {
    /// The fix of a missing parameter in a spec file: ``add `name = default` (about)``.
    pub fn missing_fix(&self) -> String {
        format!("add `{} = {}` ({})", self.name, self.default, self.about)
    }
}

/// A mode of a family: a variant with its own kernels and possibly extra parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct FamilyMode {
    /// Its name (`mode = "retrieval"`).
    pub name: &'static str,
    /// What it does, for fixes.
    pub about: &'static str,
    /// Parameters only this mode takes.
    pub params: &'static [FamilyParam],
}

/// A data-dependent family: its `family = ".."` tag, modes and parameters.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Family {
    /// The tag (`family = "landmark"`, `family: landmark(..)`).
    pub tag: &'static str,
    /// Parameters of every mode.
    pub params: &'static [FamilyParam],
    /// Its modes; empty when it has none.
    pub modes: &'static [FamilyMode],
    /// The mode taken when none is given; `None` with modes: the mode is required.
    pub default_mode: Option<&'static str>,
}

impl Family {
    /// The mode called `name`.
    pub fn mode(&self, name: &str) -> Option<&'static FamilyMode> {
        self.modes.iter().find(|m| m.name == name)
    }

    /// Every parameter of the family in `mode` (the family's, then the mode's).
    pub fn params_of(&self, mode: Option<&str>) -> Vec<&'static FamilyParam> {
        let mode = mode.or(self.default_mode).and_then(|m| self.mode(m));
        self.params
            .iter()
            .chain(mode.map_or(&[][..], |m| m.params))
            .collect()
    }

    /// `mode = "a" | "b"` choices with their meaning, for fixes.
    pub fn modes_text(&self) -> String {
        self.modes
            .iter()
            .map(|m| format!("\"{}\" ({})", m.name, m.about))
            .collect::<Vec<_>>()
            .join(" or ")
    }
}

const fn param(
    name: &'static str,
    (min, max): (usize, usize),
    default: usize,
    about: &'static str,
    range_fix: &'static str,
) -> FamilyParam {
    FamilyParam {
        name,
        min,
        max,
        default,
        about,
        range_fix,
    }
}

/// Every data-dependent family, in catalog order.
pub const FAMILIES: [Family; 7] = [
    Family {
        tag: "landmark",
        params: &[param(
            "mem_freq",
            (1, I32_MAX - 1),
            63,
            "block size mem_freq + 1; the paper uses 63",
            "mem_freq >= 1 (block size mem_freq + 1; the paper uses 63)",
        )],
        modes: &[
            FamilyMode {
                name: "train",
                about: "grouped softmax over every earlier block",
                params: &[],
            },
            FamilyMode {
                name: "retrieval",
                about: "top_k blocks",
                params: &[param(
                    "top_k",
                    (1, MAX_SELECT_K),
                    4,
                    "blocks retrieved per query token and head",
                    "retrieve between 1 and 1024 blocks, or use mode = \"train\"",
                )],
            },
        ],
        default_mode: None,
    },
    Family {
        tag: "hax",
        params: &[
            param(
                "k_lsh",
                (0, I32_MAX),
                32,
                "LSH budget; official default 32",
                "k_lsh must fit an i32 (official default 32)",
            ),
            param(
                "k_ks",
                (0, MAX_K_KS),
                32,
                "key-selection budget; official default 32",
                "k_ks between 0 and 4096 (official default 32)",
            ),
            param(
                "hash_bits",
                (1, MAX_HASH_BITS),
                8,
                "hyperplanes, 1..=12; official default 8",
                "use between 1 and 12 hyperplanes (official default 8)",
            ),
        ],
        modes: &[],
        default_mode: None,
    },
    Family {
        tag: "cca",
        params: &[
            param(
                "group",
                (1, I32_MAX),
                16,
                "group size g; default 16",
                "the group size g must be >= 1 (default 16)",
            ),
            param(
                "window",
                (0, I32_MAX),
                1024,
                "local window w; default 1024",
                "the window must fit an i32 (default 1024)",
            ),
        ],
        modes: &[],
        default_mode: None,
    },
    Family {
        tag: "topk",
        params: &[
            param(
                "sink",
                (0, I32_MAX),
                4,
                "leading keys always attended, S_start",
                "sink must fit an i32",
            ),
            param(
                "recent",
                (0, I32_MAX),
                64,
                "keys ending at the query, S_end",
                "recent must fit an i32",
            ),
            param(
                "k",
                (1, MAX_SELECT_K),
                64,
                "retrieved keys per query head and row, 1..=1024",
                "retrieve between 1 and 1024 keys; for the static window alone use attention_over_keys",
            ),
        ],
        modes: &[
            FamilyMode {
                name: "fused",
                about: "one attention pass, the default",
                params: &[],
            },
            FamilyMode {
                name: "split",
                about: "two partial passes + lse merge",
                params: &[],
            },
        ],
        default_mode: Some("fused"),
    },
    Family {
        tag: "recycled",
        params: &[
            param(
                "recycle_size",
                (1, super::MAX_RECYCLE_SIZE),
                0,
                "K, recycled keys per kv head; omit for 1/8 of the cache at step 0",
                "recycle at least one key per kv head (K >= 1, at most 2^20), or omit it for 1/8 of the cache",
            ),
            param(
                "stride",
                (1, I32_MAX),
                10,
                "S, every S-th step checks the query similarity; default 10",
                "the check stride S must be >= 1 (default 10)",
            ),
            param(
                "threshold_milli",
                (0, 1000),
                850,
                "s in thousandths: partial while cos > s; default 850 (s = 0.85)",
                "give the similarity threshold in thousandths, 0..=1000 (default 850: s = 0.85)",
            ),
            param(
                "pool",
                (1, 1023),
                7,
                "odd max-pool width of the full steps' statistics; default 7",
                "the max-pool width must be odd, 1..=1023 (default 7)",
            ),
        ],
        modes: &[],
        default_mode: None,
    },
    Family {
        tag: "lse_merge",
        params: &[],
        modes: &[],
        default_mode: None,
    },
    Family {
        tag: "longheads",
        params: &[
            param(
                "chunk",
                (1, I32_MAX),
                256,
                "chunk size w; default 256",
                "the chunk size w must be >= 1 (default 256)",
            ),
            param(
                "chunks_per_query",
                (3, MAX_SELECT_K),
                16,
                "chunks per query M, forced 0, c-1, c included; 3..=1024, default 16",
                "M must be between 3 and 1024: chunks 0, c-1 and c are always selected (default 16)",
            ),
            param(
                "begin",
                (1, I32_MAX),
                4096,
                "begin length B, a positive multiple of chunk; default 4096",
                "the begin length B must be a positive multiple of the chunk size w (default 4096)",
            ),
            param(
                "theta",
                (1, I32_MAX),
                10000,
                "RoPE base (an integer); default 10000",
                "the RoPE base must be a positive integer (default 10000)",
            ),
        ],
        modes: &[],
        default_mode: None,
    },
];

/// The family tagged `tag`.
pub fn family(tag: &str) -> Option<&'static Family> {
    FAMILIES.iter().find(|f| f.tag == tag)
}

/// `landmark, hax, cca, topk, recycled, lse_merge, longheads`.
pub fn family_tags() -> String {
    FAMILIES
        .iter()
        .map(|f| f.tag)
        .collect::<Vec<_>>()
        .join(", ")
}

impl DynamicSpec {
    /// The family's table.
    pub fn family_table(&self) -> &'static Family {
        let tag = match self {
            DynamicSpec::Landmark { .. } => "landmark",
            DynamicSpec::Hax { .. } => "hax",
            DynamicSpec::Cca { .. } => "cca",
            DynamicSpec::Topk { .. } => "topk",
            DynamicSpec::Recycled { .. } => "recycled",
            DynamicSpec::LseMerge { .. } => "lse_merge",
            DynamicSpec::Longheads { .. } => "longheads",
        };
        family(tag).expect("every DynamicSpec variant has a table entry")
    }

    /// The `family = ".."` tag.
    pub fn family_tag(&self) -> &'static str {
        self.family_table().tag
    }

    /// The mode, for families that have modes.
    pub fn mode_tag(&self) -> Option<&'static str> {
        match self {
            DynamicSpec::Landmark {
                mode: LandmarkMode::Train,
                ..
            } => Some("train"),
            DynamicSpec::Landmark { .. } => Some("retrieval"),
            DynamicSpec::Topk { split: false, .. } => Some("fused"),
            DynamicSpec::Topk { split: true, .. } => Some("split"),
            _ => None,
        }
    }

    /// Every parameter with its value, in table order (the family's, then the mode's).
    pub fn param_values(&self) -> Vec<(&'static FamilyParam, usize)> {
        let values: Vec<usize> = match *self {
            DynamicSpec::Landmark { mem_freq, mode, .. } => match mode {
                LandmarkMode::Train => vec![mem_freq],
                LandmarkMode::Retrieval { top_k } => vec![mem_freq, top_k],
            },
            DynamicSpec::Hax {
                k_lsh,
                k_ks,
                hash_bits,
                ..
            } => vec![k_lsh, k_ks, hash_bits],
            DynamicSpec::Cca { group, window, .. } => vec![group, window],
            DynamicSpec::Topk {
                sink, recent, k, ..
            } => vec![sink, recent, k],
            // An absent K (the default rule) is reported as 0, the table's default.
            DynamicSpec::Recycled {
                recycle_size,
                stride,
                threshold_milli,
                pool,
                ..
            } => vec![recycle_size.unwrap_or(0), stride, threshold_milli, pool],
            DynamicSpec::LseMerge { .. } => vec![],
            DynamicSpec::Longheads {
                chunk,
                chunks_per_query,
                begin,
                theta,
                ..
            } => vec![chunk, chunks_per_query, begin, theta],
        };
        let params = self.family_table().params_of(self.mode_tag());
        debug_assert_eq!(params.len(), values.len());
        params.into_iter().zip(values).collect()
    }

    /// The spec of `family` in `mode` (its default mode when `None`) whose parameter
    /// `name` is `value(name)`; `None` for a mode the family does not have (or a missing
    /// required mode). Values are not range-checked: see [`super::validate_dynamic`].
    pub fn from_params(
        family: &Family,
        mode: Option<&str>,
        dtype: DType,
        head_dim: HeadDim,
        value: impl Fn(&str) -> usize,
    ) -> Option<DynamicSpec> {
        let mode = mode.or(family.default_mode);
        if family.modes.is_empty() != mode.is_none()
            || mode.is_some_and(|m| family.mode(m).is_none())
        {
            return None;
        }
        Some(match family.tag {
            "landmark" => DynamicSpec::Landmark {
                dtype,
                head_dim,
                mem_freq: value("mem_freq"),
                mode: if mode == Some("retrieval") {
                    LandmarkMode::Retrieval {
                        top_k: value("top_k"),
                    }
                } else {
                    LandmarkMode::Train
                },
            },
            "hax" => DynamicSpec::Hax {
                dtype,
                head_dim,
                k_lsh: value("k_lsh"),
                k_ks: value("k_ks"),
                hash_bits: value("hash_bits"),
            },
            "cca" => DynamicSpec::Cca {
                dtype,
                head_dim,
                group: value("group"),
                window: value("window"),
            },
            "topk" => DynamicSpec::Topk {
                dtype,
                head_dim,
                sink: value("sink"),
                recent: value("recent"),
                k: value("k"),
                split: mode == Some("split"),
            },
            // `recycle_size` 0 (the table's default) stands for "absent": the default rule.
            "recycled" => DynamicSpec::Recycled {
                dtype,
                head_dim,
                recycle_size: Some(value("recycle_size")).filter(|&k| k != 0),
                stride: value("stride"),
                threshold_milli: value("threshold_milli"),
                pool: value("pool"),
            },
            "longheads" => DynamicSpec::Longheads {
                dtype,
                head_dim,
                chunk: value("chunk"),
                chunks_per_query: value("chunks_per_query"),
                begin: value("begin"),
                theta: value("theta"),
            },
            _ => DynamicSpec::LseMerge { dtype, head_dim },
        })
    }

    /// The spec of `family` in `mode` with every parameter at its default.
    pub fn with_defaults(
        family: &Family,
        mode: Option<&str>,
        dtype: DType,
        head_dim: HeadDim,
    ) -> Option<DynamicSpec> {
        let params = family.params_of(mode);
        Self::from_params(family, mode, dtype, head_dim, |n| {
            params.iter().find(|p| p.name == n).map_or(0, |p| p.default)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_round_trip_through_specs() {
        for f in &FAMILIES {
            let modes: Vec<Option<&str>> = if f.modes.is_empty() {
                vec![None]
            } else {
                f.modes.iter().map(|m| Some(m.name)).collect()
            };
            for m in modes {
                let s = DynamicSpec::with_defaults(f, m, DType::F16, HeadDim::D64).unwrap();
                assert_eq!(s.family_tag(), f.tag);
                assert_eq!(s.mode_tag(), m);
                for (p, v) in s.param_values() {
                    assert_eq!(v, p.default, "{}.{}", f.tag, p.name);
                    if (f.tag, p.name) == ("recycled", "recycle_size") {
                        continue; // default 0: absent, the 1/8-of-the-cache rule
                    }
                    assert!((p.min..=p.max).contains(&v), "{}.{}", f.tag, p.name);
                }
            }
        }
        let lm = family("landmark").unwrap();
        assert_eq!(
            DynamicSpec::from_params(lm, None, DType::F16, HeadDim::D64, |_| 1),
            None,
            "landmark needs its mode"
        );
        assert_eq!(
            DynamicSpec::from_params(lm, Some("fast"), DType::F16, HeadDim::D64, |_| 1),
            None
        );
        let cca = family("cca").unwrap();
        assert_eq!(
            DynamicSpec::from_params(cca, Some("split"), DType::F16, HeadDim::D64, |_| 1),
            None
        );
        assert_eq!(
            family_tags(),
            "landmark, hax, cca, topk, recycled, lse_merge, longheads"
        );
    }
}
