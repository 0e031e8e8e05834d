"""The verdict rules, on plain numbers: how parts combine, what a lens concludes from its arms, when a
rollout is judged strictly, and the caveat an ok verdict carries when bisect found a module."""

from __future__ import annotations

from hfvllm_lab.results.teacher import Verdict
from hfvllm_lab.rules import (
    LENS_CAUSE,
    LENS_EVERY_ARM,
    LENS_REMEDY,
    LENS_WITHIN,
    NOISE_FACTOR,
    lens_status,
    rollout_verdict,
    with_module_caveat,
    worse_of,
)

OK = Verdict("within noise", 1.0, "rule", "fine")
BAD = Verdict("beyond noise", 5.0, "rule", "off")


def test_the_worse_part_decides_and_every_part_is_named():
    v = worse_of([("prefill", OK), ("decode", BAD)])
    assert v.status == "beyond noise" and v.part == "decode" and v.label == "beyond noise (decode)"
    assert v.reason.startswith("decode: off") and "prefill: within noise (1x)" in v.reason
    assert worse_of([("prefill", OK), ("decode", OK)]).ok


def test_a_workload_lens_names_its_factor_whichever_arm_is_off():
    assert lens_status([("prefill", OK), ("decode", BAD)], settable=False)[0] == LENS_CAUSE
    status, why = lens_status([("prefill", BAD), ("decode", OK)], settable=False)
    assert status == LENS_CAUSE and "decides it" in why
    assert lens_status([("a", BAD), ("b", BAD)], settable=False)[0] == LENS_EVERY_ARM
    assert lens_status([("a", OK), ("b", OK), ("c", OK)], settable=False)[0] == LENS_WITHIN


def test_a_setting_lens_tells_a_cause_from_a_remedy():
    assert lens_status([("bf16 head", OK), ("float32 head", BAD)], settable=True)[0] == LENS_CAUSE
    status, why = lens_status([("bf16 head", BAD), ("float32 head", OK)], settable=True)
    assert status == LENS_REMEDY and "removes the mismatch" in why


def test_a_rollout_is_judged_strictly_only_when_both_sides_are_float32():
    strict = rollout_verdict(1e-4, 1e-8, [], 2e-3, "float32")
    assert strict.status == "fail" and strict.ratio is None
    relative = rollout_verdict(0.04, 1e-3, [("floor", 0.035, 1e-3)], 0.3, "bfloat16")
    assert relative.status == "within noise" and relative.ratio < NOISE_FACTOR
    beyond = rollout_verdict(0.1, 9e-3, [("floor", 0.035, 1e-3)], 0.3, "bfloat16")
    assert beyond.status == "beyond noise" and beyond.ratio == 9.0


def test_an_ok_verdict_says_when_a_module_is_beyond_its_own_noise():
    v = with_module_caveat(OK, "model.layers.17.self_attn", 3.8)
    assert v.ok and v.label == "within noise; model.layers.17.self_attn deviates 3.8x its noise"
    assert with_module_caveat(BAD, "model.layers.3", 9.0) is BAD
    assert with_module_caveat(OK, None, None) is OK
