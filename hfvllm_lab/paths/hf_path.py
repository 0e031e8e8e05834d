"""The HF-native path: plain transformers on the same device and dtype, one prompt at a time."""

from __future__ import annotations

import gc
from pathlib import Path

from hfvllm_lab.errors import AttentionPathError
from hfvllm_lab.results.generation import Generation

HF_ATTENTION = ("sdpa", "eager")


def choose_hf_attention(config, requested: str = "auto") -> tuple[str, str]:
    """(implementation, why). sdpa by default; eager where sdpa would drop maths the model uses."""
    text = config.get_text_config()
    needs_eager = getattr(text, "attn_logit_softcapping", None)
    if requested == "auto":
        if needs_eager:
            return "eager", "attention logit soft-capping, which sdpa does not apply"
        return "sdpa", "default"
    if requested not in HF_ATTENTION:
        raise AttentionPathError(f"unknown HF attention {requested!r}: choose auto, sdpa or eager")
    if requested == "sdpa" and needs_eager:
        raise AttentionPathError(
            "sdpa would silently drop this model's attention logit soft-capping; use eager"
        )
    return requested, "requested"


class HfPath:
    """A transformers model loaded with `from_pretrained` (the reference the lab is judged by)."""

    def __init__(self, model_dir: Path, device: str = "cpu", dtype: str = "float32", attention: str = "auto",
                 trust_remote_code: bool = False) -> None:
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

        config = AutoConfig.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.attention, self.attention_reason = choose_hf_attention(config, attention)
        self.device = device
        self.tokenizer = AutoTokenizer.from_pretrained(model_dir, trust_remote_code=trust_remote_code)
        self.model = AutoModelForCausalLM.from_pretrained(
            model_dir,
            dtype=getattr(torch, dtype),
            attn_implementation=self.attention,
            trust_remote_code=trust_remote_code,
        ).to(device)
        self.model.eval()

    def encode(self, prompt: str) -> list[int]:
        return self.tokenizer(prompt)["input_ids"]

    def generate(self, prompts: list[str], max_tokens: int, top_k: int = 5) -> list[Generation]:
        return [self._generate_one(p, max_tokens, top_k) for p in prompts]

    def _generate_one(self, prompt: str, max_tokens: int, top_k: int) -> Generation:
        import torch
        from transformers import GenerationConfig

        ids = torch.tensor([self.encode(prompt)], device=self.device)
        with torch.no_grad():
            prompt_logits = self.model(ids).logits[0].float()
            # Never stop at EOS: the vLLM path runs with ignore_eos, and both must emit max_tokens.
            config = GenerationConfig(
                max_new_tokens=max_tokens,
                do_sample=False,
                eos_token_id=None,
                pad_token_id=self.tokenizer.pad_token_id,
                output_logits=True,
                return_dict_in_generate=True,
            )
            out = self.model.generate(ids, generation_config=config)
        new = out.sequences[0, ids.shape[1]:].tolist()
        top: list[dict[int, float]] = []
        for step_logits, chosen in zip(out.logits, new):
            lp = torch.log_softmax(step_logits[0].float(), -1)
            values, indices = lp.topk(top_k)
            entry = dict(zip(indices.tolist(), values.tolist()))
            entry[chosen] = lp[chosen].item()
            top.append(entry)
        plp = torch.log_softmax(prompt_logits, -1)
        prompt_ids = ids[0].tolist()
        prompt_lps = [None] + [plp[i, prompt_ids[i + 1]].item() for i in range(len(prompt_ids) - 1)]
        return Generation(
            prompt=prompt,
            prompt_token_ids=prompt_ids,
            token_ids=new,
            text=self.tokenizer.decode(new),
            top_logprobs=top,
            prompt_logprobs=prompt_lps,
        )

    def close(self) -> None:
        self.model = None
        gc.collect()
        from hfvllm_lab.device import empty_cache

        empty_cache(self.device)


class HfProbes:
    """Timing, attention counts and hidden-state capture on an `HfPath` model."""

    def __init__(self, path: HfPath) -> None:
        self.path = path
        self.num_layers = path.model.config.get_text_config().num_hidden_layers

    def observed(self):
        from hfvllm_lab.probes.modules import observed_modules

        return observed_modules(self.path.model, self.num_layers)

    def profile(self, prompts: list[str], max_tokens: int, warmup: int = 1):
        from hfvllm_lab.probes.timing import TimingProbe, hf_step_phase

        for _ in range(warmup):
            self.path.generate(prompts[:1], 1)
        probe = TimingProbe(self.path.model, self.observed(), self.path.device, hf_step_phase)
        with probe:
            self.path.generate(prompts, max_tokens)
        return probe.result("hf", warmup)

    def capture(self, prompt: str) -> dict:
        import torch

        from hfvllm_lab.probes.capture import HiddenCapture

        ids = torch.tensor([self.path.encode(prompt)], device=self.path.device)
        with HiddenCapture(self.observed()) as capture, torch.no_grad():
            self.path.model(ids)
        return dict(capture.outputs)

    def attention_counts(self, prompts: list[str], max_tokens: int) -> dict:
        """Per attention module: calls during a generation, and the implementation transformers used."""
        from hfvllm_lab.backend.attention import dispatches_through_interface

        counts: dict[str, int] = {}
        handles = []
        forward_calls = [0]
        handles.append(self.path.model.register_forward_pre_hook(lambda m, a: forward_calls.__setitem__(0, forward_calls[0] + 1)))
        layers = []
        for name, module in self.path.model.named_modules():
            if dispatches_through_interface(type(module)) and isinstance(getattr(module, "layer_idx", None), int):
                counts[name] = 0
                layers.append((module.layer_idx, name, module))
                handles.append(module.register_forward_hook(
                    lambda m, a, o, name=name: counts.__setitem__(name, counts[name] + 1)))
        try:
            self.path.generate(prompts, max_tokens)
        finally:
            for h in handles:
                h.remove()
        impl = self.path.model.config._attn_implementation
        return {"layers": [dict(layer=i, module=n, counts={impl: counts[n]}, backend=impl) for i, n, _ in layers],
                "forward_calls": forward_calls[0], "mode": impl}
