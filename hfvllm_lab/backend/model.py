"""`LabForCausalLM`: the project's Transformers modeling backend, a vLLM model class."""

from __future__ import annotations

import ast
import re
import time
from collections.abc import Iterable

import torch
from torch import nn

from hfvllm_lab.backend.attention import (
    ATTN_ATTR,
    ATTN_KEY,
    attention_spec,
    build_vllm_attention,
    find_attention_modules,
    layer_notes,
    register_attention_function,
)
from hfvllm_lab.backend.positions import number_positions
from hfvllm_lab.backend.meta import buffer_bytes, materialize, parameter_bytes, parameters_on_meta
from hfvllm_lab.backend.quant import RootMapper
from hfvllm_lab.backend.reload import WeightStash, updates_setting
from hfvllm_lab.backend.records import (
    ATTENTION,
    ELSEWHERE,
    ROUTED,
    BuildReport,
    PhaseBytes,
    ReplacementRecord,
)
from hfvllm_lab.backend.compiled import build_compiled_stack, run_flat
from hfvllm_lab.backend.head import CONFIG_FLAG as HEAD_FLAG
from hfvllm_lab.backend.head import head_dtype_setting, replace_lm_head
from hfvllm_lab.backend.head_transform import (
    HeadTransform,
    forward_tree,
    head_call,
    peel_head_argument,
    plan_head_transform,
)
from hfvllm_lab.backend.fuse import fusion_setting
from hfvllm_lab.backend.replace import ReplaceContext, replace_modules
from hfvllm_lab.backend.weights import CheckpointConversion, base_model, load_checked, name_map_for
from hfvllm_lab.device import memory_figure
from hfvllm_lab.errors import AttentionPathError, UnsupportedModelError, WeightsError, first_line

# Attribute of `LabForCausalLM` that holds the HF model; checkpoint names are mapped under it.
ROOT = "hf"


def hf_causal_lm_class(config, trust_remote_code: bool) -> type:
    """The HF class `AutoModelForCausalLM` would build, refusing remote code unless opted in."""
    auto_map = getattr(config, "auto_map", None) or {}
    if "AutoModelForCausalLM" in auto_map:
        if not trust_remote_code:
            raise UnsupportedModelError(
                f"{config.model_type} ships its own modelling code ({auto_map['AutoModelForCausalLM']}); "
                "running it needs trust_remote_code=True"
            )
        from transformers.dynamic_module_utils import get_class_from_dynamic_module

        return get_class_from_dynamic_module(auto_map["AutoModelForCausalLM"], config._name_or_path)
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING

    try:
        return MODEL_FOR_CAUSAL_LM_MAPPING[type(config)]
    except KeyError:
        raise UnsupportedModelError(
            f"model type {config.model_type!r} has no causal-LM class in transformers "
            f"{__import__('transformers').__version__}"
        ) from None


def transformers_own_config(config, model_dir: str, overrides=None):
    """The config as transformers' own class. vLLM registers classes of its own for some model types
    (kimi_linear, deepseek_v4, ...) and parses checkpoints with them; transformers' modelling code
    reads its own class's attributes, so the lab reads the checkpoint's config with that class
    (and applies the same dict of hf_overrides vLLM applied)."""
    import importlib

    from transformers.models.auto.configuration_auto import CONFIG_MAPPING_NAMES, model_type_to_module_name

    name = CONFIG_MAPPING_NAMES.get(getattr(config, "model_type", ""))
    if name is None or (type(config).__module__.startswith("transformers.") and type(config).__name__ == name):
        return config  # (vLLM reads deepseek_v32 with transformers' DeepseekV3Config: not its own class)
    try:
        own = getattr(importlib.import_module(f"transformers.models.{model_type_to_module_name(config.model_type)}"), name)
    except (ImportError, AttributeError):
        return config
    if isinstance(config, own):
        return config
    try:
        mine = own.from_pretrained(model_dir)
    except Exception as exc:
        raise UnsupportedModelError(
            f"vLLM read this config with its own {type(config).__module__}.{type(config).__name__}, and transformers' "
            f"{name} cannot read it ({type(exc).__name__}: {first_line(exc, 200)})"
        ) from None
    for key, value in (overrides.items() if isinstance(overrides, dict) else ()):
        setattr(mine, key, value)
    return mine


