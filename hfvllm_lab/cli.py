"""Command line: `hfvllm-lab compare [MODEL]` (also `make demo`)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def compare(args: argparse.Namespace) -> int:
    from hfvllm_lab.session import DEFAULT_PROMPTS, Session

    prompts = args.prompt or DEFAULT_PROMPTS
    print(f"hfvllm-lab compare: {args.model or 'embedded default (zoo: llama)'}", flush=True)
    with Session(args.model, device=args.device, dtype=args.dtype, backend=args.backend) as session:
        print(f"{session!r}\n", flush=True)
        cmp = session.compare(prompts, max_tokens=args.max_tokens, bisect=args.bisect,
                              native_floor=False if args.no_native_floor else None)
        replacements, memory, attention = session.replacements, session.memory, session.attention
    print(repr(replacements), repr(memory), repr(attention), repr(cmp), sep="\n\n")
    print(f"\n{cmp.verdict.label}: {cmp.verdict.reason}")
    if args.html:
        from hfvllm_lab.render.report import session_report_html

        title = f"hfvllm_lab: {cmp.model} on {cmp.device} ({cmp.dtype})"
        Path(args.html).parent.mkdir(parents=True, exist_ok=True)
        Path(args.html).write_text(session_report_html(title, replacements, memory, attention, cmp))
        print(f"\nHTML report: {args.html}")
    if args.json:
        data = {"comparison": cmp.to_dict(), "replacements": replacements.to_dict(), "memory": memory.to_dict(),
                "attention": attention.to_dict()}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(data, indent=1, default=str))
        print(f"JSON: {args.json}")
    return 0 if cmp.ok else 1


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
    p.add_argument("--bisect", action="store_true", help="also name the first module whose output differs")
    p.add_argument("--no-native-floor", action="store_true",
                   help="in reduced precision, skip vLLM native as a noise floor (transformers' own stays)")
    p.add_argument("--html", help="write a self-contained HTML report here")
    p.add_argument("--json", help="write the results as JSON here")
    p.set_defaults(func=compare)
    args = parser.parse_args(argv)
    from hfvllm_lab.errors import LabError

    try:
        return args.func(args)
    except LabError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
