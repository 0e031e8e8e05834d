"""One architecture in its own process: shrink it, run transformers float32, run each vLLM path,
and report each step as a JSON line in an events file (the parent applies the timeout).

    python -m hfvllm_lab.coverage.child MODEL_TYPE --paths lab,native,transformers --events FILE

Events: {"event": "shrunk"|"reference"|"start"|"result", ...}; a "result" carries path, verdict,
reason and seconds. The paths run in the order given; vLLM's built-in Transformers backend
patches transformers' classes in its process, so the runner puts it last.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from types import SimpleNamespace

from hfvllm_lab.coverage.report import ERROR, FAIL, PASS, REFUSED, SKIP
from hfvllm_lab.errors import first_line, root_cause

PROMPTS = ["The quick brown fox jumps over the lazy dog, twice.", "Hello world"]
MAX_TOKENS = 8
TOP_K = 5
KV_FALLBACK_BYTES = 64 << 20


class Events:
    def __init__(self, path: Path) -> None:
        self.path = path

    def __call__(self, event: str, **data) -> None:
        with open(self.path, "a") as handle:
            handle.write(json.dumps({"event": event, **data}, default=str) + "\n")
            handle.flush()
            os.fsync(handle.fileno())


def classify(exc: BaseException) -> tuple[str, str]:
    """(verdict, reason) of an exception raised while building or running a path.

    REFUSED: the lab's own UnsupportedModelError / AttentionPathError / WeightsError. VllmPath also
    wraps any engine crash in UnsupportedModelError("vLLM could not build ..."), with the crash as
    its cause and no project error in the chain: that is an ERROR, named by the crash."""
    from hfvllm_lab.errors import AttentionPathError, UnsupportedModelError, WeightsError
    from hfvllm_lab.paths.vllm_path import lab_error_in

    refusals = (UnsupportedModelError, AttentionPathError, WeightsError)
    if isinstance(exc, refusals):
        cause = exc.__cause__
        if cause is not None and lab_error_in(cause) is None and str(exc).startswith("vLLM could not build"):
            root = root_cause(cause)
            return ERROR, f"{type(root).__name__}: {first_line(root)}"
        return REFUSED, f"{type(exc).__name__}: {first_line(exc)}"
    lab = exc.__cause__ and lab_error_in(exc.__cause__)
    if isinstance(lab, refusals):
        return REFUSED, f"{type(lab).__name__}: {first_line(lab)}"
    return ERROR, f"{type(exc).__name__}: {first_line(exc)}"


def hf_reference(directory: Path):
    """transformers float32 greedy generations on PROMPTS (sdpa, or eager where it must be)."""
    from hfvllm_lab.paths.hf_path import HfPath

    try:
        path = HfPath(directory, "cpu", "float32", "auto")
    except Exception:
        path = HfPath(directory, "cpu", "float32", "eager")
    try:
        state = decoding_state(path.model)
        if state != "past_key_values":  # attention-free / stateful models: HfPath's loop, state renamed
            check_causal(path.model)
            path.model = StateAdapter(path.model, state)
        return path.generate(PROMPTS, MAX_TOKENS, top_k=TOP_K)
    finally:
        path.close()


def decoding_state(model) -> str | None:
    """The name under which `model`'s forward returns its decoding state: `past_key_values` (every
    attention model), or what transformers' own `generate` also looks for (`ALL_CACHE_NAMES`): Mamba's
    `cache_params`, RWKV's `state`, Reformer's `past_buckets_states`, ...; None when it returns none.
    A model the probe cannot run is taken as `past_key_values` (HfPath runs it, and says what fails)."""
    import torch
    from transformers.generation.utils import ALL_CACHE_NAMES

    try:
        with torch.no_grad():
            out = model(input_ids=torch.tensor([[1, 2]]), use_cache=True)
    except Exception:
        return "past_key_values"
    return next((name for name in ALL_CACHE_NAMES if getattr(out, name, None) is not None), None)


def check_causal(model) -> None:
    """Refuse (CannotShrinkError, a SKIP) a model whose logits at a position depend on later tokens
    (XLM, XLNet: bidirectional; transformers generates with them through mask or permutation tricks),
    which no causal engine computes."""
    import torch

    from hfvllm_lab.zoo.shrink import CannotShrinkError

    with torch.no_grad():
        prefix = model(input_ids=torch.tensor([[1, 2]]), use_cache=False).logits[0]
        longer = [model(input_ids=torch.tensor([[1, 2, last]]), use_cache=False).logits[0, :2] for last in (3, 4)]
    if not all(torch.allclose(prefix, x, rtol=0, atol=1e-5) for x in longer):
        raise CannotShrinkError(f"not a causal LM: {type(model).__name__}'s logits at a position depend on later "
                                "tokens (bidirectional attention)")


class StateAdapter:
    """What `HfPath` asks of a model — `model(input_ids=..., past_key_values=..., use_cache=True)`
    answering `.logits` and `.past_key_values` — for a model whose decoding state goes by another name
    (fed back under that name, as transformers' `generate` does), or that returns none: then each step
    runs the whole sequence again (its cache is the token ids so far), as `generate` does for such a model."""

    def __init__(self, model, state: str | None) -> None:
        self.model = model
        self.state = state

    def __call__(self, input_ids, past_key_values=None, use_cache: bool = True):
        import torch

        if self.state is None:
            ids = input_ids if past_key_values is None else torch.cat([past_key_values, input_ids], dim=1)
            return SimpleNamespace(logits=self.model(input_ids=ids, use_cache=False).logits, past_key_values=ids)
        kwargs = {} if past_key_values is None else {self.state: past_key_values}
        out = self.model(input_ids=input_ids, use_cache=use_cache, **kwargs)
        return SimpleNamespace(logits=out.logits, past_key_values=getattr(out, self.state))


def run_path(path: str, directory: Path, config, reference) -> tuple[str, str]:
    from hfvllm_lab.parity import LOGPROB_TOLERANCE, compare_generations
    from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath, has_native_class, preflight

    extra = {}
    if path == "native":
        if not has_native_class(config):
            return SKIP, f"vLLM has no native class for {', '.join(config.architectures or [])}"
        extra["model_impl"] = "vllm"  # never let vLLM fall back to its Transformers backend here
    settings = EngineSettings(model_dir=directory, device="cpu", dtype="float32", backend=path, max_model_len=128,
                              max_num_seqs=2, extra=extra)
    try:
        if path == "lab":
            preflight(settings)
        engine = VllmPath(settings)
        try:
            outputs = engine.generate([g.prompt_token_ids for g in reference], MAX_TOKENS, top_k=TOP_K,
                                      prompt_logprobs=True)
        finally:
            engine.close()
    except Exception as exc:
        return classify(exc)
    worst = 0.0
    for i, (ref, out) in enumerate(zip(reference, outputs)):
        parity = compare_generations(ref, out, top_k=TOP_K, logprob_tol=LOGPROB_TOLERANCE["float32"])
        if not parity.ok:
            extra_note = "" if parity.max_prompt_logprob_diff is None else \
                f"; prompt logprobs differ by up to {parity.max_prompt_logprob_diff:.3g}"
            return FAIL, f"prompt {i}: {parity.reason}{extra_note}"
        worst = max([worst, parity.max_prompt_logprob_diff or 0.0])
    return PASS, f"max prompt |Δ logprob| {worst:.2g}"


def _kv_bytes_with_fallback(original):
    """KV sizing that survives configs without attention heads (Mamba, RWKV): a fixed 64 MiB."""

    def kv_cache_bytes(config, settings):
        try:
            return original(config, settings)
        except Exception:
            return KV_FALLBACK_BYTES

    return kv_cache_bytes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfvllm_lab.coverage.child")
    parser.add_argument("model_type")
    parser.add_argument("--paths", default="lab")
    parser.add_argument("--events", required=True)
    args = parser.parse_args(argv)
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    emit = Events(Path(args.events))
    paths = [p for p in args.paths.split(",") if p]

    def all_paths(verdict: str, reason: str) -> int:
        for p in paths:
            emit("result", path=p, verdict=verdict, reason=reason, seconds=None)
        return 0

    began = time.perf_counter()
    from hfvllm_lab.zoo.shrink import CannotShrinkError, shrunk_path

    try:
        directory = shrunk_path(args.model_type)
    except CannotShrinkError as exc:
        return all_paths(SKIP, str(exc))
    except Exception as exc:
        return all_paths(ERROR, f"shrinking crashed: {type(exc).__name__}: {first_line(exc)}")
    emit("shrunk", dir=str(directory), seconds=time.perf_counter() - began)
    try:
        reference = hf_reference(directory)
    except CannotShrinkError as exc:
        return all_paths(SKIP, str(exc))
    except Exception as exc:
        return all_paths(SKIP, f"transformers cannot run the shrunk checkpoint: {type(exc).__name__}: {first_line(exc)}")
    emit("reference", seconds=time.perf_counter() - began)
    from transformers import AutoConfig

    from hfvllm_lab.paths import vllm_path

    vllm_path.kv_cache_bytes = _kv_bytes_with_fallback(vllm_path.kv_cache_bytes)
    config = AutoConfig.from_pretrained(directory)
    for p in paths:
        emit("start", path=p)
        start = time.perf_counter()
        try:
            verdict, reason = run_path(p, directory, config, reference)
        except Exception as exc:  # anything run_path itself did not classify
            verdict, reason = ERROR, f"{type(exc).__name__}: {first_line(exc)}"
        emit("result", path=p, verdict=verdict, reason=reason, seconds=round(time.perf_counter() - start, 2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
