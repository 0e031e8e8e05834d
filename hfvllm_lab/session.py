"""`Session`: the toolkit's face. Builds one vLLM engine over a model and exposes what it did."""

from __future__ import annotations

import contextlib
import warnings
import weakref
from dataclasses import replace
from pathlib import Path

from hfvllm_lab import zoo
from hfvllm_lab.device import checkpoint_dtype, choose_dtype, free_device_bytes, memory_figure, resolve_device
from hfvllm_lab.errors import (
    AttentionPathError,
    DeviceError,
    InputError,
    ProbeUnavailableError,
    UnsupportedModelError,
)
from hfvllm_lab.checks import check_max_tokens, check_memory, check_prompts, vllm_device_type
from hfvllm_lab.paths.engine_args import with_head_dtype
from hfvllm_lab.paths.vllm_path import (
    BACKENDS,
    EngineSettings,
    VllmPath,
    built_backend,
    choose_max_model_len,
    engine_kwargs,
    preflight,
)
from hfvllm_lab.results.attention import AttentionReport
from hfvllm_lab.results.comparison import BisectResult, Comparison
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.memory import MemoryReport
from hfvllm_lab.results.replacements import ReplacementLog
from hfvllm_lab.results.timing import LayerTiming
from hfvllm_lab.assemble import attention_report, memory_report, replacement_log

DEFAULT_PROMPTS = ["Hello, my name is", "The capital of France is", "vLLM runs HuggingFace models by"]
ATTENTION_PATHS = ("vllm", "sdpa", "eager")
# inspect: eager engine, per-layer probes; fast: vLLM-compiled engine, probes off, whole-step timing only.
MODES = ("inspect", "fast")

# Sessions whose engine is alive; a new Session closes them so re-running a notebook cell frees
# the previous engine instead of running out of memory.
_LIVE: "weakref.WeakSet[Session]" = weakref.WeakSet()


