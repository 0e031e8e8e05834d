"""The LM head's own HF code before its output embedding (RoBERTa: dense, gelu, layer_norm), run before logits."""

from __future__ import annotations

import ast
import inspect
import textwrap
from dataclasses import dataclass

import torch
from torch import nn

from hfvllm_lab.backend.norms import looks_like_norm
from hfvllm_lab.backend.records import KEPT, LM_HEAD, ReplacementRecord
from hfvllm_lab.errors import UnsupportedModelError

# Leaves a transform may hold: each acts on one token's hidden state alone, so applying the
# transform to the tokens vLLM samples from equals applying it to every token and then selecting.
_TOKENWISE = (nn.Linear, nn.Dropout, nn.Identity)
_ACTIVATION_MODULES = ("torch.nn.modules.activation", "transformers.activations")


def forward_tree(cls: type) -> ast.AST:
    """The parsed source of `cls.forward`."""
    try:
        return ast.parse(textwrap.dedent(inspect.getsource(inspect.unwrap(cls.forward))))
    except (OSError, TypeError, SyntaxError):
        raise UnsupportedModelError(
            f"{cls.__name__}.forward has no readable source: its logit maths cannot be checked") from None


def peel_head_argument(arg: ast.expr, head_attr: str) -> tuple[ast.expr, list[str]]:
    """The head call's argument without what leaves the values alone (slices, dtype casts,
    `.last_hidden_state`) and without the module calls wrapped around it (`self.lm_head(h)` inside
    `self.decoder(...)`: ModernBERT-decoder, ELECTRA); those modules' names, innermost first."""
    wrappers: list[str] = []
    while True:
        if isinstance(arg, ast.Subscript):
            arg = arg.value
        elif isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute) and arg.func.attr == "to":
            arg = arg.func.value
        elif isinstance(arg, ast.Attribute) and arg.attr == "last_hidden_state":
            arg = arg.value
        elif (isinstance(arg, ast.Call) and isinstance(arg.func, ast.Attribute)
              and isinstance(arg.func.value, ast.Name) and arg.func.value.id == "self"
              and arg.func.attr != head_attr and len(arg.args) == 1 and not arg.keywords):
            wrappers.insert(0, arg.func.attr)
            arg = arg.args[0]
        else:
            return arg, wrappers


def head_call(tree: ast.AST, cls: type, head_attr: str) -> ast.Call:
    """The one call of `self.<head_attr>` on one tensor in a forward."""
    calls = [n for n in ast.walk(tree) if isinstance(n, ast.Call) and ast.unparse(n.func) == f"self.{head_attr}"]
    if len(calls) != 1 or len(calls[0].args) != 1:
        raise UnsupportedModelError(
            f"{cls.__name__}.forward does not call its head self.{head_attr} exactly once on one tensor; "
            "its logit maths cannot be checked"
        )
    return calls[0]


def _is_tokenwise(module: nn.Module) -> bool:
    return (isinstance(module, _TOKENWISE) or looks_like_norm(module)
            or type(module).__module__ in _ACTIVATION_MODULES)


def _check_tokenwise(hf: nn.Module, name: str, skip: str | None = None) -> None:
    for sub_name, sub in hf.get_submodule(name).named_modules(prefix=name):
        if sub_name == skip or (skip and sub_name.startswith(skip + ".")) or list(sub.children()):
            continue
        if not _is_tokenwise(sub):
            raise UnsupportedModelError(
                f"the LM head's transform {name} holds {sub_name} ({type(sub).__name__}), which the lab cannot "
                "show acts on each token alone; vLLM computes logits only for the tokens it samples from"
            )


def _returns_head_result(tree: ast.AST, head: ast.Call) -> bool:
    """Whether every `return` of the forward returns the head call or the variable holding it."""
    head_src = ast.unparse(head)
    holders = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign) and ast.unparse(n.value) == head_src
               for t in n.targets if isinstance(t, ast.Name)}
    returns = [n for n in ast.walk(tree) if isinstance(n, ast.Return)]
    return bool(returns) and all(
        r.value is not None and (ast.unparse(r.value) == head_src or ast.unparse(r.value) in holders) for r in returns)


