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
