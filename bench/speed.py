"""Tokens per second of every path, eager and compiled, on a 58M Llama and on SmolLM2-135M (bf16).

    .venv/bin/python bench/speed.py [--quick] [--models llama-58m smollm2-135m] [--rounds 3]
                                    [--paths hf native native-compiled ...] [--json build/bench.json]
    make bench

Paths: `hf` (transformers generate, the checkpoint's dtype), and for each of vLLM's `native`
model class, vLLM's built-in `transformers` backend and the `lab` backend: eager (`enforce_eager`)
and `-compiled` (vLLM's compilation: on this CPU wheel dynamo + inductor). Each path runs in its
own spawned process that builds its model once and then answers timing requests, so the paths
take turns run by run (each repeat times every path once, in alternating order, with a pause
before each so one path's spinning OpenMP threads do not slow the next: drift on this shared
machine hits all paths alike). A round's figure is a path's best repeat; the table shows medians
over rounds, and ratios are taken within this run. Measured per path and batch size (1 and 8):

- prefill tok/s: B prompts of P random token ids, max_tokens=1: B*P / time.
- decode tok/s: the same prompts with N new tokens minus with 1: B*(N-1) / (t_N - t_1).

Also: the lab's per-layer probes on vs off (decode, eager), and `Session()` on the embedded
default from a fresh process to its first token, cold (imports and the first engine) and warm
(a second Session in the same process). Everything lands in the JSON file.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import statistics
import sys
import time
from pathlib import Path

SETTLE_S = 1.0
PATHS = ["hf", "native", "native-compiled", "transformers", "transformers-compiled", "lab", "lab-compiled"]
MODELS = ["llama-58m", "smollm2-135m"]


# -- child processes ----------------------------------------------------------------------------
def _model_dir(model: str) -> Path:
    from hfvllm_lab import zoo

    return zoo.real_model_path(model) if model in zoo.REAL_SPECS else zoo.path(model)


def _prompts(vocab: int, batch: int, length: int, seed: int) -> list[list[int]]:
    import torch

    gen = torch.Generator().manual_seed(seed)
    return torch.randint(10, min(vocab, 30000), (batch, length), generator=gen).tolist()


class VllmRunner:
    def __init__(self, model: str, path: str) -> None:
        from hfvllm_lab.device import checkpoint_dtype
        from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath

        backend, _, compiled = path.partition("-")
        directory = _model_dir(model)
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(directory)
        self.vocab = config.vocab_size
        dtype = "bfloat16" if "bfloat16" in str(checkpoint_dtype(config)) else "float32"
        self.dtype = dtype
        begin = time.perf_counter()
        self.engine = VllmPath(EngineSettings(model_dir=directory, dtype=dtype, backend=backend, max_model_len=256,
                                              max_num_seqs=8, mode="fast" if compiled else "inspect"))
        self.build_seconds = time.perf_counter() - begin

    def run(self, prompts: list[list[int]], max_tokens: int) -> float:
        begin = time.perf_counter()
        self.engine.generate(prompts, max_tokens, top_k=1, prompt_logprobs=False)
        return time.perf_counter() - begin

    def probes(self, on: bool) -> None:
        self.engine.rpc("lab_timing_start" if on else "lab_timing_stop")


class HfRunner:
    def __init__(self, model: str, path: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        begin = time.perf_counter()
        self.model = AutoModelForCausalLM.from_pretrained(_model_dir(model), dtype="auto").eval()
        self.build_seconds = time.perf_counter() - begin
        self.vocab = self.model.config.vocab_size
        self.dtype = str(self.model.dtype).removeprefix("torch.")
        self.torch = torch

    def run(self, prompts: list[list[int]], max_tokens: int) -> float:
        torch = self.torch
        ids = torch.tensor(prompts)
        begin = time.perf_counter()
        with torch.inference_mode():
            self.model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=max_tokens,
                                min_new_tokens=max_tokens, do_sample=False, pad_token_id=0)
        return time.perf_counter() - begin

    def probes(self, on: bool) -> None:
        pass


def serve(model: str, path: str, conn) -> None:
    """Child: build the path's model, then answer timing requests from the parent until ("stop",).

    ("time", batch, spec): an untimed 1-token run, then one timed with 1 new token and one with N,
    in seconds; ("warm", batch, spec): one short run at that shape; ("probes", on): the lab's probes.
    """
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    import warnings

    warnings.simplefilter("ignore")
    try:
        runner = HfRunner(model, path) if path == "hf" else VllmRunner(model, path)
        conn.send(("ready", {"build_seconds": runner.build_seconds, "dtype": runner.dtype}))
    except Exception as exc:  # report, do not hang the parent
        conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))
        return
    while True:
        msg = conn.recv()
        if msg[0] == "stop":
            break
        try:
            if msg[0] == "probes":
                runner.probes(msg[1])
                conn.send(("ok", None))
                continue
            batch, spec = msg[1], msg[2]
            prompts = _prompts(runner.vocab, batch, spec["prompt_len"], seed=batch)
            if msg[0] == "warm":
                conn.send(("ok", runner.run(prompts, 2)))
            else:
                runner.run(prompts, 1)  # untimed: wakes the threads the settle pause let sleep
                conn.send(("ok", (runner.run(prompts, 1), runner.run(prompts, spec["new_tokens"]))))
        except Exception as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}"[:500]))


def figures(batch: int, spec: dict, pairs: list[tuple[float, float]], suffix: str = "") -> dict:
    """Best of the interleaved repeats (the machine is shared: the minimum is the least disturbed run)."""
    t1, tn = min(p[0] for p in pairs), min(p[1] for p in pairs)
    return {f"prefill_b{batch}{suffix}": batch * spec["prompt_len"] / t1,
            f"decode_b{batch}{suffix}": batch * (spec["new_tokens"] - 1) / max(tn - t1, 1e-9)}


# -- Session start-up ---------------------------------------------------------------------------
STARTUP = r"""
import time, warnings, json
t0 = time.perf_counter()
warnings.simplefilter("ignore")
from hfvllm_lab import Session
s = Session()
t1 = time.perf_counter()
s.generate(["Hello"], 1)
t2 = time.perf_counter()
s2 = Session()
t3 = time.perf_counter()
s2.generate(["Hello"], 1)
t4 = time.perf_counter()
s2.close()
print(json.dumps({"cold_session_s": t1 - t0, "cold_first_token_s": t2 - t1, "warm_session_s": t3 - t2,
                  "warm_first_token_s": t4 - t3}))
