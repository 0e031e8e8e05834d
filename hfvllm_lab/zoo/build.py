"""Make a zoo checkpoint on disk: seeded weights, real tokenizer, cached by content hash."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import asdict
from pathlib import Path

from hfvllm_lab.zoo.specs import ZooSpec

# Bump when the way checkpoints are made changes, so stale caches are rebuilt.
BUILD_VERSION = 3


def cache_root() -> Path:
    root = os.environ.get("HFVLLM_LAB_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "hfvllm_lab"


def spec_digest(spec: ZooSpec) -> str:
    import transformers

    payload = json.dumps(
        {"spec": asdict(spec), "build": BUILD_VERSION, "transformers": transformers.__version__},
        sort_keys=True,
    )
    return hashlib.sha256(payload.encode()).hexdigest()[:12]


def checkpoint_dir(spec: ZooSpec) -> Path:
    return cache_root() / "zoo" / f"{spec.name}-{spec_digest(spec)}"


def is_complete(directory: Path) -> bool:
    return (directory / "config.json").is_file() and (directory / "model.safetensors").is_file() and (
        directory / "tokenizer.json"
    ).is_file()


def ensure_checkpoint(spec: ZooSpec) -> Path:
    """Return the checkpoint directory for `spec`, building it first if missing or incomplete."""
    target = checkpoint_dir(spec)
    if is_complete(target):
        return target
    return build_atomically(target, spec.name, lambda staging: write_checkpoint(spec, staging))


def build_atomically(target: Path, name: str, write) -> Path:
    """`write(staging)` into a folder beside `target`, then rename it into place, so a crash never
    leaves a half-written checkpoint that looks complete to the next caller."""
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{name}-", dir=target.parent))
    try:
        write(staging)
        if target.exists():
            shutil.rmtree(target)
        staging.rename(target)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    return target


def build_model(spec: ZooSpec):
    """The seeded random HF model for `spec`, in float32 on the CPU."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    config = AutoConfig.for_model(spec.model_type, **spec.config_kwargs())
    config.architectures = None
    generator_state = torch.random.get_rng_state()
    try:
        torch.manual_seed(spec.seed)
        model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
        perturb_norms(model)
        scale_output_embedding(model, spec.logit_std)
    finally:
        torch.random.set_rng_state(generator_state)
    model.eval()
    return model


def saved_state_dict(model) -> dict:
    """The tensors as `save_pretrained` writes them: transformers 5 reverts its checkpoint
    conversion on save (MoE experts one by one, gpt_neox's head as `embed_out`), as real
    checkpoints store them."""
    from transformers.core_model_loading import revert_weight_conversion

    return revert_weight_conversion(model, model.state_dict())


def perturb_norms(model) -> None:
    """Give norm weights per-channel noise, so a norm built with the wrong width or the wrong
    `w` vs `1 + w` convention changes the outputs instead of hiding behind all-ones weights."""
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name.rsplit(".", 2)[-2] and param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.2)


def scale_output_embedding(model, logit_std: float) -> None:
    """Scale the LM head so logits on real hidden states have roughly `logit_std` spread."""
    import torch

    head = model.get_output_embeddings()
    hidden = head.weight.shape[1]
    with torch.no_grad():
        head.weight.normal_(0.0, logit_std / hidden**0.5)


def write_checkpoint(spec: ZooSpec, directory: Path) -> None:
    from hfvllm_lab.zoo.tokenizer import save_tokenizer

    model = build_model(spec)
    model.config.architectures = [type(model).__name__]
    model.save_pretrained(str(directory))
    save_tokenizer(directory)
    (directory / "zoo.json").write_text(
        json.dumps({"name": spec.name, "digest": spec_digest(spec), "summary": spec.summary}, indent=2)
    )
