"""Quantized checkpoints in the lab backend: how vLLM's quantization configs find the lab's layers,
what each Linear became (method, bits, kernel), and the up-front refusal of a quantization the device
has no kernels for.

The lab's modules live under `hf.` (`hf.model.layers.0.self_attn.qkv_proj`), so its model class
gives vLLM a name mapper (checkpoint `model.layers.0...` -> `hf.model.layers.0...`) that vLLM's loader
applies to the quantization config's layer-path targets and ignore lists, and registers each fused
layer's members (`qkv_proj` <- q_proj, k_proj, v_proj as the HF module names them) so a scheme that
names the members finds the fused layer.
"""

from __future__ import annotations

from torch import nn

from hfvllm_lab.errors import UnsupportedModelError

ROOT = "hf"  # the attribute of LabForCausalLM holding the HF model


class RootMapper:
    """What vLLM's `configure_quant_config` asks a model class for (`hf_to_vllm_mapper`)."""

    def get_rename_mapper(self):
        from vllm.model_executor.models.utils import WeightsMapper

        return WeightsMapper(orig_to_new_prefix={"": f"{ROOT}."})


def register_packed(quant_config, fused: str, members: list[str]) -> None:
    """Tell the quantization config which HF modules a fused layer (its last name) merges."""
    mapping = getattr(quant_config, "packed_modules_mapping", None)
    if quant_config is None or mapping is None:
        return
    known = mapping.get(fused)
    if known is not None and list(known) != list(members):
        raise UnsupportedModelError(f"fused {fused} merges {members} here and {list(known)} elsewhere in the model: "
                                    "the quantization config can only map one")
    mapping[fused] = list(members)


def describe(layer: nn.Module) -> str:
    """'' for an unquantized layer, else what its quantization method made of it: the scheme, the
    weight and activation formats, the kernel vLLM chose for this device."""
    method = getattr(layer, "quant_method", None)
    name = type(method).__name__ if method is not None else ""
    if not name or name.startswith("Unquantized"):
        return ""
    scheme = getattr(layer, "scheme", None)
    text = "quantized: " + (type(scheme).__name__.removeprefix("CompressedTensors") if scheme is not None else name)
    formats = _formats(layer, scheme)
    if formats:
        text += f" ({formats})"
    kernel = getattr(scheme, "kernel", None) or getattr(scheme, "fp8_linear", None) or getattr(method, "kernel", None)
    if kernel is not None:
        text += f", kernel {type(kernel).__name__}"
    return text


def _formats(layer: nn.Module, scheme) -> str:
    """Weight and activation formats, from the arguments the checkpoint's config gave this layer."""
    config = getattr(getattr(layer, "quant_method", None), "quantization_config", None)
    args = None
    if config is not None and hasattr(config, "get_scheme_dict"):
        try:
            args = config.get_scheme_dict(layer, layer_name=getattr(layer, "prefix", None))
        except Exception:  # noqa: BLE001 - the description then names the scheme alone
            args = None
    if not args:
        bits = getattr(scheme, "num_bits", None)
        return f"{bits}-bit weights" if bits else ""
    weights, inputs = args.get("weights"), args.get("input_activations")
    text = _args_text(weights, "weights")
    if inputs is not None:
        text += ", " + _args_text(inputs, "activations")
    elif weights is not None:
        text += ", activations not quantized"
    return text


def _args_text(args, what: str) -> str:
    if args is None:
        return ""
    kind = getattr(getattr(args, "type", None), "value", getattr(args, "type", ""))
    strategy = getattr(getattr(args, "strategy", None), "value", getattr(args, "strategy", ""))
    group = f" {args.group_size}" if getattr(args, "group_size", None) else ""
    dynamic = " dynamic" if getattr(args, "dynamic", False) is True else ""
    return f"{kind}{args.num_bits} {what}{dynamic} per {strategy}{group}"


def quant_method_of(config) -> str | None:
    """The checkpoint's quantization method, from its config (None: not quantized)."""
    qc = getattr(config, "quantization_config", None)
    if qc is None:
        return None
    method = qc.get("quant_method") if isinstance(qc, dict) else getattr(qc, "quant_method", None)
    return str(getattr(method, "value", method)) if method is not None else "unknown"


def check_quantization(model_dir, config, dtype: str, device: str, trust_remote_code: bool = False) -> None:
    """Refuse, before an engine starts (and before an open Session closes), a checkpoint whose
    quantization vLLM has no kernel for on this device, naming the method, the layer and the device.
    vLLM's CPU platform lists no unsupported methods: a kernel is found, or not, when a layer is
    built. So one layer of each Linear of the first decoder layer (and the head) is built here with
    the checkpoint's quantization config, on the meta device, in a child process (it needs
    a distributed group of its own)."""
    method = quant_method_of(config)
    if method is None:
        return
    from hfvllm_lab.paths.spawn import run_in_engine_child

    failure = run_in_engine_child(_build_sample_layers, str(model_dir), dtype, trust_remote_code, linear_shapes(config))
    if failure:
        raise UnsupportedModelError(f"the checkpoint is quantized with {method!r}, and vLLM {_vllm_version()} has no "
                                    f"kernel for it on {device}: {failure}")


def linear_shapes(config) -> list[tuple[str, int, int]]:
    """(checkpoint name, in, out) of the Linears of the first decoder layer, from a meta build."""
    import torch
    from transformers import AutoModelForCausalLM

    text = config.get_text_config()
    small = type(config).from_dict({**config.to_dict(), "num_hidden_layers": 1})
    if small.get_text_config() is not small:
        small.get_text_config().num_hidden_layers = 1
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(small)
    head = model.get_output_embeddings()
    del text
    return [(name, m.in_features, m.out_features) for name, m in model.named_modules()
            if isinstance(m, nn.Linear) and m is not head]


def _build_sample_layers(model_dir: str, dtype: str, trust_remote_code: bool,
                         linears: list[tuple[str, int, int]]) -> str:
    """'' when every sample layer finds a kernel, else the first failure (in the child process)."""
    import os
    import socket

    import torch

    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")
    from vllm.config import set_current_vllm_config
    from vllm.distributed import init_distributed_environment, initialize_model_parallel
    from vllm.engine.arg_utils import EngineArgs
    from vllm.model_executor.layers.linear import ReplicatedLinear

    config = EngineArgs(model=model_dir, dtype=dtype, trust_remote_code=trust_remote_code, enforce_eager=True,
                        max_model_len=128, kv_cache_memory_bytes=1 << 24).create_engine_config()
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with set_current_vllm_config(config):
        init_distributed_environment(world_size=1, rank=0, local_rank=0,
                                     distributed_init_method=f"tcp://127.0.0.1:{port}", backend="gloo")
        initialize_model_parallel(1, 1)
    with set_current_vllm_config(config), torch.device("meta"):
        for name, fan_in, fan_out in linears:
            try:
                ReplicatedLinear(fan_in, fan_out, bias=False, quant_config=config.quant_config, prefix=name)
            except Exception as exc:  # noqa: BLE001 - the refusal's reason
                from hfvllm_lab.errors import first_line

                return f"{name}: {type(exc).__name__}: {first_line(exc, 240)}"
    return ""


def _vllm_version() -> str:
    import vllm

    return vllm.__version__


__all__ = ["ROOT", "RootMapper", "check_quantization", "describe", "quant_method_of", "register_packed"]
