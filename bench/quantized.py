"""Quantized checkpoints against their bf16 original: decode speed and parameter bytes, lab and native.

    .venv/bin/python bench/quantized.py [--rounds N] [--max-tokens N]

For each zoo checkpoint (smollm2-135m and its w8a8 / w4a16 / fp8 variants) and each of the lab backend
and vLLM native it opens a Session and times greedy decoding of a batch of 8 prompts, the settings
taking turns round by round (median of the rounds); parameter bytes are the loaded phase's exact
tensor bytes (the lab's memory report) and the checkpoint's safetensors bytes.
"""

from __future__ import annotations

import argparse
import statistics
import warnings

from decode_speed import decode_tok_s  # bench/ is on sys.path when a script here runs

MODELS = ("smollm2-135m", "smollm2-135m-w8a8", "smollm2-135m-w4a16", "smollm2-135m-fp8")
BACKENDS = ("lab", "native")
PROMPTS = ["The capital of France is", "Write a haiku about the sea:", "def fibonacci(n):",
           "Photosynthesis is the process", "Once upon a time", "The three laws of motion",
           "A good way to learn a language", "In 1492,"]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hfvllm_lab import Session, zoo

    keys = [(m, b) for m in MODELS for b in BACKENDS]
    speeds = {k: [] for k in keys}
    params, files = {}, {}
    for round_ in range(args.rounds):
        for model, backend in keys if round_ % 2 == 0 else list(reversed(keys)):
            s = Session(model, backend=backend, max_num_seqs=len(PROMPTS), max_model_len=512)
            if round_ == 0:
                loaded = s.memory.phase("loaded") or s.memory.phase("kv_cache")
                params[(model, backend)] = loaded.param_bytes
                files[model] = sum(p.stat().st_size for p in zoo.path(model).glob("*.safetensors"))
            speeds[(model, backend)].append(decode_tok_s(s, PROMPTS, args.max_tokens))
            s.close()
    print(f"greedy decode, batch {len(PROMPTS)} x {args.max_tokens} tokens, median of {args.rounds} alternating rounds")
    print("| checkpoint | checkpoint MiB | lab params MiB | lab tok/s | native tok/s | lab / native |")
    print("|---|---|---|---|---|---|")
    base = {b: statistics.median(speeds[(MODELS[0], b)]) for b in BACKENDS}
    for model in MODELS:
        lab, native = (statistics.median(speeds[(model, b)]) for b in BACKENDS)
        print(f"| {model} | {files[model] / 2**20:.1f} | {params[(model, 'lab')] / 2**20:.1f} | {lab:.1f} "
              f"(x{lab / base['lab']:.2f}) | {native:.1f} (x{native / base['native']:.2f}) | {lab / native:.2f} |")


if __name__ == "__main__":
    main()
