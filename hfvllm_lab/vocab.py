"""The words every layer shares, defined once: module kinds, replacement actions and tree statuses,
memory and timing phases. Plain strings, no imports, so any layer (backend, probes, results, render)
can use them without depending on another.
"""

from __future__ import annotations

# Kinds of modules the backend considers for replacement (a ReplacementRecord's `kind`).
LINEAR, NORM, EMBEDDING, LM_HEAD, ATTENTION, ROTARY, OTHER = (
    "linear", "norm", "embedding", "lm_head", "attention", "rotary", "other",
)
EXPERTS = "experts"  # a packed MoE experts module (transformers 5: experts.gate_up_proj / down_proj)
LAYER = "layer"  # a whole decoder layer (pipeline parallel: held by another rank)
STATE = "state"  # a module keeping state between tokens outside attention (Mamba mixer, delta-net, short conv)
# How the attention view names what serves a stateful module: its HF code, its state in vLLM's state cache.
STATE_BACKEND = "HF+STATE_SLOT"

# What happened to a candidate (a ReplacementRecord's `action`), in display order.
REPLACED, TIED, ROUTED, KEPT = "replaced", "tied", "routed", "kept"
# "fused": several HF modules merged into one vLLM layer (the record's `fused_from` names them).
FUSED = "fused"
# "elsewhere": pipeline parallel, another rank holds the module; a parameter-free placeholder stands here.
ELSEWHERE = "elsewhere"
NOT_FUSED = "not fused: "  # how a projection's record reason starts when its group was left unfused
ACTIONS = (REPLACED, FUSED, TIED, ROUTED, KEPT, ELSEWHERE)
# A node of the module tree has an action, or is "skipped": not a candidate (containers, activations).
SKIPPED = "skipped"
STATUSES = (*ACTIONS, SKIPPED)

# Memory phases of building and serving a model, in order.
MEMORY_PHASES = ("before", "meta", "replaced", "materialized", "loaded", "kv_cache")

# Engine steps, and the kinds of timed modules.
PREFILL, DECODE, MIXED = "prefill", "decode", "mixed"  # mixed: a step holding both
STEP_PHASES = (PREFILL, DECODE)  # display order; any other phase follows
TIMED_KINDS = ("embedding", "layer", "attention", "mlp", "norm", "final_norm", "lm_head")
TOP_LEVEL = ("embedding", "layer", "final_norm", "lm_head")  # non-overlapping: they sum to <= a step
NESTED_KINDS = ("attention", "mlp", "norm")  # timed inside a "layer" row
