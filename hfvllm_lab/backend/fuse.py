"""Fuse projections the way vLLM's own model classes do, decided from what the modules compute.

- q/k/v: three plain `nn.Linear` of an attention module that (on a sample input, run on a CPU
  copy) each receive the very same input tensor once, and feed the query, the key and the value
  of the attention call respectively, become one `QKVParallelLinear`. The HF attention forward
  still runs: `q_proj`/`k_proj`/`v_proj` become `FusedSlice` views; the first one called computes
  the fused output once per forward, each returns its slice.
- gate/up: a module with plain `nn.Linear` children that computes `down(act(gate(x)) * up(x))`
  (checked on a sample input against SiLU and both GELUs, over every assignment of its Linears,
  including one Linear holding gate and up stacked, as Phi-3's `gate_up_proj`) is replaced by
  `GatedMLP`: `MergedColumnParallelLinear` -> vLLM's fused `SiluAndMul`/`GeluAndMul` -> the
  down projection (swapped for a vLLM linear by the normal pass).

Checkpoints stay as they are: unfused tensors (`q_proj.weight`, `gate_proj.weight`) load as
shards of the fused layers (`shard_map`); a stacked `gate_up_proj.weight` loads whole.
Turned off, with the CPU norm and rotary kernels (norms.py, rope.py), by
`hf_overrides={"lab_fuse": False}` or `HFVLLM_LAB_FUSE=0`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from hfvllm_lab.backend.quant import describe as describe_quant
from hfvllm_lab.backend.quant import register_packed
from hfvllm_lab.backend.records import FUSED, LINEAR, ReplacementRecord
from hfvllm_lab.backend.samples import call_attention, cpu_copy, float32_samples, looks_like_rotary, probe_attention
from hfvllm_lab.vocab import NOT_FUSED

ENV = "HFVLLM_LAB_FUSE"
CONFIG_FLAG = "lab_fuse"  # an hf_overrides key: {"lab_fuse": False}
PROBE_KEY = "hfvllm_lab_fuse_probe"  # transformers attention key used on the sample copy only


def fusion_setting(config) -> tuple[bool, str]:
    """(on?, where that came from): on by default; off with `hf_overrides={"lab_fuse": False}` or
    `HFVLLM_LAB_FUSE=0`."""
    flag = getattr(config, CONFIG_FLAG, None)
    if flag is not None:
        return bool(flag), f"hf_overrides {CONFIG_FLAG}={flag!r}"
    value = os.environ.get(ENV)
    if value is not None:
        on = value.strip().lower() not in ("0", "false", "no", "off")
        return on, f"{ENV}={value}"
    return True, "default"


# -- run-time modules --------------------------------------------------------------------------
class _FusedOutput:
    """What the views of one fused layer share: the layer and its output of the current forward."""

    def __init__(self, layer: nn.Module, count: int) -> None:
        self.layer = layer  # registered on the parent module, referenced (not owned) here
        self.count = count
        self.out: torch.Tensor | None = None
        self.inp: torch.Tensor | None = None


class FusedSlice(nn.Module):
    """Stands where an HF projection was: returns its columns of the fused layer's output.

    The first view the HF forward calls (the order was observed on the sample input) runs the
    fused layer; the others slice that output. In eager mode a view checks it gets the tensor
    the fused layer ran on, so a changed call pattern fails loudly instead of reusing a stale
    output.
    """

    def __init__(self, shared: _FusedOutput, index: int, start: int, stop: int, fused_name: str,
                 in_features: int, out_features: int) -> None:
        super().__init__()
        self._shared = shared
        self.index, self.start, self.stop = index, start, stop
        self.fused_name = fused_name
        self.in_features, self.out_features = in_features, out_features

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shared = self._shared
        if self.index == 0:
            shared.out = shared.layer(x)
            shared.inp = x
        elif not torch.compiler.is_compiling() and (shared.out is None or shared.inp is not x):
            raise RuntimeError(f"{self.fused_name}: slice {self.index} called without the fused output of its "
                               "input; the attention forward no longer calls its projections as observed")
        out = shared.out[..., self.start:self.stop]
        if self.index == shared.count - 1:
            shared.out = shared.inp = None
        return out

    def extra_repr(self) -> str:
        return f"{self.fused_name}[..., {self.start}:{self.stop}]"


class GatedMLP(nn.Module):
    """`down(act(gate(x)) * up(x))` with gate and up in one matmul and vLLM's fused activation."""

    def __init__(self, gate_up_proj: nn.Module, act_fn: nn.Module, down_proj: nn.Module, down_name: str,
                 hf_class: str) -> None:
        super().__init__()
        self.gate_up_proj = gate_up_proj
        self.act_fn = act_fn
        self.down_name = down_name
        setattr(self, down_name, down_proj)
        self.hf_class = hf_class

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return getattr(self, self.down_name)(self.act_fn(self.gate_up_proj(x)))

    def extra_repr(self) -> str:
        return f"from {self.hf_class}"


