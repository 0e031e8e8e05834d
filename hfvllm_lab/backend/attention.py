"""Route HF attention modules through vLLM's paged-KV `Attention` layers."""

from __future__ import annotations

import ast
import inspect
import sys
import textwrap
from functools import cache

import torch
from torch import nn

from hfvllm_lab.backend.records import AttentionLayerSpec
from hfvllm_lab.errors import AttentionPathError, UnsupportedModelError

# Our own key in transformers' attention registry: vLLM's built-in backend owns "vllm", and
# both backends may live in one process.
ATTN_KEY = "hfvllm_lab"
# Attribute of the HF attention module that holds its vLLM `Attention`.
ATTN_ATTR = "lab_attn"


def lab_attention_forward(
    module: nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    sliding_window: int | None = None,
    softcap: float | None = None,
    **kwargs,
) -> tuple[torch.Tensor, None]:
    """The function transformers calls for attention: [1, heads, tokens, dim] in, [1, tokens, heads,
    dim] out (transformers' convention), vLLM does the rest."""
    attn = getattr(module, ATTN_ATTR, None)
    if attn is None:
        # Never compute attention some other way here: a plain matmul would have no KV history
        # and would mix the sequences of a batch.
        raise AttentionPathError(
            f"{type(module).__name__} (layer {getattr(module, 'layer_idx', '?')}) dispatched to the "
            f"lab attention but has no vLLM Attention attached; it was not built by the lab backend"
        )
    _check_agrees(module, attn, query, key, value, scaling, sliding_window, softcap)
    sinks = kwargs.get("s_aux")
    if sinks is not None and (attn.lab_spec.sinks is None or sinks is not module.get_parameter(attn.lab_spec.sinks)):
        raise AttentionPathError(
            f"{attn.lab_spec.module} passes attention sinks (s_aux) that its vLLM Attention was not built with"
        )
    if sinks is None and attn.lab_spec.sinks is not None:
        raise AttentionPathError(f"{attn.lab_spec.module} was built with attention sinks but passed none")
    if kwargs.get("is_causal") is False:
        raise AttentionPathError(f"{attn.lab_spec.module} asks for non-causal attention; vLLM's decoder attention is causal")
    if attention_mask is not None:
        raise AttentionPathError(
            f"{attn.lab_spec.module} passes an attention mask, which the lab's vLLM attention would drop"
        )
    tokens = query.shape[-2]
    if attn.lab_override is not None:
        # HF attention inside the vLLM path: the model checked that this forward is one sequence
        # from position 0 (prompt scoring), the only case where it is correct without KV history.
        extra = {"s_aux": sinks} if sinks is not None else {}
        out = hf_attention(module, query, key, value, attn.lab_override, scaling, sliding_window, softcap, **extra)
        attn.lab_counts[attn.lab_override] = attn.lab_counts.get(attn.lab_override, 0) + 1
        return out, None
    v_size, size = value.shape[-1], attn.lab_spec.head_size
    if v_size != size:  # MLA: zero value columns add nothing to any output column; cut them off below
        value = nn.functional.pad(value, (0, size - v_size))
    q, k, v = (x.transpose(1, 2).reshape(tokens, -1) for x in (query, key, value))
    out = attn(q, k, v)
    attn.lab_counts[attn.lab_backend] = attn.lab_counts.get(attn.lab_backend, 0) + 1
    # transformers' attention functions return [batch, tokens, heads, head size]; callers reshape
    # from that (GPT-2 flattens the last two axes, most flatten after `input_shape`)
    out = out.view(1, tokens, query.shape[1], size)
    return (out if v_size == size else out[..., :v_size].contiguous()), None


def hf_attention(module, query, key, value, mode: str, scaling, sliding_window, softcap, **extra) -> torch.Tensor:
    """transformers' own eager (the model module's) or sdpa attention on one causal sequence."""
    tokens = query.shape[-2]
    pos = torch.arange(tokens, device=query.device)
    allowed = pos[None, :] <= pos[:, None]
    if sliding_window:
        allowed &= pos[None, :] > pos[:, None] - sliding_window
    mask = torch.zeros(tokens, tokens, dtype=query.dtype, device=query.device)
    mask = mask.masked_fill(~allowed, torch.finfo(query.dtype).min)[None, None]
    if mode == "eager":
        fn = getattr(sys.modules[type(module).__module__], "eager_attention_forward", None)
        if fn is None:
            raise AttentionPathError(f"{type(module).__module__} has no eager_attention_forward to run")
    else:
        from transformers.integrations.sdpa_attention import sdpa_attention_forward as fn
    out, _ = fn(module, query, key, value, mask, scaling=scaling, dropout=0.0, sliding_window=sliding_window,
                softcap=softcap, **extra)
    return out


