"""Resident memory across Sessions built and closed in a row (a notebook cell re-run five times).

    .venv/bin/python bench/session_rss.py [MODEL] [--sessions N]

Prints process RSS after each Session is closed, the growth from the first to the last, and the
model's size for scale (the test suite asserts growth <= one model).
"""

from __future__ import annotations

import argparse
import gc
import warnings


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("model", nargs="?", default="llama-medium")
    parser.add_argument("--sessions", type=int, default=5)
    args = parser.parse_args()
    warnings.simplefilter("ignore")
    from hfvllm_lab import Session, zoo
    from hfvllm_lab.device import process_rss

    model_bytes = sum(p.stat().st_size for p in zoo.resolve(args.model).glob("*.safetensors"))
    readings = []
    for i in range(args.sessions):
        s = Session(args.model)
        s.generate(["Hello"], 2)
        open_rss = process_rss()
        s.close()
        del s
        gc.collect()
        readings.append(process_rss())
        print(f"session {i + 1}: rss open {open_rss / 2**20:8.1f} MiB, after close {readings[-1] / 2**20:8.1f} MiB")
    growth = readings[-1] - readings[0]
    print(f"growth after the first session: {growth / 2**20:+.1f} MiB; model size {model_bytes / 2**20:.1f} MiB; "
          f"ratio {growth / model_bytes:+.2f}")


if __name__ == "__main__":
    main()
