"""The lenses: each flips one engine factor with the rest fixed, on the same sampled sequences. Arm 0
is the Session's own setting; a lens names its factor when a flip goes beyond noise while arm 0 does
not, and a remedy when a flip comes back within noise (rules.lens_status)."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace

from hfvllm_lab.diagnose.context import Shared, arm_failure
from hfvllm_lab.paths.hf_scoring import continuation_rows, decode_step_rows
from hfvllm_lab.noise import kl_per_position
from hfvllm_lab.results.diagnosis import ArmResult, LensResult
from hfvllm_lab.rules import LENS_FAILED, LENS_UNAVAILABLE, lens_status

CHUNK_TOKENS = 64
LONG_DECODE_TOKENS = 32
BUCKET_EDGES = (0, 256, 512, 1024, 2048)


def finish(lens: LensResult, settable: bool = True) -> LensResult:
    """Status from the arms that ran (rules.lens_status; `settable`: the lens flips an engine setting
    the user chooses, not a property of the workload); KL of arm 0 against each arm that has rows."""
    judged = [(a.name, a.verdict) for a in lens.arms if a.verdict is not None]
    if len(judged) < 2 or lens.arms[0].verdict is None:
        notes = [n for a in lens.arms for n in a.notes]
        failed = [n for n in notes if n.startswith("failed")]
        lens.status = LENS_FAILED if failed else LENS_UNAVAILABLE
        lens.reason = lens.reason or "; ".join(failed or [n for n in notes if n.startswith("could not run")]) \
            or "fewer than two arms ran"
        return lens
    lens.status, lens.reason = lens_status(judged, settable)
    return lens


def unavailable(name: str, factor: str, why: str) -> LensResult:
    return LensResult(name, factor, status=LENS_UNAVAILABLE, reason=why)


def decode(shared: Shared) -> LensResult:
    """The same positions teacher-forced in one prefill per sequence, and produced by decode steps."""
    lens = LensResult("decode", "prefill vs decode steps (KV cache, decode attention), each sequence alone")
    begin = time.perf_counter()
    scores = shared.session.score_tokens(shared.sequences)
    prefill = [continuation_rows(s, n, len(q)) for s, q, n in zip(scores, shared.sequences, shared.prompt_lengths)]
    lens.arms.append(shared.judge("prefill", "this Session's engine, each sequence teacher-forced in one prefill",
                                  prefill, seconds=time.perf_counter() - begin))
    alone = shared.session_arm("alone")
    lens.arms.append(shared.judge("decode steps", "this Session's engine, forced decode, one sequence at a time",
                                  alone["rows"], seconds=alone["seconds"]))
    lens.kl_between = [None, _kl_between(prefill, alone["rows"])]
    return finish(lens, settable=False)


def batch(shared: Shared) -> LensResult:
    lens = LensResult("batch", f"each sequence alone vs in batches of up to {shared.session.settings.max_num_seqs} "
                               "(max_num_seqs), in order and reversed")
    arms = {c: shared.session_arm(c) for c in ("alone", "batch", "reversed")}
    names = {"alone": "alone", "batch": "batch", "reversed": "batch, reversed order"}
    for composition, arm in arms.items():
        lens.arms.append(shared.judge(names[composition], f"this Session's engine, forced decode, {composition}",
                                      arm["rows"], seconds=arm["seconds"]))
    lens.kl_between = [None] + [_kl_between(arms["alone"]["rows"], arms[c]["rows"]) for c in ("batch", "reversed")]
    return finish(lens, settable=False)


def prefix_caching(shared: Shared) -> LensResult:
    name, factor = "prefix caching", "a cold prefill vs the prompt's blocks served from vLLM's prefix cache"
    try:
        out = shared.child(kind="prefix", extra={"enable_prefix_caching": True})
    except Exception as exc:  # noqa: BLE001 - recorded as the lens' reason
        why = arm_failure(exc)
        return LensResult(name, factor, status=LENS_FAILED if why.startswith("failed") else LENS_UNAVAILABLE,
                          reason=why)
    lens = LensResult(name, factor)
    served = sum(out["cached_again"])
    prompt_tokens = sum(shared.prompt_lengths)
    lens.arms.append(shared.judge("cold", f"prefix caching on, empty cache ({sum(out['cached'])} tokens from it)",
                                  out["rows"], tokens_per_second=out["tokens_per_second"]))
    lens.arms.append(shared.judge("prefix cached", f"the same requests again: {served} of {prompt_tokens} prompt "
                                  "tokens served from the cache", out["rows_cached"]))
    lens.kl_between = [None, _kl_between(out["rows"], out["rows_cached"])]
    if served == 0:
        return unavailable(name, factor, "no prompt token was served from the prefix cache (prompts shorter than one "
                                         "KV block?)")
    return finish(lens)


def chunked_prefill(shared: Shared) -> LensResult:
    budget = shared.session.engine.llm.llm_engine.vllm_config.scheduler_config.max_num_batched_tokens
    lens = LensResult("chunked prefill", f"prompts prefilled in one step (budget {budget} tokens) vs in chunks of "
                                         f"{CHUNK_TOKENS} tokens")
    longest = max(shared.prompt_lengths)
    if longest <= CHUNK_TOKENS:
        return unavailable(lens.name, lens.factor, f"the prompts ({longest} tokens) fit in one chunk of {CHUNK_TOKENS}")
    if budget < longest:
        lens.notes.append(f"the Session's budget ({budget}) already chunks the longest prompt ({longest} tokens)")
    lens.arms.append(shared.session_judged("one step", "batch"))
    lens.arms.append(shared.child_judged(f"chunks of {CHUNK_TOKENS}", f"max_num_batched_tokens={CHUNK_TOKENS}",
                                         extra={"enable_chunked_prefill": True,
                                                "max_num_batched_tokens": CHUNK_TOKENS}))
    return finish(lens)


def long_context(shared: Shared, long: dict) -> LensResult:
    """One long sequence teacher-forced through the engine, KL by position bucket; and its last tokens
    decoded at long positions. `long` holds the sequence, the truth and floor rows (run.py)."""
    ids, length = long["ids"], len(long["ids"])
    lens = LensResult("long context", f"positions of one {length}-token text, by bucket, and decode steps after "
                                      f"{length - LONG_DECODE_TOKENS} tokens")
    lens.notes += long.get("notes", [])
    begin = time.perf_counter()
    engine = shared.session.score_tokens([ids])[0][: length - 1]
    seconds = time.perf_counter() - begin
    edges = [e for e in BUCKET_EDGES if e < length - 1] + [length - 1]
    for lo, hi in zip(edges, edges[1:]):
        lens.arms.append(_bucket_arm(shared, long, engine, lo, hi, seconds))
    prompt = length - LONG_DECODE_TOKENS
    run = shared.session.decode_scores([ids], [prompt], composition="alone")
    truth = [long["truth"][prompt - 1:]]
    floors = {name: [rows[prompt - 1:]] for name, rows in long["floors"].items() if name != "decode"}
    if "decode" in long["floors"]:
        floors["transformers (decode)"] = [long["floors"]["decode"]]
    targets = [ids[prompt + 1:]]
    lens.arms.append(shared.judge(f"decode at {prompt}+", f"forced decode of the last {LONG_DECODE_TOKENS} tokens",
                                  run, truth=truth, targets=targets,
                                  floors=shared.floors(truth=truth, floor_rows=floors, targets=targets)))
    return finish(lens, settable=False)


def _bucket_arm(shared: Shared, long: dict, engine, lo: int, hi: int, seconds: float) -> ArmResult:
    """Positions lo..hi-1 of the long text (row i predicts token i + 1), against their own floor."""
    import torch

    ids = long["ids"]
    targets = [ids[lo + 1: hi + 1]]
    # `judge` drops row 0 of each continuation (a prefill row elsewhere); here every row counts, so
    # the rows given start one earlier.
    pad = lambda rows: [torch.cat([rows[lo:lo + 1], rows[lo:hi]])]  # noqa: E731
    truth = pad(long["truth"])
    floor_rows = {name: pad(rows) for name, rows in long["floors"].items() if name != "decode"}
    return shared.judge(f"positions {lo}-{hi - 1}", f"this Session's engine, one prefill of {len(ids)} tokens",
                        pad(engine), seconds=seconds if lo == 0 else 0.0, truth=truth, targets=targets,
                        floors=shared.floors(truth=truth, floor_rows=floor_rows, targets=targets))


def lm_head(shared: Shared) -> LensResult:
    session = shared.session
    lens = LensResult("lm head", "the LM head and logits in the model's dtype vs in float32 (hf_overrides head_dtype)")
    if session.dtype == "float32":
        return unavailable(lens.name, lens.factor, "the model runs in float32: its head is float32 already")
    overrides = dict(session.settings.extra.get("hf_overrides") or {})
    if overrides.get("head_dtype") == "float32":
        return unavailable(lens.name, lens.factor, "this Session's head is float32 already (head_dtype)")
    lens.arms.append(shared.session_judged(f"{session.dtype} head", "batch"))
    lens.arms.append(shared.child_judged("float32 head", "hf_overrides head_dtype=float32",
                                         extra={"hf_overrides": {**overrides, "head_dtype": "float32"}}))
    return finish(lens)


def dtype(shared: Shared) -> LensResult:
    session = shared.session
    lens = LensResult("dtype", f"the engine in {session.dtype} vs other dtypes the device runs")
    lens.arms.append(shared.session_judged(session.dtype, "batch"))
    others = ["float32"] if session.dtype != "float32" else ["bfloat16"]
    if session.dtype != "float16":
        if session.device.startswith("cpu"):
            lens.notes.append("float16 not tried: vLLM's CPU backend has no float16 kernels")
        else:
            others.append("float16")
    for other in others:
        lens.arms.append(shared.child_judged(f"{other} engine", f"dtype={other}", dtype=other))
    return finish(lens)


def compiled(shared: Shared) -> LensResult:
    session = shared.session
    other = "fast" if session.mode == "inspect" else "inspect"
    words = {"inspect": "eager", "fast": "compiled"}
    lens = LensResult("compiled", f"the engine {words[session.mode]} vs {words[other]} (mode='{other}')")
    try:
        from hfvllm_lab.paths.vllm_path import check_parallel_setup

        check_parallel_setup(replace(session.settings, mode=other))
    except Exception as exc:  # noqa: BLE001 - the refusal's reason is the lens' reason
        return unavailable(lens.name, lens.factor, f"mode={other!r} refused on this Session's ranks: {exc}")
    lens.arms.append(shared.session_judged(words[session.mode], "batch"))
    lens.arms.append(shared.child_judged(words[other], f"mode={other!r}", mode=other))
    return finish(lens)


def backend(shared: Shared) -> LensResult:
    from transformers import AutoConfig

    from hfvllm_lab.paths.vllm_path import has_native_class

    session = shared.session
    lens = LensResult("backend", f"the {session.backend} backend vs vLLM's other implementations of the model")
    lens.arms.append(shared.session_judged(session.backend, "batch"))
    config = AutoConfig.from_pretrained(session.model_dir, trust_remote_code=session.trust_remote_code)
    for other in ("lab", "transformers", "native"):
        if other == session.backend:
            continue
        if other == "native" and not has_native_class(config):
            lens.notes.append(f"native: vLLM has no class for {', '.join(config.architectures or ['?'])}")
            continue
        # the Session's engine_args without its hf_overrides (the lab's own options mean nothing elsewhere)
        extra = {k: v for k, v in session.settings.extra.items() if k != "hf_overrides"}
        lens.arms.append(shared.child_judged(other, f"backend={other!r}", backend=other, extra=extra,
                                             keep_extra=False))
    return finish(lens)


def tensor_parallel(shared: Shared) -> LensResult:
    session = shared.session
    lens = LensResult("tensor parallel", "one device vs tensor parallel 2 (vLLM's multiprocessing executor)")
    if session.settings.layout.world != 1:
        return unavailable(lens.name, lens.factor, f"this Session already runs on several ranks "
                                                   f"({session.settings.layout.describe()})")
    try:
        from hfvllm_lab.paths.vllm_path import preflight

        preflight(replace(session.settings, tensor_parallel_size=2))
    except Exception as exc:  # noqa: BLE001 - the refusal's reason is the lens' reason
        return unavailable(lens.name, lens.factor, f"tensor parallel 2 refused: {exc}")
    lens.arms.append(shared.session_judged("1 device", "batch"))
    # the child's engine splits the allowed cores between its two CPU workers itself (paths/cpu_binding.py)
    lens.arms.append(shared.child_judged("tensor parallel 2", "tensor_parallel_size=2", tensor_parallel_size=2,
                                         distributed_executor_backend="mp"))
    return finish(lens)


# name -> lens function; long context takes its long sequence too (run.py)
LENSES: dict[str, Callable] = {
    "decode": decode,
    "batch": batch,
    "prefix caching": prefix_caching,
    "chunked prefill": chunked_prefill,
    "long context": long_context,
    "lm head": lm_head,
    "dtype": dtype,
    "compiled": compiled,
    "backend": backend,
    "tensor parallel": tensor_parallel,
}


def _kl_between(a: list, b: list) -> float:
    """Mean KL(a || b) over the rows of decode steps."""
    import torch

    values = torch.cat([kl_per_position(x.float(), y.float())
                        for x, y in zip(decode_step_rows(a), decode_step_rows(b))])
    return float(values.mean()) if values.numel() else 0.0


__all__ = ["LENSES", "finish", "unavailable"]
