"""MLA attention and encoder-style LM heads through the lab backend, in float32, against transformers:
deepseek_v3 (value heads of 32 under q/k heads of 64: values zero-padded for vLLM's one-head-size
attention, the output cut back) and roberta (RobertaLMHead's dense -> gelu -> layer_norm run as HF code
before vLLM's logits processor; positions numbered from padding_idx + 1 as RoBERTa does). One engine
per model, on the coverage sweep's shrunk checkpoints and prompts."""

from __future__ import annotations

import pytest
import torch


def run_lab(model_type: str, hf_modes: tuple[str, ...] = ()):
    """transformers' greedy reference and the lab engine's outputs, build report, and teacher-forced
    log-probabilities of the first prompt with vLLM's paged attention and with each HF attention mode."""
    from hfvllm_lab.coverage.child import MAX_TOKENS, TOP_K, hf_reference
    from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath
    from hfvllm_lab.zoo.shrink import shrunk_path

    directory = shrunk_path(model_type)
    reference = hf_reference(directory)
    settings = EngineSettings(model_dir=directory, device="cpu", dtype="float32", backend="lab",
                              max_model_len=128, max_num_seqs=2)
    with VllmPath(settings) as path:
        outputs = path.generate([g.prompt_token_ids for g in reference], MAX_TOKENS, top_k=TOP_K,
                                prompt_logprobs=True)
        report = path.apply_model(lambda m: m.lab_report)[0]
        scores = {}
        for mode in ("vllm", *hf_modes):
            path.apply_model(lambda m, mode=mode: m.set_attention_mode(mode))
            scores[mode] = path.score([reference[0].prompt_token_ids])[0]
    return dict(reference=reference, outputs=outputs, report=report, scores=scores)


def assert_matches(run) -> None:
    from hfvllm_lab.coverage.child import TOP_K
    from hfvllm_lab.parity import LOGPROB_TOLERANCE, compare_generations

    for ref, out in zip(run["reference"], run["outputs"]):
        parity = compare_generations(ref, out, top_k=TOP_K, logprob_tol=LOGPROB_TOLERANCE["float32"])
        assert parity.ok and parity.reason.startswith("identical tokens"), parity.reason
        assert parity.max_prompt_logprob_diff < LOGPROB_TOLERANCE["float32"]


@pytest.fixture(scope="module")
def deepseek():
    """vLLM counts deepseek_v3 as MLA and, on CPUs without AMX, sizes KV blocks for its own MLA kernel
    (16 tokens), which its paged attention does not take; VLLM_MLA_DISABLE=1 is vLLM's switch off. The
    engine caches vLLM's environment when it starts: drop that cache on both sides of this engine."""
    import vllm.envs as envs

    with pytest.MonkeyPatch.context() as patch:
        envs.disable_envs_cache()
        patch.setenv("VLLM_MLA_DISABLE", "1")
        try:
            yield run_lab("deepseek_v3", hf_modes=("eager", "sdpa"))
        finally:
            envs.disable_envs_cache()


@pytest.fixture(scope="module")
def roberta():
    return run_lab("roberta")


def test_mla_matches_transformers(deepseek):
    assert_matches(deepseek)


def test_mla_values_are_zero_padded_and_recorded(deepseek):
    from transformers import AutoConfig

    from hfvllm_lab.backend.attention import layer_geometries
    from hfvllm_lab.zoo.shrink import shrunk_path

    specs = deepseek["report"].attention
    assert [(s.head_size, s.value_head_size) for s in specs] == [(64, 32)] * len(specs)
    routed = [r for r in deepseek["report"].records if r.kind == "attention"]
    assert routed and all("values zero-padded from 32 to 64 (+33% KV bytes)" in r.reason for r in routed)
    # the KV sizing reads the head size the cache holds (q/k 64), not the config's head_dim (rope part, 32)
    config = AutoConfig.from_pretrained(shrunk_path("deepseek_v3"))
    assert {g[2] for g in layer_geometries(config)} == {64}