def _check_agrees(module, attn, query, key, value, scaling, sliding_window, softcap) -> None:
    """Refuse when the HF module asks for maths that its vLLM layer was not built with."""
    if attn.lab_checked:
        return
    problems = []
    spec = attn.lab_spec
    got = (query.shape[1], key.shape[1], query.shape[-1], key.shape[-1], value.shape[-1])
    want = (spec.num_heads, spec.num_kv_heads, spec.head_size, spec.head_size, spec.value_head_size or spec.head_size)
    if got != want:
        problems.append(f"heads/kv heads/q, k, v head sizes {got} vs {want}")
    if scaling is not None and abs(float(scaling) - attn.lab_spec.scale) > 1e-6 * abs(float(scaling)):
        problems.append(f"scaling {scaling} vs {attn.lab_spec.scale}")
    if (sliding_window or None) != attn.lab_spec.sliding_window:
        problems.append(f"sliding_window {sliding_window} vs {attn.lab_spec.sliding_window}")
    if (softcap or None) != attn.lab_spec.logits_soft_cap:
        problems.append(f"softcap {softcap} vs {attn.lab_spec.logits_soft_cap}")
    if problems:
        raise AttentionPathError(
            f"{attn.lab_spec.module}: the HF module asks for different attention than its vLLM "
            f"layer computes ({'; '.join(problems)})"
        )
    attn.lab_checked = True


def register_attention_function() -> None:
    from transformers import AttentionInterface

    AttentionInterface.register(ATTN_KEY, lab_attention_forward)


@cache
def dispatches_through_interface(cls: type) -> bool:
    """Whether `cls.forward` looks its attention up in transformers' registry."""
    try:
        source = inspect.getsource(inspect.unwrap(cls.forward))
    except (OSError, TypeError):
        return False
    return "ALL_ATTENTION_FUNCTIONS" in source


def find_attention_modules(model: nn.Module, num_layers: int,
                           stateful: frozenset[int] = frozenset()) -> dict[int, tuple[str, nn.Module]]:
    """layer index -> (qualified name, module) for every module that dispatches attention; a layer
    without one must hold a stateful module (`stateful`: its layer indices, backend/state/)."""
    found: dict[int, tuple[str, nn.Module]] = {}
    for name, module in model.named_modules():
        if not dispatches_through_interface(type(module)):
            continue
        idx = getattr(module, "layer_idx", None)
        if not isinstance(idx, int):
            raise UnsupportedModelError(f"{name} ({type(module).__name__}) dispatches attention but has no layer_idx")
        if idx in found:
            raise UnsupportedModelError(
                f"layer {idx} dispatches attention from two modules ({found[idx][0]} and {name}); "
                "one vLLM Attention cannot serve both"
            )
        found[idx] = (name, module)
    missing = [i for i in range(num_layers) if i not in found and i not in stateful]
    if missing:
        raise UnsupportedModelError(
            f"decoder layers {missing} do not dispatch attention through transformers' attention "
            "interface, so vLLM's paged attention cannot be routed into them"
        )
    return found


def check_tensor_parallel(config, tp_size: int) -> None:
    """k_proj/v_proj are split column-wise like q_proj, so query and KV heads must both divide
    evenly (replicating fewer KV heads than ranks, as vLLM's fused QKV layer does, is not built)."""
    for heads, kv_heads, _ in sorted(set(layer_geometries(config))):
        if heads % tp_size or kv_heads % tp_size:
            raise UnsupportedModelError(
                f"{heads} attention heads / {kv_heads} KV heads do not split evenly over tensor-parallel size {tp_size}"
            )


def _layer_type(config, idx: int) -> str | None:
    types = getattr(config, "layer_types", None)
    return types[idx] if types and idx < len(types) else None


class _Unknown:
    def __repr__(self) -> str:
        return "<not readable>"


UNKNOWN = _Unknown()