class Session:
    """One model on one engine: `replacements`, `memory`, `attention`, `profile()`, `compare()`."""

    def __init__(
        self,
        model: str | Path | None = None,
        *,
        device: str = "auto",
        dtype: str | None = None,
        attention: str = "vllm",
        backend: str = "lab",
        max_model_len: int | None = None,
        max_num_seqs: int = 4,
        tensor_parallel_size: int = 1,
        pipeline_parallel_size: int = 1,
        distributed_executor_backend: str | None = None,
        seed: int = 0,
        trust_remote_code: bool = False,
        hf_attention: str = "auto",
        engine_args: dict | None = None,
        mode: str = "inspect",
        lm_head_dtype: str | None = None,
    ) -> None:
        self._engine: VllmPath | None = None
        # The arguments as given: a rebuild (the dashboard's) starts from them, changing only what it must.
        self.arguments = dict(model=model, device=device, dtype=dtype, attention=attention, backend=backend,
                              max_model_len=max_model_len, max_num_seqs=max_num_seqs,
                              tensor_parallel_size=tensor_parallel_size,
                              pipeline_parallel_size=pipeline_parallel_size,
                              distributed_executor_backend=distributed_executor_backend, seed=seed,
                              trust_remote_code=trust_remote_code, hf_attention=hf_attention,
                              engine_args=dict(engine_args or {}), mode=mode, lm_head_dtype=lm_head_dtype)
        self.edits: list = []  # functions given to apply_model(), re-applied whenever the engine is rebuilt
        if attention not in ATTENTION_PATHS:
            raise AttentionPathError(f"unknown attention {attention!r}: choose one of {', '.join(ATTENTION_PATHS)}")
        if backend not in BACKENDS:
            raise InputError(f"unknown backend {backend!r}: choose one of {', '.join(BACKENDS)}")
        if attention != "vllm" and backend != "lab":
            raise AttentionPathError("HF attention inside the vLLM path needs backend='lab'")
        if mode not in MODES:
            raise InputError(f"unknown mode {mode!r}: choose one of {', '.join(MODES)}")
        if mode == "fast" and attention != "vllm":
            raise AttentionPathError("mode='fast' compiles the model with vLLM's attention; HF attention needs 'inspect'")
        self.mode = mode
        if (max_model_len is not None and max_model_len < 8) or max_num_seqs < 1:
            raise InputError("max_model_len must be >= 8 and max_num_seqs >= 1")
        self.model_dir = zoo.resolve(model)
        self.model_name = str(model) if model is not None else zoo.DEFAULT
        self.device = resolve_device(device)
        engine_kind = vllm_device_type()
        if self.device.split(":")[0] != engine_kind:
            raise DeviceError(f"device {self.device!r} requested, but the installed vLLM runs on {engine_kind!r}")
        self.attention_path = attention
        self.backend = backend
        self.hf_attention = hf_attention
        self.trust_remote_code = trust_remote_code
        if attention != "vllm" and tensor_parallel_size * pipeline_parallel_size > 1:
            raise AttentionPathError("HF attention inside the vLLM path needs one rank (tensor_parallel_size=1, "
                                     "pipeline_parallel_size=1): it scores one prompt with HF's own attention")
        probe_settings = EngineSettings(model_dir=self.model_dir, device=self.device, backend=backend,
                                        tensor_parallel_size=tensor_parallel_size,
                                        pipeline_parallel_size=pipeline_parallel_size,
                                        distributed_executor_backend=distributed_executor_backend,
                                        trust_remote_code=trust_remote_code, mode=mode)
        # Everything refusable without an engine is refused here, while an older Session still runs.
        config = preflight(probe_settings)
        self.dtype, self.dtype_reason = choose_dtype(dtype, self.device, checkpoint_dtype(config))
        if attention == "sdpa":
            from hfvllm_lab.paths.hf_path import choose_hf_attention

            choose_hf_attention(config, "sdpa")
        self.settings = EngineSettings(
            model_dir=self.model_dir, device=self.device, dtype=self.dtype, backend=backend,
            max_num_seqs=max_num_seqs, tensor_parallel_size=tensor_parallel_size,
            pipeline_parallel_size=pipeline_parallel_size, distributed_executor_backend=distributed_executor_backend,
            seed=seed, trust_remote_code=trust_remote_code, extra=with_head_dtype(engine_args, lm_head_dtype),
            mode=mode,
        )
        length, self.max_model_len_reason = choose_max_model_len(config, self.settings, max_model_len,
                                                                  free_device_bytes(self.device))
        self.settings = replace(self.settings, max_model_len=length)
        self.max_model_len = length
        engine_kwargs(self.settings)  # refuses engine_args that would change what runs, before anything closes
        check_memory(config, self.settings, list(_LIVE))
        for other in list(_LIVE):
            warnings.warn(f"closing the previous {other!r} to free its engine", stacklevel=2)
            other.close()
        self._finalizer = None
        self._start_engine()
        _LIVE.add(self)

    # -- engine lifecycle -----------------------------------------------------------------
    def _start_engine(self) -> None:
        """Build (or rebuild) the engine; its memory baseline, records and counters start afresh."""
        if self._finalizer is not None:
            self._finalizer.detach()
        self._before = memory_figure(self.device)
        self._engine = VllmPath(self.settings)
        # Frees the engine if the Session is dropped without close().
        self._finalizer = weakref.finalize(self, VllmPath.close, self._engine)
        try:
            self.engine_notes = list(self._engine.arg_notes)  # what became of each engine_args entry
            self.model_class = self._engine.rpc("lab_model_class")
            built = built_backend(self.model_class)
            if built != self.settings.backend:
                raise UnsupportedModelError(
                    f"backend={self.settings.backend!r} was asked for, but vLLM built {self.model_class} "
                    f"(backend {built!r}); the Session refuses to label one as the other")
            for fn in self.edits:  # a rebuilt engine gets the same edits the judged one had
                self._engine.apply_model(fn, track=False)
            # every rank's (paths/ranks.py orders them); the single-rank views read rank 0's
            self._rank_where = self._engine.rpc_all("lab_rank")
            self._rank_memory = self._engine.rpc_all("lab_memory")
            self._rank_builds = self._engine.rpc_all("lab_build_report")
            self._rank_trees = self._engine.rpc_all("lab_module_tree")
            self._kv_memory, self._build, self._tree = self._rank_memory[0], self._rank_builds[0], self._rank_trees[0]
            self._timing = None
            if self.attention_path != "vllm":
                self._engine.rpc("lab_set_attention_mode", self.attention_path)
            self._engine.rpc("lab_attention_start")
        except BaseException:
            self._engine.close()  # a refused start must not leave an engine behind
            raise

    @contextlib.contextmanager
    def released(self):
        """Close the engine for the duration of the block (its memory goes back to the device),
        then rebuild it; the rebuilt engine's records and attention counters start afresh."""
        self.engine.close()
        try:
            yield
        finally:
            self._start_engine()

    def apply_model(self, fn) -> list:
        """Run `fn(model)` on the model inside the engine (one answer per rank, in rank order; under pipeline
        parallel a rank holds placeholders for the layers other ranks hold, so an edit aimed at one layer
        must skip ranks without it) and keep `fn`: it is
        applied again whenever the Session rebuilds its engine (compare()'s sequential residency),
        so an edit such as an injected defect stays in what is judged. Edit through forward wrappers
        or norm weights: vLLM's CPU linear kernels prepack weights at load time, so writing a Linear's
        `.weight` afterwards changes no output (load_weights() re-packs; see the README)."""
        out = self.engine.apply_model(fn, track=False)
        self.edits.append(fn)
        return out

    def load_weights(self, weights) -> set[str]:
        """Push (name, tensor) pairs into the engine's model, as an RL trainer syncs its weights: the
        first load is done, so any subset loads (the lab backend: single shards of fused layers, single
        experts). Kept as an edit (re-applied after a rebuild); the prefix cache is reset."""
        per_rank = self.apply_model(LoadWeights(list(weights)))
        self.engine.llm.reset_prefix_cache()
        # every rank loads what it holds (pipeline parallel: its stage's layers; the rest it skips)
        return set().union(*per_rank)

    @property
    def engine(self) -> VllmPath:
        if self._engine is None or self._engine.closed:
            raise InputError("this Session is closed; create a new one")
        return self._engine

    def close(self) -> None:
        """Free the engine (and its KV cache); the Session cannot run afterwards."""
        if self._engine is not None:
            self._engine.close()
        _LIVE.discard(self)

    @property
    def closed(self) -> bool:
        return self._engine is None or self._engine.closed

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self.closed else "open"
        layout = self.settings.layout if hasattr(self, "settings") else None
        parallel = (f"tensor_parallel_size={layout.tensor_size}, pipeline_parallel_size={layout.pipeline_size}, "
                    if layout is not None and layout.world > 1 else "")
        return (f"Session({self.model_name!r}, device={self.device!r}, dtype={self.dtype!r}, "
                f"backend={self.backend!r}, attention={self.attention_path!r}, mode={self.mode!r}, {parallel}{state})")

    def _repr_html_(self) -> str:
        from hfvllm_lab.render.html import session_html

        return session_html(self)

    # -- observations ---------------------------------------------------------------------
    @property
    def replacements(self) -> ReplacementLog:
        """Rank 0's log (under tensor / pipeline parallel every rank's is in `ranks`)."""
        log = replacement_log(self.model_name, self.backend, self._build, self._tree, self.model_class)
        return replace(log, rank=self._rank0_label())

    @property
    def memory(self) -> MemoryReport:
        """Rank 0's memory (under tensor / pipeline parallel every rank's is in `ranks`)."""
        before = self._before
        if self.settings.layout.world > 1:  # rank 0 lives in a worker process: its own reading before the build
            from hfvllm_lab.assemble import worker_before

            before = worker_before(self._build, before)
        report = memory_report(self.model_name, self.device, self.backend, before, self._build, self._kv_memory)
        return replace(report, rank=self._rank0_label())

    def _rank0_label(self) -> str:
        from hfvllm_lab.paths.ranks import rank_label

        label = rank_label(self._rank_where[0])
        return f"{label}; every rank: session.ranks" if label else ""

    @property
    def ranks(self):
        """Every rank of a tensor x pipeline parallel engine side by side (`results.ranks.RankReport`): what
        each holds (layer slice, shard bytes, records), its memory, and after profile() its step times."""
        from hfvllm_lab.assemble import rank_report

        layout = self.settings.layout
        notes = []
        if layout.world > 1 and self.backend != "lab":
            repack = ("parameter bytes of this backend count what stays a Parameter after vLLM's CPU kernels repack "
                      "the linear weights; " if self.device.startswith("cpu") else "")
            notes.append(f"{repack}bytes held whole by every tensor rank are measured by the lab backend only, so the "
                         "whole-model figure is not the one-device total")
        executor = self.engine.kwargs.get("distributed_executor_backend") or "in-process"
        return rank_report(self.model_name, self.device, self.backend, layout.describe(), executor, self._before,
                           self._rank_where, self._rank_builds, self._rank_trees, self._rank_memory,
                           self.model_class, self._timing, notes)

    @property
    def attention(self) -> AttentionReport:
        """Selected attention and, per layer, what executed since the Session started."""
        reason = ""
        if self.mode == "fast":
            reason = ("vLLM paged attention; mode='fast': the compiled graph runs attention past the per-layer "
                      "counters, so the call counts are not measured (mode='inspect' counts them)")
        return attention_report("vllm", self.attention_path, self.engine.rpc("lab_attention_counts"), reason)

    def reset_attention_counts(self) -> None:
        self.engine.rpc("lab_attention_start")

    # -- running --------------------------------------------------------------------------
    def _refuse_hf_attention(self, what: str) -> None:
        if self.attention_path != "vllm":
            raise AttentionPathError(
                f"{what} needs vLLM's paged attention: HF {self.attention_path} attention inside the vLLM path "
                "keeps no KV history and cannot separate the sequences of a batch, so it only scores single "
                "prompts (use score(), or Session(attention='vllm'))"
            )

    def generate(self, prompts=None, max_tokens: int = 16) -> list[Generation]:
        prompts = check_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
        check_max_tokens(max_tokens)
        self._refuse_hf_attention("generation")
        return self.engine.generate(prompts, max_tokens)

    def score(self, prompts=None) -> list[Generation]:
        """Prompt logprobs (one sampled token each); one prompt per step under HF attention."""
        prompts = check_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
        if self.attention_path == "vllm":
            return self.engine.generate(prompts, 1)
        return [self.engine.generate([p], 1)[0] for p in prompts]

    def profile(self, prompts=None, max_tokens: int = 8, warmup: int = 1) -> LayerTiming:
        """Per-layer time of prefill and decode steps (warm-up runs excluded)."""
        prompts = check_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
        check_max_tokens(max_tokens)
        self._refuse_hf_attention("profile()")
        for _ in range(warmup):
            self.engine.generate(prompts, min(max_tokens, 2))
        self.engine.rpc("lab_timing_start")
        try:
            self.engine.generate(prompts, max_tokens, prompt_logprobs=False)
        finally:
            data = self.engine.rpc("lab_timing_stop", warmup)
        self._timing = data  # every rank's timing rides along (`data.ranks`) for `ranks`
        return data

    def score_tokens(self, sequences: list[list[int]]) -> list:
        """Teacher forcing on this engine: for each token-id sequence, the full next-token
        log-probabilities at every position ([tokens, vocab] float32 tensors on the CPU)."""
        if not sequences or any(not seq for seq in sequences):
            raise InputError("score_tokens needs non-empty token-id sequences")
        return self.engine.score([list(map(int, seq)) for seq in sequences])

    def decode_scores(self, sequences: list[list[int]], prompt_lengths: list[int], composition: str = "batch") -> list:
        """Decode steps on this engine: each sequence's prompt prefilled, then its continuation decoded
        with the engine's choice forced to the sequence's own tokens, the sequences submitted together
        ("batch"), reversed, or one at a time ("alone"). Per sequence the [continuation, vocab] float32
        log-probabilities each sampling step drew from (row 0 from the prefill)."""
        from hfvllm_lab.paths.engine_runs import forced_decode

        self._refuse_hf_attention("decode_scores()")
        if len(sequences) != len(prompt_lengths) or not sequences:
            raise InputError("decode_scores needs one prompt length per (non-empty) sequence")
        return forced_decode(self.engine, [list(map(int, q)) for q in sequences], list(prompt_lengths),
                             composition=composition).rows

    def sample(self, prompts, *, n: int = 1, max_tokens: int = 32, temperature: float = 1.0, top_p: float = 1.0,
               top_k: int = -1, seed: int | None = 0, logprobs_mode: str = "raw", capture: bool = False):
        """Sampled continuations as vLLM returns them (`paths.engine_runs.SampledRun`): each sampled
        token's logprob in `logprobs_mode` ("raw": the model's distribution; "processed": after
        temperature and top-k/top-p), and with `capture` each step's full raw distribution."""
        from hfvllm_lab.paths.engine_runs import sample

        self._refuse_hf_attention("sample()")
        ids = [p if not isinstance(p, str) else self.engine.llm.get_tokenizer().encode(p) for p in prompts]
        return sample(self.engine, ids, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                      top_k=top_k, seed=seed, capture=capture, logprobs_mode=logprobs_mode)

    def rollout(self, prompts=None, *, n: int = 4, max_tokens: int = 32, temperature: float = 1.0,
                top_p: float = 1.0, top_k: int = -1, seed: int | None = 0, logprobs_mode: str = "raw",
                trainer_dtype: str | None = None, native_floor: bool | None = None, progress=None):
        """Rollout mismatch as RL measures it (`results.rollout.Rollout`): the engine samples, transformers
        (the trainer, in `trainer_dtype`, default the session's) scores the same tokens, and the per-token
        log-ratios are summarised as verl/TRL log them, against a floor of paths right by construction.
        `progress(done, total, what)` is called before each step."""
        from hfvllm_lab.rollout import run_rollout

        prompts = check_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
        check_max_tokens(max_tokens)
        self._refuse_hf_attention("rollout()")
        return run_rollout(self, prompts, n=n, max_tokens=max_tokens, temperature=temperature, top_p=top_p,
                           top_k=top_k, seed=seed, logprobs_mode=logprobs_mode, trainer_dtype=trainer_dtype,
                           native_floor=native_floor, progress=progress)

    def diagnose(self, prompts=None, *, lenses=None, progress=None, **options):
        """Which engine factor causes a mismatch and which flip removes it (`results.diagnosis.Diagnosis`):
        lenses that each flip one factor (decode, batch, prefix caching, chunked prefill, long context,
        LM head precision, dtype, compiled, backend, tensor parallel) on the same sampled sequences."""
        from hfvllm_lab.diagnose import run_diagnosis

        prompts = check_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
        self._refuse_hf_attention("diagnose()")
        return run_diagnosis(self, prompts, lenses=lenses, progress=progress, **options)

    def capture(self, prompt: str) -> dict:
        """Hidden states (module name -> [tokens, features] float32 CPU tensor) of one prefill of
        `prompt` on this engine, in execution order."""
        self._refuse_hf_attention("capture()")
        self._refuse_fast("capture()")
        self.engine.rpc("lab_capture_start")
        try:
            self.engine.generate([prompt], 1)
        finally:
            captures = self.engine.rpc("lab_capture_stop")
        return captures

    def _refuse_fast(self, what: str) -> None:
        if self.mode == "fast":
            raise ProbeUnavailableError(
                f"{what} needs per-module hooks, which vLLM's compiled model does not run; use Session(mode='inspect')"
            )

    def check_bisectable(self) -> None:
        self._refuse_fast("bisect")
        if self.backend == "native":
            raise ProbeUnavailableError(
                "bisect compares module outputs with transformers' modules; vLLM's native decoder layers "
                "return (hidden, residual) pairs and fuse norms, so their outputs are not comparable"
            )

    @property
    def hf_in_child_process(self) -> bool:
        """Whether the HF path must run in a child process: vLLM's built-in Transformers backend
        has patched this model's transformers classes in this process."""
        from hfvllm_lab.paths.hf_side import transformers_patched_by_vllm

        return transformers_patched_by_vllm(self.model_dir, self.trust_remote_code)

    def bisect(self, prompt: str | None = None, tolerance: float | None = None) -> BisectResult:
        """Hidden states of one prefill on both paths; names the first module that differs (in
        reduced precision: the first whose error exceeds transformers' own rounding there)."""
        from hfvllm_lab.compare import bisect_against_hf

        prompt = check_prompts(prompt if prompt is not None else DEFAULT_PROMPTS[:1])[0]
        self.check_bisectable()
        return bisect_against_hf(self, prompt, tolerance)

    def compare(self, prompts=None, max_tokens: int = 16, *, bisect: bool = False, against: str = "hf",
                hf_attention: str | None = None, residency: str = "auto", native_floor: bool | None = None,
                profile: bool = True, reference=None):
        """The HF-native path (or, with against="vllm", a second vLLM run) against this engine:
        free-running greedy tokens, teacher-forced distributions against transformers in float32,
        and in reduced precision a verdict relative to the measured noise floor (a `Comparison`).
        With `reference` (a checkpoint with the same tokenizer: the original of a quantized model, the
        base of a fine-tune) the two models through one lens instead (`results.reference.ReferenceComparison`)."""
        from hfvllm_lab.compare import run_comparison

        if reference is not None:
            from hfvllm_lab.reference import run_reference

            return run_reference(self, reference)

        prompts = check_prompts(prompts if prompts is not None else DEFAULT_PROMPTS)
        check_max_tokens(max_tokens)
        self._refuse_hf_attention("compare()")
        if against not in ("hf", "vllm"):
            raise InputError(f"against must be 'hf' or 'vllm', got {against!r}")
        if residency not in ("auto", "sequential", "both"):
            raise InputError(f"residency must be auto, sequential or both, got {residency!r}")
        if bisect:
            self.check_bisectable()
        return run_comparison(self, prompts, max_tokens, bisect=bisect, against=against,
                              hf_attention=hf_attention or self.hf_attention, residency=residency,
                              native_floor=native_floor, profile=profile)

    def dashboard(self):
        """Controls and tabs over this Session (ipywidgets); see `hfvllm_lab.dashboard.Dashboard`."""
        from hfvllm_lab.dashboard import Dashboard

        return Dashboard(session=self).widget


class LoadWeights:
    """`model.load_weights` with a bucket of (name, tensor) pairs, as an edit: a module-level class, so vLLM's
    multiprocessing executor can pickle it to every worker (it refuses lambdas)."""

    def __init__(self, weights: list) -> None:
        self.weights = weights

    def __call__(self, model):
        return model.load_weights(iter(self.weights))

    def __repr__(self) -> str:
        return f"LoadWeights({len(self.weights)} tensors)"


__all__ = ["Session", "DEFAULT_PROMPTS"]