def check_single_sequence(positions: torch.Tensor, mode: str) -> None:
    """HF attention keeps no KV history and cannot separate sequences: allow only one sequence
    that starts at position 0 and is contiguous (a prompt scored in one prefill)."""
    n = positions.shape[-1]
    expected = torch.arange(n, device=positions.device)
    if not torch.equal(positions.reshape(-1), expected):
        raise AttentionPathError(
            f"HF {mode} attention inside the vLLM path only scores one prompt in one prefill: this step "
            "holds several sequences or decode tokens, which need vLLM's paged KV cache"
        )


# Rope variants whose frequencies HF picks from the largest position in the forward: vLLM's
# flattened batch would let one long sequence change the rope of every other one.
BATCH_DEPENDENT_ROPE = ("dynamic", "longrope")


def check_config(text_config) -> None:
    """Refuse configs whose maths the flattened, mask-free forward cannot reproduce."""
    params = getattr(text_config, "rope_parameters", None) or getattr(text_config, "rope_scaling", None) or {}
    layers = params.values() if params and all(isinstance(v, dict) for v in params.values()) else [params]
    for p in layers:
        if isinstance(p, dict) and "mrope_section" in p:
            raise UnsupportedModelError(
                "multimodal rope (rope_parameters mrope_section): vLLM's model runner then asks the model class for "
                "3-D rope positions (SupportsMRoPE), which the lab backend does not compute")
        rope_type = (p or {}).get("rope_type") or (p or {}).get("type")
        if rope_type in BATCH_DEPENDENT_ROPE:
            raise UnsupportedModelError(
                f"rope type {rope_type!r} derives its frequencies from the largest position in a forward; "
                "in vLLM's flattened batch that would mix sequences"
            )
    types = getattr(text_config, "layer_types", None) or ()
    if getattr(text_config, "attention_chunk_size", None) and "chunked_attention" not in types:
        # HF chunks exactly the layers whose layer_types entry says so (its mask per layer type);
        # those run vLLM's ChunkedLocalAttention (backend/attention.py)
        raise UnsupportedModelError(
            "the config sets attention_chunk_size but no layer_types entry is 'chunked_attention', so which "
            "layers HF chunks cannot be read"
        )


# What the causal-LM class may do to the head's output, compared as `ast.unparse` text of the
# statement's right-hand side (the head's result renamed `logits`), and the step each one is:
# ("mul" | "div", operand) scales the logits by a number read from the built model, ("cap", operand)
# is one statement of a tanh soft-cap, ("none", "") changes no value. The steps found are what
# vLLM's LogitsProcessor repeats (LogitMaths); anything else done to the logits (or to the hidden
# states before the head) is refused, because the engine would not repeat it.
LOGITS_ALLOWLIST: dict[str, tuple[str, str]] = {
    "logits / self.config.final_logit_softcapping": ("cap", "config.final_logit_softcapping"),
    "torch.tanh(logits)": ("cap", ""),
    "logits * self.config.final_logit_softcapping": ("cap", "config.final_logit_softcapping"),
    "logits / final_logit_softcapping": ("cap", "config.final_logit_softcapping"),
    "logits * final_logit_softcapping": ("cap", "config.final_logit_softcapping"),
    "logits / self.config.logits_scaling": ("div", "config.logits_scaling"),  # Granite
    "logits * self.config.logits_scaling": ("mul", "config.logits_scaling"),  # HyperCLOVA X (MuP)
    "logits * self.logit_scale": ("mul", "logit_scale"),  # Cohere
    "logits * self.config.logit_scale": ("mul", "config.logit_scale"),
    "logits * self.model.lm_head_multiplier": ("mul", "model.lm_head_multiplier"),  # Falcon-H1 (muP)
    "logits.float()": ("none", ""),
    "logits.contiguous()": ("none", ""),
}
# How the hidden states may reach the head: the base model's output as it is, or divided by
# logits_scaling (MiniCPM3; with a bias-free head that is the logits divided by it).
HIDDEN_FROM_BASE = re.compile(r"^\w*outputs(\[0\]|\.last_hidden_state)$")
HIDDEN_ALLOWLIST: dict[str, tuple[str, str]] = {
    "hidden_states / self.config.logits_scaling": ("hidden-div", "config.logits_scaling"),
    # Inkling (muP): the base model's output divided before the head
    "outputs.last_hidden_state / self.config.logits_mup_width_multiplier": (
        "hidden-div", "config.logits_mup_width_multiplier")}


