"""``attnforge.conformance``: check any attention implementation against the f64 reference
on the cases that break them.

An implementation is a callable ``impl(q, k, v, case) -> out`` or ``-> (out, lse)`` taking
float32 torch tensors ``q [B, Hq, Sq, D]``, ``k``/``v [B, Hkv, Sk, D]`` (GQA: Hq > Hkv) and a
:class:`Case` (its boolean mask ``case.mask`` ``[B, Hq, Sq, Sk]``, scale, score
modification). Each case is compared with attnforge's f64 reference by the rule of
variants.md section 0: over rows that are not empty, ``max|K - R| <= rtol * max|N - R| + atol``
(``N``: the naive float32 path, ``rtol = 2``, ``atol = 1e-5``), for ``out`` and, when
returned, ``lse``; an empty row (no allowed key) must give out exactly 0 and lse ``-inf``;
no NaN anywhere.

``python -m attnforge.conformance --target sdpa|flex|attnforge`` prints the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
import time
import warnings
from typing import Any, Callable, Optional, Sequence

import numpy as np
import torch

from . import build_spec, mask_matrix, run, tolerance

__all__ = ["Case", "Result", "cases", "check", "run_suite", "print_table", "sdpa", "flex", "attnforge_op", "TARGETS"]

HEAD_DIM = 64
DILATED_SRC = "fn dilated(q: i64, kv: i64, stride: i32) -> bool {\n    kv <= q && (q - kv) % (stride as i64) == 0\n}"
# Rows whose position is a multiple of 3 attend to nothing: fully masked rows mid-sequence.
HOLES_SRC = "fn holes(q: i64, kv: i64) -> bool {\n    q % 3 != 0 && kv <= q\n}"


@dataclasses.dataclass
class Case:
    """One conformance case: shapes, the variant (as attnforge spec text) and its inputs."""

    name: str
    spec: str
    batch: int
    heads_q: int
    heads_kv: int
    seq_q: int
    seq_k: int
    magnitude: float = 1.0
    doc: Optional[np.ndarray] = None
    softcap: Optional[float] = None
    seed: int = 0
    plain_causal: bool = False  # the mask is `causal` with no score modification
    mask: Optional[torch.Tensor] = None  # filled by `prepare`: bool [B, Hq, Sq, Sk]

    @property
    def scale(self) -> float:
        return 1.0 / math.sqrt(HEAD_DIM)

    def inputs(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        g = np.random.default_rng(self.seed)
        d = HEAD_DIM

        def t(h: int, s: int, m: float) -> torch.Tensor:
            return torch.from_numpy((g.standard_normal((self.batch, h, s, d)) * m).astype(np.float32))

        return t(self.heads_q, self.seq_q, self.magnitude), t(self.heads_kv, self.seq_k, self.magnitude), t(self.heads_kv, self.seq_k, 1.0)

    def prepare(self) -> "Case":
        if self.mask is None:
            m = mask_matrix(self.spec, self.batch, self.heads_q, self.heads_kv, self.seq_q, self.seq_k, doc=self.doc)
            self.mask = torch.from_numpy(m)
        return self


def _spec(mask: str, **params: Any) -> str:
    return build_spec("f32", HEAD_DIM, mask=mask, **params)


def _segments(sk: int, lengths: Sequence[int]) -> np.ndarray:
    ids = np.concatenate([np.full(n, i, dtype=np.int32) for i, n in enumerate(lengths)])
    assert ids.size == sk
    return ids


def cases() -> list[Case]:
    """The suite: edge cases first, then every boolean mask of the catalog (f32, D = 64)."""
    s = 80  # not a multiple of the 64-key tile
    doc = _segments(s, [20, 35, 25])
    question = _segments(s, [16, 30, 34])  # doc 0 (the question) is a prefix
    out = [
        Case("full, GQA 4:2, S=70", _spec("full", gqa=True), 2, 4, 2, 70, 70),
        Case("causal, Sq=17 < Sk=75 (bottom-right)", _spec("causal"), 1, 2, 2, 17, 75, plain_causal=True),
        Case("causal, Sq=40 > Sk=23 (17 empty rows)", _spec("causal"), 1, 2, 2, 40, 23, plain_causal=True),
        Case("empty rows mid-sequence (q % 3 == 0)", _spec(HOLES_SRC), 1, 2, 2, 37, 37),
        Case("causal, Sq=1 decode, Sk=129", _spec("causal", gqa=True), 2, 8, 1, 1, 129, plain_causal=True),
        Case("full, large magnitudes (|q|,|k| ~ 30)", _spec("full"), 1, 2, 2, 50, 50, magnitude=30.0),
        Case("causal, large magnitudes, Sq != Sk", _spec("causal"), 1, 2, 2, 33, 61, magnitude=30.0, plain_causal=True),
        Case("causal + softcap 20, large magnitudes", _spec("causal", score="softcap", softcap=20.0), 1, 2, 2, 45, 45, magnitude=10.0, softcap=20.0),
    ]
    catalog_masks = [
        ("local(24, 8)", _spec("local", window_left=24, window_right=8), None),
        ("prefix_lm(16)", _spec("prefix_lm", prefix_len=16), None),
        ("document", _spec("document"), doc),
        ("causal_document", _spec("causal_document"), doc),
        ("share_question", _spec("share_question"), question),
        ("global_local(8, 4)", _spec("global_local", window=8, global_tokens=4), None),
        ("block_causal_document(16)", _spec("block_causal_document", doc_block=16), doc),
        ("lambda_mask(4, 16)", _spec("lambda_mask", global_tokens=4, local_window=16), None),
        ("chunked_causal(24)", _spec("chunked_causal", chunk_size=24), None),
        ("dilated_causal(16, 3)", _spec("dilated_causal", window=16, dilation=3), None),
        ("predicate: dilated, stride 3", _spec(DILATED_SRC, stride=3), None),
    ]
    out += [Case(f"mask {n}", sp, 2, 2, 2, s, s, doc=d) for n, sp, d in catalog_masks]
    return out


@dataclasses.dataclass
class Result:
    """One row of the table."""

    case: str
    out_err: float
    out_bound: float
    lse_err: Optional[float]
    lse_bound: Optional[float]
    verdict: str  # PASS, FAIL or SKIP
    note: str = ""
    seconds: float = 0.0


def _compare(k: np.ndarray, r: np.ndarray, n: np.ndarray, rows: np.ndarray, rtol: float, atol: float) -> tuple[float, float]:
    if not rows.any():
        return 0.0, atol
    err = float(np.max(np.abs(k[rows] - r[rows])))
    scale = float(np.max(np.abs(n[rows] - r[rows])))
    return err, rtol * scale + atol


def check(impl: Callable, case: Case) -> Result:
    """Run ``impl`` on one case and judge it against the f64 reference."""
    case.prepare()
    q, k, v = case.inputs()
    ref_out, ref_lse = run(case.spec, q.numpy(), k.numpy(), v.numpy(), backend="reference", doc=case.doc)
    nv_out, nv_lse = run(case.spec, q.numpy(), k.numpy(), v.numpy(), backend="naive", doc=case.doc)
    rtol, atol = tolerance("f32")
    t0 = time.perf_counter()
    try:
        got = impl(q, k, v, case)
    except NotImplementedError as e:
        return Result(case.name, math.nan, math.nan, None, None, "SKIP", str(e))
    dt = time.perf_counter() - t0
    out, lse = (got if isinstance(got, tuple) else (got, None))
    out = out.detach().double().numpy()
    lse = None if lse is None else lse.detach().double().numpy()
    if out.shape != ref_out.shape:
        return Result(case.name, math.nan, math.nan, None, None, "FAIL", f"out shape {out.shape}, want {ref_out.shape}", dt)
    empty = np.isneginf(ref_lse)
    rows = ~empty
    notes = []
    nan_rows = int(np.isnan(out).any(axis=-1).sum())
    if nan_rows:
        notes.append(f"NaN out in {nan_rows} rows" + (" (the empty rows)" if np.isnan(out).any(axis=-1)[empty].sum() == nan_rows else ""))
    if empty.any():
        bad = int((np.nan_to_num(np.abs(out[empty]), nan=1.0).max(axis=-1) != 0).sum())
        if bad:
            notes.append(f"{bad} of {int(empty.sum())} empty rows not 0")
        if lse is not None:
            bad_lse = int((~np.isneginf(lse[empty])).sum())
            if bad_lse:
                vals = np.unique(lse[empty][~np.isneginf(lse[empty])])[:3]
                notes.append(f"lse of {bad_lse} empty rows = {', '.join(f'{x:g}' for x in vals)} (want -inf)")
    o_err, o_bound = _compare(np.nan_to_num(out, nan=np.inf), ref_out, nv_out, rows, rtol, atol)
    l_err = l_bound = None
    if lse is not None:
        if np.isnan(lse).any():
            notes.append(f"NaN lse in {int(np.isnan(lse).sum())} rows")
        l_err, l_bound = _compare(np.nan_to_num(lse, nan=np.inf), ref_lse, nv_lse, rows, rtol, atol)
    ok = not notes and o_err <= o_bound and (l_err is None or l_err <= l_bound)
    if o_err > o_bound:
        notes.append("out beyond bound")
    if l_err is not None and l_err > l_bound:
        notes.append("lse beyond bound")
    if empty.any() and not notes:
        notes.append(f"{int(empty.sum())} empty rows: out 0" + (", lse -inf" if lse is not None else ""))
    return Result(case.name, o_err, o_bound, l_err, l_bound, "PASS" if ok else "FAIL", "; ".join(notes), dt)


def run_suite(impl: Callable, selected: Optional[Sequence[Case]] = None, verbose: bool = True) -> list[Result]:
    """Run every case (or ``selected``) and print the table when ``verbose``."""
    results = [check(impl, c) for c in (selected if selected is not None else cases())]
    if verbose:
        print_table(results)
    return results


def print_table(results: Sequence[Result], file: Any = None) -> None:
    """Print the table (case, max error and bound for out and lse, verdict, note)."""
    file = file or sys.stdout
    def f(x: Optional[float]) -> str:
        return "-" if x is None else ("n/a" if math.isnan(x) else f"{x:.2e}")
    head = ("case", "out err", "out bound", "lse err", "lse bound", "verdict", "note")
    rows = [(r.case, f(r.out_err), f(r.out_bound), f(r.lse_err), f(r.lse_bound), r.verdict, r.note) for r in results]
    w = [max(len(str(x[i])) for x in [head, *rows]) for i in range(len(head) - 1)]
    for x in [head, tuple("-" * n for n in w) + ("----",), *rows]:
        print("  ".join(str(c).ljust(w[i]) for i, c in enumerate(x[:-1])) + "  " + x[-1], file=file)
    n_pass = sum(r.verdict == "PASS" for r in results)
    n_fail = sum(r.verdict == "FAIL" for r in results)
    print(f"{n_pass} passed, {n_fail} failed, {len(results) - n_pass - n_fail} skipped", file=file)


# ---- adapters --------------------------------------------------------------------------


def sdpa(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    """``torch.nn.functional.scaled_dot_product_attention`` with the case's boolean mask as
    ``attn_mask`` (True = attend) and ``enable_gqa``; no lse, no score modification."""
    if case.softcap is not None:
        raise NotImplementedError("SDPA has no score modification (softcap)")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, attn_mask=case.mask, scale=case.scale, enable_gqa=q.shape[1] != k.shape[1])


def sdpa_is_causal(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> torch.Tensor:
    """SDPA's own ``is_causal=True`` on the causal cases (its alignment when Sq != Sk)."""
    if not case.plain_causal:
        raise NotImplementedError("only the plain causal cases")
    return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True, scale=case.scale, enable_gqa=q.shape[1] != k.shape[1])