@cache
def _attention_calls(cls: type) -> tuple[ast.Call, ...]:
    """The calls in `cls.forward` that go to the looked-up attention function."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cls.forward))))
    except (OSError, TypeError, SyntaxError):
        return ()
    names = {"attention_interface"}
    for node in ast.walk(tree):  # `fn = ALL_ATTENTION_FUNCTIONS.get_interface(...)` / `[...]`
        if isinstance(node, ast.Assign) and "ALL_ATTENTION_FUNCTIONS" in ast.unparse(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return tuple(n for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)
                 and n.func.id in names)


def passed_attention_kwargs(module: nn.Module) -> dict[str, object]:
    """What `module.forward` passes to the attention function, keyword by keyword, evaluated with
    `self` = this module where the expression reads only `self`, constants and module globals
    (`scaling=1.0`, `sliding_window=self.sliding_window if self.is_sliding else None`); UNKNOWN
    where it reads anything else. A keyword that is not passed is absent."""
    calls = _attention_calls(type(module))
    if len(calls) != 1:
        return {}
    namespace = dict(vars(sys.modules[type(module).__module__]))
    out: dict[str, object] = {}
    for kw in calls[0].keywords:
        if kw.arg is None:
            continue
        names = {n.id for n in ast.walk(kw.value) if isinstance(n, ast.Name)}
        if names - {"self", "None", "True", "False"} - set(namespace):
            out[kw.arg] = UNKNOWN
            continue
        try:
            out[kw.arg] = eval(compile(ast.Expression(kw.value), "<attention kwargs>", "eval"),  # noqa: S307
                               namespace, {"self": module})
        except Exception:  # noqa: BLE001 - an unreadable value is reported as such
            out[kw.arg] = UNKNOWN
    return out


def _known(passed: dict, key: str):
    value = passed.get(key, UNKNOWN)
    return None if value is UNKNOWN else (value,)


def head_geometry(config) -> tuple[int, int, int]:
    """(query heads, KV heads, head size) of a text config. The head size is the query/key head size,
    the one vLLM's Attention is built with and caches keys and (zero-padded) values at: MLA's
    `qk_nope_head_dim + qk_rope_head_dim` (its `head_dim` is the rope part), else `head_dim`, else
    hidden/heads."""
    heads = config.num_attention_heads
    kv_heads = getattr(config, "num_key_value_heads", None) or heads
    nope, rope = getattr(config, "qk_nope_head_dim", None), getattr(config, "qk_rope_head_dim", None)
    if isinstance(nope, int) and isinstance(rope, int):
        return heads, kv_heads, nope + rope
    return heads, kv_heads, getattr(config, "head_dim", None) or config.hidden_size // heads


def layer_geometries(config) -> list[tuple[int, int, int]]:
    """`head_geometry` of every decoder layer: configs whose geometry varies per layer (Gemma-4's
    `per_layer_config`) refuse the global attributes, so read each layer's own."""
    if getattr(config, "num_attention_heads", None) is None and getattr(config, "per_layer_config", None) is None:
        return []  # attention-free (Mamba): no KV heads anywhere; its state is sized by backend/state/
    per_layer = getattr(config, "per_layer_config", None)
    if per_layer is not None:
        try:
            return [head_geometry(per_layer[i]) for i in range(config.num_hidden_layers)]
        except AttributeError:
            if getattr(config, "num_attention_heads", None) is None:
                return []  # attention-free, with a per-layer config view that has no heads either
            raise
    return [head_geometry(config)] * config.num_hidden_layers


def _module_int(module: nn.Module, *names: str) -> int | None:
    for n in names:
        value = getattr(module, n, None)
        if isinstance(value, int) and value > 0:
            return value
    return None


