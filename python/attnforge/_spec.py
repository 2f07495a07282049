"""Spec-file text from Python arguments (mask, score, parameters): the same TOML format
as ``docs/spec-files.md``, validated by the same Rust parser."""

from __future__ import annotations

from typing import Any, Optional

from . import _native

# `[params]` keys that are not mask parameters; everything else that is not a mask
# parameter is a user-function parameter (`[params.user]`).
_PARAM_KEYS = frozenset({"softcap", "alibi_slopes", "doc_segments"})
# Read once at import: a native call inside `build_spec` would stop torch.compile's tracing.
_MASK_PARAMS = frozenset(_native.mask_param_names())


def _toml_value(name: str, v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, int):
        return str(v)
    if isinstance(v, float):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if hasattr(v, "tolist"):
        v = v.tolist()
    if isinstance(v, (list, tuple)):
        return "[" + ", ".join(_toml_value(name, x) for x in v) + "]"
    raise _native.InputError(
        f"parameter `{name}`: cannot pass a {type(v).__name__}\n  fix: use an int, float, bool or a list of them"
    )


def _function(kind: str, src: str) -> str:
    return f"[{kind}]\nkind = \"{'predicate' if kind == 'mask' else 'user'}\"\n[{kind}.function]\nsource = '''\n{src}\n'''\n"


def build_spec(
    dtype: str,
    head_dim: int,
    mask: Optional[str] = None,
    score: Optional[str] = None,
    gqa: bool = False,
    scale: Optional[float] = None,
    **params: Any,
) -> str:
    """Spec-file text for a static kernel.

    ``mask``: a mask tag (``"causal"``, ``"local"``, ... as in ``attnforge list``) or the
    source of a Rust-subset predicate ``fn name(q: i64, kv: i64) -> bool { .. }``.
    ``score``: ``"softcap"``, ``"alibi"`` or the source of ``fn name(score: f32, q: i64,
    kv: i64) -> f32 { .. }``. ``params``: mask parameters (``window_left=16``), ``softcap``,
    ``alibi_slopes``, ``doc_segments``; any other name is a user-function parameter.
    """
    mask = mask or "full"
    lines = [f'dtype = "{dtype}"', f"head_dim = {int(head_dim)}"]
    if gqa:
        lines.append("gqa = true")
    if scale is not None:
        lines.append(f"scale = {float(scale)!r}")
    mask_is_fn = mask.lstrip().startswith("fn ")
    score_is_fn = score is not None and score.lstrip().startswith("fn ")
    if not mask_is_fn:
        lines.append(f"mask = {_toml_value('mask', mask)}")
    if score is not None and not score_is_fn and score != "none":
        lines.append(f"score = {_toml_value('score', score)}")
    tables = []
    if mask_is_fn:
        tables.append(_function("mask", mask))
    if score_is_fn:
        tables.append(_function("score", score))
    plain = {n: v for n, v in params.items() if n in _MASK_PARAMS or n in _PARAM_KEYS}
    user = {n: v for n, v in params.items() if n not in plain}
    body = "\n".join(lines) + "\n" + "".join(tables)
    if plain or user:
        body += "[params]\n" + "".join(f"{n} = {_toml_value(n, v)}\n" for n, v in plain.items())
    if user:
        body += "[params.user]\n" + "".join(f"{n} = {_toml_value(n, v)}\n" for n, v in user.items())
    return body
