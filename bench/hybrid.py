"""A hybrid model's decode speed, lab against vLLM native: what running each stateful module as HF
code, with every request's state loaded from and stored to vLLM's state cache, costs.

    .venv/bin/python bench/hybrid.py [--model falcon_h1] [--rounds N] [--max-tokens N] [--batch N]

The model is the coverage shrinker's checkpoint (hidden 64, tiny: per-step overheads dominate, which
is what the state handling adds). Each round opens a Session per backend (taking turns, median of the
rounds) and times greedy decoding of a batch; the lab's state slots also report how many module
calls ran (one batched call per decode step and layer, one per fresh prefill).
"""

from __future__ import annotations

import argparse
import statistics
import time
import warnings

BACKENDS = ("lab", "native")


def decode_tok_s(session, prompts: list[list[int]], max_tokens: int) -> float:
    session._engine.generate(prompts[:1], 2, prompt_logprobs=False)
    begin = time.perf_counter()
    out = session._engine.generate(prompts, max_tokens, top_k=1, prompt_logprobs=False)
    return sum(len(g.token_ids) for g in out) / (time.perf_counter() - begin)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="falcon_h1")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hfvllm_lab import Session
    from hfvllm_lab.backend.state import STATE_ATTR
    from hfvllm_lab.zoo.shrink import shrunk_path

    directory = shrunk_path(args.model)
    prompts = [[(13 * i + 7 * k) % 250 + 1 for k in range(8 + 4 * i)] for i in range(args.batch)]
    speeds: dict[str, list[float]] = {b: [] for b in BACKENDS}
    calls = {}
    for round_ in range(args.rounds):
        for backend in BACKENDS if round_ % 2 == 0 else tuple(reversed(BACKENDS)):
            s = Session(directory, backend=backend, dtype="float32", max_num_seqs=args.batch, max_model_len=256)
            speeds[backend].append(decode_tok_s(s, prompts, args.max_tokens))
            if backend == "lab" and round_ == 0:
                calls = s._engine.apply_model(lambda m: next(dict(getattr(x, STATE_ATTR).calls)
                                                             for x in m.modules() if hasattr(x, STATE_ATTR)),
                                              track=False)[0]
            s.close()
    lab, native = (statistics.median(speeds[b]) for b in BACKENDS)
    print(f"{args.model} (shrunk), float32, greedy decode, batch {args.batch} x {args.max_tokens} tokens, "
          f"median of {args.rounds} alternating rounds")
    print("| backend | tok/s | rounds |")
    print("|---|---|---|")
    for backend in BACKENDS:
        print(f"| {backend} | {statistics.median(speeds[backend]):.1f} | "
              f"{', '.join(f'{v:.1f}' for v in speeds[backend])} |")
    print(f"lab / native: {lab / native:.2f}")
    print(f"first state slot's calls in the lab's first round: {calls}")


if __name__ == "__main__":
    main()
