"""What each vLLM path runs per decode step: torch profiler op counts and self CPU times, side by side.

    .venv/bin/python bench/op_profile.py [--model llama-58m] [--paths lab transformers native]
                                         [--mode inspect|fast] [--json build/op_profile.json]

Each path builds its engine in its own spawned process, warms up, then profiles one run of B
prompts of P random tokens with N new tokens (1 prefill + N-1 decode steps). The table lists the
ops whose counts differ between paths or whose self time is among the largest; the last line is
the total self CPU time. Two paths doing the same work show the same ops with the same counts.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import sys
from pathlib import Path

BATCH, PROMPT_LEN, NEW_TOKENS = 8, 32, 33


def profile_path(model: str, backend: str, mode: str, conn) -> None:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import warnings

    warnings.simplefilter("ignore")
    try:
        from torch.profiler import ProfilerActivity, profile

        from hfvllm_lab import zoo
        from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath

        engine = VllmPath(EngineSettings(model_dir=zoo.path(model), dtype="float32", backend=backend,
                                         max_model_len=256, max_num_seqs=BATCH, mode=mode))
        rng = random.Random(0)
        prompts = [[rng.randrange(256, 32000) for _ in range(PROMPT_LEN)] for _ in range(BATCH)]
        engine.generate(prompts, 4)
        with profile(activities=[ProfilerActivity.CPU]) as prof:
            engine.generate(prompts, NEW_TOKENS)
        engine.close()
        conn.send({e.key: (e.count, e.self_cpu_time_total / 1000) for e in prof.key_averages()})
    except Exception as exc:  # report, do not hang the parent
        conn.send({"error": f"{type(exc).__name__}: {exc}"[:300]})


def table(results: dict[str, dict], top: int = 12) -> str:
    paths = list(results)
    keys = set().union(*(r.keys() for r in results.values()))
    by_time = sorted(keys, key=lambda k: -max(r.get(k, (0, 0.0))[1] for r in results.values()))
    differing = [k for k in keys if len({r.get(k, (0, 0.0))[0] for r in results.values()}) > 1]
    shown = list(dict.fromkeys(by_time[:top] + sorted(differing)))
    head = f"{'op':46s}" + "".join(f"{p + ' n':>18s}{p + ' ms':>18s}" for p in paths)
    lines = [head, "-" * len(head)]
    for k in shown:
        lines.append(f"{k[:46]:46s}" + "".join(f"{results[p].get(k, (0, 0.0))[0]:18d}"
                                                  f"{results[p].get(k, (0, 0.0))[1]:18.1f}" for p in paths))
    lines.append(f"{'total self CPU':46s}" + "".join(f"{'':18s}{sum(v[1] for v in results[p].values()):18.1f}"
                                                     for p in paths))
    lines.append(f"ops whose counts differ: {', '.join(sorted(differing)) or 'none'}")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--model", default="llama-58m")
    parser.add_argument("--paths", nargs="+", default=["lab", "transformers"])
    parser.add_argument("--mode", default="inspect", choices=["inspect", "fast"])
    parser.add_argument("--json", default="build/op_profile.json")
    args = parser.parse_args(argv)
    ctx = mp.get_context("spawn")
    results = {}
    for path in args.paths:  # one at a time: the profiles do not compete for the cores
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=profile_path, args=(args.model, path, args.mode, child), daemon=True)
        proc.start()
        results[path] = parent.recv()
        proc.join(60)
        if "error" in results[path]:
            print(f"{path}: {results[path]['error']}")
            return 1
    print(f"{args.model}, {args.mode}: one run of {BATCH} prompts x {PROMPT_LEN} tokens, {NEW_TOKENS} new tokens")
    print(table(results))
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(results, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