# -- what the modules compute -------------------------------------------------------------------
@dataclass(frozen=True)
class QKVMaths:
    roles: dict[str, str] | None  # child name -> "q" / "k" / "v", call order first
    order: tuple[str, ...] = ()
    num_heads: int = 0
    num_kv_heads: int = 0
    head_size: int = 0
    reason: str = ""
    note: str = ""  # a stand-in the sample check used (identity rotary tables), recorded with the result


@dataclass(frozen=True)
class MLPMaths:
    gate: str | None  # child name of the gate (or of the stacked gate_up Linear)
    up: str | None  # None when `gate` holds gate and up stacked
    down: str | None = None
    activation: str = ""  # "silu", "gelu_tanh", "gelu"
    reason: str = ""
    candidate: bool = True  # False: not shaped like an MLP at all (its Linears get no "not fused" note)


def _plain_linears(module: nn.Module) -> dict[str, nn.Linear]:
    return {n: c for n, c in module.named_children() if type(c) is nn.Linear}


_QKV_CACHE: dict[tuple, QKVMaths] = {}
_MLP_CACHE: dict[tuple, MLPMaths] = {}


def classify_qkv(module: nn.Module, rotary: nn.Module | None) -> QKVMaths:
    """Which plain Linear children of an attention module make its query, key and value, all
    from one input tensor, each called once. Measured on a CPU copy with random weights."""
    linears = _plain_linears(module)
    key = (type(module), tuple((n, tuple(l.weight.shape), l.bias is not None) for n, l in linears.items()))
    if key not in _QKV_CACHE:
        with float32_samples():
            _QKV_CACHE[key] = _measure_qkv(module, linears, rotary)
    return _QKV_CACHE[key]


def _measure_qkv(module: nn.Module, linears: dict[str, nn.Linear], rotary) -> QKVMaths:
    from transformers import AttentionInterface

    if len(linears) < 3:
        return QKVMaths(None, reason="fewer than three plain Linear children")
    AttentionInterface.register(PROBE_KEY, probe_attention)
    probe = cpu_copy(module, seed=11)
    config = getattr(probe, "config", None)
    if config is None or not hasattr(config, "_attn_implementation"):
        return QKVMaths(None, reason="no config to point at a probe attention")
    config._attn_implementation = PROBE_KEY
    hidden = {l.in_features for l in linears.values()}
    width = max(hidden, key=lambda w: sum(l.in_features == w for l in linears.values()))
    x = torch.randn(1, 5, width, generator=torch.Generator().manual_seed(12))
    calls: list[tuple[str, torch.Tensor]] = []
    notes: list[str] = []
    handles = [getattr(probe, n).register_forward_pre_hook(lambda m, a, n=n: calls.append((n, a[0])))
               for n in linears]
    try:
        try:
            base = call_attention(probe, x, rotary, notes=notes)
        except Exception as exc:
            return QKVMaths(None, reason=f"could not be run on a sample input ({type(exc).__name__}: {exc})"[:200])
        # At position 0 a rotation is the identity, so the stand-in does not change which Linear feeds what.
        note = f"sample check at position 0: {notes[0]}" if notes else ""
        before = [n for n, _ in calls]
        roles: dict[str, str] = {}
        with torch.no_grad():
            for name in linears:
                lin = getattr(probe, name)
                saved = [p.detach().clone() for p in lin.parameters()]
                for p in lin.parameters():
                    p.zero_()
                changed = [r for r, a, b in zip("qkv", base, call_attention(probe, x, rotary)) if not torch.equal(a, b)]
                for p, s in zip(lin.parameters(), saved):
                    p.copy_(s)
                if len(changed) > 1:
                    return QKVMaths(None, reason=f"{name} feeds {', '.join(changed)} of the attention at once",
                                    note=note)
                if changed:
                    roles[name] = changed[0]
    finally:
        for h in handles:
            h.remove()
    if sorted(roles.values()) != ["k", "q", "v"]:
        return QKVMaths(None, reason=f"query/key/value are not each made by one Linear ({roles})", note=note)
    order = tuple(n for n in before if n in roles)
    inputs = [t for n, t in calls[: len(before)] if n in roles]
    if len(order) != 3 or any(t is not inputs[0] for t in inputs):
        return QKVMaths(None, reason="q/k/v are not each called once on the same input tensor", note=note)
    q, k, v = base
    if not (q.shape[-1] == k.shape[-1] == v.shape[-1]):
        return QKVMaths(None, reason="query, key and value head sizes differ", note=note)
    widths = {r: linears[n].out_features for n, r in roles.items()}
    head = q.shape[-1]
    if widths["q"] != q.shape[1] * head or widths["k"] != k.shape[1] * head or widths["v"] != v.shape[1] * head:
        return QKVMaths(None, reason="projection widths do not match the attention's heads", note=note)
    ordered = {n: roles[n] for n in order}
    return QKVMaths(ordered, order, q.shape[1], k.shape[1], head, note=note)