def attention_spec(name: str, module: nn.Module, config, idx: int, tp_size: int, prefix: str) -> AttentionLayerSpec:
    """The geometry and maths of one layer's attention, read from that layer's HF module (heads,
    head size, scale, window, soft-cap, sinks are per layer) and from what its forward passes to
    the attention function; the config only where the module says nothing."""
    calls = len(_attention_calls(type(module)))
    if calls > 1:
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) calls the attention function {calls} times in one forward "
            "(differential attention: one call per value half); a vLLM attention layer caches one key/value "
            "pair per layer and token, so the calls would overwrite each other's cache"
        )
    cfg_heads, cfg_kv_heads, config_head_size = layer_geometries(config)[idx]
    heads = _module_int(module, "num_heads", "num_attention_heads") or cfg_heads
    kv_heads = _module_int(module, "num_key_value_heads", "num_kv_heads")
    groups = _module_int(module, "num_key_value_groups")
    if kv_heads is None:
        kv_heads = heads // groups if groups else cfg_kv_heads
    head_size = _module_int(module, "qk_head_dim", "head_dim", "head_size") or config_head_size
    v_head = _module_int(module, "v_head_dim") or head_size
    if v_head > head_size:
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}): value head size {v_head} exceeds the query/key head size "
            f"{head_size}; vLLM's CPU attention takes one head size and the lab zero-pads only smaller values"
        )
    passed = passed_attention_kwargs(module)
    if passed.get("is_causal") is False or getattr(module, "is_causal", True) is False:
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) computes non-causal (bidirectional) attention "
            "(is_causal=False); vLLM's decoder attention is causal, so every token would see the wrong context"
        )
    if "scaling" in passed:
        scale = _known(passed, "scaling")[0] if _known(passed, "scaling") else getattr(module, "scaling", None)
    else:
        scale = getattr(module, "scaling", None)
    if scale is None:
        scale = head_size**-0.5
    if _known(passed, "sliding_window"):
        window = _known(passed, "sliding_window")[0]
    elif hasattr(module, "sliding_window"):
        window = module.sliding_window
    elif _layer_type(config, idx) is not None:
        window = config.sliding_window if _layer_type(config, idx) == "sliding_attention" else None
    elif getattr(config, "use_sliding_window", True):
        window = getattr(config, "sliding_window", None)
    else:
        window = None
    if _known(passed, "softcap"):
        softcap = _known(passed, "softcap")[0]
    else:
        softcap = getattr(module, "attn_logit_softcapping", None) or getattr(config, "attn_logit_softcapping", None)
    sinks = None
    if "s_aux" in passed:
        value = passed["s_aux"]
        sinks = next((n for n, p in module.named_parameters() if p is value), None) if value is not None else None
        if value is not None and sinks is None:
            raise UnsupportedModelError(
                f"{name} ({type(module).__name__}) passes attention sinks (s_aux) that are not one of its parameters"
            )
        if sinks is not None and tp_size > 1:
            raise UnsupportedModelError(f"{name}: attention sinks are not split per tensor-parallel rank by the lab")
    chunk = getattr(config, "attention_chunk_size", None) if _layer_type(config, idx) == "chunked_attention" else None
    if chunk and (window or softcap or sinks):
        raise UnsupportedModelError(
            f"{name}: chunked local attention together with a sliding window, soft-cap or sinks is not built by "
            "vLLM's ChunkedLocalAttention"
        )
    check_position_scaled_queries(name, module)
    check_tensor_parallel(config, tp_size)
    if tp_size > 1 and not all(hasattr(module, n) for n in ("q_proj", "k_proj", "v_proj")):
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) has no separate q/k/v projections; a fused QKV projection "
            "cannot be split per head by the model's tp_plan"
        )
    return AttentionLayerSpec(
        layer=idx,
        module=name,
        hf_class=type(module).__name__,
        vllm_prefix=f"{prefix}.{ATTN_ATTR}",
        num_heads=heads // tp_size,
        num_kv_heads=max(1, kv_heads // tp_size),
        head_size=int(head_size),
        scale=float(scale),
        sliding_window=window or None,
        logits_soft_cap=softcap or None,
        sinks=sinks,
        value_head_size=int(v_head),
        attention_chunk_size=chunk or None,
    )


def check_position_scaled_queries(name: str, module: nn.Module) -> None:
    """Llama-4's no-rope layers scale the queries by log1p(floor((p + 1) / floor_scale)) * attn_scale + 1
    with p counted from 0 in each forward (HF's cache length): in vLLM's flattened steps (use_cache off)
    that p is not the token's position, so refuse unless every position and every step's token count
    stays below floor_scale - 1, where the factor is exactly 1 either way."""
    if not getattr(module, "attn_temperature_tuning", False) or getattr(module, "use_rope", True):
        return
    from vllm.config import get_current_vllm_config_or_none

    vllm_config = get_current_vllm_config_or_none()
    if vllm_config is None or vllm_config.model_config is None:
        return  # not building an engine: nothing runs
    floor_scale = getattr(module, "floor_scale", None)
    sched = vllm_config.scheduler_config
    longest = max(vllm_config.model_config.max_model_len,
                  min(sched.max_num_batched_tokens, sched.max_num_seqs * vllm_config.model_config.max_model_len))
    if not isinstance(floor_scale, (int, float)) or longest + 1 > floor_scale:
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) scales its queries by position (attn_temperature_tuning, floor_scale "
            f"{floor_scale}) with positions counted from 0 in each HF forward, which are not the tokens' positions "
            f"in vLLM's flattened steps; exact only while max_model_len and the tokens of a step stay below "
            f"floor_scale - 1 (here up to {longest})"
        )


