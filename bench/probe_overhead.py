"""Cost of the timing probes: engine step time with per-layer hooks on vs off, in one run.

    .venv/bin/python bench/probe_overhead.py [MODEL] [--rounds N] [--max-tokens N]

Alternates probes-off and probes-on generations on one engine (so drift hits both equally)
and prints the mean decode and prefill step times and their ratio. Timings are wall-clock
around whole `generate` calls, measured outside the probes.
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="llama-medium")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--max-tokens", type=int, default=32)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hfvllm_lab import Session

    prompts = ["The quick brown fox jumps over the lazy dog"] * 4
    with Session(args.model) as s:
        engine = s.engine
        engine.generate(prompts, 4, prompt_logprobs=False)  # warm-up
        off, on, steps = [], [], 0
        timing = None
        for _ in range(args.rounds):
            begin = time.perf_counter()
            engine.generate(prompts, args.max_tokens, prompt_logprobs=False)
            off.append(time.perf_counter() - begin)
            engine.rpc("lab_timing_start")
            begin = time.perf_counter()
            try:
                engine.generate(prompts, args.max_tokens, prompt_logprobs=False)
            finally:
                on.append(time.perf_counter() - begin)
                timing = engine.rpc("lab_timing_stop", 0)  # a LayerTiming
        steps = sum(timing.steps.values())
    mean_off, mean_on = statistics.median(off), statistics.median(on)  # medians: robust to bursts of load
    print(f"model {args.model}, {len(prompts)} prompts x {args.max_tokens} tokens, {args.rounds} rounds, "
          f"{steps} engine steps per generate")
    print(f"generate, probes off (median): {mean_off * 1e3:8.2f} ms  (per step {mean_off / steps * 1e3:.3f} ms)")
    print(f"generate, probes on  (median): {mean_on * 1e3:8.2f} ms  (per step {mean_on / steps * 1e3:.3f} ms)")
    print(f"ratio on/off        : {mean_on / mean_off:8.3f}")
    hooks = timing.hooks_per_step.get("decode", 0)
    print(f"probe's own estimate: {hooks} timed modules x {timing.probe_seconds_per_hook * 1e6:.2f} us "
          f"= {hooks * timing.probe_seconds_per_hook * 1e3:.3f} ms per decode step")


if __name__ == "__main__":
    main()
