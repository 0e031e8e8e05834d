"""Decode speed over tensor x pipeline parallel layouts on this machine, the lab backend against vLLM native,
with the parameter bytes each rank holds.

    .venv/bin/python bench/parallel.py [--model llama-58m] [--max-tokens N] [--batch N]

Each layout opens one Session per backend (vLLM's multiprocessing executor; on the CPU the Session splits the
allowed cores between the workers, so on a 2-core machine 4 workers share them) and times greedy decoding of
one batch after a short warm-up. Ratios are read within one layout, both backends measured back to back.
"""

from __future__ import annotations

import argparse
import warnings

from decode_speed import decode_tok_s

LAYOUTS = ((1, 1), (2, 1), (1, 2), (2, 2))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="llama-58m")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hfvllm_lab import Session

    prompts = [f"Prompt number {i} says" for i in range(args.batch)]
    print(f"{args.model}, float32, batch {args.batch} x {args.max_tokens} tokens, greedy")
    print(f"{'tp x pp':>8}  {'lab tok/s':>10}  {'native tok/s':>12}  {'lab/native':>10}  per-rank parameters (lab)")
    for tp, pp in LAYOUTS:
        speed, ranks = {}, ""
        for backend in ("lab", "native"):
            with Session(args.model, backend=backend, dtype="float32", tensor_parallel_size=tp,
                         pipeline_parallel_size=pp, max_model_len=256, max_num_seqs=args.batch) as s:
                speed[backend] = decode_tok_s(s, prompts, args.max_tokens)
                if backend == "lab":
                    report = s.ranks
                    ranks = " / ".join(f"{r.param_bytes / 2**20:.1f}" for r in report.rows) + \
                        f" MiB (whole {report.model_param_bytes() / 2**20:.1f} MiB)"
        print(f"{tp:>3} x {pp:<3}  {speed['lab']:>10.1f}  {speed['native']:>12.1f}  "
              f"{speed['lab'] / speed['native']:>9.2f}x  {ranks}", flush=True)


if __name__ == "__main__":
    main()