def layer_notes(spec: AttentionLayerSpec) -> str:
    """What the replacement log adds to a routed attention record: value padding, chunking."""
    notes = ""
    if spec.attention_chunk_size:
        notes += f", chunked local attention (chunks of {spec.attention_chunk_size})"
    if spec.padded_values:
        v, d = spec.value_head_size, spec.head_size
        notes += f"; values zero-padded from {v} to {d} (+{(d - v) / (d + v):.0%} KV bytes)"
    return notes


def calls_known(module: nn.Module) -> bool:
    """Whether the module's forward has exactly one readable call to the attention function."""
    return len(_attention_calls(type(module))) == 1


def build_vllm_attention(spec: AttentionLayerSpec, cache_config, quant_config) -> nn.Module:
    from vllm.model_executor.layers.attention import Attention

    if spec.attention_chunk_size:
        from vllm.model_executor.layers.attention.chunked_local_attention import ChunkedLocalAttention

        block = getattr(cache_config, "block_size", None)
        if block and spec.attention_chunk_size % block:
            raise UnsupportedModelError(
                f"{spec.module}: vLLM's chunked local attention splits sequences into chunks of whole KV blocks; "
                f"attention_chunk_size {spec.attention_chunk_size} is not a multiple of the block size {block}"
            )

        attn = ChunkedLocalAttention(num_heads=spec.num_heads, head_size=spec.head_size, scale=spec.scale,
                                     attention_chunk_size=spec.attention_chunk_size, num_kv_heads=spec.num_kv_heads,
                                     cache_config=cache_config, quant_config=quant_config, prefix=spec.vllm_prefix)
    else:
        attn = Attention(
            num_heads=spec.num_heads,
            head_size=spec.head_size,
            scale=spec.scale,
            num_kv_heads=spec.num_kv_heads,
            cache_config=cache_config,
            quant_config=quant_config,
            logits_soft_cap=spec.logits_soft_cap,
            per_layer_sliding_window=spec.sliding_window,
            prefix=spec.vllm_prefix,
            **({"sinks": torch.empty(spec.num_heads, device="meta")} if spec.sinks else {}),
        )
    built_window = getattr(attn, "sliding_window", spec.sliding_window)
    if (built_window or None) != spec.sliding_window:
        # vLLM falls back to a model-wide window when a layer passes none; a full-attention
        # layer of a hybrid model must not inherit it.
        raise UnsupportedModelError(
            f"{spec.module}: vLLM built a sliding window of {built_window}, the model asks for {spec.sliding_window}"
        )
    _check_block_size(attn, spec, cache_config)
    attn.lab_spec = spec
    attn.lab_backend = attn.attn_backend.get_name() if hasattr(attn, "attn_backend") else "vllm"
    attn.lab_counts = {}  # implementation -> calls; read and reset by the attention probe
    attn.lab_override = None  # "sdpa" / "eager" while HF attention runs inside the vLLM path
    attn.lab_checked = False
    return attn


def _check_block_size(attn: nn.Module, spec: AttentionLayerSpec, cache_config) -> None:
    """Refuse here, with the reason, a KV block size the layer's attention backend does not run (vLLM
    itself would only fail later, while sizing the KV cache)."""
    backend, block = getattr(attn, "attn_backend", None), getattr(cache_config, "block_size", None)
    if backend is None or block is None or backend.supports_block_size(block):
        return
    from vllm.config import get_current_vllm_config_or_none

    vllm_config = get_current_vllm_config_or_none()
    model_config = vllm_config.model_config if vllm_config is not None else None
    why = ""
    if model_config is not None and model_config.use_mla:
        why = (f"; vLLM treats model type {model_config.hf_text_config.model_type!r} as MLA and sets the block size "
               "for its own MLA kernels (16 on CPUs without AMX), which the lab does not use: it runs MLA layers "
               "through vLLM's paged attention with zero-padded values. VLLM_MLA_DISABLE=1, set before vLLM starts "
               "in the process, tells vLLM not to treat the model as MLA")
    raise UnsupportedModelError(
        f"{spec.module}: vLLM's KV block size {block} is not one {backend.get_name()} runs "
        f"(supported: {backend.get_supported_kernel_block_sizes()}){why}"
    )
