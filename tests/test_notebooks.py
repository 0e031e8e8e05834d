"""Every notebook under notebooks/ runs top to bottom with nbclient, in the venv's `python3` kernel,
from the notebooks/ directory; any cell error fails the test.

Each notebook runs once per suite: when tests/test_browser.py will run the quickstart in JupyterLab
in this same session (chromium and playwright present, the test selected), it checks that run's
outputs with `check_outputs` below and the quickstart is not executed here a second time."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"
CELL_TIMEOUT = 300  # seconds per cell; a whole notebook takes well under two minutes on a CPU
NOTEBOOK_BUDGET = 240  # the whole notebook, with room for a slow CI machine


def kernel_env() -> dict[str, str]:
    env = dict(os.environ)
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
    # the kernel must import this checkout's hfvllm_lab even if it was not installed editable
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(NOTEBOOKS.parent), env.get("PYTHONPATH")]))
    return env


def execute(nb, timeout: int = CELL_TIMEOUT):
    client = nbclient.NotebookClient(nb, kernel_name="python3", timeout=timeout, allow_errors=False,
                                     resources={"metadata": {"path": str(NOTEBOOKS)}})
    # jupyter_client starts a kernelspec whose argv[0] is "python" with sys.executable: this venv
    return client.execute(env=kernel_env())


def test_the_kernel_is_this_venvs_python():
    nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(
        "import sys, os, hfvllm_lab; print(sys.executable); print(os.getcwd()); print(hfvllm_lab.__file__)")])
    out = execute(nb, timeout=120).cells[0].outputs[0]["text"].splitlines()
    assert Path(out[0]).resolve() == Path(sys.executable).resolve()
    assert Path(out[1]).resolve() == NOTEBOOKS
    assert Path(out[2]).resolve().is_relative_to(NOTEBOOKS.parent)


def notebook_paths() -> list[Path]:
    return sorted(NOTEBOOKS.glob("[0-9][0-9]_*.ipynb"))


def test_there_are_six_notebooks_without_outputs():
    paths = notebook_paths()
    assert [p.name for p in paths] == ["01_quickstart.ipynb", "02_replacement_inspection.ipynb",
                                       "03_attention_paths.ipynb", "04_layer_timing_and_memory.ipynb",
                                       "05_bf16_noise_floor.ipynb", "06_rl_rollout_mismatch.ipynb"]
    for path in paths:
        nb = nbformat.read(path, as_version=4)
        code = [c for c in nb.cells if c.cell_type == "code"]
        assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs"


def code_outputs(nb) -> list:
    """Outputs of the code cells of an executed notebook: nbformat's, or JupyterLab's model as JSON."""
    return [o for c in nb["cells"] if c["cell_type"] == "code" for o in c.get("outputs", [])]


def outputs_of(nb, mime: str) -> list:
    return [o for o in code_outputs(nb) if mime in o.get("data", {})]


def check_outputs(nb, name: str) -> None:
    """What an executed notebook must hold, however it was run (nbclient here, JupyterLab in
    tests/test_browser.py)."""
    code = [c for c in nb["cells"] if c["cell_type"] == "code"]
    assert all(c.get("execution_count") for c in code), f"{name}: a code cell did not run"
    errors = [o for o in code_outputs(nb) if o.get("output_type") == "error"]
    assert not errors, [f"{e.get('ename')}: {e.get('evalue')}" for e in errors]
    # the saved HTML tells the story: result objects rendered as HTML, figures as PNG
    assert outputs_of(nb, "text/html") and outputs_of(nb, "image/png")
    if name == QUICKSTART:
        dashboards = [o for o in outputs_of(nb, "application/vnd.jupyter.widget-view+json")
                      if "hvl-dashboard" in o["data"].get("text/html", "")]
        assert len(dashboards) == 2 and all("Replacements" in o["data"]["text/html"] for o in dashboards)


QUICKSTART = "01_quickstart.ipynb"
BROWSER_TEST = "test_browser.py::test_quickstart_runs_in_jupyterlab_and_shows_the_dashboard"


def browser_test_runs_the_quickstart(session) -> bool:
    """The browser test is selected in this session and not skipped (it runs the quickstart)."""
    for item in session.items:
        if item.nodeid.endswith(BROWSER_TEST):
            return not any(not m.args or m.args[0] is not False for m in item.iter_markers("skipif"))
    return False


@pytest.mark.parametrize("path", notebook_paths(), ids=lambda p: p.stem)
def test_notebook_runs(path, capsys, request):
    if path.name == QUICKSTART and browser_test_runs_the_quickstart(request.session):
        pytest.skip(f"run once per suite: {BROWSER_TEST} runs it in JupyterLab with check_outputs")
    nb = nbformat.read(path, as_version=4)
    start = time.perf_counter()
    execute(nb)  # raises CellExecutionError on the first failing cell
    seconds = time.perf_counter() - start
    with capsys.disabled():
        print(f"\n{path.name}: {seconds:.1f} s", end="")
    assert seconds < NOTEBOOK_BUDGET, f"{path.name} took {seconds:.0f} s"
    check_outputs(nb, path.name)