ACTIVATIONS = {
    "silu": F.silu,
    "gelu_tanh": lambda t: F.gelu(t, approximate="tanh"),
    "gelu": F.gelu,
}


def classify_mlp(module: nn.Module) -> MLPMaths:
    """Whether `module(x) == down(act(gate(x)) * up(x))` for some assignment of its plain Linear
    children (or one Linear stacking gate and up), and which activation; measured on a CPU copy."""
    linears = _plain_linears(module)
    key = (type(module), tuple((n, tuple(l.weight.shape), l.bias is not None) for n, l in linears.items()))
    if key not in _MLP_CACHE:
        with float32_samples():
            _MLP_CACHE[key] = _measure_mlp(module, linears)
    return _MLP_CACHE[key]


def _measure_mlp(module: nn.Module, linears: dict[str, nn.Linear]) -> MLPMaths:
    if len(linears) not in (2, 3):
        return MLPMaths(None, None, reason="not two or three plain Linear children", candidate=False)
    others = [n for n, c in module.named_children() if n not in linears and any(True for _ in c.parameters())]
    if others or any(True for _ in module.parameters(recurse=False)):
        return MLPMaths(None, None, reason="holds parameters outside its Linear children", candidate=False)
    probe = cpu_copy(module, seed=21)
    width = {l.in_features for l in linears.values()}
    outs = {}
    for w in sorted(width):
        x = torch.randn(4, w, generator=torch.Generator().manual_seed(22))
        with torch.no_grad():
            try:
                y = probe(x)
            except Exception:
                continue
        if isinstance(y, torch.Tensor) and y.shape == x.shape:
            break
    else:
        return MLPMaths(None, None, reason="could not be run on a sample input")
    lin = {n: getattr(probe, n) for n in linears}
    with torch.no_grad():
        for n, l in lin.items():
            outs[n] = l(x) if l.in_features == x.shape[-1] else None
        for down, d in lin.items():
            if d.out_features != x.shape[-1]:
                continue
            rest = [n for n in lin if n != down]
            pairs = [(a, b) for a in rest for b in rest if a != b] if len(rest) == 2 else [(rest[0], None)]
            for gate, up in pairs:
                if outs[gate] is None or (up is not None and outs[up] is None):
                    continue
                if up is None:
                    g, u = outs[gate].chunk(2, dim=-1)
                else:
                    g, u = outs[gate], outs[up]
                if g.shape != u.shape or g.shape[-1] != d.in_features:
                    continue
                for act_name, act in ACTIVATIONS.items():
                    if torch.allclose(y, d(act(g) * u), rtol=1e-4, atol=1e-5):
                        return MLPMaths(gate, up, down, act_name)
    return MLPMaths(None, None, reason="computes no down(act(gate(x)) * up(x)) with SiLU or GELU")


def vllm_activation(name: str) -> nn.Module:
    from vllm.model_executor.layers.activation import GeluAndMul, SiluAndMul

    if name == "silu":
        return SiluAndMul()
    return GeluAndMul(approximate="tanh" if name == "gelu_tanh" else "none")


# -- the pass -----------------------------------------------------------------------------------
@dataclass
class FusionPlan:
    """What `fuse_modules` did: records keyed by the fused layer's name, the names the replace
    pass must leave alone, checkpoint shards, and why candidates were not fused."""

    records: dict[str, ReplacementRecord] = field(default_factory=dict)
    handled: set[str] = field(default_factory=set)
    shards: dict[str, tuple[str, object]] = field(default_factory=dict)  # HF param -> (fused param, shard id)
    not_fused: dict[str, str] = field(default_factory=dict)  # HF Linear name -> reason