def flex(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case) -> tuple[torch.Tensor, torch.Tensor]:
    """FlexAttention (eager, CPU): ``mask_mod`` reads the case's boolean mask, ``score_mod``
    applies softcap; returns out and lse."""
    from torch.nn.attention.flex_attention import create_block_mask, flex_attention

    m = case.mask

    def mask_mod(b, h, q_idx, kv_idx):
        return m[b, h, q_idx, kv_idx]

    score_mod = None
    if case.softcap is not None:
        c = case.softcap

        def score_mod(score, b, h, q_idx, kv_idx):
            return c * torch.tanh(score / c)

    bm = create_block_mask(mask_mod, q.shape[0], q.shape[1], q.shape[2], k.shape[2], device="cpu")
    kw = dict(score_mod=score_mod, block_mask=bm, scale=case.scale, enable_gqa=q.shape[1] != k.shape[1])
    with warnings.catch_warnings():
        # Eager Flex warns that it materialises the scores: expected here, on small cases.
        warnings.filterwarnings("ignore", message="flex_attention called without torch.compile")
        try:
            from torch.nn.attention.flex_attention import AuxRequest

            out, aux = flex_attention(q, k, v, return_aux=AuxRequest(lse=True), **kw)
            return out, aux.lse
        except ImportError:
            return flex_attention(q, k, v, return_lse=True, **kw)