def test_hf_attention_inside_the_engine_takes_the_narrower_values(deepseek):
    """The HF-attention override (prompt scoring) runs transformers' eager / sdpa on the unpadded values."""
    paged = deepseek["scores"]["vllm"]
    for mode in ("eager", "sdpa"):
        assert float((deepseek["scores"][mode] - paged).abs().max()) < 1e-4, mode


def test_encoder_head_matches_transformers(roberta):
    assert_matches(roberta)


def test_encoder_head_transform_is_recorded(roberta):
    records = {r.name: r for r in roberta["report"].records}
    transform = records["lm_head"]
    assert (transform.kind, transform.action, transform.original_class) == ("lm_head", "kept", "RobertaLMHead")
    assert "runs as HF code on the hidden states before vLLM's logits processor" in transform.reason
    assert records["lm_head.decoder"].action == "tied"  # the output embedding is vLLM's LM head
    assert records["lm_head.dense"].action == "replaced"  # the transform's Linear is vLLM's, and it runs
    assert "padding_idx + 1" in records["roberta.embeddings"].reason


def test_positions_follow_hfs_numbering_per_forward():
    """Each sequence in a flattened step is numbered as HF numbers that forward: a pad token keeps
    padding_idx and is not counted; decode tokens continue from their position."""
    from transformers.models.roberta.modeling_roberta import RobertaEmbeddings

    from hfvllm_lab.backend.positions import padded_positions

    pad = 1
    prompt = torch.tensor([5, 6, pad, 7, 8])  # a prefill from position 0
    decode = torch.tensor([9])  # another sequence's decode token at position 12
    ids = torch.cat([prompt, decode])
    positions = torch.tensor([0, 1, 2, 3, 4, 12])
    got = padded_positions(ids[None], positions, pad)[0]
    want_prompt = RobertaEmbeddings.create_position_ids_from_input_ids(prompt[None], pad)[0]
    want_decode = RobertaEmbeddings.create_position_ids_from_input_ids(decode[None], pad, 12)[0]
    assert got.tolist() == torch.cat([want_prompt, want_decode]).tolist()


def test_chunked_local_attention_matches_transformers(tmp_path):
    """llama4_text's rope layers attend within chunks (HF's chunked mask; vLLM's ChunkedLocalAttention).
    The shrunk config's 8192-token chunks are never crossed, so chunks of 128 here (vLLM's chunks are
    whole KV blocks): one prompt crosses two chunk boundaries in prefill, one crosses one in decode."""
    import json
    import shutil

    from hfvllm_lab.parity import LOGPROB_TOLERANCE, compare_generations
    from hfvllm_lab.paths.hf_path import HfPath
    from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath
    from hfvllm_lab.zoo.shrink import shrunk_path

    directory = tmp_path / "llama4-chunks-128"
    shutil.copytree(shrunk_path("llama4_text"), directory)
    config = json.loads((directory / "config.json").read_text())
    assert config["layer_types"] == ["chunked_attention", "full_attention"]
    (directory / "config.json").write_text(json.dumps({**config, "attention_chunk_size": 128}))
    text = "The quick brown fox jumps over the lazy dog, twice. " * 6
    hf = HfPath(directory, "cpu", "float32", "auto")
    try:
        reference = hf.generate([text[:300], text[:124]], 10, top_k=5)
    finally:
        hf.close()
    settings = EngineSettings(model_dir=directory, device="cpu", dtype="float32", backend="lab",
                              max_model_len=512, max_num_seqs=2)
    with VllmPath(settings) as path:
        outputs = path.generate([g.prompt_token_ids for g in reference], 10, top_k=5, prompt_logprobs=True)
        routed = [r.reason for r in path.apply_model(lambda m: m.lab_report)[0].records if r.kind == "attention"]
    assert ["chunks of 128" in r for r in routed] == [True, False]  # only the layer HF chunks
    for ref, out in zip(reference, outputs):
        parity = compare_generations(ref, out, top_k=5, logprob_tol=LOGPROB_TOLERANCE["float32"])
        assert parity.ok and parity.reason.startswith("identical tokens"), parity.reason
        assert parity.max_prompt_logprob_diff < LOGPROB_TOLERANCE["float32"]
