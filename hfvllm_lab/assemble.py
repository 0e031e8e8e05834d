"""Turn probe data (the worker's typed payloads, the HF path's outputs) into result objects."""

from __future__ import annotations

from hfvllm_lab.backend.records import BuildReport
from hfvllm_lab.device import MemoryFigure
from hfvllm_lab.parity import LOGPROB_TOLERANCE, compare_generations, step_logprob_diffs
from hfvllm_lab.probes.payloads import AttentionCountsPayload, MemoryPayload
from hfvllm_lab.results.attention import AttentionLayerRow, AttentionReport
from hfvllm_lab.results.comparison import BisectResult, ModuleDiff, PromptComparison
from hfvllm_lab.results.generation import Generation
from hfvllm_lab.results.memory import MemoryPhase, MemoryReport
from hfvllm_lab.results.replacements import ModuleNode, ReplacementLog
from hfvllm_lab.vocab import STATE_BACKEND

BACKEND_LABELS = {
    "lab": "hfvllm_lab backend",
    "transformers": "vLLM built-in Transformers backend",
    "native": "vLLM native model",
}


def replacement_log(model: str, backend: str, build: BuildReport | None, tree: list[ModuleNode],
                    model_class: str = "") -> ReplacementLog:
    nodes = list(tree)
    if build is not None:
        return ReplacementLog(model, backend, build.hf_class, list(build.records), nodes,
                              model_class=model_class, options=dict(build.options))
    note = (
        "observed from module classes: this backend keeps no replacement records, so a leaf module "
        "counts as replaced when its class comes from vLLM"
        if backend == "transformers"
        else "vLLM's native model class: nothing was replaced, every module is vLLM's own"
    )
    return ReplacementLog(model, backend, "", [], nodes, note, model_class=model_class)


def memory_report(model: str, device: str, backend: str, before: MemoryFigure, build: BuildReport | None,
                  kv: MemoryPayload) -> MemoryReport:
    phases = [MemoryPhase("before", 0, 0, None, before.bytes, before.source)]
    eager = None
    note = ""
    if build is not None:
        eager = build.eager_param_bytes
        for p in build.phases:
            if p.phase == "before":
                continue
            phases.append(MemoryPhase(p.phase, p.device_bytes, p.meta_bytes, None, p.process_bytes, p.source,
                                      p.seconds))
    else:
        note = "build phases are recorded by the lab backend only; this backend shows before and after"
    # vLLM's CPU backend repacks linear weights after loading into storage that is no longer a
    # Parameter; the parameters are still there, so carry the loaded figure forward.
    loaded = next((p.param_bytes for p in phases if p.phase == "loaded"), None)
    param_bytes = kv.param_bytes if loaded is None else max(loaded, kv.param_bytes)
    phases.append(MemoryPhase("kv_cache", param_bytes, 0, kv.kv_cache_bytes, kv.process_bytes, kv.source,
                              state_cache_bytes=kv.state_cache_bytes or None))
    if kv.state_modules:
        note = (f"{note}; " if note else "") + (
            f"state cache: {kv.state_modules} stateful modules keep {kv.state_bytes_per_request / 1024:.1f} KiB per "
            f"request; their state views span {kv.state_cache_bytes / 2**20:.1f} MiB of vLLM's cache pool, which its "
            "hybrid allocator shares between attention KV blocks and state slots")
    quantized = build is not None and "quantization" in build.options
    if quantized and eager and param_bytes:
        note = (f"{note}; " if note else "") + (
            f"quantized checkpoint: {param_bytes / 2**20:.1f} MiB of parameters loaded against {eager / 2**20:.1f} MiB "
            f"for the same model dense in the engine's dtype (x{param_bytes / eager:.2f})")
    if kv.loadable_copy_bytes:
        note = (f"{note}; " if note else "") + (
            f"{kv.loadable_copy_bytes / 2**20:.1f} MiB of layer weights stay loadable beside the copies the device's "
            "kernels packed, so load_weights can update any subset later (hf_overrides lab_weight_updates=False "
            "drops them)")
    return MemoryReport(model, device, backend, phases, eager, note)