def attnforge_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, case: Case, backend: str = "sim") -> tuple[torch.Tensor, torch.Tensor]:
    """attnforge's own op: the generated kernel of the case's spec on the simulator."""
    from .torch import attention

    doc = None if case.doc is None else torch.from_numpy(case.doc)
    return attention(q, k, v, spec=case.spec, backend=backend, return_lse=True, doc=doc)


TARGETS: dict[str, Callable] = {
    "sdpa": sdpa,
    "sdpa-is-causal": sdpa_is_causal,
    "flex": flex,
    "attnforge": attnforge_op,
    "attnforge-reference": lambda q, k, v, case: attnforge_op(q, k, v, case, backend="reference"),
}


def main(argv: Optional[Sequence[str]] = None) -> int:
    p = argparse.ArgumentParser(prog="python -m attnforge.conformance", description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=sorted(TARGETS), default="sdpa")
    p.add_argument("--case", action="append", default=[], help="run only cases whose name contains this text")
    a = p.parse_args(argv)
    sel = [c for c in cases() if not a.case or any(s in c.name for s in a.case)]
    print(f"attnforge conformance: target {a.target}, torch {torch.__version__}, {len(sel)} cases")
    results = run_suite(TARGETS[a.target], sel)
    return 1 if any(r.verdict == "FAIL" for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
