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
