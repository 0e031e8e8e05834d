"""Per-layer timing through forward hooks: device events on accelerators, perf_counter on CPU,
one synchronisation per step, hooks removed afterwards even when interrupted."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable

import torch
from torch import nn

from hfvllm_lab.device import StepTimer, is_accelerator
from hfvllm_lab.probes.modules import ObservedModule
from hfvllm_lab.results.timing import DECODE, MIXED, PREFILL, LayerTiming, ModuleTime

STEP = "<step>"


class TimingProbe:
    """Times one model's steps. `root` is the module whose forward starts a step; a step ends
    when `ends_step` returns (the root's forward, or `compute_logits` on vLLM models)."""

    def __init__(
        self,
        root: nn.Module,
        modules: list[ObservedModule],
        device: str,
        classify: Callable[[tuple, dict], str],
        logits_owner: nn.Module | None = None,
        mode: str = "inspect",
    ) -> None:
        self.mode = mode  # "inspect" (eager, per module) or "fast" (compiled: whole steps)
        self.root = root
        self.modules = modules
        self.device = device
        self.classify = classify
        self.logits_owner = logits_owner  # vLLM models: the LM head runs in compute_logits
        self.timer = StepTimer(device)
        self.handles: list = []
        self.phase: str | None = None
        self.samples: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        self.steps: dict[str, int] = defaultdict(int)
        self.hooks_per_step: dict[str, int] = {}
        self._hooks_this_step = 0
        self._original_compute_logits = None
        self.per_hook_seconds = calibrate_hook_cost(device)

    # -- lifecycle ----------------------------------------------------------------------
    def attach(self) -> "TimingProbe":
        self.handles.append(self.root.register_forward_pre_hook(self._step_begin, with_kwargs=True))
        for observed in self.modules:
            if observed.kind == "lm_head" and self.logits_owner is not None:
                continue
            key = observed.name
            self.handles.append(observed.module.register_forward_pre_hook(self._starter(key)))
            self.handles.append(observed.module.register_forward_hook(self._stopper(key)))
        if self.logits_owner is not None:
            self._wrap_compute_logits()
        else:
            self.handles.append(self.root.register_forward_hook(lambda *a: self._step_end()))
        return self

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        if self._original_compute_logits is not None:
            del self.logits_owner.compute_logits  # drop the instance attribute, back to the class's
            self._original_compute_logits = None
        self._flush()

    def __enter__(self) -> "TimingProbe":
        return self.attach()

    def __exit__(self, *exc) -> None:
        self.detach()

    # -- hooks ---------------------------------------------------------------------------
    def _step_begin(self, module, args, kwargs):
        self._flush()
        self.phase = self.classify(args, kwargs)
        self._hooks_this_step = 0
        self.timer.start(STEP)

    def _step_end(self) -> None:
        # compute_logits can run twice in a step (sampling, then prompt logprobs): end it once.
        if self.phase is None or not self.timer.is_open(STEP):
            return
        self.timer.stop(STEP)
        self.hooks_per_step[self.phase] = self._hooks_this_step

    def _starter(self, key: str):
        def hook(module, args):
            if self.phase is not None:
                self._hooks_this_step += 1
                self.timer.start(key)

        return hook

    def _stopper(self, key: str):
        def hook(module, args, output):
            if self.phase is not None:
                self.timer.stop(key)

        return hook

    def _wrap_compute_logits(self) -> None:
        owner = self.logits_owner
        original = owner.compute_logits
        head = next((m.name for m in self.modules if m.kind == "lm_head"), "lm_head")

        def compute_logits(*args, **kwargs):
            if self.phase is None:
                return original(*args, **kwargs)
            self._hooks_this_step += 1
            self.timer.start(head)
            try:
                return original(*args, **kwargs)
            finally:
                self.timer.stop(head)
                self._step_end()

        self._original_compute_logits = original
        owner.compute_logits = compute_logits

    def _flush(self) -> None:
        """Read the previous step's timers (one synchronisation) into the samples."""
        if self.phase is None:
            return
        readings = self.timer.collect()
        if any(key == STEP for key, _ in readings):
            self.steps[self.phase] += 1
            per_key: dict[str, float] = defaultdict(float)
            for key, seconds in readings:
                per_key[key] += seconds
            for key, seconds in per_key.items():
                self.samples[self.phase][key].append(seconds)
        self.phase = None

    # -- result --------------------------------------------------------------------------
    def result(self, path: str, warmup_steps: int) -> LayerTiming:
        rows = []
        step_seconds = {}
        for phase in (PREFILL, DECODE, MIXED):
            samples = self.samples.get(phase)
            if not samples:
                continue
            step = samples.get(STEP, [])
            step_seconds[phase] = sum(step) / len(step) if step else 0.0
            for observed in self.modules:
                values = samples.get(observed.name)
                if values:
                    rows.append(
                        ModuleTime(observed.name, observed.kind, observed.layer, phase, len(values),
                                   sum(values) / len(values))
                    )
        return LayerTiming(
            path=path,
            device=self.device,
            timer="device events" if is_accelerator(self.device) else "perf_counter",
            rows=rows,
            steps=dict(self.steps),
            step_seconds=step_seconds,
            warmup_steps=warmup_steps,
            hooks_per_step=dict(self.hooks_per_step),
            probe_seconds_per_hook=self.per_hook_seconds,
            mode=self.mode,
        )


_HOOK_COST: dict[str, float] = {}


def calibrate_hook_cost(device: str, repeats: int = 200) -> float:
    """Extra seconds one timed module costs: an empty module run with and without the hooks."""
    if device in _HOOK_COST:
        return _HOOK_COST[device]
    probe_module = nn.Identity()
    x = torch.zeros(1)
    timer = StepTimer(device)

    def run() -> float:
        begin = time.perf_counter()
        for _ in range(repeats):
            probe_module(x)
        return time.perf_counter() - begin

    bare = min(run() for _ in range(3))
    handles = [
        probe_module.register_forward_pre_hook(lambda m, a: timer.start("k")),
        probe_module.register_forward_hook(lambda m, a, o: timer.stop("k")),
    ]
    try:
        hooked = min(run() for _ in range(3))
    finally:
        for h in handles:
            h.remove()
        timer.collect()
    _HOOK_COST[device] = max(0.0, (hooked - bare) / repeats)
    return _HOOK_COST[device]


def vllm_step_phase(args: tuple, kwargs: dict) -> str:
    """Classify a step from the scheduler's view, read from the attention metadata vLLM sets in
    the forward context: per sequence, the tokens it contributes (`query_start_loc`) and its
    length after the step (`seq_lens`). One new token on top of already computed ones is a
    decode; more than one (or a first token) is (a chunk of) a prefill; a step holding both is
    "mixed" and kept apart so it skews neither average. Outside a forward context (no metadata),
    falls back to `positions_step_phase`."""
    counts = scheduled_tokens()
    if counts is None:
        return positions_step_phase(args, kwargs)
    return phase_of(*counts)


def phase_of(query_lens: list[int], computed: list[int]) -> str:
    """The step's phase from each sequence's scheduled tokens and tokens computed before it."""
    kinds = {DECODE if q == 1 and c > 0 else PREFILL for q, c in zip(query_lens, computed) if q > 0}
    if not kinds:
        return DECODE
    return kinds.pop() if len(kinds) == 1 else MIXED


def scheduled_tokens() -> tuple[list[int], list[int]] | None:
    """(tokens scheduled, tokens already computed) per sequence of the running step, from the
    first attention metadata in vLLM's forward context that carries `query_start_loc` and
    `seq_lens`; None when there is none (no forward context, or a dummy run)."""
    try:
        from vllm.forward_context import get_forward_context, is_forward_context_available
    except ImportError:
        return None
    if not is_forward_context_available():
        return None
    metadata = get_forward_context().attn_metadata
    if isinstance(metadata, list):  # micro-batched: one dict per micro-batch
        metadata = {k: v for part in metadata for k, v in part.items()}
    for meta in (metadata or {}).values():
        starts = getattr(meta, "query_start_loc_cpu", None)
        if starts is None:
            starts = getattr(meta, "query_start_loc", None)
        seq_lens = getattr(meta, "seq_lens_cpu", None)
        if seq_lens is None:
            seq_lens = getattr(meta, "seq_lens", None)
        if isinstance(starts, torch.Tensor) and isinstance(seq_lens, torch.Tensor):
            starts = starts.tolist()
            seq_lens = seq_lens.tolist()
            n = min(len(starts) - 1, len(seq_lens))
            query = [starts[i + 1] - starts[i] for i in range(n)]
            return query, [max(0, seq_lens[i] - query[i]) for i in range(n)]
    return None


def positions_step_phase(args: tuple, kwargs: dict) -> str:
    """Guess from positions alone (no scheduler view): runs of consecutive positions longer than
    one token, or starting at 0, are prefills. Adjacent decodes of different sequences look like
    one run here, which is why `vllm_step_phase` reads the attention metadata instead."""
    positions = kwargs.get("positions", args[1] if len(args) > 1 else None)
    if positions is None:
        return DECODE
    pos = positions.reshape(-1)
    starts = torch.ones_like(pos, dtype=torch.bool)
    if pos.numel() > 1:
        starts[1:] = pos[1:] != pos[:-1] + 1
    run_ids = torch.cumsum(starts.int(), 0) - 1
    lengths = torch.bincount(run_ids)
    first = pos[starts]
    prefill_runs = (lengths > 1) | (first == 0)
    if bool(prefill_runs.all()):
        return PREFILL
    return MIXED if bool(prefill_runs.any()) else DECODE


def hf_step_phase(args: tuple, kwargs: dict) -> str:
    """HF: a forward without a KV cache to extend is the prefill."""
    past = kwargs.get("past_key_values")
    return PREFILL if past is None or past.get_seq_length() == 0 else DECODE