def check_logits_postprocessing(cls: type, head_attr: str, transform: bool = False) -> list[tuple[str, str]]:
    """Refuse a causal-LM forward that computes anything between the base model and the logits
    beyond the head call, the head transform and the allowlisted constants: the head must be applied
    to the base model's output (a plain variable, possibly sliced, possibly inside head-transform
    module calls: backend/head_transform.py), and every later assignment to the head's result must be
    in LOGITS_ALLOWLIST. With `transform` (a head container whose forward computes the transform
    before its output embedding) only what follows the head call is checked. Returns the
    allowlisted steps in source order."""
    tree = forward_tree(cls)
    assigns: dict[str, list[tuple[int, str]]] = {}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Assign, ast.AugAssign, ast.AnnAssign)) and node.value is not None:
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            rhs = ast.unparse(node.value) if isinstance(node, ast.Assign) else ast.unparse(node)
            for t in targets:
                if isinstance(t, ast.Name):
                    assigns.setdefault(t.id, []).append((node.lineno, rhs))
    for values in assigns.values():
        values.sort()
    call = head_call(tree, cls, head_attr)
    arg, _ = peel_head_argument(call.args[0], head_attr)  # wrapped transform modules: check_head plans them
    if not transform and not isinstance(arg, ast.Name):
        raise UnsupportedModelError(
            f"{cls.__name__}.forward applies more than its head to the hidden states "
            f"(`self.{head_attr}({ast.unparse(call.args[0])})`), which the lab's vLLM path would not repeat"
        )
    steps: list[tuple[str, str]] = []
    for _, rhs in [] if transform else assigns.get(arg.id, []):
        if rhs.startswith("self.") and rhs.endswith(")") and not rhs.startswith(f"self.{head_attr}("):
            continue  # the base model's own output object (`outputs = self.model(...)`)
        if HIDDEN_FROM_BASE.match(rhs):
            continue
        step = HIDDEN_ALLOWLIST.get(rhs.replace(arg.id, "hidden_states"))
        if step is None:
            raise UnsupportedModelError(
                f"{cls.__name__}.forward changes the hidden states before the head (`{arg.id} = {rhs}`), "
                "which the lab's vLLM path would not repeat"
            )
        steps.append(step)
    head_src = ast.unparse(call)
    result = next((name for name, values in assigns.items() if any(head_src in v for _, v in values)), None)
    head_line = min((line for line, v in assigns.get(result, []) if head_src in v), default=0)
    for line, rhs in assigns.get(result, []) if result else []:
        if line < head_line:
            continue  # before the head runs (a container reusing one variable for the transform)
        # the head call itself stands for `logits` (`logits = self.lm_head(h) * scale`)
        text = "logits" + rhs[len(head_src):] if rhs.startswith(head_src) else rhs.replace(result, "logits")
        if text == "logits":
            continue
        step = LOGITS_ALLOWLIST.get(text)
        if step is None:
            raise UnsupportedModelError(
                f"{cls.__name__}.forward post-processes the logits (`{result} = {rhs}`), which the lab's "
                "vLLM logits processor would not repeat"
            )
        steps.append(step)
    return [s for s in steps if s[0] != "none"]


def logit_maths(cls_name: str, steps: list[tuple[str, str]], owner: nn.Module, head_bias: bool) -> dict:
    """The scale and soft-cap vLLM's LogitsProcessor applies, from the steps the causal-LM forward
    takes (operands read from the built model); refused where the processor's order (cap, then
    scale) would make it compute something else, or a head bias would be scaled that HF does not."""
    scale, soft_cap = 1.0, None
    for kind, operand in steps:
        value = owner
        for part in operand.split(".") if operand else ():
            value = getattr(value, part, None)
        if operand and value is None:
            continue  # HF cannot multiply by None: the forward guards this statement, and skips it
        if kind == "cap":
            if scale != 1.0:
                raise UnsupportedModelError(
                    f"{cls_name} soft-caps its logits after scaling them; vLLM's logits processor caps first")
            if operand:
                soft_cap = value
            continue
        if not isinstance(value, (int, float)) or isinstance(value, bool) or not value:
            raise UnsupportedModelError(
                f"{cls_name} scales its logits by self.{operand} = {value!r}, not a non-zero number")
        if kind == "hidden-div" and head_bias:
            raise UnsupportedModelError(
                f"{cls_name} scales the hidden states before a head with a bias; vLLM's logits processor "
                "would scale the bias too")
        scale = scale * value if kind == "mul" else scale / value
    if soft_cap is not None and not isinstance(soft_cap, (int, float)):
        raise UnsupportedModelError(f"{cls_name} soft-caps its logits by {soft_cap!r}, not a number")
    return {"scale": float(scale), "soft_cap": float(soft_cap) if soft_cap else None,
            "steps": [f"{k} {o}".strip() for k, o in steps]}


