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

    def score(self, sequences: list[list[int]]) -> list:
        """Teacher forcing: for each token sequence, the float32 log-probabilities of the next
        token at every position ([tokens, vocab], on the CPU), from one forward pass."""
        import torch

        out = []
        with torch.no_grad():
            for seq in sequences:
                logits = self.model(input_ids=torch.tensor([seq], device=self.device), use_cache=False).logits[0]
                out.append(torch.log_softmax(logits.float(), -1).cpu())
        return out

    def _at(self, position: int) -> dict:
        """The decode step's position_ids, as generate() passes them: some models (Bamba) number a
        one-token forward from 0 when given none, even with a cache behind it."""
        import torch

        if not self._passes_positions():
            return {}
        return {"position_ids": torch.tensor([[position]], device=self.device)}

    def _passes_positions(self) -> bool:
        """Decided once per model (decode loops call _at every step): its forward takes position_ids,
        and its embeddings do not number positions themselves (RoBERTa-style embeddings count from
        padding_idx + 1 and the cache when given none, as this path's prefill does; 0-based ids would
        mix numberings)."""
        import inspect

        from hfvllm_lab.backend.positions import numbers_own_positions

        model = self.model
        if getattr(self, "_positions_for", None) is not model:
            forward = getattr(model, "forward", None)
            self._positions_for = model
            self._positions = (forward is not None and "position_ids" in inspect.signature(forward).parameters
                               and not numbers_own_positions(model))
        return self._positions

    def decode_along(self, sequences: list[list[int]], prompt_lengths: list[int]) -> list:
        """Decoding as a transformers rollout computes it: the prompt in one forward, then one token at a
        time with the model's own KV cache, fed each sequence's own next token. Per sequence the
        [continuation, vocab] float32 log-probabilities (row 0 from the prompt's last position)."""
        import torch

        out = []
        with torch.no_grad():
            for seq, n in zip(sequences, prompt_lengths):
                step = self.model(input_ids=torch.tensor([seq[:n]], device=self.device), use_cache=True)
                rows = [torch.log_softmax(step.logits[0, -1].float(), -1)]
                for i, token in enumerate(seq[n:-1]):
                    step = self.model(input_ids=torch.tensor([[token]], device=self.device),
                                      past_key_values=step.past_key_values, use_cache=True, **self._at(n + i))
                    rows.append(torch.log_softmax(step.logits[0, -1].float(), -1))
                out.append(torch.stack(rows).cpu())
        return out

    def generate(self, prompts: list[str], max_tokens: int, top_k: int = 5) -> list[Generation]:
        return [self._generate_one(p, max_tokens, top_k) for p in prompts]

    def _generate_one(self, prompt: str, max_tokens: int, top_k: int) -> Generation:
        """Plain greedy decoding with the model's own KV cache. No `generate()`: it would merge
        the checkpoint's generation_config (EOS, repetition penalty, ...) into the reference."""
        import torch

        prompt_ids = self.encode(prompt)
        ids = torch.tensor([prompt_ids], device=self.device)
        new: list[int] = []
        top: list[dict[int, float]] = []
        with torch.no_grad():
            out = self.model(input_ids=ids, use_cache=True)
            plp = torch.log_softmax(out.logits[0].float(), -1)
            prompt_lps = [None] + [plp[i, prompt_ids[i + 1]].item() for i in range(len(prompt_ids) - 1)]
            step_lp = plp[-1]
            for _ in range(max_tokens):
                chosen = int(step_lp.argmax())
                values, indices = step_lp.topk(top_k)
                entry = dict(zip(indices.tolist(), values.tolist()))
                entry[chosen] = step_lp[chosen].item()
                new.append(chosen)
                top.append(entry)
                if len(new) == max_tokens:
                    break
                out = self.model(input_ids=torch.tensor([[chosen]], device=self.device),
                                 past_key_values=out.past_key_values, use_cache=True,
                                 **self._at(len(prompt_ids) + len(new) - 1))
                step_lp = torch.log_softmax(out.logits[0, -1].float(), -1)
        return Generation(
            prompt=prompt,
            prompt_token_ids=prompt_ids,
            token_ids=new,
            text=self.tokenizer.decode(new),
            top_logprobs=top,
            prompt_logprobs=prompt_lps,
        )

    def quantization_note(self) -> str:
        """How transformers ran a quantized checkpoint (after a forward): '' for a dense one."""
        for name, module in self.model.named_modules():
            scheme = getattr(module, "quantization_scheme", None)
            weight = getattr(module, "weight", None)
            if scheme is None or weight is None:
                continue
            if weight.dtype.is_floating_point and weight.element_size() >= 2:
                held = f"decompresses the weights to dense {str(weight.dtype).removeprefix('torch.')}"
            else:
                held = f"keeps {str(weight.dtype).removeprefix('torch.')} weights"
            acts = ("fake-quantizes the activations (quantize then dequantize, no quantized kernel)"
                    if getattr(scheme, "input_activations", None) is not None else "runs bf16/float activations")
            return f"transformers {held} and {acts} (e.g. {name})"
        return ""

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

    def capture(self, prompt: str | list[int]) -> dict:
        """Hidden states of one forward over a prompt (text, or its token ids)."""
        import torch

        from hfvllm_lab.probes.capture import HiddenCapture

        token_ids = self.path.encode(prompt) if isinstance(prompt, str) else prompt
        ids = torch.tensor([token_ids], device=self.path.device)
        with HiddenCapture(self.observed()) as capture, torch.no_grad():
            self.path.model(ids)
        return dict(capture.outputs)