def fuse_modules(model: nn.Module, ctx, tp_style, *, vllm_prefix: str, base_prefix: str,
                 attention_modules: dict[str, nn.Module]) -> FusionPlan:
    """Fuse q/k/v and gate/up in place (see the module docstring). `tp_style(name, ctx)` gives
    a Linear's tensor-parallel style; groups whose members are not all column-parallel (or all
    replicated at TP 1) are left unfused."""
    plan = FusionPlan()
    rotary = next((m for m in model.modules() if looks_like_rotary(m)), None)
    attention_ids = {id(m) for m in attention_modules.values()}
    for name, module in list(model.named_modules()):
        if id(module) in attention_ids:
            _fuse_qkv(name, module, rotary, ctx, tp_style, plan, vllm_prefix, base_prefix)
    for name, module in list(model.named_modules()):
        if name and id(module) not in attention_ids and not isinstance(module, (GatedMLP, FusedSlice)) \
                and len(_plain_linears(module)) in (2, 3) and not any(True for _ in module.parameters(recurse=False)):
            _fuse_mlp(model, name, module, ctx, tp_style, plan, vllm_prefix, base_prefix)
    return plan


def _styles_ok(names: list[str], ctx, tp_style, base_prefix: str) -> bool:
    styles = {tp_style(n.removeprefix(base_prefix + "."), ctx) for n in names}
    return styles == {"replicate"} if ctx.tp_size == 1 else styles == {"colwise"}


def _fuse_qkv(name, module, rotary, ctx, tp_style, plan: FusionPlan, vllm_prefix, base_prefix) -> None:
    from vllm.model_executor.layers.linear import QKVParallelLinear

    linears = _plain_linears(module)
    if len(linears) < 3:
        return  # e.g. Phi-3's qkv_proj is fused in the checkpoint already
    maths = classify_qkv(module, rotary)
    note = f"; {maths.note}" if maths.note else ""
    if maths.roles is None:
        for n in linears:
            plan.not_fused[f"{name}.{n}"] = NOT_FUSED + maths.reason + note
        return
    members = {maths.roles[n]: n for n in maths.order}  # "q" -> child name
    full = [f"{name}.{members[r]}" for r in "qkv"]
    if not _styles_ok(full, ctx, tp_style, base_prefix):
        for n in full:
            plan.not_fused[n] = NOT_FUSED + "q/k/v tensor-parallel styles differ from column-parallel"
        return
    lins = [linears[members[r]] for r in "qkv"]
    if len({l.bias is not None for l in lins}) != 1:
        for n in full:
            plan.not_fused[n] = NOT_FUSED + "q/k/v disagree on bias"
        return
    child = "qkv_proj" if not hasattr(module, "qkv_proj") else "lab_qkv_proj"
    fused_name = f"{name}.{child}"
    register_packed(ctx.quant_config, child, [members[r] for r in "qkv"])
    layer = QKVParallelLinear(lins[0].in_features, maths.head_size, maths.num_heads, maths.num_kv_heads,
                              bias=lins[0].bias is not None, quant_config=ctx.quant_config,
                              prefix=f"{vllm_prefix}.{fused_name}", return_bias=False)
    module.add_module(child, layer)
    q_local = layer.num_heads * layer.head_size
    kv_local = layer.num_kv_heads * layer.head_size
    bounds = {"q": (0, q_local), "k": (q_local, q_local + kv_local), "v": (q_local + kv_local, q_local + 2 * kv_local)}
    shared = _FusedOutput(layer, 3)
    for index, child_name in enumerate(maths.order):
        role = maths.roles[child_name]
        old = linears[child_name]
        start, stop = bounds[role]
        setattr(module, child_name, FusedSlice(shared, index, start, stop, fused_name, old.in_features,
                                               old.out_features))
        for p in loadable_names(layer):
            plan.shards[f"{vllm_prefix}.{name}.{child_name}.{p}"] = (f"{vllm_prefix}.{fused_name}.{p}", role)
    plan.handled |= {fused_name, *full}
    plan.records[fused_name] = ReplacementRecord(
        fused_name, LINEAR, FUSED, "Linear", type(layer).__name__,
        (sum(l.out_features for l in lins), lins[0].in_features),
        sum(l.weight.numel() + (l.bias.numel() if l.bias is not None else 0) for l in lins),
        f"q/k/v take one input (checked on a sample): {maths.num_heads} q + {maths.num_kv_heads} kv heads of "
        f"{maths.head_size}; HF forward runs, its q/k/v are slices{note}{_quant_note(layer)}",
        fused_from=tuple(full),
    )


