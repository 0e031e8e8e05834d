"""compare() on other paths of the real model, and a tokenization difference forced for real."""

from __future__ import annotations

import json
import shutil

import pytest

PROMPTS = ["The capital of France is", "Hello, my name is"]


def test_vllm_native_in_bf16_is_within_noise(real_model_dir):
    from hfvllm_lab import Session

    with Session(real_model_dir, backend="native") as s:
        assert s.model_class.endswith("LlamaForCausalLM") and s.backend == "native"
        cmp = s.compare(PROMPTS, 8, profile=False)
        rollout = s.rollout(PROMPTS, n=2, max_tokens=12)
    assert cmp.verdict.status == "within noise", cmp.verdict
    assert cmp.teacher.decode_verdict.status == "within noise"  # its decode steps too
    # Native is the path under test, so only transformers' own rounding is its floor.
    assert [f.path for f in cmp.teacher.floors] == ["transformers (bfloat16)"]
    assert [f.path for f in cmp.teacher.decode_floors] == ["transformers (bfloat16, KV-cache decode)"]
    assert any("path under test" in n for n in cmp.teacher.notes)
    assert rollout.verdict.status == "within noise", rollout.verdict
    assert rollout.judged.path == "vLLM native model (bfloat16)"
    assert any("rollout engine under test" in n for n in rollout.notes)


def test_float32_keeps_the_strict_verdict(real_model_dir):
    from hfvllm_lab import Session

    with Session(real_model_dir, dtype="float32") as s:
        assert s.dtype_reason == "requested"
        cmp = s.compare(PROMPTS, 8, profile=False)
    assert cmp.verdict.status == "pass", cmp.verdict
    assert cmp.teacher.floors == [] and cmp.teacher.judged.max_target_logprob_diff <= 1e-3
    assert cmp.teacher.judged.top1_agreement == 1.0
    assert all(p.parity.reason == "identical tokens" for p in cmp.prompts)
    assert cmp.prompts[0].hf.text.startswith(" Paris")


@pytest.fixture(scope="module")
def tokenizer_without_bos(zoo_path, tmp_path_factory):
    """The zoo llama's tokenizer, but without the `<s>` its post-processor adds."""
    src = zoo_path("llama")
    out = tmp_path_factory.mktemp("tok-no-bos")
    for name in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        if (src / name).exists():
            shutil.copy(src / name, out / name)
    data = json.loads((out / "tokenizer.json").read_text())
    data["post_processor"] = None
    (out / "tokenizer.json").write_text(json.dumps(data))
    return out


def test_different_prompt_ids_are_a_tokenization_difference(zoo_path, tokenizer_without_bos):
    from hfvllm_lab import Session

    with Session("llama", engine_args={"tokenizer": str(tokenizer_without_bos)}) as s:
        cmp = s.compare(["Hello world"], 4, bisect=True, profile=False)
    hf_ids, vllm_ids = cmp.prompts[0].hf.prompt_token_ids, cmp.prompts[0].vllm.prompt_token_ids
    assert hf_ids[0] == 256 and vllm_ids == hf_ids[1:]  # the engine's tokenizer dropped <s>
    assert cmp.verdict.status == "tokenization differs" and not cmp.ok
    assert cmp.bisect.mode == "tokenization differs" and cmp.bisect.rows == []
    assert "tokenization differs" in repr(cmp) and "tokenization differs" in repr(cmp.bisect)
