"""The vLLM-engine path: build an in-process `vllm.LLM`, generate, reach the model, tear down."""

from __future__ import annotations

import gc
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from hfvllm_lab.errors import InputError, LabError, UnsupportedModelError
from hfvllm_lab.paths.engine_args import MergedArgs, merge_engine_args
from hfvllm_lab.probes.payloads import DECODE_PROBE
from hfvllm_lab.probes.worker import EXTENSION
from hfvllm_lab.results.generation import Generation

BACKENDS = ("lab", "transformers", "native")


@dataclass(frozen=True)
class EngineSettings:
    """Everything that decides how the engine is built."""

    model_dir: Path
    device: str = "cpu"
    dtype: str = "float32"
    backend: str = "lab"
    max_model_len: int = 256
    max_num_seqs: int = 4
    tensor_parallel_size: int = 1
    pipeline_parallel_size: int = 1
    distributed_executor_backend: str | None = None  # "mp" | "ray"; None: vLLM's choice ("mp" for several ranks)
    seed: int = 0
    trust_remote_code: bool = False
    extra: dict[str, Any] = field(default_factory=dict)
    mode: str = "inspect"  # "inspect": eager, probes on; "fast": vLLM-compiled, whole-step timing only

    @property
    def layout(self):
        from hfvllm_lab.paths.ranks import RankLayout

        return RankLayout(self.tensor_parallel_size, self.pipeline_parallel_size)


def kv_cache_bytes(config, settings: EngineSettings) -> int:
    """KV bytes for `max_num_seqs` sequences of `max_model_len` tokens, rounded up to whole
    blocks with headroom, instead of vLLM's CPU default of ~90% of RAM."""
    from hfvllm_lab.backend.attention import layer_geometries

    elem = 4 if settings.dtype == "float32" else 2
    per_token = sum(2 * kv_heads * head_dim * elem for _, kv_heads, head_dim in layer_geometries(config.get_text_config()))
    block = 128
    tokens = (math.ceil(settings.max_model_len / block) + 1) * block * settings.max_num_seqs
    return 2 * tokens * per_token + (8 << 20)


# The KV cache a default max_model_len may take, as a share of the device's free memory.
KV_SHARE = 0.05
# The config keys vLLM derives a model's context length from: the smallest present wins, and
# model_max_length, where given, decides (vLLM's derive_max_model_len_and_key). Rope scaling can only
# raise vLLM's figure, so leaving it out keeps the default within what vLLM accepts.
POSITION_KEYS = ("max_position_embeddings", "n_positions", "max_seq_len", "seq_length", "model_max_length",
                 "max_target_positions", "max_sequence_length", "max_seq_length", "seq_len")


