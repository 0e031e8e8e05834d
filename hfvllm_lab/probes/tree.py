"""The module tree of a built model, each node marked replaced / tied / routed / kept / skipped."""

from __future__ import annotations

from torch import nn

from hfvllm_lab.backend.attention import ATTN_ATTR
from hfvllm_lab.backend.meta import parameter_count
from hfvllm_lab.backend.records import ReplacementRecord
from hfvllm_lab.results.replacements import REPLACED, SKIPPED, ModuleNode


def module_tree(root: nn.Module, records: list[ReplacementRecord] | None, strip: str = "") -> list[ModuleNode]:
    """Nodes in `named_modules` order. With records (lab backend) statuses come from them;
    without (other backends) a module counts as replaced when its class comes from vLLM."""
    by_name = {r.name: r for r in records or []}
    # Fused layers (action "fused"): the HF modules they merged stay in the tree as slices of them.
    fused_into = {src: r for r in records or [] for src in getattr(r, "fused_from", ())}
    nodes: list[ModuleNode] = []
    for name, module in root.named_modules():
        if not name:
            continue
        if strip:
            if not name.startswith(strip + "."):
                continue
            name = name[len(strip) + 1:]
        parts = name.split(".")
        if parts[-1] == ATTN_ATTR:
            continue  # shown through the routed attention module that owns it
        cls = type(module).__name__
        record = by_name.get(name)
        if record is None and name in fused_into:
            into = fused_into[name]
            node = ModuleNode(name, len(parts) - 1, cls, into.original_class, into.action, parameter_count(module),
                              f"merged into {into.name} ({into.new_class})")
        elif record is not None:
            node = ModuleNode(name, len(parts) - 1, cls, record.original_class, record.action, parameter_count(module),
                              record.reason)
        elif records is None and type(module).__module__.startswith("vllm.") and not list(module.children()):
            node = ModuleNode(name, len(parts) - 1, cls, cls, REPLACED, parameter_count(module), "vLLM layer")
        else:
            reason = "container" if list(module.children()) else "not a replacement candidate"
            node = ModuleNode(name, len(parts) - 1, cls, cls, SKIPPED, parameter_count(module), reason)
        nodes.append(node)
    return nodes