def check_head(hf: nn.Module, head_name: str) -> HeadTransform | None:
    """The logits must be the output embedding (a Linear) applied to the base model's last hidden
    state, after the head's own transform where it has one (RoBERTa-style dense -> gelu -> layer_norm
    before the decoder): that transform, run as HF code in `compute_logits`, or None."""
    head = hf.get_submodule(head_name)
    if not isinstance(head, nn.Linear):
        raise UnsupportedModelError(
            f"the output embedding {head_name} is a {type(head).__name__}, not a Linear projection"
        )
    transform = plan_head_transform(hf, head_name, check_logits_postprocessing)
    if transform is not None and any(kind == "hidden-div" for kind, _ in check_logits_postprocessing(
            type(hf), head_name.split(".")[0])):
        raise UnsupportedModelError(
            f"{type(hf).__name__} scales the hidden states before a head transform; vLLM's logits processor "
            "would scale the logits after it instead")
    return transform


def check_decoder(hf: nn.Module) -> None:
    """A config with is_decoder=False builds encoder layers (bidirectional attention, BERT-style):
    refuse when the built model's own modules say so (classes such as GPT-NeoX carry the flag
    without reading it, and BART-style *ForCausalLM classes set it themselves)."""
    for name, module in hf.named_modules():
        if name and getattr(module, "is_decoder", None) is False:
            raise UnsupportedModelError(
                f"{name} ({type(module).__name__}) was built with is_decoder=False (the config's): an encoder "
                "layer with bidirectional attention, which vLLM's causal decoder attention would not compute"
            )


def check_stateless(hf: nn.Module) -> None:
    """Only attention may keep state across steps in this class (vLLM's paged KV cache holds it). A
    module that takes the HF cache itself — a convolution or recurrence carrying its state between
    tokens — needs the lab's hybrid class, which gives it a slot in vLLM's state cache; the Session
    picks that class by itself (`backend/state/`)."""
    from hfvllm_lab.backend.register import ARCH_HYBRID
    from hfvllm_lab.backend.state import find_stateful

    found = find_stateful(hf)
    if found:
        name, module, argument = found[0]
        raise UnsupportedModelError(
            f"{name} ({type(module).__name__}) takes the HF cache ({argument}) outside attention: it keeps "
            "state between tokens, which only the lab's hybrid class gives a place in vLLM's state cache; "
            f"build it with hf_overrides={{'architectures': ['{ARCH_HYBRID}']}}"
        )


def check_supported(cls: type) -> None:
    """vLLM's rule for its own Transformers backend: the class declares support for custom attention
    backends (`is_backend_compatible()`), or its modelling code looks attention up in transformers'
    interface (`_can_set_attn_implementation()`). The build then checks that every decoder layer
    really dispatches through the interface."""
    declared = cls.is_backend_compatible() if hasattr(cls, "is_backend_compatible") else getattr(
        cls, "_supports_attention_backend", False)
    settable = cls._can_set_attn_implementation() if hasattr(cls, "_can_set_attn_implementation") else False
    if not (declared or settable):
        raise UnsupportedModelError(
            f"{cls.__name__} does not support custom attention backends (_supports_attention_backend is "
            "False and its modelling code does not look attention up in transformers' interface): its "
            "attention cannot be routed through vLLM's paged KV cache"
        )