def _fuse_mlp(model, name, module, ctx, tp_style, plan: FusionPlan, vllm_prefix, base_prefix) -> None:
    from vllm.model_executor.layers.linear import MergedColumnParallelLinear

    maths = classify_mlp(module)
    linears = _plain_linears(module)
    if maths.gate is None:  # its Linears are swapped one to one by the replace pass
        if maths.candidate:  # shaped like an MLP, so say why it was not fused
            for n in linears:
                plan.not_fused[f"{name}.{n}"] = NOT_FUSED + maths.reason
        return
    gate, up, down = linears[maths.gate], linears[maths.up] if maths.up else None, linears[maths.down]
    sources = [f"{name}.{maths.gate}"] + ([f"{name}.{maths.up}"] if maths.up else [])
    if not _styles_ok(sources, ctx, tp_style, base_prefix):
        for n in sources:
            plan.not_fused[n] = NOT_FUSED + "gate/up tensor-parallel styles differ from column-parallel"
        return
    if up is not None and (gate.bias is None) != (up.bias is None):
        for n in sources:
            plan.not_fused[n] = NOT_FUSED + "gate and up disagree on bias"
        return
    inter = gate.out_features // 2 if up is None else gate.out_features
    child = "gate_up_proj"
    fused_name = f"{name}.{child}"
    if up is not None:
        register_packed(ctx.quant_config, child, [maths.gate, maths.up])
    layer = MergedColumnParallelLinear(gate.in_features, [inter, inter], bias=gate.bias is not None,
                                       quant_config=ctx.quant_config, prefix=f"{vllm_prefix}.{fused_name}",
                                       return_bias=False)
    new = GatedMLP(layer, vllm_activation(maths.activation), down, maths.down, type(module).__name__)
    parent_name, _, attr = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, attr, new)
    if up is not None:
        for shard, src in enumerate((maths.gate, maths.up)):
            for p in loadable_names(layer):
                plan.shards[f"{vllm_prefix}.{name}.{src}.{p}"] = (f"{vllm_prefix}.{fused_name}.{p}", shard)
    elif maths.gate != child:
        for p in loadable_names(layer):
            plan.shards[f"{vllm_prefix}.{name}.{maths.gate}.{p}"] = (f"{vllm_prefix}.{fused_name}.{p}", None)
    plan.handled |= {fused_name, *sources}
    act = type(new.act_fn).__name__
    plan.records[fused_name] = ReplacementRecord(
        fused_name, LINEAR, FUSED, "Linear", type(layer).__name__, (2 * inter, gate.in_features),
        sum(l.weight.numel() + (l.bias.numel() if l.bias is not None else 0) for l in ([gate, up] if up else [gate])),
        f"{type(module).__name__} computes down({maths.activation}(gate(x)) * up(x)) (checked on a sample): "
        f"gate/up in one matmul, then vLLM's {act}{_quant_note(layer)}",
        fused_from=tuple(sources),
    )


def _quant_note(layer: nn.Module) -> str:
    text = describe_quant(layer)
    return f"; {text}" if text else ""


def loadable_names(layer: nn.Module) -> list[str]:
    """The parameters a fused layer loads per shard: weight and bias, and under a quantization the
    scheme's own (weight_scale, weight_packed, weight_shape, input_scale, ...), as its method made them."""
    return [n for n, _ in layer.named_parameters(recurse=False)]


# -- loading ------------------------------------------------------------------------------------
class ShardLoader:
    """Loads checkpoint tensors of fused members into their fused parameters and tells which
    fused parameters are complete (every member seen)."""

    def __init__(self, params: dict[str, nn.Parameter], shards: dict[str, tuple[str, object]]) -> None:
        self.params = params
        self.shards = shards
        self.members: dict[str, set[str]] = {}
        for member, (fused, _) in shards.items():
            self.members.setdefault(fused, set()).add(member)
        self.seen: set[str] = set()

    def __contains__(self, name: str) -> bool:
        return name in self.shards

    def load(self, name: str, tensor: torch.Tensor) -> None:
        fused, shard = self.shards[name]
        param = self.params[fused]
        if shard is None:
            param.weight_loader(param, tensor)
        else:
            param.weight_loader(param, tensor, shard)
        self.seen.add(name)

    def loaded(self) -> set[str]:
        return {fused for fused, members in self.members.items() if members <= self.seen}

    def touched(self) -> set[str]:
        """Fused parameters any shard of which arrived (a later, partial load)."""
        return {fused for fused, members in self.members.items() if members & self.seen}

    def missing(self) -> list[str]:
        return sorted(m for members in self.members.values() for m in members if m not in self.seen)