"""


def startup_round() -> dict:
    import subprocess

    env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "VLLM_LOGGING_LEVEL": "ERROR"}
    done = subprocess.run([sys.executable, "-c", STARTUP], capture_output=True, text=True, env=env, timeout=600)
    line = [l for l in done.stdout.splitlines() if l.startswith("{")]
    if done.returncode or not line:
        return {"error": done.stderr[-500:]}
    return json.loads(line[-1])


# -- parent -------------------------------------------------------------------------------------
def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def run_model(model: str, paths: list[str], rounds: int, spec: dict, log) -> dict:
    ctx = mp.get_context("spawn")
    children = {}
    result = {"paths": {}, "spec": spec}
    for path in paths:  # started one after another: builds (and compiles) do not compete
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=serve, args=(model, path, child), daemon=True)
        proc.start()
        status, info = parent.recv()
        log(f"  {model} {path}: {status} {info}")
        result["paths"][path] = {"build": info if status == "ready" else None,
                                 "error": None if status == "ready" else info, "rounds": []}
        if status == "ready":
            children[path] = (proc, parent)
        else:
            proc.join(5)

    def ask(path, *msg):
        proc, conn = children[path]
        conn.send(msg)
        status, value = conn.recv()
        if status != "ok":
            raise RuntimeError(value)
        return value

    try:
        for r in range(rounds):
            order = list(children) if r % 2 == 0 else list(reversed(children))
            got = {path: {} for path in order}
            failed: set[str] = set()
            for batch in spec["batches"]:
                pairs = {path: [] for path in order}
                for path in order:
                    try:
                        ask(path, "warm", batch, spec)
                    except RuntimeError as exc:
                        failed.add(path)
                        result["paths"][path]["error"] = str(exc)
                # Repeats interleave the paths (one 1-token and one N-token run each, in turn, the order
                # reversed every other repeat) so a slow spell of this shared machine hits them alike.
                for rep in range(spec["repeats"]):
                    for path in (order if rep % 2 == 0 else order[::-1]):
                        if path in failed:
                            continue
                        # Let the previous path's OpenMP threads stop spinning before this one is timed:
                        # every child's threads are bound to the same cores.
                        time.sleep(SETTLE_S)
                        try:
                            pairs[path].append(ask(path, "time", batch, spec))
                        except RuntimeError as exc:
                            failed.add(path)
                            result["paths"][path]["error"] = str(exc)
                for path in order:
                    if pairs[path] and path not in failed:
                        got[path].update(figures(batch, spec, pairs[path]))
                if "lab" in order and "lab" not in failed:  # probe overhead, eager lab only
                    ask("lab", "probes", True)
                    try:
                        probed = [ask("lab", "time", batch, spec) for _ in range(spec["repeats"])]
                    finally:
                        ask("lab", "probes", False)
                    got["lab"][f"decode_b{batch}_probed"] = figures(batch, spec, probed)[f"decode_b{batch}"]
            for path in order:
                if path not in failed:
                    result["paths"][path]["rounds"].append(got[path])
            log(f"  {model}: round {r + 1}/{rounds} done")
    finally:
        for proc, conn in children.values():
            try:
                conn.send(("stop",))
            except OSError:
                pass
            proc.join(30)
            if proc.is_alive():
                proc.terminate()
    for path, data in result["paths"].items():
        keys = {k for fig in data["rounds"] for k in fig}
        data["median"] = {k: median([fig.get(k) for fig in data["rounds"]]) for k in sorted(keys)}
    return result


def table(model: str, res: dict) -> str:
    cols = ["prefill_b1", "prefill_b8", "decode_b1", "decode_b8"]
    base = res["paths"].get("native", {}).get("median", {})
    lines = [f"\n{model} (tokens/s, median; x = ratio to vLLM native eager in this run)",
             f"{'path':<22}" + "".join(f"{c:>20}" for c in cols) + f"{'build s':>10}"]
    for path, data in res["paths"].items():
        med = data.get("median", {})
        cells = []
        for c in cols:
            v = med.get(c)
            ratio = f" x{v / base[c]:.2f}" if v and base.get(c) else ""
            cells.append(f"{v:>12.0f}{ratio:>8}" if v else f"{'-':>20}")
        build = (data.get("build") or {}).get("build_seconds")
        lines.append(f"{path:<22}" + "".join(cells) + (f"{build:>10.1f}" if build else f"{'-':>10}"))
        if data.get("error"):
            lines.append(f"    error: {data['error'][:200]}")
    for mode in ("", "-compiled"):  # the bar: lab vs built-in and vs native, decode batch 8, per mode
        lab_v = res["paths"].get(f"lab{mode}", {}).get("median", {}).get("decode_b8")
        ref = {p: res["paths"].get(f"{p}{mode}", {}).get("median", {}).get("decode_b8") for p in ("transformers", "native")}
        if lab_v and all(ref.values()):
            lines.append(f"lab{mode or ' eager'} decode b8: {lab_v / ref['transformers']:.3f}x vLLM built-in backend, "
                         f"{lab_v / ref['native']:.3f}x vLLM native ({'compiled' if mode else 'eager'}, same run)")
    lab = res["paths"].get("lab", {}).get("median", {})
    for b in (1, 8):
        on, off = lab.get(f"decode_b{b}_probed"), lab.get(f"decode_b{b}")
        if on and off:
            lines.append(f"lab eager decode b{b}: per-layer probes on {on:.0f} tok/s vs off {off:.0f} "
                         f"(overhead {100 * (off / on - 1):.0f}% step time)")
    return "\n".join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="one round, the 58M Llama only, shorter runs")
    parser.add_argument("--models", nargs="+", default=None)
    parser.add_argument("--paths", nargs="+", default=PATHS, choices=PATHS)
    parser.add_argument("--rounds", type=int, default=None)
    parser.add_argument("--prompt-len", type=int, default=None)
    parser.add_argument("--new-tokens", type=int, default=None)
    parser.add_argument("--no-startup", action="store_true")
    parser.add_argument("--json", default="build/bench.json")
    args = parser.parse_args(argv)
    models = args.models or (["llama-58m"] if args.quick else MODELS)
    rounds = args.rounds or (1 if args.quick else 3)
    # The setup: 32-token prompts, 64 new tokens (long enough that a decode run is ~1 s).
    spec = {"batches": [1, 8], "prompt_len": args.prompt_len or 32,
            "new_tokens": args.new_tokens or (16 if args.quick else 64), "repeats": 2 if args.quick else 3}
    begin = time.perf_counter()

    def log(msg):
        print(f"[{time.perf_counter() - begin:6.0f}s]{msg}", flush=True)

    import torch

    report = {"rounds": rounds, "cpu_threads": torch.get_num_threads(), "models": {}, "startup": None}
    for model in models:
        log(f" {model}: starting {len(args.paths)} paths")
        report["models"][model] = run_model(model, args.paths, rounds, spec, log)
        print(table(model, report["models"][model]), flush=True)
    if not args.no_startup:
        runs = [startup_round() for _ in range(1 if args.quick else rounds)]
        keys = [k for k in runs[0] if k != "error"] if runs else []
        report["startup"] = {"rounds": runs, "median": {k: median([r.get(k) for r in runs]) for k in keys}}
        med = report["startup"]["median"]
        if med:
            print(f"\nSession() on the embedded default, fresh process: cold {med['cold_session_s']:.1f} s + first "
                  f"token {med['cold_first_token_s']:.2f} s; warm (second Session) {med['warm_session_s']:.1f} s + "
                  f"first token {med['warm_first_token_s']:.2f} s")
        else:
            print(f"\nstart-up: {runs}")
    report["seconds"] = time.perf_counter() - begin
    Path(args.json).parent.mkdir(parents=True, exist_ok=True)
    Path(args.json).write_text(json.dumps(report, indent=1))
    print(f"\nJSON: {args.json} ({report['seconds']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
