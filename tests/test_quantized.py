"""Quantized checkpoints through the lab backend: SmolLM2 quantized offline with compressed-tensors
(int8 W8A8 and int4 W4A16), built with fused layers on vLLM's quantized kernels, judged against vLLM
native on the same checkpoint; the quantized model against its original through one lens; and a
quantization the device has no kernel for refused before an open Session is touched."""

from __future__ import annotations

import json
import shutil
import warnings

import pytest

from hfvllm_lab.rules import NOISE_FACTOR

PROMPTS = ["The capital of France is", "Hello, my name is"]


@pytest.fixture(scope="module")
def base(real_model_dir):
    return real_model_dir


def open_session(name: str, **kwargs):
    from hfvllm_lab import Session

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return Session(name, **kwargs)


@pytest.mark.parametrize("name, scheme, kernel", [
    ("smollm2-135m-w8a8", "W8A8Int8 (int8 weights per channel, int8 activations dynamic per token)",
     "CPUInt8ScaledMMLinearKernel"),
    ("smollm2-135m-w4a16", "WNA16 (int4 weights per group 64, activations not quantized)", "CPUWNA16LinearKernel"),
])
def test_a_quantized_checkpoint_runs_fused_on_the_quantized_kernels_within_noise_of_native(base, name, scheme,
                                                                                         kernel):
    with open_session(name) as s:
        records = s.replacements.records
        fused = [r for r in records if r.action == "fused"]
        assert len(fused) == 60 and all(f"quantized: {scheme}" in r.reason for r in fused), fused[0].reason
        linears = [r for r in records if r.kind == "linear" and r.action == "replaced"]
        assert linears and all(f"kernel {kernel}" in r.reason for r in linears), linears[0].reason
        assert s.replacements.options["quantization"].startswith("compressed-tensors")
        assert "quantized checkpoint" in s.memory.note and "against" in s.memory.note
        cmp = s.compare(PROMPTS, 8, profile=False)
    assert cmp.verdict.status == "within noise", cmp.verdict
    assert cmp.verdict.ratio <= NOISE_FACTOR
    assert [f.path for f in cmp.teacher.floors] == ["transformers (bfloat16)", "vLLM native (bfloat16)"]
    assert any("quantized checkpoint: transformers decompresses the weights" in n for n in cmp.teacher.notes)
    assert cmp.prompts[0].vllm.text.startswith(" Paris")


def test_the_quantized_model_against_its_original_through_one_lens(base):
    from hfvllm_lab import InputError

    with open_session("smollm2-135m-w8a8") as s:
        ref = s.compare(reference="smollm2-135m")
        with pytest.raises(InputError, match="different tokenizer"):
            s.compare(reference="llama")  # the zoo's byte-level tokenizer
        assert s.generate(["still serving"], 1)[0].token_ids
    assert ref.tokens > 400 and 0 < ref.kl_median <= ref.kl_mean <= ref.kl_p99 <= ref.kl_max
    assert 0.5 < ref.top1_agreement < 1.0  # quantization moves some, not most, top tokens
    assert ref.delta_ppl_low <= ref.delta_ppl <= ref.delta_ppl_high
    assert ref.ppl > 1 and ref.ppl_reference > 1 and len(ref.kl_per_position) == ref.tokens
    drift = {d.module: d.relative_error for d in ref.drift}
    assert len(drift) > 100 and drift["model.embed_tokens"] == 0.0  # the embedding stays bf16: no drift
    assert all(v > 0 for name, v in drift.items() if name.endswith((".self_attn", ".mlp")))  # quantized Linears
    assert "delta perplexity" in repr(ref) and "hvl-drift" in ref._repr_html_()
    data = json.loads(json.dumps(ref.to_dict(), default=str))
    assert data["reference"] == "smollm2-135m" and len(ref.to_frame()) == 1
    assert len(ref.plot().axes) == 2


def test_a_quantization_without_a_kernel_here_is_refused_up_front(base, tmp_path):
    """NVFP4 (4-bit float weights and activations) has no CPU kernel in vLLM 0.32: refused by name before
    the open Session closes (vLLM's CPU platform lists no unsupported methods; the check builds one layer
    of each Linear with the checkpoint's quantization config)."""
    from compressed_tensors.quantization import QuantizationConfig, QuantizationScheme
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES

    from hfvllm_lab import UnsupportedModelError, zoo

    fake = tmp_path / "nvfp4"
    shutil.copytree(zoo.path("smollm2-135m-w8a8"), fake)
    config = json.loads((fake / "config.json").read_text())
    scheme = QuantizationScheme(targets=["Linear"], **PRESET_SCHEMES["NVFP4"])
    quant = QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"], format="nvfp4-pack-quantized")
    config["quantization_config"] = {**quant.model_dump(mode="json"), "quant_method": "compressed-tensors"}
    (fake / "config.json").write_text(json.dumps(config))
    with open_session("llama") as open_one:
        with pytest.raises(UnsupportedModelError, match=r"'compressed-tensors'.*no kernel for it on cpu.*NVFP4"):
            open_session(str(fake))
        assert not open_one.closed and open_one.generate(["x"], 1)[0].token_ids
