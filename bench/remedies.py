"""Remedies for the RL rollout mismatch, measured: each engine setting's mismatch against a float32
trainer on the same kind of rollout, and its greedy decode speed, in one run.

    .venv/bin/python bench/remedies.py [MODEL] [--n N] [--max-tokens N] [--rounds N]

For each of (lab, vLLM native) x (LM head in the model's dtype, float32 head via head_dtype) it opens a
Session, samples `n` continuations per prompt (seed 0, temperature 1), scores them with transformers
in float32 and prints verl's statistics (mean |log-ratio|, k3 KL, share of ratios outside [0.5, 2]);
then times greedy batch-4 decoding of 64 tokens, the settings taking turns round by round (median).
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from decode_speed import decode_tok_s  # bench/ is on sys.path when a script here runs

PROMPTS = ["The capital of France is", "Write a haiku about the sea:", "def fibonacci(n):",
           "Photosynthesis is the process"]
# (backend, LM head dtype, engine dtype): the float32 head, and the whole engine in float32, for both
SETTINGS = [("lab", None, None), ("lab", "float32", None), ("lab", None, "float32"),
            ("native", None, None), ("native", "float32", None), ("native", None, "float32")]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="smollm2-135m")
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hfvllm_lab import Session

    mismatch, speeds = {}, {key: [] for key in SETTINGS}
    for round_ in range(args.rounds):
        order = SETTINGS if round_ % 2 == 0 else list(reversed(SETTINGS))
        for key in order:
            backend, head, dtype = key
            s = Session(args.model, backend=backend, lm_head_dtype=head, dtype=dtype)
            if round_ == 0:
                r = s.rollout(PROMPTS, n=args.n, max_tokens=args.max_tokens, trainer_dtype="float32",
                              native_floor=False)
                mismatch[key] = r.judged
            speeds[key].append(decode_tok_s(s, PROMPTS, 64))
            s.close()
    print(f"model {args.model}; rollout: {len(PROMPTS)} prompts x n={args.n} x {args.max_tokens} tokens, seed 0, "
          f"temperature 1, trainer transformers float32; decode: batch {len(PROMPTS)} x 64 tokens, "
          f"median of {args.rounds} alternating rounds")
    print(f"| backend | engine | LM head | mean abs log-ratio | k3 KL | ratios outside [0.5, 2] | decode tok/s |")
    print("|---|---|---|---|---|---|---|")
    for key in SETTINGS:
        backend, head, dtype = key
        m = mismatch[key]
        print(f"| {backend} | {dtype or 'checkpoint'} | {head or 'model dtype'} | {m.mean_abs_log_ratio:.4f} | "
              f"{m.k3_kl:.2e} | {m.outside_bands['outside_0.5_2']:.2%} | {statistics.median(speeds[key]):.1f} |")
    for backend in ("lab", "native"):
        base = mismatch[(backend, None, None)]
        for label, key in (("float32 head", (backend, "float32", None)), ("float32 engine", (backend, None, "float32"))):
            cost = statistics.median(speeds[key]) / statistics.median(speeds[(backend, None, None)])
            print(f"{backend}: {label} -> mean abs log-ratio x{mismatch[key].mean_abs_log_ratio / base.mean_abs_log_ratio:.2f}, "
                  f"k3 x{mismatch[key].k3_kl / base.k3_kl:.2f}, decode speed x{cost:.2f}")


if __name__ == "__main__":
    main()