def attention_report(path: str, selected: str, counts: AttentionCountsPayload, reason: str = "") -> AttentionReport:
    rows = []
    for layer in counts.layers:
        per_impl = layer.counts
        # a stateful module runs its HF code with its state in vLLM's state cache whatever attention is chosen
        stateful = layer.backend == STATE_BACKEND
        expected = layer.backend if selected == "vllm" or path == "hf" or stateful else selected
        ran = per_impl.get(expected, 0)
        others = {k: v for k, v in per_impl.items() if k != expected and v}
        rows.append(AttentionLayerRow(
            layer=layer.layer, module=layer.module, implementation=expected, calls=ran,
            num_heads=layer.num_heads, num_kv_heads=layer.num_kv_heads,
            head_size=layer.head_size, sliding_window=layer.sliding_window,
            fallbacks=sum(others.values()),
            fallback_reason=", ".join(f"{k} ran {v}x" for k, v in others.items()),
        ))
    if not reason:
        reason = "requested" if selected != "vllm" else "vLLM paged attention (default)"
    return AttentionReport(path, selected, reason, rows, counts.forward_calls)


def prompt_comparisons(reference: list[Generation], vllm: list[Generation], dtype: str) -> list[PromptComparison]:
    tol = LOGPROB_TOLERANCE.get(dtype, 0.1)
    return [
        PromptComparison(v.prompt, r, v, compare_generations(r, v, logprob_tol=tol), step_logprob_diffs(r, v))
        for r, v in zip(reference, vllm)
    ]


def bisect_result(prompt: str, vllm_caps: dict, hf_caps: dict, tolerance: float) -> BisectResult:
    """Walk the vLLM path's modules in execution order; the first whose output differs from HF's
    by more than `tolerance` times the HF output's RMS is named."""
    rows: list[ModuleDiff] = []
    first = None
    skipped = []
    for name, v in vllm_caps.items():
        h = hf_caps.get(name)
        if h is None or h.shape != v.shape:
            skipped.append(name)
            continue
        diff = float((v - h).abs().max())
        rms = float(h.pow(2).mean().sqrt())
        ok = diff <= tolerance * max(rms, 1e-6)
        rows.append(ModuleDiff(name, diff, ok))
        if not ok and first is None:
            first = name
    note = f"not comparable (missing or differently shaped on the HF path): {', '.join(skipped)}" if skipped else ""
    return BisectResult(prompt, tolerance, rows, first, note)


def rank_report(model: str, device: str, backend: str, layout: str, executor: str, before: MemoryFigure,
                ranks: list[dict], builds: list, trees: list, memories: list, model_class: str,
                timing=None, notes: list[str] | None = None):
    """Every rank's answers (in rank order) as one RankReport: a row per rank and its own log and memory."""
    from dataclasses import replace

    from hfvllm_lab.paths.ranks import rank_label
    from hfvllm_lab.results.ranks import RankReport, RankRow

    timings = list(timing.ranks) if timing is not None and timing.ranks else []
    rows, logs, reports = [], [], []
    for i, (where, build, tree, kv) in enumerate(zip(ranks, builds, trees, memories)):
        label = rank_label(where)
        log = replace(replacement_log(model, backend, build, tree, model_class), rank=label)
        memory = replace(memory_report(model, device, backend, worker_before(build, before), build, kv), rank=label)
        loaded = next((p.param_bytes for p in memory.phases if p.phase == "kv_cache"), kv.param_bytes)
        actions: dict[str, int] = {}
        for r in log.records:
            actions[r.action] = actions.get(r.action, 0) + 1
        steps = dict(timings[i].step_seconds) if i < len(timings) else {}
        rows.append(RankRow(where["rank"], where["tensor_rank"], where["tensor_size"], where["pipeline_rank"],
                            where["pipeline_size"], tuple(build.layers_held) if build and build.layers_held
                            else where.get("layers"),
                            int(loaded or 0), build.replicated_bytes if build else 0, kv.kv_cache_bytes,
                            kv.process_bytes, actions, steps, build.tied_copy_bytes if build else 0))
        logs.append(log)
        reports.append(memory)
    return RankReport(model, backend, layout, executor, rows, logs, reports, timings, list(notes or []))


def worker_before(build: BuildReport | None, fallback: MemoryFigure) -> MemoryFigure:
    """The memory a worker process held before the model was built (the lab backend records it), so its later
    phases are measured against its own process; `fallback` (the Session's process) where nothing was recorded."""
    first = next((p for p in (build.phases if build is not None else []) if p.phase == "before"), None)
    if first is None or not first.process_bytes:
        return fallback
    return MemoryFigure(first.process_bytes, first.source)
