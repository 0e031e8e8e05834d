"""Command line: `hfvllm-lab demo` and `hfvllm-lab compare [MODEL]`."""

from __future__ import annotations

import argparse
import sys

DEFAULT_PROMPTS = ["Hello, my name is", "The capital of France is", "vLLM runs HuggingFace models by"]


def demo(args: argparse.Namespace) -> int:
    from hfvllm_lab import zoo
    from hfvllm_lab.paths.vllm_path import EngineSettings, VllmPath

    model_dir = zoo.resolve(args.model)
    print(f"model: {args.model or zoo.DEFAULT} ({model_dir})")
    with VllmPath(EngineSettings(model_dir=model_dir)) as path:
        report = path.apply_model(lambda m: m.lab_report)[0]
        generations = path.generate(DEFAULT_PROMPTS, max_tokens=args.max_tokens)
    print()
    for g in generations:
        print(f"{g.prompt!r} -> {g.text!r}")
    print()
    print(report.summary())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfvllm-lab", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("demo", help="run the embedded default model through the lab backend")
    p.add_argument("model", nargs="?", default=None, help="zoo name or checkpoint directory")
    p.add_argument("--max-tokens", type=int, default=16)
    p.set_defaults(func=demo)
    args = parser.parse_args(argv)
    from hfvllm_lab.errors import LabError

    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
