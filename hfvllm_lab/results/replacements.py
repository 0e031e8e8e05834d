"""The replacement log: every module swap, every candidate left alone, and the module tree."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from hfvllm_lab.backend.records import ReplacementRecord
from hfvllm_lab.results._base import Shown, frame, plain, rows_of

# Status of a node in the tree view (defined once, in hfvllm_lab.vocab).
from hfvllm_lab.vocab import KEPT, REPLACED, ROUTED, SKIPPED, STATUSES, TIED  # noqa: F401


@dataclass(frozen=True)
class ModuleNode:
    """One module of the built model, in tree order (`depth` 0 is the root's children)."""

    name: str
    depth: int
    module_class: str
    original_class: str
    status: str  # one of STATUSES; "skipped" = not a replacement candidate (containers, activations)
    parameters: int
    reason: str = ""


@dataclass(repr=False)
class ReplacementLog(Shown):
    """What the backend did to each module. `records` are candidates; `tree` is every module."""

    model: str
    backend: str
    hf_class: str
    records: list[ReplacementRecord] = field(default_factory=list)
    tree: list[ModuleNode] = field(default_factory=list)
    note: str = ""  # how the log was obtained, e.g. observed from classes for other backends
    model_class: str = ""  # the class vLLM actually built, e.g. "hfvllm_lab.backend.model.LabForCausalLM"
    options: dict[str, str] = field(default_factory=dict)  # build options and where each came from
    rank: str = ""  # under tensor / pipeline parallel: the rank this describes ("" for one rank)

    def counts(self) -> dict[str, dict[str, int]]:
        """original class -> {action: count} over the records."""
        out: dict[str, dict[str, int]] = {}
        for r in self.records:
            per = out.setdefault(r.original_class, {})
            per[r.action] = per.get(r.action, 0) + 1
        return out

    def by_action(self, action: str) -> list[ReplacementRecord]:
        return [r for r in self.records if r.action == action]

    def to_frame(self):
        return frame([r.to_dict() for r in self.records])

    def tree_frame(self):
        return frame(rows_of(self.tree))

    def to_dict(self) -> dict[str, Any]:
        return plain({"model": self.model, "backend": self.backend, "hf_class": self.hf_class,
                      "records": self.records, "tree": self.tree, "note": self.note,
                      "model_class": self.model_class, "options": self.options, "rank": self.rank})

    def tree_text(self) -> str:
        from hfvllm_lab import display

        return display.text(self, "tree")

    def plot(self, ax=None):
        from hfvllm_lab import display

        return display.plot(self, ax=ax)
