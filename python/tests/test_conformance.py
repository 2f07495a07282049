"""The conformance suite: attnforge's own op passes every case, the suite catches wrong
implementations, and PyTorch's SDPA and FlexAttention results on CPU (docs/conformance.md)."""

import torch

from attnforge import conformance as c


def verdicts(results):
    return {r.case: r.verdict for r in results}


def test_attnforge_op_on_the_simulator_passes_every_case():
    res = c.run_suite(c.attnforge_op)
    assert all(r.verdict == "PASS" for r in res), c.print_table(res)


def test_sdpa_with_a_boolean_mask_passes_every_case_it_can_express():
    v = verdicts(c.run_suite(c.sdpa))
    assert v.pop("causal + softcap 20, large magnitudes") == "SKIP"
    assert set(v.values()) == {"PASS"}, v


def test_flex_attention_passes_every_case_with_lse():
    res = c.run_suite(c.flex)
    assert all(r.verdict == "PASS" and r.lse_err is not None for r in res), res


def test_sdpa_is_causal_is_top_left_aligned_so_it_fails_sq_not_equal_sk():
    v = verdicts(c.run_suite(c.sdpa_is_causal))
    assert v["causal, Sq=17 < Sk=75 (bottom-right)"] == "FAIL"
    assert v["causal, Sq=1 decode, Sk=129"] == "FAIL"


def test_the_suite_fails_an_implementation_that_ignores_the_mask():
    res = c.run_suite(lambda q, k, v, case: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    v = verdicts(res)
    assert v["mask local(24, 8)"] == "FAIL" and v["full, GQA 4:2, S=70"] == "PASS"


def test_the_suite_flags_nan_and_wrong_lse_on_empty_rows():
    def nan_on_empty(q, k, v, case):
        out, lse = c.flex(q, k, v, case)
        empty = ~case.mask.any(-1)
        return out.masked_fill(empty[..., None], float("nan")), lse.masked_fill(empty, 0.0)

    r = next(x for x in c.run_suite(nan_on_empty, c.cases()[2:3]))
    assert r.verdict == "FAIL"
    assert "NaN out" in r.note and "want -inf" in r.note, r.note


def test_cli_prints_the_table(capsys):
    assert c.main(["--target", "sdpa", "--case", "decode"]) == 0
    out = capsys.readouterr().out
    assert "causal, Sq=1 decode, Sk=129" in out and "1 passed, 0 failed" in out
