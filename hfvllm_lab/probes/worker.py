"""Probes that run where the model lives: a vLLM worker extension, called with collective_rpc.

Every method returns plain, picklable data: the typed payloads of `probes/payloads.py`, the
build report and result dataclasses, CPU tensors. The same calls work in-process and across
processes under tensor parallelism (one answer per rank).
"""

from __future__ import annotations

import copy

import torch

from hfvllm_lab.backend.records import BuildReport
from hfvllm_lab.device import memory_figure
from hfvllm_lab.paths.ranks import rank_label
from hfvllm_lab.probes.capture import HiddenCapture
from hfvllm_lab.probes.modules import observed_modules
from hfvllm_lab.probes.payloads import AttentionCountsPayload, AttentionLayerPayload, MemoryPayload
from hfvllm_lab.probes.timing import TimingProbe, vllm_step_phase
from hfvllm_lab.probes.tree import module_tree
from hfvllm_lab.results.replacements import ModuleNode
from hfvllm_lab.results.timing import LayerTiming

EXTENSION = "hfvllm_lab.probes.worker.LabWorkerExtension"



class LabWorkerExtension:
    """Mixed into vLLM's worker class; `self` is the worker."""

    # -- where things are ----------------------------------------------------------------
    def _lab_model(self) -> torch.nn.Module:
        return self.model_runner.get_model()

    def _lab_is_lab(self) -> bool:
        return hasattr(self._lab_model(), "lab_report")

    def _lab_strip(self) -> str:
        return "hf" if self._lab_is_lab() else ""

    def _lab_num_layers(self) -> int:
        return self.model_runner.model_config.hf_config.get_text_config().num_hidden_layers

    def _lab_device(self) -> str:
        return str(self.device) if hasattr(self, "device") else "cpu"

    def _lab_observed(self):
        return observed_modules(self._lab_model(), self._lab_num_layers(), self._lab_strip())

    # -- build records, tree, memory -----------------------------------------------------
    def lab_model_class(self) -> str:
        """The class vLLM actually built, as `module.QualName`: what every label is derived from."""
        cls = type(self._lab_model())
        return f"{cls.__module__}.{cls.__qualname__}"

    def lab_build_report(self) -> BuildReport | None:
        """A copy of the lab backend's build report (in-process the caller must not share the
        model's own object); None for the other backends, which keep no records."""
        model = self._lab_model()
        return copy.deepcopy(model.lab_report) if hasattr(model, "lab_report") else None

    def lab_module_tree(self) -> list[ModuleNode]:
        model = self._lab_model()
        records = model.lab_report.records if hasattr(model, "lab_report") else None
        return module_tree(model, records, self._lab_strip())

    def lab_memory(self) -> MemoryPayload:
        """Figures after the KV cache is allocated: exact KV and parameter bytes, allocator/RSS."""
        kv_bytes = 0
        seen = set()
        for cache in getattr(self.model_runner, "kv_caches", []) or []:
            tensors = cache if isinstance(cache, (list, tuple)) else [cache]
            for t in tensors:
                if isinstance(t, torch.Tensor) and t.untyped_storage().data_ptr() not in seen:
                    seen.add(t.untyped_storage().data_ptr())
                    kv_bytes += t.untyped_storage().nbytes()
        model = self._lab_model()
        param_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
        figure = memory_figure(self._lab_device())
        stash = getattr(model, "_lab_stash", None)
        from hfvllm_lab.backend.state import STATE_ATTR

        slots = [getattr(m, STATE_ATTR) for m in model.modules() if hasattr(m, STATE_ATTR)]
        return MemoryPayload(kv_cache_bytes=kv_bytes, param_bytes=param_bytes, process_bytes=figure.bytes,
                             source=figure.source, loadable_copy_bytes=stash.extra_bytes() if stash else 0,
                             state_cache_bytes=sum(v.numel() * v.element_size() for s in slots for v in s.kv_cache),
                             state_bytes_per_request=sum(s.layout.bytes_per_request for s in slots),
                             state_modules=len(slots))

    def lab_rank(self) -> dict:
        """Where this worker sits: global rank, tensor and pipeline rank and sizes."""
        from vllm.distributed import get_pp_group, get_tp_group

        from vllm.distributed.utils import get_pp_indices

        tp, pp = get_tp_group(), get_pp_group()
        # the decoder layers vLLM's partition gives this pipeline stage (every backend's model follows it)
        layers = get_pp_indices(self._lab_num_layers(), pp.rank_in_group, pp.world_size) if pp.world_size > 1 else None
        return {"rank": tp.rank, "tensor_rank": tp.rank_in_group, "tensor_size": tp.world_size,
                "pipeline_rank": pp.rank_in_group, "pipeline_size": pp.world_size,
                "layers": tuple(layers) if layers else None}

    def lab_seed(self, seed: int) -> None:
        """Seed torch's RNG in this worker (the sampler draws from it where a request carries no seed)."""
        torch.manual_seed(seed)

    def lab_pipeline_buffers(self) -> bool:
        """Allocate the buffers a pipeline rank after the first receives hidden states in. vLLM's CPU
        runner allocates them during its warm-up run, which it skips for an eager engine with an explicit
        KV size (the lab's); without them the first step fails. True where this call allocated them."""
        from vllm.distributed import get_pp_group

        runner = self.model_runner
        if get_pp_group().is_first_rank or getattr(runner, "intermediate_tensors", None) is not None:
            return False
        runner.intermediate_tensors = runner.model.make_empty_intermediate_tensors(
            batch_size=runner.max_num_tokens, dtype=runner.model_config.dtype, device=runner.device)
        return True

    # -- attention -----------------------------------------------------------------------
    def lab_attention_start(self) -> None:
        """Reset the per-layer counters and count model forward calls from now on."""
        model = self._lab_model()
        self._lab_forward_calls = 0
        handles = getattr(self, "_lab_attention_handles", [])
        for h in handles:
            h.remove()
        handles = [model.register_forward_pre_hook(self._lab_count_forward)]
        if self._lab_is_lab():
            for attn in self._lab_attention_layers() + self._lab_state_slots():
                attn.lab_counts.clear()
        else:
            # Other backends call `Attention.forward` directly (no module hooks fire), so count
            # through an instance-level wrapper that `lab_attention_start` replaces each time.
            self._lab_hook_counts = {}
            for name, attn in self._lab_vllm_attention():
                self._lab_hook_counts[name] = 0
                vars(attn).pop("forward", None)
                attn.forward = self._lab_counter(name, attn.forward)
        self._lab_attention_handles = handles

    def _lab_count_forward(self, module, args) -> None:
        self._lab_forward_calls += 1

    def _lab_counter(self, name, forward):
        def counted(*args, **kwargs):
            self._lab_hook_counts[name] += 1
            return forward(*args, **kwargs)

        return counted

    def _lab_attention_layers(self):
        from hfvllm_lab.backend.attention import ATTN_ATTR

        return [getattr(m, ATTN_ATTR) for m in self._lab_model().modules() if hasattr(m, ATTN_ATTR)]

    def _lab_state_slots(self):
        from hfvllm_lab.backend.state import STATE_ATTR

        return [getattr(m, STATE_ATTR) for m in self._lab_model().modules() if hasattr(m, STATE_ATTR)]

    def _lab_vllm_attention(self):
        from vllm.model_executor.layers.attention import Attention

        return [(n, m) for n, m in self._lab_model().named_modules() if isinstance(m, Attention)]

    def lab_attention_counts(self) -> AttentionCountsPayload:
        """Per layer: implementation -> calls since `lab_attention_start`."""
        layers = []
        if self._lab_is_lab():
            for attn in self._lab_attention_layers():
                spec = attn.lab_spec
                layers.append(AttentionLayerPayload(
                    layer=spec.layer, module=spec.module, backend=attn.lab_backend, counts=dict(attn.lab_counts),
                    num_heads=spec.num_heads, num_kv_heads=spec.num_kv_heads, head_size=spec.head_size,
                    sliding_window=spec.sliding_window))
            from hfvllm_lab.backend.state import STATE_BACKEND

            for slot in self._lab_state_slots():  # stateful modules: HF code, state in vLLM's state cache
                layers.append(AttentionLayerPayload(layer=slot.layer_idx, module=slot.name, backend=STATE_BACKEND,
                                                    counts=dict(slot.lab_counts)))
            layers.sort(key=lambda row: row.layer)
            mode = self._lab_model().lab_attention_mode
        else:
            from vllm.model_executor.models.utils import extract_layer_index

            for idx, (name, attn) in enumerate(self._lab_vllm_attention()):
                try:  # the model's own layer number (a pipeline stage's layers do not start at 0)
                    idx = extract_layer_index(name)
                except (AssertionError, ValueError):
                    pass
                backend = attn.attn_backend.get_name() if hasattr(attn, "attn_backend") else "vllm"
                layers.append(AttentionLayerPayload(
                    layer=idx, module=name, backend=backend, counts={backend: self._lab_hook_counts.get(name, 0)},
                    num_heads=getattr(attn, "num_heads", None), num_kv_heads=getattr(attn, "num_kv_heads", None),
                    head_size=getattr(attn, "head_size", None),
                    sliding_window=getattr(attn, "sliding_window", None)))
            mode = "vllm"
        return AttentionCountsPayload(layers, getattr(self, "_lab_forward_calls", 0), mode)

    def lab_set_attention_mode(self, mode: str) -> None:
        model = self._lab_model()
        if not hasattr(model, "set_attention_mode"):
            from hfvllm_lab.errors import AttentionPathError

            raise AttentionPathError("only the lab backend can run HF attention inside the vLLM path")
        model.set_attention_mode(mode)

    # -- timing --------------------------------------------------------------------------
    def lab_timing_start(self) -> None:
        self.lab_timing_stop()  # never leave an older probe's hooks behind
        model = self._lab_model()
        # fast mode (vLLM-compiled): module hooks do not run inside the graph, so time whole steps
        # (the model's own __call__ and compute_logits stay outside it) and the LM head only.
        compiled = self._lab_compiled()
        modules = [m for m in self._lab_observed() if m.kind == "lm_head"] if compiled else self._lab_observed()
        from vllm.distributed import get_pp_group

        # a step ends with the logits on the last pipeline stage; before it, with the model's forward
        owner = model if get_pp_group().is_last_rank else None
        self._lab_timing = TimingProbe(model, modules, self._lab_device(), vllm_step_phase,
                                       logits_owner=owner, mode="fast" if compiled else "inspect").attach()

    def _lab_compiled(self) -> bool:
        from vllm.config import CompilationMode

        return self.model_runner.vllm_config.compilation_config.mode != CompilationMode.NONE

    def lab_timing_stop(self, warmup_steps: int = 0) -> LayerTiming | None:
        probe = getattr(self, "_lab_timing", None)
        if probe is None:
            return None
        self._lab_timing = None
        probe.detach()
        from dataclasses import replace

        return replace(probe.result("vllm", warmup_steps), rank=rank_label(self.lab_rank()))

    # -- hidden states -------------------------------------------------------------------
    def lab_capture_start(self) -> None:
        self.lab_capture_stop()
        self._lab_capture = HiddenCapture(self._lab_observed()).__enter__()

    def lab_capture_stop(self) -> dict[str, torch.Tensor] | None:
        capture = getattr(self, "_lab_capture", None)
        if capture is None:
            return None
        self._lab_capture = None
        capture.__exit__(None, None, None)
        return dict(capture.outputs)

    # -- full next-token distributions (teacher forcing) ---------------------------------
    def lab_logprobs_start(self) -> None:
        from hfvllm_lab.probes.logprobs import LogprobCapture

        self.lab_logprobs_stop()
        self._lab_logprobs = LogprobCapture(self._lab_model()).attach()

    def lab_logprobs_stop(self) -> list[torch.Tensor] | None:
        capture = getattr(self, "_lab_logprobs", None)
        if capture is None:
            return None
        self._lab_logprobs = None
        return capture.detach()

    # -- sampling-step distributions (probes/decode.py) -------------------------------------
    def lab_decode_take(self) -> dict[str, torch.Tensor]:
        """What the decode probe captured since the last take, per request key."""
        return self._lab_decode_probe().take()

    def lab_decode_reset(self) -> None:
        self._lab_decode_probe().reset()

    def lab_set_logprobs_mode(self, mode: str) -> str:
        """Switch the live sampler's logprobs_mode (vLLM keeps a copy in its top-k/top-p sampler too);
        returns the previous mode. On the CPU the forward does not depend on it."""
        sampler = self.model_runner.sampler
        previous = sampler.logprobs_mode
        sampler.logprobs_mode = mode
        inner = getattr(sampler, "topk_topp_sampler", None)
        if inner is not None and hasattr(inner, "logprobs_mode"):
            inner.logprobs_mode = mode
        return previous

    def _lab_decode_probe(self):
        from hfvllm_lab.errors import ProbeUnavailableError
        from hfvllm_lab.probes.decode import LabDecodeProbe

        processors = getattr(getattr(getattr(self.model_runner, "input_batch", None), "logitsprocs", None), "all", None)
        probe = next((p for p in processors or () if isinstance(p, LabDecodeProbe)), None)
        if probe is None:
            raise ProbeUnavailableError(
                "the decode probe is not among this engine's logits processors: vLLM's model runner V2 "
                "(the default where Triton is installed) builds them differently; set VLLM_USE_V2_MODEL_RUNNER=0")
        return probe
