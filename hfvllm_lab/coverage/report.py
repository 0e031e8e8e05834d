"""Coverage results: one row per (architecture, path), plain data; text, markdown and JSON views."""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

PASS, FAIL, REFUSED, ERROR, SKIP = "PASS", "FAIL", "REFUSED", "ERROR", "SKIP"
VERDICTS = (PASS, FAIL, REFUSED, ERROR, SKIP)
PATHS = ("lab", "transformers", "native")
PATH_TITLES = {"lab": "lab backend", "transformers": "vLLM Transformers backend", "native": "vLLM native"}


@dataclass(frozen=True)
class CoverageRow:
    """The verdict of one path on one shrunk architecture."""

    model_type: str
    architecture: str  # transformers' causal-LM class name
    path: str  # lab / transformers / native
    verdict: str  # PASS / FAIL / REFUSED / ERROR / SKIP
    reason: str = ""
    seconds: float | None = None


@dataclass
class CoverageReport:
    rows: list[CoverageRow] = field(default_factory=list)
    paths: tuple[str, ...] = ("lab",)
    started: str = ""  # ISO date-time
    finished: str = ""
    stack: dict[str, str] = field(default_factory=dict)  # package -> version
    timeout_s: float | None = None
    command: str = ""
    not_run: list[str] = field(default_factory=list)  # model types asked for but not (yet) run
    notes: list[str] = field(default_factory=list)  # how the report was put together, where not one plain run

    @property
    def partial(self) -> bool:
        return bool(self.not_run)

    def model_types(self) -> list[str]:
        seen: dict[str, None] = {}
        for row in self.rows:
            seen.setdefault(row.model_type, None)
        return list(seen)

    def row(self, model_type: str, path: str) -> CoverageRow | None:
        return next((r for r in self.rows if r.model_type == model_type and r.path == path), None)

    def counts(self) -> dict[str, dict[str, int]]:
        """path -> verdict -> number of architectures."""
        out = {p: {v: 0 for v in VERDICTS} for p in self.paths}
        for r in self.rows:
            out.setdefault(r.path, {v: 0 for v in VERDICTS})[r.verdict] += 1
        return out

    def failures(self, path: str = "lab", verdicts=(FAIL, ERROR)) -> list[CoverageRow]:
        return [r for r in self.rows if r.path == path and r.verdict in verdicts]

    # -- views ------------------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["paths"] = list(self.paths)
        data["counts"] = self.counts()
        data["partial"] = self.partial
        return data

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "CoverageReport":
        return cls(rows=[CoverageRow(**r) for r in data.get("rows", [])], paths=tuple(data.get("paths", ("lab",))),
                   started=data.get("started", ""), finished=data.get("finished", ""), stack=data.get("stack", {}),
                   timeout_s=data.get("timeout_s"), command=data.get("command", ""),
                   not_run=list(data.get("not_run", [])), notes=list(data.get("notes", [])))

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=1)

    def save(self, json_path: str | Path | None = None, markdown_path: str | Path | None = None) -> None:
        """Write the JSON and/or the markdown document, each atomically (a sweep rewrites them after
        every architecture; a kill never leaves half a file)."""
        for target, text in ((json_path, self.to_json() if json_path else ""),
                             (markdown_path, self.markdown() if markdown_path else "")):
            if target:
                target = Path(target)
                target.parent.mkdir(parents=True, exist_ok=True)
                tmp = target.with_name(f".{target.name}.tmp")
                tmp.write_text(text)
                os.replace(tmp, target)

    def to_frame(self):
        import pandas as pd

        return pd.DataFrame([asdict(r) for r in self.rows],
                            columns=["model_type", "architecture", "path", "verdict", "reason", "seconds"])

    def text(self, width: int = 70) -> str:
        """A plain-text table: one line per architecture, one column per path."""
        header = ["model type", "class"] + list(self.paths)
        lines = []
        for mt in self.model_types():
            cells = [mt, next(r.architecture for r in self.rows if r.model_type == mt)]
            for p in self.paths:
                r = self.row(mt, p)
                cells.append("-" if r is None else (r.verdict if not r.reason or r.verdict == PASS
                                                    else f"{r.verdict}: {_clip(r.reason, width)}"))
            lines.append(cells)
        widths = [max(len(str(c)) for c in col) for col in zip(header, *lines)] if lines else [len(h) for h in header]
        fmt = lambda cells: "  ".join(str(c).ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [fmt(header), fmt(["-" * w for w in widths])] + [fmt(c) for c in lines]
        out.append("")
        out.append(self.summary())
        return "\n".join(out)

    def summary(self) -> str:
        parts = []
        for p, counts in self.counts().items():
            parts.append(f"{p}: " + ", ".join(f"{v} {n}" for v, n in counts.items() if n))
        text = "; ".join(parts)
        if self.not_run:
            text += f" (partial: {len(self.not_run)} not run)"
        return text

    def __repr__(self) -> str:
        return self.text()

    def _repr_html_(self) -> str:
        return self.to_frame().to_html(index=False)

    def markdown(self) -> str:
        """The document docs/coverage.md holds: table of every architecture and path, counts,
        date, stack, the command that regenerates it, and what was not run."""
        lines = ["# Architecture coverage", ""]
        if self.partial:
            lines += [f"**PARTIAL RUN**: {len(self.not_run)} of {len(self.not_run) + len(self.model_types())} "
                      "architectures were not run yet (listed at the end). Continue it with `hfvllm-lab coverage "
                      "--reference --resume --json build/coverage.json --markdown docs/coverage.md` (keeps the "
                      "architectures already in the JSON).", ""]
        lines += [
            "Every architecture in transformers' causal-LM auto mapping (`MODEL_FOR_CAUSAL_LM_MAPPING_NAMES`), "
            "shrunk by `hfvllm_lab.zoo.shrink` to a tiny seeded checkpoint (hidden 64, 2-4 layers, head size 32, "
            "the zoo's 260-token byte vocabulary, 4 experts top-2, logits std ~2; norm weights and every parameter "
            "transformers initializes to a constant — zero biases, gates, per-key mask terms — given seeded noise, as "
            "training would), run through each vLLM path and "
            "compared with plain transformers in float32: greedy tokens, top-5 logprobs and prompt logprobs "
            "(`hfvllm_lab.parity.compare_generations`, float32 logprob tolerance 1e-3).",
            "",
            f"- Run: {self.started} to {self.finished}",
            "- Stack: " + ", ".join(f"{k} {v}" for k, v in self.stack.items()),
            f"- Per-architecture timeout: {self.timeout_s:g} s per path" if self.timeout_s else "- No timeout",
            f"- Regenerate: `make coverage` (runs `{self.command or _DEFAULT_COMMAND}`)",
            *(f"- Note: {n}" for n in self.notes),
            "",
            "Verdicts: **PASS** parity holds; **FAIL** the first divergence or logprob gap; **REFUSED** the lab "
            "backend's own refusal (UnsupportedModelError / AttentionPathError / WeightsError); **ERROR** a crash "
            "(exception type and first line) or a timeout; **SKIP** the architecture cannot be shrunk to a "
            "text-only checkpoint (or, for vLLM native, vLLM has no class of its own for it).",
            "",
            "## Counts",
            "",
            "| path | " + " | ".join(VERDICTS) + " |",
            "|---|" + "---|" * len(VERDICTS),
        ]
        for p, counts in self.counts().items():
            lines.append(f"| {PATH_TITLES.get(p, p)} | " + " | ".join(str(counts[v]) for v in VERDICTS) + " |")
        lines += ["", "## Lab backend FAIL / ERROR", ""]
        bad = self.failures("lab")
        lines += [f"- `{r.model_type}` ({r.architecture}): **{r.verdict}** {_md(r.reason)}" for r in bad] or ["none"]
        lines += ["", "## Every architecture", "",
                  "| model type | class | " + " | ".join(PATH_TITLES.get(p, p) for p in self.paths) + " |",
                  "|---|---|" + "---|" * len(self.paths)]
        for mt in self.model_types():
            arch = next(r.architecture for r in self.rows if r.model_type == mt)
            cells = []
            for p in self.paths:
                r = self.row(mt, p)
                if r is None:
                    cells.append("—")
                else:
                    cells.append(f"**{r.verdict}**" + (f" {_md(_clip(r.reason, 160))}" if r.reason and r.verdict != PASS else ""))
            lines.append(f"| `{mt}` | {arch} | " + " | ".join(cells) + " |")
        if self.not_run:
            lines += ["", "## Not run yet", "", ", ".join(f"`{m}`" for m in self.not_run)]
        return "\n".join(lines) + "\n"


_DEFAULT_COMMAND = "hfvllm-lab coverage --reference --json build/coverage.json --markdown docs/coverage.md"


def _clip(text: str, width: int) -> str:
    text = " ".join(text.split())
    return text if len(text) <= width else text[: width - 1] + "…"


def _md(text: str) -> str:
    return " ".join(text.split()).replace("|", "\\|")
