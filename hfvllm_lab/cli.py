"""Command line: `hfvllm-lab compare [MODEL]` (also `make demo`), `hfvllm-lab rollout [MODEL]`,
`hfvllm-lab diagnose [MODEL]` and `hfvllm-lab coverage [ARCH ...]` (also `make coverage`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def compare(args: argparse.Namespace) -> int:
    from hfvllm_lab.session import DEFAULT_PROMPTS, Session

    prompts = args.prompt or DEFAULT_PROMPTS
    print(f"hfvllm-lab compare: {args.model or 'embedded default (zoo: llama)'}", flush=True)
    if args.reference:
        with _open(args) as session:
            print(f"{session!r}\n", flush=True)
            result = session.compare(reference=args.reference)
        print(repr(result))
        _write(args, f"hfvllm_lab: {result.model} against {result.reference}", result,
               [(result.plot(), "KL per position and drift per module")])
        return 0
    with Session(args.model, device=args.device, dtype=args.dtype, backend=args.backend, mode=args.mode,
                 tensor_parallel_size=args.tensor_parallel_size, pipeline_parallel_size=args.pipeline_parallel_size,
                 distributed_executor_backend=args.distributed_executor_backend) as session:
        print(f"{session!r}\n", flush=True)
        cmp = session.compare(prompts, max_tokens=args.max_tokens, bisect=args.bisect,
                              native_floor=False if args.no_native_floor else None)
        replacements, memory, attention = session.replacements, session.memory, session.attention
        ranks = session.ranks if session.settings.layout.world > 1 else None
    print(repr(replacements), repr(memory), repr(attention), *([repr(ranks)] if ranks else []), repr(cmp), sep="\n\n")
    print(f"\n{cmp.verdict.label}: {cmp.verdict.reason}")
    if args.html:
        from hfvllm_lab.render.report import session_report_html

        title = f"hfvllm_lab: {cmp.model} on {cmp.device} ({cmp.dtype})"
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(session_report_html(title, replacements, memory, attention, cmp))
        print(f"\nHTML report: {args.html}")
    if args.json:
        data = {"mode": args.mode, "comparison": cmp.to_dict(), "replacements": replacements.to_dict(), "memory": memory.to_dict(),
                "attention": attention.to_dict()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
        print(f"JSON: {args.json}")
    return 0 if cmp.ok else 1


def _open(args: argparse.Namespace):
    from hfvllm_lab.session import Session

    return Session(args.model, device=args.device, dtype=args.dtype, backend=args.backend, mode=args.mode,
                   lm_head_dtype=getattr(args, "lm_head_dtype", None))


def _write(args: argparse.Namespace, title: str, result, figures: list[tuple[object, str]]) -> None:
    if args.html:
        from hfvllm_lab.render.html import figure_to_img_tag, report_html

        sections = [(type(result).__name__, result._repr_html_())]
        sections += [(alt, figure_to_img_tag(fig, alt=alt)) for fig, alt in figures]
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(report_html(title, sections))
        print(f"\nHTML report: {args.html}")
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(result.to_dict(), indent=1, default=str))
        print(f"JSON: {args.json}")


def rollout(args: argparse.Namespace) -> int:
    from hfvllm_lab.session import DEFAULT_PROMPTS

    with _open(args) as session:
        print(f"{session!r}\n", flush=True)
        result = session.rollout(args.prompt or DEFAULT_PROMPTS, n=args.n, max_tokens=args.max_tokens,
                                 temperature=args.temperature, top_p=args.top_p, top_k=args.top_k, seed=args.seed,
                                 logprobs_mode=args.logprobs_mode, trainer_dtype=args.trainer_dtype,
                                 native_floor=False if args.no_native_floor else None)
    print(repr(result))
    _write(args, f"hfvllm_lab rollout: {result.model}", result,
           [(result.plot("ratio"), "importance ratios"), (result.plot("position"), "|log-ratio| by position")])
    return 0 if result.ok else 1


def diagnose(args: argparse.Namespace) -> int:
    from hfvllm_lab.session import DEFAULT_PROMPTS

    with _open(args) as session:
        print(f"{session!r}\n", flush=True)
        result = session.diagnose(args.prompt or DEFAULT_PROMPTS, lenses=args.lenses, n=args.n,
                                  max_tokens=args.max_tokens, seed=args.seed)
    print(repr(result))
    _write(args, f"hfvllm_lab diagnose: {result.model}", result, [(result.plot(), "arms against the floor")])
    return 0 if not (result.mismatched or result.failed) else 1


def coverage(args: argparse.Namespace) -> int:
    from hfvllm_lab.coverage.report import CoverageReport
    from hfvllm_lab.coverage.runner import run_coverage

    previous = None
    if args.resume and args.json and Path(args.json).is_file():
        previous = CoverageReport.from_dict(json.loads(Path(args.json).read_text()))

    def save(report) -> None:
        report.save(args.json, args.markdown)

    command = " ".join(["hfvllm-lab coverage", *args.arch, *(["--reference"] if args.reference else []),
                        *([f"--json {args.json}"] if args.json else []),
                        *([f"--markdown {args.markdown}"] if args.markdown else [])])
    report = run_coverage(args.arch or None, reference=args.reference, timeout=args.timeout,
                          log_dir=Path(args.logs) if args.logs else None, previous=previous,
                          command=command, on_update=save)
    save(report)
    print(report.text())
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="hfvllm-lab", description="See what vLLM's layers do to an HF causal LM.")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("compare", help="HF-native path vs vLLM path on the same prompts")
    p.add_argument("model", nargs="?", default=None, help="zoo name or checkpoint directory (default: zoo llama)")
    p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
    p.add_argument("--max-tokens", type=int, default=16)
    p.add_argument("--device", default="auto")
    p.add_argument("--dtype", default="auto",
                   help="auto (the checkpoint's dtype where the device runs it), float32, bfloat16 or float16")
    p.add_argument("--backend", default="lab", choices=["lab", "transformers", "native"])
    p.add_argument("--mode", default="inspect", choices=["inspect", "fast"],
                   help="inspect: eager, per-layer probes; fast: vLLM-compiled, whole-step timing only")
    p.add_argument("--bisect", action="store_true", help="also name the first module whose output differs")
    p.add_argument("--tensor-parallel-size", type=int, default=1)
    p.add_argument("--pipeline-parallel-size", type=int, default=1)
    p.add_argument("--distributed-executor-backend", default=None, choices=["mp", "ray"],
                   help="vLLM's executor for several ranks (default mp)")
    p.add_argument("--no-native-floor", action="store_true",
                   help="in reduced precision, skip vLLM native as a noise floor (transformers' own stays)")
    p.add_argument("--reference", help="another checkpoint with the same tokenizer (the original of a quantized "
                                       "model): both through one lens instead of transformers vs vLLM")
    p.add_argument("--html", help="write a self-contained HTML report here")
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=compare)
    for name, helptext in (("rollout", "RL rollout mismatch: engine samples scored by the trainer (transformers)"),
                           ("diagnose", "which engine factor causes a mismatch, lens by lens")):
        p = sub.add_parser(name, help=helptext)
        p.add_argument("model", nargs="?", default=None, help="zoo name or checkpoint directory (default: zoo llama)")
        p.add_argument("--prompt", action="append", help="a prompt (repeat for several)")
        p.add_argument("--device", default="auto")
        p.add_argument("--dtype", default="auto")
        p.add_argument("--backend", default="lab", choices=["lab", "transformers", "native"])
        p.add_argument("--mode", default="inspect", choices=["inspect", "fast"])
        p.add_argument("--lm-head-dtype", default=None, choices=["float32"],
                       help="hf_overrides head_dtype: the LM head and logits in float32")
        p.add_argument("--n", type=int, default=4 if name == "rollout" else 2, help="samples per prompt")
        p.add_argument("--max-tokens", type=int, default=32 if name == "rollout" else 24)
        p.add_argument("--seed", type=int, default=0)
        p.add_argument("--html", help="write a self-contained HTML report here")
        p.add_argument("--json", help="write the result as JSON here")
        if name == "rollout":
            p.add_argument("--temperature", type=float, default=1.0)
            p.add_argument("--top-p", type=float, default=1.0)
            p.add_argument("--top-k", type=int, default=-1)
            p.add_argument("--logprobs-mode", default="raw", choices=["raw", "processed"])
            p.add_argument("--trainer-dtype", default=None, help="the trainer's dtype (default: the engine's)")
            p.add_argument("--no-native-floor", action="store_true")
            p.set_defaults(func=rollout)
        else:
            from hfvllm_lab.diagnose.lenses import LENSES

            p.add_argument("--lenses", nargs="+", choices=list(LENSES), default=None,
                           help="lenses to run (default: all)")
            p.set_defaults(func=diagnose)
    p = sub.add_parser("coverage", help="shrink every causal-LM architecture of transformers and run it through vLLM")
    p.add_argument("arch", nargs="*", help="model types (default: transformers' whole causal-LM mapping)")
    p.add_argument("--reference", action="store_true",
                   help="also run vLLM's built-in Transformers backend and vLLM native on each checkpoint")
    p.add_argument("--timeout", type=float, default=120.0, help="seconds per step of an architecture (default 120)")
    p.add_argument("--json", help="write the report as JSON here (rewritten after each architecture)")
    p.add_argument("--markdown", help="write the report as a markdown document here (docs/coverage.md)")
    p.add_argument("--logs", default="build/coverage-logs", help="one log per architecture here")
    p.add_argument("--resume", action="store_true", help="keep the architectures already in --json")
    p.set_defaults(func=coverage)
    args = parser.parse_args(argv)
    from hfvllm_lab.errors import LabError

    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
