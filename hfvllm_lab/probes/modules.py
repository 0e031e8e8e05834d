"""Find the modules worth observing in any decoder-only model: HF, lab-backed or vLLM-native."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from hfvllm_lab.backend.norms import looks_like_norm


# Stand-ins for modules another pipeline rank holds (the lab's, vLLM's own): nothing to observe here.
PLACEHOLDERS = frozenset({"LabMissingLayer", "LabMissingEmbedding", "PPMissingLayer"})


@dataclass(frozen=True)
class ObservedModule:
    name: str  # display name, with the backend's wrapper prefix removed (HF-style)
    kind: str  # embedding / layer / attention / mlp / norm / final_norm / lm_head
    layer: int | None
    module: nn.Module


def display_name(name: str, strip: str) -> str:
    return name[len(strip) + 1:] if strip and name.startswith(strip + ".") else name


def decoder_layers(model: nn.Module, num_layers: int) -> tuple[str, nn.ModuleList]:
    """The ModuleList that holds the decoder layers (the largest list of `num_layers` modules)."""
    candidates = [
        (name, m) for name, m in model.named_modules() if isinstance(m, nn.ModuleList) and len(m) == num_layers
    ]
    if not candidates:
        raise ValueError(f"no list of {num_layers} decoder layers in {type(model).__name__}")
    return max(candidates, key=lambda item: sum(p.numel() for p in item[1].parameters()))


def observed_modules(model: nn.Module, num_layers: int, strip: str = "") -> list[ObservedModule]:
    """Embedding, each layer with its attention / MLP / norm children, final norm, LM head."""
    layers_name, layers = decoder_layers(model, num_layers)
    parent_name = layers_name.rsplit(".", 1)[0] if "." in layers_name else ""
    parent = model.get_submodule(parent_name) if parent_name else model
    out: list[ObservedModule] = []

    def add(name: str, kind: str, layer: int | None, module: nn.Module) -> None:
        if type(module).__name__ in PLACEHOLDERS:
            return  # pipeline parallel: another rank runs this module
        out.append(ObservedModule(display_name(name, strip), kind, layer, module))

    prefix = f"{parent_name}." if parent_name else ""
    for child_name, child in parent.named_children():
        if child is layers:
            continue
        cls = type(child).__name__.lower()
        if isinstance(child, nn.Embedding) or ("embedding" in cls and "rotary" not in cls):
            add(prefix + child_name, "embedding", None, child)
    for idx, layer in enumerate(layers):
        base = f"{layers_name}.{idx}"
        add(base, "layer", idx, layer)
        for child_name, child in layer.named_children():
            lowered = child_name.lower()
            if looks_like_norm(child) or "norm" in lowered:  # before "attn": post_attention_layernorm
                kind = "norm"
            elif "attn" in lowered or "attention" in lowered:
                kind = "attention"
            elif "mlp" in lowered or "feed_forward" in lowered or "ffn" in lowered:
                kind = "mlp"
            else:
                continue
            add(f"{base}.{child_name}", kind, idx, child)
    for child_name, child in parent.named_children():
        if looks_like_norm(child):
            add(prefix + child_name, "final_norm", None, child)
    for name, module in model.named_modules():
        if name.rsplit(".", 1)[-1] == "lm_head":
            add(name, "lm_head", None, module)
    return out
