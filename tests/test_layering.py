"""The layers hold (DESIGN.md, "Layers (data flows one way)"): render draws results and never runs a
model; results reach their renderers only through `hfvllm_lab.display`; `import hfvllm_lab` stays
light. Imports are read with `ast`: top-level and deferred (inside functions), `import x` and
`from x import y`, relative ones resolved, `importlib.import_module("...")` with a literal name."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from importlib import import_module
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "hfvllm_lab"
# What `hfvllm_lab/__init__.py` imports lazily through its module `__getattr__`.
LAZY_ATTRIBUTES = {"hfvllm_lab.Session": "hfvllm_lab.session"}
RENDER_MUST_NOT_IMPORT = ("hfvllm_lab.session", "hfvllm_lab.paths", "hfvllm_lab.probes", "hfvllm_lab.backend",
                          "hfvllm_lab.dashboard")
HEAVY = ("vllm", "torch_mlu", "ipywidgets", "matplotlib", "torch")


@dataclass(frozen=True)
class Import:
    module: str  # absolute dotted name imported (for `from a import b`: a.b as well as a)
    line: int
    type_checking: bool  # inside an `if TYPE_CHECKING:` block


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _resolve(path: Path, module: str | None, level: int) -> str:
    if level == 0:
        return module or ""
    package = module_name(path).split(".")
    if path.name != "__init__.py":
        package = package[:-1]  # a module's package
    base = package[: len(package) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def imports_of(path: Path, source: str | None = None) -> list[Import]:
    """Every import in the file (or in `source`, read as that file), wherever it sits."""
    tree = ast.parse(path.read_text() if source is None else source, filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, guarded: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, guarded)
            return
        if isinstance(node, ast.Import):
            found.extend(Import(alias.name, node.lineno, guarded) for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = _resolve(path, node.module, node.level)
            found.append(Import(base, node.lineno, guarded))
            for alias in node.names:
                if alias.name != "*":
                    name = f"{base}.{alias.name}"
                    found.append(Import(LAZY_ATTRIBUTES.get(name, name), node.lineno, guarded))
        elif (isinstance(node, ast.Call) and isinstance(node.func, (ast.Name, ast.Attribute))
              and getattr(node.func, "id", getattr(node.func, "attr", None)) in ("import_module", "__import__")
              and node.args and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
            found.append(Import(node.args[0].value, node.lineno, guarded))
        for child in ast.iter_child_nodes(node):
            visit(child, guarded)

    visit(tree, False)
    return found


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def files(folder: str) -> list[Path]:
    return sorted((PACKAGE / folder).rglob("*.py"))


def test_the_import_reader_sees_every_form():
    sample = PACKAGE / "render" / "_layering_sample.py"  # a name to resolve relative imports; not written
    source = (
        "import hfvllm_lab.paths.vllm_path as vp\n"
        "from typing import TYPE_CHECKING\n"
        "from .. import session\n"
        "from ..backend import records\n"
        "from . import html\n"
        "from hfvllm_lab import Session\n"
        "if TYPE_CHECKING:\n"
        "    from hfvllm_lab.results.timing import LayerTiming\n"
        "def later():\n"
        "    from hfvllm_lab.probes import worker\n"
        "    import importlib\n"
        "    return importlib.import_module('hfvllm_lab.dashboard')\n"
    )
    found = imports_of(sample, source)
    names = {i.module for i in found}
    assert {"hfvllm_lab.paths.vllm_path", "hfvllm_lab.session", "hfvllm_lab.backend.records",
            "hfvllm_lab.render.html", "hfvllm_lab.probes.worker", "hfvllm_lab.dashboard"} <= names
    assert "hfvllm_lab.session" in {i.module for i in found if i.line == 6}  # the lazy Session
    guarded = {i.module for i in found if i.type_checking}
    assert guarded == {"hfvllm_lab.results.timing", "hfvllm_lab.results.timing.LayerTiming"}


@pytest.mark.parametrize("path", files("render"), ids=lambda p: p.name)
def test_render_never_reaches_a_model(path):
    bad = [f"line {i.line}: {i.module}" for i in imports_of(path)
           if any(within(i.module, f) for f in RENDER_MUST_NOT_IMPORT)]
    assert not bad, f"{path.name} imports a layer that runs models: {bad}"


@pytest.mark.parametrize("path", files("render"), ids=lambda p: p.name)
def test_render_imports_results_only_for_type_checking(path):
    bad = [f"line {i.line}: {i.module}" for i in imports_of(path)
           if within(i.module, "hfvllm_lab.results") and not i.type_checking]
    assert not bad, f"{path.name} imports results at run time (use `if TYPE_CHECKING:`): {bad}"


@pytest.mark.parametrize("path", files("results"), ids=lambda p: p.name)
def test_results_reach_renderers_only_through_display(path):
    bad = [f"line {i.line}: {i.module}" for i in imports_of(path) if within(i.module, "hfvllm_lab.render")]
    assert not bad, f"{path.name} imports render directly (call hfvllm_lab.display): {bad}"


def test_display_imports_no_results_and_no_models():
    found = imports_of(PACKAGE / "display.py")
    bad = [i.module for i in found
           if any(within(i.module, f) for f in (*RENDER_MUST_NOT_IMPORT, "hfvllm_lab.results"))]
    assert not bad


def test_display_routes_every_result_to_an_existing_renderer():
    from hfvllm_lab import display

    for table in (display.TEXT, display.HTML, display.PLOT):
        for (cls_path, _variant), (module, function) in table.items():
            module_path, cls_name = cls_path.rsplit(".", 1)
            assert isinstance(getattr(import_module(module_path), cls_name), type), cls_path
            assert callable(getattr(import_module(f"hfvllm_lab.render.{module}"), function)), function
    # every result class that shows itself goes through the table
    from hfvllm_lab.results.attention import AttentionReport
    from hfvllm_lab.results.comparison import BisectResult, Comparison
    from hfvllm_lab.results.memory import MemoryReport
    from hfvllm_lab.results.replacements import ReplacementLog
    from hfvllm_lab.results.timing import LayerTiming

    keys = {k for k, _ in display.TEXT} & {k for k, _ in display.HTML}
    for cls in (AttentionReport, BisectResult, Comparison, MemoryReport, ReplacementLog, LayerTiming):
        assert f"{cls.__module__}.{cls.__qualname__}" in keys, cls
    with pytest.raises(TypeError, match="no text renderer for int"):
        display.text(3)


def loaded_after(code: str) -> set[str]:
    out = subprocess.run([sys.executable, "-c", f"{code}\nimport json, sys; print(json.dumps(sorted(sys.modules)))"],
                         capture_output=True, text=True, check=True, cwd=PACKAGE.parent)
    return set(json.loads(out.stdout.splitlines()[-1]))


def heavy_in(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if any(within(m, h) for h in HEAVY))


def test_import_hfvllm_lab_stays_light():
    assert heavy_in(loaded_after("import hfvllm_lab")) == []


def test_results_payloads_vocab_and_display_stay_light():
    results = " ".join(f"hfvllm_lab.results.{p.stem}," for p in files("results") if p.stem != "__init__")
    modules = loaded_after(f"import {results} hfvllm_lab.display, hfvllm_lab.vocab, hfvllm_lab.probes.payloads")
    assert heavy_in(modules) == []
    assert not any(within(m, "hfvllm_lab.render") for m in modules)  # display imports render only to draw


def test_text_and_html_renderers_load_no_results_and_no_plotting():
    modules = loaded_after("import hfvllm_lab.render.text, hfvllm_lab.render.html, hfvllm_lab.render.plots, "
                           "hfvllm_lab.render.report")
    assert heavy_in(modules) == []
    assert not any(within(m, "hfvllm_lab.results") for m in modules)
