"""Quantized variants of the zoo's real model, made offline with compressed-tensors.

Round-to-nearest from the weights alone — no calibration data, no llmcompressor (which pins an older
transformers): compressed-tensors attaches each scheme to the decoder's Linear layers (the tied LM
head and the embeddings stay bf16), the scales are the weights' own max-abs per output channel (or
per group), and compressed-tensors compresses and writes the checkpoint and its quantization_config,
as llmcompressor's presets would.

- ``smollm2-135m-w8a8``: int8 weights per output channel, int8 activations quantized per token at run
  time (vLLM's CPU kernel: oneDNN int8 scaled-mm).
- ``smollm2-135m-w4a16``: int4 weights in groups of 64 (SmolLM2's 576-wide projections do not divide
  into groups of 128), bf16 activations (vLLM's CPU WNA16 kernel).
- ``smollm2-135m-fp8``: fp8 e4m3 weights per output channel, fp8 activations per token (vLLM's CPU
  fp8 scaled-mm, its torch fallback on CPUs without AMX).

Each is cached beside the zoo (``<lab cache>/quantized/<name>-<digest>``), built once (a few seconds
after the base model exists), atomically.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

from hfvllm_lab.errors import ModelNotFoundError

BUILD_VERSION = 1
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "chat_template.jinja", "special_tokens_map.json",
                   "generation_config.json")


@dataclass(frozen=True)
class QuantSpec:
    name: str
    base: str  # a real zoo model
    preset: str  # compressed-tensors preset scheme
    group_size: int | None
    summary: str


QUANT_SPECS: dict[str, QuantSpec] = {
    spec.name: spec
    for spec in (
        QuantSpec("smollm2-135m-w8a8", "smollm2-135m", "W8A8", None,
                  "SmolLM2-135M, int8 weights per channel + int8 activations per token (compressed-tensors)"),
        QuantSpec("smollm2-135m-w4a16", "smollm2-135m", "W4A16", 64,
                  "SmolLM2-135M, int4 weights in groups of 64, bf16 activations (compressed-tensors)"),
        QuantSpec("smollm2-135m-fp8", "smollm2-135m", "FP8_DYNAMIC", None,
                  "SmolLM2-135M, fp8 weights per channel + fp8 activations per token (compressed-tensors)"),
    )
}


def quant_spec(name: str) -> QuantSpec:
    try:
        return QUANT_SPECS[name]
    except KeyError:
        raise ModelNotFoundError(f"{name!r} is not a quantized zoo model ({', '.join(QUANT_SPECS)})") from None


def checkpoint_dir(spec: QuantSpec) -> Path:
    import compressed_tensors

    from hfvllm_lab.zoo.build import cache_root

    payload = f"{spec}|{compressed_tensors.__version__}|build{BUILD_VERSION}"
    return cache_root() / "quantized" / f"{spec.name}-{hashlib.sha256(payload.encode()).hexdigest()[:12]}"


def ensure_quantized(name: str) -> Path:
    """The checkpoint directory of quantized zoo model `name`, built on first use."""
    from hfvllm_lab.zoo import real_model_path
    from hfvllm_lab.zoo.build import build_atomically

    spec = quant_spec(name)
    target = checkpoint_dir(spec)
    if (target / "config.json").is_file() and (target / "zoo.json").is_file():
        return target
    base = real_model_path(spec.base)
    return build_atomically(target, spec.name, lambda staging: write_quantized(spec, base, staging))


def write_quantized(spec: QuantSpec, base: Path, directory: Path) -> None:
    import torch
    from compressed_tensors.compressors import ModelCompressor
    from compressed_tensors.quantization import (
        QuantizationConfig,
        QuantizationScheme,
        QuantizationStatus,
        apply_quantization_config,
    )
    from compressed_tensors.quantization.quant_scheme import PRESET_SCHEMES
    from compressed_tensors.quantization.utils import calculate_qparams, is_module_quantized
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base, dtype=torch.bfloat16)
    arguments = dict(PRESET_SCHEMES[spec.preset])
    if spec.group_size is not None:
        arguments["weights"] = arguments["weights"].model_copy(update={"group_size": spec.group_size})
    scheme = QuantizationScheme(targets=["Linear"], **arguments)
    apply_quantization_config(model, QuantizationConfig(config_groups={"group_0": scheme}, ignore=["lm_head"]))
    with torch.no_grad():
        for module in model.modules():
            if not is_module_quantized(module):
                continue
            args = module.quantization_scheme.weights
            low, high = weight_range(module.weight, args.group_size)
            scale, zero = calculate_qparams(low, high, args)
            module.weight_scale.copy_(scale.to(module.weight_scale.dtype).reshape(module.weight_scale.shape))
            if hasattr(module, "weight_zero_point"):
                module.weight_zero_point.copy_(zero.reshape(module.weight_zero_point.shape))
            module.quantization_status = QuantizationStatus.FROZEN
    compressor = ModelCompressor.from_pretrained_model(model)
    compressor.compress_model(model)
    model.save_pretrained(str(directory))
    compressor.update_config(str(directory))
    for name in TOKENIZER_FILES:
        if (base / name).is_file():
            shutil.copy(base / name, directory / name)
    (directory / "zoo.json").write_text(json.dumps({"name": spec.name, "base": spec.base, "summary": spec.summary,
                                                    "recipe": "round-to-nearest, no calibration data"}, indent=2))


def weight_range(weight, group_size: int | None):
    """Per output channel (or per channel and group) min and max of a weight: round-to-nearest scales
    from the weight alone."""
    w = weight.float()
    if group_size:
        if w.shape[-1] % group_size:
            raise ValueError(f"{w.shape[-1]} input features do not divide into groups of {group_size}")
        w = w.unflatten(-1, (w.shape[-1] // group_size, group_size))
    return w.amin(dim=-1, keepdim=not group_size), w.amax(dim=-1, keepdim=not group_size)


__all__ = ["QUANT_SPECS", "QuantSpec", "ensure_quantized", "quant_spec"]