@dataclass(frozen=True)
class HeadTransform:
    """What runs between the base model's output and the output embedding: modules the causal-LM
    forward wraps around the hidden states (`before`, innermost first), then the head container's own
    forward with the output embedding (`path` below the container) standing in as the identity."""

    before: tuple[str, ...] = ()
    container: str | None = None
    path: tuple[str, ...] = ()

    def __call__(self, hf: nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        for name in self.before:
            hidden = hf.get_submodule(name)(hidden)
        if self.container is not None:
            module = hf.get_submodule(self.container)
            hidden = type(module).forward(_WithoutEmbedding(module, self.path), hidden)
        return hidden

    def records(self, hf: nn.Module) -> list[ReplacementRecord]:
        """One replacement-log record per HF module of the transform."""
        out = []
        for name in (*self.before, *([self.container] if self.container else [])):
            module = hf.get_submodule(name)
            below = ""
            if name == self.container:
                below = f" (its output embedding {'.'.join(self.path)} is the vLLM LM head)"
            out.append(ReplacementRecord(
                name, LM_HEAD, KEPT, type(module).__name__, None, (), 0,
                f"head transform{below}: runs as HF code on the hidden states before vLLM's logits processor; "
                "its Linear / norm layers are swapped like any other"))
        return out


class _WithoutEmbedding:
    """A module as its own forward sees it, with the output embedding below it (`path`) replaced by
    the identity: every other attribute is the live module's, so swapped layers and loaded weights
    are the ones that run. Anything else the forward asks of the embedding fails loudly."""

    def __init__(self, module: nn.Module, path: tuple[str, ...]) -> None:
        object.__setattr__(self, "_lab_module", module)
        object.__setattr__(self, "_lab_path", path)

    def __getattr__(self, name: str):
        module, path = self._lab_module, self._lab_path
        if name != path[0]:
            return getattr(module, name)
        if len(path) == 1:
            return _identity
        child = getattr(module, name)
        return lambda *args, **kwargs: type(child).forward(_WithoutEmbedding(child, path[1:]), *args, **kwargs)


def _identity(x: torch.Tensor) -> torch.Tensor:
    return x


def plan_head_transform(hf: nn.Module, head_name: str, check_post) -> HeadTransform | None:
    """The transform of `hf`'s LM head (None where the logits are the output embedding applied to the
    base model's output), refused where the lab would not compute exactly what HF does.
    `check_post(cls, attr, transform=...)` is model.check_logits_postprocessing: each container on the
    head's module path must call the next module once and change nothing after it; with a transform
    it must also return that call's result."""
    parts = head_name.split(".")
    tree = forward_tree(type(hf))
    _, before = peel_head_argument(head_call(tree, type(hf), parts[0]).args[0], parts[0])
    own = {id(p) for p in hf.get_submodule(head_name).parameters()}
    containers = [".".join(parts[:depth]) for depth in range(1, len(parts))]
    transform = bool(before) or any(
        [n for n, _ in hf.get_submodule(c).named_children() if n != parts[depth]]
        or [n for n, p in hf.get_submodule(c).named_parameters() if id(p) not in own]
        for depth, c in enumerate(containers, start=1))
    for name in before:
        module = getattr(hf, name, None)
        if not isinstance(module, nn.Module) or module is getattr(hf, hf.base_model_prefix, None):
            raise UnsupportedModelError(
                f"{type(hf).__name__}.forward applies self.{name} to the hidden states before its head, and "
                f"self.{name} is not a module of the head the lab can run as HF code"
            )
        _check_tokenwise(hf, name)
    for depth, name in enumerate(containers, start=1):
        container = hf.get_submodule(name)
        if type(container).forward is nn.Module.forward:
            raise UnsupportedModelError(f"the LM head container {name} ({type(container).__name__}) has no forward")
        if check_post(type(container), parts[depth], transform=transform):
            raise UnsupportedModelError(
                f"{type(hf).__name__}'s head {name} ({type(container).__name__}) scales or caps the logits "
                "inside the head module, which the lab does not repeat")
        ctree = forward_tree(type(container))
        if transform and not _returns_head_result(ctree, head_call(ctree, type(container), parts[depth])):
            raise UnsupportedModelError(
                f"{type(container).__name__}.forward does not return what its self.{parts[depth]} computes, "
                "so its result is not the logits")
    if not transform:
        return None
    if containers:
        _check_tokenwise(hf, parts[0], skip=head_name)
    return HeadTransform(tuple(before), parts[0] if containers else None, tuple(parts[1:]))


__all__ = ["HeadTransform", "forward_tree", "head_call", "peel_head_argument", "plan_head_transform"]
