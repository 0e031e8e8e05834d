import pytest

from hfvllm_lab.parity import compare_generations
from hfvllm_lab.results.generation import Generation


def gen(tokens, tops, prompt_lps=(None, -1.0)):
    return Generation("p", [1, 2], list(tokens), "", [dict(t) for t in tops], list(prompt_lps))


def test_identical_tokens_pass():
    a = gen([5, 6], [{5: -0.1}, {6: -0.2}])
    v = compare_generations(a, a)
    assert v.ok and v.first_divergence is None and v.max_prompt_logprob_diff == 0.0


def test_near_tie_within_topk_passes_and_marks_the_step():
    a = gen([5, 6, 7], [{5: -0.1}, {6: -1.00, 9: -1.01}, {7: -0.3}])
    b = gen([5, 9, 1], [{5: -0.1}, {9: -1.00, 6: -1.02}, {1: -0.3}])
    v = compare_generations(a, b)
    assert v.ok and v.first_divergence == 1


def test_divergence_outside_topk_fails():
    a = gen([5, 6], [{5: -0.1}, {6: -0.5}])
    b = gen([5, 9], [{5: -0.1}, {9: -0.5}])
    v = compare_generations(a, b)
    assert not v.ok and v.first_divergence == 1


def test_large_gap_fails_even_inside_topk():
    a = gen([6], [{6: -0.1, 9: -2.0}])
    b = gen([9], [{9: -0.1, 6: -2.0}])
    assert not compare_generations(a, b).ok


def test_equal_tokens_with_shifted_logprobs_fail_the_logprob_bound():
    # A dropped constant logit scale keeps every argmax: tokens agree, logprobs do not.
    a = gen([5, 6], [{5: -0.1}, {6: -0.2}], prompt_lps=(None, -1.0))
    b = gen([5, 6], [{5: -0.3}, {6: -0.2}], prompt_lps=(None, -1.0))
    assert compare_generations(a, b).ok  # the token rule alone cannot see it
    verdict = compare_generations(a, b, logprob_tol=1e-3)
    assert not verdict.ok and "logprobs differ" in verdict.reason
    shifted_prompt = gen([5, 6], [{5: -0.1}, {6: -0.2}], prompt_lps=(None, -1.5))
    assert not compare_generations(a, shifted_prompt, logprob_tol=1e-3).ok


def test_different_lengths_fail():
    a = gen([5, 6], [{5: -0.1}, {6: -0.2}])
    b = gen([5], [{5: -0.1}])
    verdict = compare_generations(a, b)
    assert not verdict.ok and verdict.first_divergence == 1


def test_step_diffs_stop_at_the_divergence():
    from hfvllm_lab.parity import step_logprob_diffs

    a = gen([5, 6, 7], [{5: -0.1}, {6: -1.0}, {7: -0.3}])
    b = gen([5, 9, 7], [{5: -0.4}, {9: -1.0}, {7: -0.3}])
    assert step_logprob_diffs(a, b) == [pytest.approx(0.3), None, None]