def choose_max_model_len(config, settings: EngineSettings, requested: int | None, free_bytes: int) -> tuple[int, str]:
    """(max_model_len, why): as requested, else the model's own context length, capped (in whole
    128-token blocks) so the KV cache of `max_num_seqs` sequences takes at most KV_SHARE of free memory."""
    if requested is not None:
        return requested, "requested"
    text = config.get_text_config()
    found = [v for k in POSITION_KEYS if isinstance(v := getattr(text, k, None), int) and v > 0]
    override = getattr(text, "model_max_length", None)
    own = override if isinstance(override, int) and override > 0 else min(found, default=None)
    if own is None:
        own, source = 2048, "the config names no context length; 2048"
    else:
        source = f"the model's context length {own}"
    length, block = own, 128
    probe = lambda n: kv_cache_bytes(config, replace(settings, max_model_len=n))  # noqa: E731
    while length > block and probe(length) > KV_SHARE * free_bytes:
        length = max(block, (length // 2) // block * block)
    if length == own:
        return length, f"auto: {source}"
    if probe(length) > KV_SHARE * free_bytes:
        return length, (f"auto: {source}, cut to one block ({length}): even then the KV cache of "
                        f"{settings.max_num_seqs} sequences (~{probe(length) >> 20} MiB) is over {KV_SHARE:.0%} of "
                        "free memory")
    return length, (f"auto: {source}, capped at {length} so the KV cache of {settings.max_num_seqs} sequences "
                    f"(~{probe(length) >> 20} MiB) stays under {KV_SHARE:.0%} of free memory")


def estimated_engine_bytes(config, settings: EngineSettings) -> int:
    """Parameters (the checkpoint's tensors, rescaled to the engine dtype) plus the KV cache."""
    from hfvllm_lab.device import checkpoint_dtype

    weights = sum(f.stat().st_size for f in Path(settings.model_dir).glob("*.safetensors"))
    stored = 4 if checkpoint_dtype(config) in (None, "float32") else 2
    wanted = 4 if settings.dtype == "float32" else 2
    return weights * wanted // stored + kv_cache_bytes(config, settings)


def engine_kwargs(settings: EngineSettings) -> MergedArgs:
    """The Session's own `vllm.LLM` arguments with the user's engine_args merged on top
    (`paths/engine_args.py`: refused where they would change what runs or can be observed)."""
    from transformers import AutoConfig

    from hfvllm_lab.backend import ARCH, ARCH_HYBRID

    if settings.backend not in BACKENDS:
        raise InputError(f"unknown backend {settings.backend!r}: choose one of {', '.join(BACKENDS)}")
    config = AutoConfig.from_pretrained(settings.model_dir, trust_remote_code=settings.trust_remote_code)
    if settings.backend == "lab" and settings.tensor_parallel_size > 1:
        from hfvllm_lab.backend.attention import check_tensor_parallel

        # Checked here too: inside worker processes the error would reach us only as a log line.
        check_tensor_parallel(config.get_text_config(), settings.tensor_parallel_size)
    kwargs: dict[str, Any] = dict(
        model=str(settings.model_dir),
        dtype=settings.dtype,
        max_model_len=settings.max_model_len,
        max_num_seqs=settings.max_num_seqs,
        seed=settings.seed,
        trust_remote_code=settings.trust_remote_code,
        # inspect: eager, because per-layer probes need Python hooks to run on every step, which
        # compiled graphs skip. fast: vLLM compiles the model (the lab's stack opts in).
        enforce_eager=settings.mode != "fast",
        tensor_parallel_size=settings.tensor_parallel_size,
        pipeline_parallel_size=settings.pipeline_parallel_size,
        # Probes run inside the workers, reached through collective_rpc.
        worker_extension_cls=EXTENSION,
        # Off so every prompt is really prefilled: cached prefixes would hide prefill work from
        # timing, and HF-attention scoring writes no KV that a later request could reuse.
        enable_prefix_caching=False,
        # Ignore the checkpoint's generation_config: the lab compares pure greedy decoding.
        generation_config="vllm",
        # Sampling-step distributions and forced decoding (probes/decode.py), on every backend.
        logits_processors=[DECODE_PROBE],
    )
    if settings.layout.world > 1:  # several ranks: worker processes on vLLM's multiprocessing or Ray executor
        kwargs["distributed_executor_backend"] = settings.distributed_executor_backend or "mp"
    # On every device: without it the CPU backend reserves ~90% of RAM and GPUs a fixed share of
    # the card, leaving no room for the HF path a notebook compares against.
    kwargs["kv_cache_memory_bytes"] = kv_cache_bytes(config, settings)
    arch = ARCH
    if settings.backend == "lab":
        from hfvllm_lab.backend.state import model_keeps_state

        # modules keeping state outside attention need the hybrid class (vLLM reads is_hybrid from it)
        arch = ARCH_HYBRID if model_keeps_state(settings.model_dir, config, settings.trust_remote_code) else ARCH
        kwargs["hf_overrides"] = {"architectures": [arch]}
    elif settings.backend == "transformers":
        kwargs["model_impl"] = "transformers"
    merged = merge_engine_args(kwargs, settings.extra, backend=settings.backend, mode=settings.mode, lab_arch=arch)
    if arch == ARCH_HYBRID and merged.kwargs.get("enable_prefix_caching"):
        raise InputError(
            "enable_prefix_caching=True: this model's modules keep state between tokens, and the lab keeps one "
            "state per request, not one per cached block, so a cached prefix could not restore it; leave it off")
    return merged


def preflight(settings: EngineSettings):
    """Everything that can be refused without building an engine: the config loads, the device has
    kernels for its quantization, the lab backend can build the architecture, tensor parallelism fits
    the heads, the device's attention runs the head size. Returns the config. Called before an older
    Session is closed."""
    from transformers import AutoConfig

    try:
        config = AutoConfig.from_pretrained(settings.model_dir, trust_remote_code=settings.trust_remote_code)
    except Exception as exc:
        raise UnsupportedModelError(f"{settings.model_dir}: transformers cannot read its config: {exc}") from exc
    _check_vllm_reads_config(settings)
    from hfvllm_lab.backend.quant import check_quantization

    check_quantization(settings.model_dir, config, "auto", settings.device, settings.trust_remote_code)
    text = config.get_text_config()
    if settings.backend == "lab":
        from hfvllm_lab.backend.attention import check_tensor_parallel
        from hfvllm_lab.backend.model import check_config, check_supported, hf_causal_lm_class

        check_supported(hf_causal_lm_class(config, settings.trust_remote_code))
        check_config(text)
        check_tensor_parallel(text, settings.tensor_parallel_size)
        if settings.pipeline_parallel_size > 1:
            from hfvllm_lab.backend.pipeline import check_pipeline

            check_pipeline(text, settings.pipeline_parallel_size,
                           hf_causal_lm_class(config, settings.trust_remote_code).__name__)
        if settings.layout.world > 1:
            from hfvllm_lab.backend.state import model_keeps_state, refuse_tensor_parallel

            if model_keeps_state(settings.model_dir, config, settings.trust_remote_code):
                refuse_tensor_parallel(settings.model_dir, config, settings.trust_remote_code,
                                       settings.tensor_parallel_size, settings.pipeline_parallel_size)
    check_parallel_setup(settings)
    if settings.device.startswith("cpu"):
        from vllm.v1.attention.backends.cpu_attn import CPUAttentionBackend

        from hfvllm_lab.backend.attention import layer_geometries

        supported = CPUAttentionBackend.get_supported_head_sizes()
        for head_size in sorted({g[2] for g in layer_geometries(text)}):
            if head_size not in supported:
                raise UnsupportedModelError(
                    f"head size {head_size} is not run by vLLM's CPU attention (supported: "
                    f"{', '.join(map(str, supported))})"
                )
    return config


EXECUTORS = ("mp", "ray")


def check_parallel_setup(settings: EngineSettings) -> None:
    """Sizes, executor and mode that can run together, refused before any engine starts."""
    layout = settings.layout
    if settings.tensor_parallel_size < 1 or settings.pipeline_parallel_size < 1:
        raise InputError("tensor_parallel_size and pipeline_parallel_size must be >= 1")
    executor = settings.distributed_executor_backend
    if executor is not None and executor not in EXECUTORS:
        raise InputError(f"distributed_executor_backend={executor!r}: choose one of {', '.join(EXECUTORS)}")
    if executor == "ray":
        from hfvllm_lab.paths.ray_cluster import check_ray

        check_ray()
    if layout.pipeline_size > 1 and settings.mode == "fast" and settings.backend == "lab":
        raise InputError("pipeline_parallel_size > 1 runs the lab backend eagerly (mode='inspect'): its compiled stack "
                         "hands no hidden states between ranks")


def _check_vllm_reads_config(settings: EngineSettings) -> None:
    """vLLM parses the config again, with config classes of its own for some model types; a
    checkpoint it cannot read would otherwise fail deep inside the engine's start-up."""
    import vllm
    from vllm.transformers_utils.config import get_config

    try:
        get_config(str(settings.model_dir), trust_remote_code=settings.trust_remote_code)
    except Exception as exc:  # noqa: BLE001 - any parse failure is the refusal's reason
        from hfvllm_lab.errors import first_line, root_cause

        root = root_cause(exc)
        raise UnsupportedModelError(
            f"vLLM {vllm.__version__} cannot read this checkpoint's config, though transformers can "
            f"({type(root).__name__}: {first_line(root, 200)})"
        ) from exc


def built_backend(model_class: str) -> str:
    """Which of BACKENDS a built model class (`module.QualName`) belongs to."""
    if model_class.startswith("hfvllm_lab."):
        return "lab"
    if model_class.startswith("vllm.model_executor.models.transformers"):
        return "transformers"
    return "native"


def lab_error_in(exc: BaseException) -> LabError | None:
    """The project's own error somewhere in an exception's cause chain (vLLM wraps them)."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, LabError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None


class VllmPath:
    """One in-process engine. `close()` frees it so the next one can start in this process."""

    def __init__(self, settings: EngineSettings) -> None:
        from hfvllm_lab.paths.env import prepare_vllm_environment

        prepare_vllm_environment()
        from hfvllm_lab.backend import register_in_process

        register_in_process()
        from vllm import LLM

        self.settings = settings
        merged = engine_kwargs(settings)
        self.kwargs, self.arg_notes = merged.kwargs, merged.notes
        self.untracked_calls = 0  # apply_model calls made directly on this engine (maybe edits)
        self.layout = settings.layout
        from hfvllm_lab.paths.cpu_binding import bound_threads, plan_binding

        binding = plan_binding(self.layout.world, settings.device)
        if binding.note:
            self.arg_notes = [*self.arg_notes, binding.note]
        if self.layout.world > 1 and self.kwargs.get("distributed_executor_backend") == "ray":
            from hfvllm_lab.paths.ray_cluster import cluster_note

            self.arg_notes = [*self.arg_notes, cluster_note()]
        try:
            with bound_threads(binding):
                self.llm = LLM(**self.kwargs)
        except Exception as exc:
            gc.collect()
            lab = lab_error_in(exc)
            if lab is not None:
                raise type(lab)(str(lab)) from exc
            from hfvllm_lab.paths.start_failure import start_failure

            raise start_failure(exc, settings) from exc
        if self.layout.pipeline_size > 1:
            try:
                allocated = self.llm.collective_rpc("lab_pipeline_buffers")
            except BaseException:
                self.close()  # never leave an engine's workers behind
                raise
            if any(allocated):
                self.arg_notes = [*self.arg_notes, (
                    "pipeline buffers allocated by the lab on ranks after the first: vLLM's CPU runner allocates them "
                    "in a warm-up run it skips for an eager engine with an explicit KV cache size")]

    @property
    def closed(self) -> bool:
        return self.llm is None

    def apply_model(self, fn: Callable, *, track: bool = True) -> list:
        """Run `fn(model)` on the model inside each worker (one answer per rank). Counted in
        `untracked_calls`: a rebuild of this engine could not repeat them (Session.apply_model can)."""
        if track:
            self.untracked_calls += 1
        if self.layout.world > 1:  # workers in other processes: vLLM pickles fn, and plain pickle refuses lambdas
            fn = Cloudpickled(fn)
        return self.llm.apply_model(fn)

    def rpc(self, method: str, *args) -> Any:
        """Call a probe method of the worker extension on every rank; one answer (paths/ranks.py): the
        last pipeline stage's for probes of the logits, the stages' merged for probes each stage answers
        for its own layers, rank 0's otherwise."""
        from hfvllm_lab.paths.ranks import merge_answers

        return merge_answers(method, self.rpc_all(method, *args), self.layout)

    def rpc_all(self, method: str, *args) -> list:
        """Every rank's answer, in rank order (rank = pipeline rank x tensor size + tensor rank)."""
        try:
            return self.llm.collective_rpc(method, args=args)
        except Exception as exc:
            lab = lab_error_in(exc)
            if lab is not None and lab is not exc:
                raise type(lab)(str(lab)) from exc
            raise

    def generate(
        self, prompts: list[str | list[int]], max_tokens: int, top_k: int = 5, prompt_logprobs: bool = True
    ) -> list[Generation]:
        """Greedy generation; a prompt is text, or token ids given to the engine as they are."""
        from vllm import SamplingParams

        params = SamplingParams(
            max_tokens=max_tokens,
            temperature=0.0,
            ignore_eos=True,
            logprobs=top_k,
            prompt_logprobs=0 if prompt_logprobs else None,
        )
        outputs = self.run(prompts, params)
        return [to_generation(prompt if isinstance(prompt, str) else "", out) for prompt, out in zip(prompts, outputs)]

    def run(self, prompts: list[str | list[int]], params) -> list:
        """`LLM.generate` with one SamplingParams or one per prompt; vLLM's RequestOutputs in order.
        An interrupted or failed call leaves no request behind; the lab's own errors surface as such."""
        try:
            inputs = [p if isinstance(p, str) else {"prompt_token_ids": list(p)} for p in prompts]
            return self.llm.generate(inputs, params, use_tqdm=False)
        except KeyboardInterrupt:
            self.abort_unfinished()
            raise
        except Exception as exc:
            self.abort_unfinished()
            lab = lab_error_in(exc)
            if lab is not None:
                raise type(lab)(str(lab)) from exc
            raise

    def score(self, sequences: list[list[int]]) -> list:
        """Teacher forcing: each token sequence prefilled on its own; the full next-token
        log-probabilities at every position ([tokens, vocab] float32 on the CPU), as computed
        from the model's own `compute_logits`."""
        from hfvllm_lab.errors import ProbeUnavailableError

        self.rpc("lab_logprobs_start")
        try:
            for seq in sequences:
                self.generate([seq], 1, top_k=1, prompt_logprobs=False)
        finally:
            scores = self.rpc("lab_logprobs_stop") or []
        if len(scores) != len(sequences) or any(s.shape[0] < len(q) for s, q in zip(scores, sequences)):
            raise ProbeUnavailableError(
                f"the engine's prefills did not cover the sequences ({[tuple(s.shape) for s in scores]} for "
                f"lengths {[len(q) for q in sequences]}): a prompt served from the prefix cache, or a step that "
                "held another sequence's tokens?"
            )
        return [s[: len(q)] for s, q in zip(scores, sequences)]

    def abort_unfinished(self) -> None:
        """Drop requests an interrupted `generate` left in the engine, so the next call starts clean."""
        engine = self.llm.llm_engine
        ids = list(engine.output_processor.request_states)
        if ids:
            engine.abort_request(ids, internal=True)

    def close(self) -> None:
        llm, self.llm = getattr(self, "llm", None), None
        if llm is None:
            return
        try:
            llm.llm_engine.engine_core.shutdown()
        finally:
            del llm
            gc.collect()
            from hfvllm_lab.device import empty_cache

            empty_cache(self.settings.device)

    def __enter__(self) -> "VllmPath":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class Cloudpickled:
    """A function carried to worker processes by cloudpickle (lambdas and closures included): vLLM's
    multiprocessing executor sends what it runs with plain pickle."""

    def __init__(self, fn: Callable) -> None:
        import cloudpickle

        self.payload = cloudpickle.dumps(fn)

    def __call__(self, model):
        import cloudpickle

        return cloudpickle.loads(self.payload)(model)


def to_generation(prompt: str, out) -> Generation:
    completion = out.outputs[0]
    top = [{tok: lp.logprob for tok, lp in step.items()} for step in (completion.logprobs or [])]
    prompt_lps: list[float | None] = []
    ids = list(out.prompt_token_ids)
    for i, step in enumerate(out.prompt_logprobs or []):
        prompt_lps.append(None if step is None else step[ids[i]].logprob)
    return Generation(
        prompt=prompt,
        prompt_token_ids=ids,
        token_ids=list(completion.token_ids),
        text=completion.text,
        top_logprobs=top,
        prompt_logprobs=prompt_lps,
    )


def has_native_class(config) -> bool:
    """Whether vLLM has its own model class for this checkpoint's architecture."""
    from vllm.model_executor.models import ModelRegistry

    archs = getattr(config, "architectures", None) or []
    supported = set(ModelRegistry.get_supported_archs())
    return any(a in supported and not a.startswith("Transformers") for a in archs)