class LabForCausalLM(nn.Module):
    """Runs any HF causal LM inside vLLM: meta-built, vLLM layers swapped in, paged attention."""

    # vLLM's loader maps a quantization config's layer names onto the lab's modules with this
    # (checkpoint `model.layers.0...` -> `hf.model.layers.0...`); fused layers register their members
    # in the config's packed_modules_mapping as they are built (backend/quant.py).
    hf_to_vllm_mapper = RootMapper()

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__()
        from vllm.model_executor.layers.logits_processor import LogitsProcessor

        t0 = self._lab_t0 = time.perf_counter()
        model_config = vllm_config.model_config
        parallel = vllm_config.parallel_config
        self.config = transformers_own_config(model_config.hf_config, model_config.model, model_config.hf_overrides)
        self.text_config = self.config.get_text_config()
        self.tp_size = parallel.tensor_parallel_size
        device = torch.device(vllm_config.device_config.device)
        dtype = model_config.dtype

        hf_cls = hf_causal_lm_class(self.config, model_config.trust_remote_code)
        check_supported(hf_cls)
        check_config(self.text_config)
        report = BuildReport(
            architecture=type(self).__name__,
            hf_class=hf_cls.__name__,
            device=str(device),
            dtype=str(dtype).removeprefix("torch."),
            tensor_parallel_size=self.tp_size,
        )
        piece = self._lab_slice = self._pipeline_slice(parallel, vllm_config, report)
        self.lab_report = report
        if vllm_config.quant_config is not None:
            report.options["quantization"] = (f"{vllm_config.quant_config.get_name()} (the checkpoint's "
                                              "quantization_config): each Linear's scheme and kernel in its record")

        def phase(name: str, module: nn.Module | None) -> None:
            real, meta = parameter_bytes(module) if module is not None else (0, 0)
            figure = memory_figure(str(device))
            report.phases.append(
                PhaseBytes(name, real, meta, buffer_bytes(module) if module is not None else 0,
                           time.perf_counter() - t0, figure.bytes, figure.source)
            )

        phase("before", None)

        register_attention_function()
        self.text_config._attn_implementation = ATTN_KEY
        self.config._attn_implementation = ATTN_KEY
        with parameters_on_meta():
            hf = hf_cls._from_config(self.config, dtype=dtype) if hasattr(hf_cls, "_from_config") else hf_cls(self.config)
        hf.eval()
        self.hf = hf
        phase("meta", hf)
        report.eager_param_bytes = report.phases[-1].meta_bytes

        base = base_model(hf)  # sets the instance's prefix where the class's names no module (Llama-4)
        # HF's own names and shapes, before any swap: what transformers' conversion mapping targets.
        hf_state = {n: tuple(t.shape) for n, t in hf.state_dict(keep_vars=True).items()}
        self._conversion = CheckpointConversion(hf, hf_state)
        head_name = self._output_embedding_name(hf)
        check_decoder(hf)
        state_plans = self._lab_state_plans = self._plan_state(hf, dtype)
        self.lab_head_transform = check_head(hf, head_name)  # HF code run in compute_logits, or None
        positions_record = number_positions(hf)  # RoBERTa-style numbering from padding_idx + 1, or None
        logit_steps = check_logits_postprocessing(hf_cls, head_name.split(".")[0])
        handoff_layers, cut = None, []
        if piece is not None:  # pipeline parallel: placeholders for what other ranks hold, before any vLLM layer
            from hfvllm_lab.backend.pipeline import cut_pipeline, stage_layers

            stage = stage_layers(base, self.text_config)
            cut = cut_pipeline(hf, base, hf.base_model_prefix if base is not hf else "", stage, piece,
                               head_name, self.text_config.hidden_size, dtype)
            handoff_layers = base.get_submodule(stage.layers_name)
        plan = dict(getattr(self.text_config, "base_model_tp_plan", None) or {})
        ctx = ReplaceContext(vllm_config.quant_config, self.tp_size, plan, frozenset({head_name}), self.text_config)
        ctx.fuse, fuse_source = fusion_setting(self.config)  # fusion hook (backend/fuse.py)
        report.options["fusions and CPU kernels"] = f"{'on' if ctx.fuse else 'off'} ({fuse_source})"
        ctx.device_type = device.type
        report.records = replace_modules(hf, "", ctx, vllm_prefix=ROOT, base_prefix=hf.base_model_prefix) + cut
        self.lab_fused_shards = ctx.fusion.shards if ctx.fusion is not None else {}  # fusion hook
        head = replace_lm_head(hf, head_name, ROOT, vllm_config.quant_config, self._tie_word_embeddings(),
                               head_dtype_setting(model_config.head_dtype, dtype),
                               held=piece is None or piece.last, embed_elsewhere=piece is not None and not piece.first)
        self.lab_tied_copies = head.tied_copies  # a checkpoint name -> a second parameter it also fills
        self.lab_head_dtype = head.dtype
        report.records += [*([head.record] if head.record else []),
                           *(self.lab_head_transform.records(hf) if self.lab_head_transform else []),
                           *([positions_record] if positions_record else [])]
        if head.dtype is not None:
            report.options["LM head dtype"] = f"{str(head.dtype).removeprefix('torch.')} (hf_overrides {HEAD_FLAG})"
        self._route_attention(hf, vllm_config, report)
        self._attach_state(hf, state_plans, vllm_config, report)
        phase("replaced", self)
        keep_fp32 = tuple(getattr(hf, "_keep_in_fp32_modules_strict", None) or ())
        keep_fp32 += (f"{ROOT}.{head_name}.",) if head.dtype is not None else ()
        report.kept_fp32 = materialize(self, device, dtype, keep_fp32)
        if piece is not None and piece.last and not piece.first and self._tie_word_embeddings():
            weight = hf.get_submodule(head_name).weight
            report.tied_copy_bytes = weight.numel() * weight.element_size()
        if self.tp_size > 1:  # this rank's part of each split weight, beside the HF shape
            from hfvllm_lab.backend.meta import with_shard_shapes

            report.records = with_shard_shapes(hf, report.records)
        self._attach_sinks()
        phase("materialized", self)

        head_bias = getattr(hf.get_submodule(head_name), "bias", None) is not None
        report.logits = logit_maths(hf_cls.__name__, logit_steps, hf, head_bias)
        self.logits_processor = LogitsProcessor(
            self.text_config.vocab_size, scale=report.logits["scale"], soft_cap=report.logits["soft_cap"]
        )
        if self.lab_head_dtype is not None:  # its float32 weights meet float32 hidden states: no per-step cast
            self.logits_processor.head_dtype = self.lab_head_dtype
        self._names = name_map_for(hf, ROOT)
        self._lab_stash: WeightStash | None = None  # set by the first load_weights (backend/reload.py)
        self._lab_keep_loadable, source = updates_setting(self.config)
        report.options["weight updates after load"] = (
            f"{'on' if self._lab_keep_loadable else 'off'} ({source})")
        self.lab_attention_mode = "vllm"
        self._lab_handoff = None
        if piece is not None:
            from hfvllm_lab.backend.pipeline import StageHandoff

            self._lab_handoff = StageHandoff(handoff_layers, piece, self.text_config.hidden_size)
            self.lab_elsewhere = tuple(f"{ROOT}.{r.name}." for r in report.records if r.action == ELSEWHERE)
        # compiled-mode hook (backend/compiled.py): vLLM compiles this stack when enforce_eager=False
        object.__setattr__(self, "_lab_stack", build_compiled_stack(vllm_config, base))
        self.lab_compiled = self._lab_stack is not None

    def _pipeline_slice(self, parallel, vllm_config, report: BuildReport):
        """This rank's slice of decoder layers under pipeline parallel (None without it); the rank in the report."""
        from vllm.distributed import get_tensor_model_parallel_rank

        report.tensor_rank = get_tensor_model_parallel_rank()
        if parallel.pipeline_parallel_size <= 1:
            return None
        from hfvllm_lab.backend.pipeline import check_pipeline, current_slice

        check_pipeline(self.text_config, parallel.pipeline_parallel_size, type(self).__name__)
        from vllm.config import CompilationMode

        if vllm_config.compilation_config.mode != CompilationMode.NONE:
            raise UnsupportedModelError("pipeline parallel runs the lab backend eagerly: its compiled stack hands no "
                                        "hidden states between ranks (use mode='inspect')")
        piece = current_slice(self.text_config.num_hidden_layers)
        report.pipeline_parallel_size, report.pipeline_rank = piece.size, piece.rank
        report.layers_held = (piece.start, piece.end)
        report.options["pipeline parallel"] = (f"{piece.describe()} (transformers' pipeline plan); embedding on rank 0, "
                                               f"final norm and LM head on rank {piece.size - 1}")
        return piece

    # vLLM's pipeline-parallel interface (SupportsPP): the class says so; the tensors one rank hands the next
    supports_pp = True

    def make_empty_intermediate_tensors(self, batch_size: int, dtype: torch.dtype, device: torch.device):
        from hfvllm_lab.backend.pipeline import empty_intermediate

        return empty_intermediate(self.text_config.hidden_size, batch_size, dtype, device)

    def set_attention_mode(self, mode: str) -> None:
        """"vllm" (paged KV), or HF's "sdpa" / "eager" for single-sequence prompt scoring."""
        if mode not in ("vllm", "sdpa", "eager"):
            raise AttentionPathError(f"unknown attention {mode!r}: choose vllm, sdpa or eager")
        if mode != "vllm" and (self.tp_size > 1 or self._lab_slice is not None):
            raise AttentionPathError("HF attention inside the vLLM path needs tensor- and pipeline-parallel size 1")
        if mode == "sdpa" and any(s.logits_soft_cap for s in self.lab_report.attention):
            raise AttentionPathError("sdpa would silently drop this model's attention logit soft-capping; use eager")
        if mode == "sdpa" and any(s.sinks for s in self.lab_report.attention):
            raise AttentionPathError("sdpa would silently drop this model's attention sinks; use eager")
        for module in self.hf.modules():
            attn = getattr(module, ATTN_ATTR, None)
            if attn is not None:
                attn.lab_override = None if mode == "vllm" else mode
        self.lab_attention_mode = mode

    # -- building ------------------------------------------------------------------------
    @staticmethod
    def _output_embedding_name(hf: nn.Module) -> str:
        head = hf.get_output_embeddings()
        for name, module in hf.named_modules():
            if module is head:
                return name
        raise UnsupportedModelError(f"{type(hf).__name__} has no output embedding (LM head)")

    def _tie_word_embeddings(self) -> bool:
        return bool(
            getattr(self.text_config, "tie_word_embeddings", False) or getattr(self.config, "tie_word_embeddings", False)
        )

    def _route_attention(self, hf, vllm_config, report: BuildReport) -> None:
        num_layers = self.text_config.num_hidden_layers
        stateful = frozenset(p.layer_idx for p in self._lab_state_plans)
        if stateful:  # a hybrid model's layers of its own kinds (Nemotron-H's MLP and MoE blocks) hold no attention
            types = getattr(self.text_config, "layer_types", None) or []
            stateful |= {i for i, t in enumerate(types) if isinstance(t, str) and "attention" not in t
                         and t not in ("hybrid", "hybrid_sliding")}
        if self._lab_slice is not None:  # layers other pipeline ranks hold have no attention here
            stateful |= {i for i in range(num_layers) if not self._lab_slice.holds(i)}
        for idx, (name, module) in sorted(find_attention_modules(hf, num_layers, stateful).items()):
            spec = attention_spec(name, module, self.text_config, idx, self.tp_size, f"{ROOT}.{name}")
            attn = build_vllm_attention(spec, vllm_config.cache_config, vllm_config.quant_config)
            setattr(module, ATTN_ATTR, attn)
            report.attention.append(spec)
            backend = attn.lab_backend
            window = f", window {spec.sliding_window}" if spec.sliding_window else ""
            cap = f", softcap {spec.logits_soft_cap}" if spec.logits_soft_cap else ""
            report.records.append(
                ReplacementRecord(
                    name, ATTENTION, ROUTED, type(module).__name__, type(attn).__name__, (), 0,
                    f"{backend}: {spec.num_heads} heads / {spec.num_kv_heads} kv, head {spec.head_size}, "
                    f"scale {spec.scale:.4g}{window}{cap}{layer_notes(spec)}",
                )
            )

    def _plan_state(self, hf: nn.Module, dtype: torch.dtype) -> list:
        """Stateful modules are refused here; the hybrid class (below) plans their state slots."""
        check_stateless(hf)
        return []

    def _attach_state(self, hf, plans, vllm_config, report: BuildReport) -> None:
        return None

    def _attach_sinks(self) -> None:
        """vLLM's attention keeps the sinks tensor it was built with (on meta); point it at the HF
        module's materialized parameter, which the checkpoint then fills in place."""
        for module in self.hf.modules():
            attn = getattr(module, ATTN_ATTR, None)
            if attn is not None and attn.lab_spec.sinks:
                attn.impl.sinks = module.get_parameter(attn.lab_spec.sinks)

    # -- vLLM model interface ------------------------------------------------------------
    @property
    def base(self) -> nn.Module:
        return getattr(self.hf, self.hf.base_model_prefix)

    def embed_input_ids(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.hf.get_input_embeddings()(input_ids)

    def forward(
        self,
        input_ids: torch.Tensor | None,
        positions: torch.Tensor,
        intermediate_tensors=None,
        inputs_embeds: torch.Tensor | None = None,
        **kwargs,
    ) -> torch.Tensor:
        if self.lab_attention_mode != "vllm":
            check_single_sequence(positions, self.lab_attention_mode)
        if self._lab_stack is not None and self.lab_attention_mode == "vllm":  # compiled-mode hook
            return self._lab_stack(input_ids, positions, intermediate_tensors, inputs_embeds)
        if self._lab_handoff is not None:  # pipeline parallel (backend/pipeline.py)
            return self._lab_handoff.run(lambda: run_flat(self.base, input_ids, positions, inputs_embeds),
                                         intermediate_tensors)
        return run_flat(self.base, input_ids, positions, inputs_embeds)

    def compute_logits(self, hidden_states: torch.Tensor) -> torch.Tensor | None:
        head = self.hf.get_output_embeddings()
        transform = getattr(self, "lab_head_transform", None)
        if transform is not None:  # the head's own HF code before its output embedding (backend/head_transform.py)
            hidden_states = transform(self.hf, hidden_states)
        if self.lab_head_dtype is not None:
            hidden_states = hidden_states.to(self.lab_head_dtype)
        return self.logits_processor(head, hidden_states, getattr(head, "bias", None))

    def load_weights(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        """The first call loads the checkpoint and refuses missing or unexpected tensors; later calls
        (a trainer's weights in buckets) load any subset and repack what they touched (backend/reload.py)."""
        if self._lab_stash is not None:
            return self._load_update(weights)
        if self.lab_report.loaded_weights:
            raise WeightsError("load_weights after the first load is off (hf_overrides lab_weight_updates=False): "
                               "the device's kernels repacked the weights and no loadable copy was kept")
        expected = {n for n, _ in self.named_parameters() if ATTN_ATTR not in n.split(".")}
        outcome = load_checked(self, weights, self._names, expected, self._conversion)
        if self._lab_keep_loadable:
            self._lab_stash = WeightStash(self)
        self.lab_report.loaded_weights = len(outcome.loaded)
        self.lab_report.ignored_weights = outcome.ignored
        real, meta = parameter_bytes(self)
        if self.tp_size > 1:
            from hfvllm_lab.backend.meta import replicated_bytes

            self.lab_report.replicated_bytes = replicated_bytes(self)
        figure = memory_figure(str(self.lab_report.device))
        self.lab_report.phases.append(
            PhaseBytes("loaded", real, meta, buffer_bytes(self), time.perf_counter() - self._lab_t0,
                       figure.bytes, figure.source)
        )
        return outcome.loaded

    def _load_update(self, weights: Iterable[tuple[str, torch.Tensor]]) -> set[str]:
        stash = self._lab_stash
        live = stash.swap_in()
        try:
            outcome = load_checked(self, weights, self._names, set(), self._conversion, partial=True)
        except BaseException:
            # Some tensors may have landed before the error: repack every layer from what it now holds,
            # so the kernels and the loadable weights never disagree.
            stash.finish(live, {id(p) for own in stash.params.values() for p in own.values()})
            raise
        params = dict(self.named_parameters(remove_duplicate=False))
        repacked = stash.finish(live, {id(params[n]) for n in outcome.loaded if n in params})
        self.lab_report.weight_updates.append(
            f"{len(outcome.loaded)} parameters updated, {len(repacked)} layers repacked")
        return outcome.loaded


class LabHybridForCausalLM(LabForCausalLM):
    """The lab backend for models whose modules keep state between tokens outside attention (Mamba
    mixers, gated delta-nets, short convolutions): each such module runs as HF code with its
    per-request state in vLLM's state cache (backend/state/). vLLM reads `is_hybrid` from the
    class, so these models get their own architecture name."""

    is_hybrid = True
    has_inner_state = True

    def _plan_state(self, hf: nn.Module, dtype: torch.dtype) -> list:
        from hfvllm_lab.backend.state import plan_state

        plans = plan_state(hf, self.text_config, dtype, self.tp_size)
        if not plans:
            raise UnsupportedModelError(
                f"{type(hf).__name__} keeps no state outside attention; build it with the lab's plain class")
        return plans

    def _attach_state(self, hf, plans, vllm_config, report: BuildReport) -> None:
        from hfvllm_lab.backend.state import attach_state

        report.records.extend(attach_state(hf, plans, self.text_config, vllm_config, ROOT,
                                           vllm_config.model_config.model))
        layout = plans[0].layout
        report.options["state cache"] = (
            f"{len(plans)} stateful modules ({layout.module_class}), {layout.describe()} each; prefix caching "
            f"{'on' if vllm_config.cache_config.enable_prefix_caching else 'off'}")
        report.state = {"modules": len(plans), "bytes_per_request": layout.bytes_per_request * len(plans),
                        "layout": layout.describe(), "module_class": layout.module_class}

    @classmethod
    def get_mamba_state_shape_from_config(cls, vllm_config):
        from hfvllm_lab.backend.state import registered_layout

        return tuple(t.shape for t in registered_layout(vllm_config).tensors)

    @classmethod
    def get_mamba_state_dtype_from_config(cls, vllm_config):
        from hfvllm_lab.backend.state import _DTYPES, registered_layout

        return tuple(_DTYPES[t.dtype] for t in registered_layout(vllm_config).tensors)

    @classmethod
    def get_mamba_state_copy_func(cls):
        from hfvllm_lab.backend.state import state_copy_funcs

        return state_copy_funcs()
