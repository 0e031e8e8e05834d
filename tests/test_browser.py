"""End to end in a real browser: JupyterLab on loopback, headless Chromium driven by Playwright.

Opens notebooks/01_quickstart.ipynb and waits until JupyterLab has loaded the notebook and its kernel
is connected and idle (the server exposes the app as `window.jupyterapp`); only then runs all cells,
through JupyterLab's own `notebook:run-all-cells` command. It checks in the DOM that the dashboard
rendered with its tabs and that plots arrived as PNG images, and gives the outputs held in
JupyterLab's notebook model the same checks tests/test_notebooks.py applies to this notebook (which
then leaves the quickstart to this test: each notebook runs once per suite). Every wait is for a
state (kernel idle, every code cell numbered, tabs present, images attached), never a fixed time.

A screenshot of the run dashboard is saved to build/browser_quickstart.png. On failure the message
names the phase that failed, what the page showed (kernel status, cell prompts, tab titles) and
three files: build/browser_quickstart_failure.png, the server's log build/browser_jupyterlab.log and
the browser console build/browser_console.log. The server runs with clean HOME/Jupyter dirs, autosave
off (the committed notebook must stay without outputs), and is terminated in a finally.

Needs the Debian package `chromium` (`make test` installs it as root) and the `playwright` wheel
from the dev extra (its bundled driver; no `playwright install`).
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from tests.test_notebooks import check_outputs

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_quickstart.ipynb"
BUILD = REPO / "build"
SCREENSHOT = BUILD / "browser_quickstart.png"
FAILURE_SCREENSHOT = BUILD / "browser_quickstart_failure.png"
SERVER_LOG = BUILD / "browser_jupyterlab.log"
CONSOLE_LOG = BUILD / "browser_console.log"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "hfvllm-lab-browser-test"
# Generous for a loaded 2-core CI machine: there the notebook alone took 36-61 s under nbclient.
SERVER_START_S = 120
PAGE_LOAD_MS = 120_000
KERNEL_READY_MS = 240_000  # notebook model loaded, kernel started, connected and idle
RUN_ALL_MS = 900_000  # a real vLLM engine on the CPU; a failing cell ends the wait at once
WIDGETS_MS = 120_000  # dashboard views rendered from the widget outputs
TAB_TITLES = ("Replacements", "Memory", "Attention", "Timing", "Parity")


def chromium_path() -> str | None:
    for candidate in ("/usr/bin/chromium", shutil.which("chromium"), shutil.which("chromium-browser")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    return None


sync_playwright = pytest.importorskip(
    "playwright.sync_api", reason="playwright is in the dev extra: pip install -e '.[dev]'").sync_playwright
CHROMIUM = chromium_path()
pytestmark = pytest.mark.skipif(
    CHROMIUM is None, reason="chromium is not installed: `make test` installs it as root (apt-get install chromium)")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_settings(settings_dir: Path) -> None:
    """Lab user settings: no autosave (the committed notebook stays clean), no windowed notebook (every
    cell in the DOM), no news or update checks (loopback only)."""
    settings = {
        "@jupyterlab/docmanager-extension/plugin.jupyterlab-settings": {"autosave": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                            "checkForUpdates": False},
    }
    for name, data in settings.items():
        path = settings_dir / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data))


def server_env(tmp: Path) -> dict[str, str]:
    from hfvllm_lab.zoo.build import cache_root

    env = dict(os.environ)
    dirs = {"HOME": "home", "JUPYTER_CONFIG_DIR": "jupyter/config", "JUPYTER_DATA_DIR": "jupyter/data",
            "JUPYTER_RUNTIME_DIR": "jupyter/runtime", "JUPYTERLAB_SETTINGS_DIR": "lab/settings",
            "JUPYTERLAB_WORKSPACES_DIR": "lab/workspaces", "IPYTHONDIR": "ipython", "MPLCONFIGDIR": "mpl"}
    for var, sub in dirs.items():
        (tmp / sub).mkdir(parents=True, exist_ok=True)
        env[var] = str(tmp / sub)
    write_settings(tmp / "lab/settings")
    env.pop("JUPYTER_PATH", None)
    env.pop("JUPYTER_TOKEN", None)
    env["HFVLLM_LAB_CACHE"] = str(cache_root())  # reuse the zoo checkpoints already built
    env["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    env["NO_PROXY"] = env["no_proxy"] = "127.0.0.1,localhost"
    return env


def log_tail(chars: int = 4000) -> str:
    try:
        return SERVER_LOG.read_text(errors="replace")[-chars:]
    except OSError as exc:
        return f"(no server log: {exc})"


def wait_for_server(proc: subprocess.Popen, url: str) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode} (log: {SERVER_LOG}):\n{log_tail()}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)  # polling a socket that is not listening yet
    raise TimeoutError(f"jupyter lab did not answer {url} in {SERVER_START_S} s (log: {SERVER_LOG}):\n{log_tail()}")


def stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)  # the server and the kernels it started
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=10)


@pytest.fixture
def lab(tmp_path):
    """JupyterLab on a free loopback port, its stdout/stderr in build/browser_jupyterlab.log."""
    port = free_port()
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", "--ServerApp.password=",
           f"--ServerApp.root_dir={REPO}", "--ServerApp.open_browser=False",
           "--LabApp.expose_app_in_browser=True",  # window.jupyterapp: sessions, kernel status, commands
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    SERVER_LOG.parent.mkdir(parents=True, exist_ok=True)
    with open(SERVER_LOG, "wb") as out:
        proc = subprocess.Popen(cmd, env=server_env(tmp_path), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_server(proc, f"http://127.0.0.1:{port}/api/status?token={TOKEN}")
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(proc)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# The notebook's panel in JupyterLab's main area, found by path; every script below starts from it.
PANEL = """const app = window.jupyterapp;
  const panel = app && app.shell ? Array.from(app.shell.widgets('main'))
      .find(w => w.context && w.context.path === path) : undefined;
  const kernel = panel && panel.sessionContext.session ? panel.sessionContext.session.kernel : null;"""

# Loaded and runnable: the notebook model read from disk, its cells in the DOM, the kernel session
# ready, the kernel connected and idle. Then the notebook is made the current widget (the command
# below acts on the current notebook).
READY = f"""(path) => {{
  {PANEL}
  if (!panel || !panel.context.isReady || !panel.sessionContext.isReady) return false;
  if (!kernel || kernel.connectionStatus !== 'connected' || kernel.status !== 'idle') return false;
  if (!panel.content.widgets.length || !document.querySelector('.jp-Notebook .jp-CodeCell')) return false;
  if (app.shell.currentWidget !== panel) app.shell.activateById(panel.id);
  return app.shell.currentWidget === panel;
}}"""

# JupyterLab's own Run All: NotebookActions.runAll, whose promise says whether every cell succeeded.
RUN_ALL = f"""(path) => {{
  {PANEL}
  if (!app.commands.isEnabled('notebook:run-all-cells')) return false;
  window.hvlRun = {{done: false, ok: null, error: null}};
  app.commands.execute('notebook:run-all-cells').then(
    ok => {{ window.hvlRun = {{done: true, ok: ok === true, error: null}}; }},
    e => {{ window.hvlRun = {{done: true, ok: false, error: String(e)}}; }});
  return true;
}}"""

# Finished: Run All resolved, every code cell numbered (no [*], no [ ]) and the kernel idle again.
# A failed run, or a kernel that died (restarting on its own), ends the wait at once with what happened.
ALL_DONE = f"""(path) => {{
  {PANEL}
  if (kernel && (['dead', 'autorestarting'].includes(kernel.status) || kernel.connectionStatus === 'disconnected'))
    return {{state: 'kernel ' + kernel.status + ' / ' + kernel.connectionStatus}};
  const run = window.hvlRun;
  if (!run || !run.done) return false;
  if (!run.ok) return {{state: 'Run All Cells failed' + (run.error ? ': ' + run.error : '')
                               + ' (kernel ' + (kernel ? kernel.status : 'gone') + ')'}};
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  const numbered = c => /\\[\\d+\\]/.test(c.querySelector('.jp-InputArea-prompt')?.textContent || '');
  if (!cells.length || !cells.every(numbered) || !kernel || kernel.status !== 'idle') return false;
  return {{state: 'done'}};
}}"""

TABS = """(titles) => {
  const have = [...document.querySelectorAll('.widget-tab .lm-TabBar-tabLabel')].map(e => e.textContent);
  return titles.every(t => have.includes(t));
}"""

# Error outputs in the notebook model (JupyterLab renders them as stderr, so the DOM cannot tell
# them from warnings): name, value and the end of the traceback, colours stripped.
ERRORS_OF = r"""const errorsOf = nb => nb.cells.flatMap(c => c.outputs || []).filter(o => o.output_type === 'error')
    .map(o => `${o.ename}: ${o.evalue}\n` + (o.traceback || []).join('\n').replace(/\x1b\[[0-9;]*m/g, '').slice(-2000));"""

# What the page shows, for a failure message.
DESCRIBE = f"""(path) => {{
  {PANEL}
  {ERRORS_OF}
  return {{
    jupyterapp: !!app, panel: !!panel,
    notebook_loaded: panel ? panel.context.isReady : null,
    session_ready: panel ? panel.sessionContext.isReady : null,
    kernel: kernel ? kernel.status + ' / ' + kernel.connectionStatus : null,
    toolbar_kernel_status: document.querySelector('.jp-Notebook-ExecutionIndicator')?.getAttribute('data-status'),
    run_all: window.hvlRun || null,
    prompts: [...document.querySelectorAll('.jp-Notebook .jp-CodeCell .jp-InputArea-prompt')]
      .map(e => e.textContent.trim()).join(' '),
    errors: panel ? errorsOf(panel.model.toJSON()) : [],
    tabs: [...document.querySelectorAll('.widget-tab .lm-TabBar-tabLabel')].map(e => e.textContent),
    png_images: document.querySelectorAll('.jp-OutputArea img[src^="data:image/png"]').length,
    dialog: document.querySelector('.jp-Dialog')?.innerText || null,
  }};
}}"""

# Two painted frames: layout settled after a tab switch or a scroll (a state, not a delay).
PAINTED = "() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(() => r(true))))"


def failure_message(page, phase: str, exc: BaseException, console: list[str]) -> str:
    try:
        page.screenshot(path=str(FAILURE_SCREENSHOT), timeout=30_000)
        shot = str(FAILURE_SCREENSHOT)
    except Exception as shot_exc:  # the page may be gone
        shot = f"(no screenshot: {shot_exc})"
    try:
        state = json.dumps(page.evaluate(DESCRIBE, NOTEBOOK), indent=1)
    except Exception as state_exc:
        state = f"(page state unavailable: {state_exc})"
    CONSOLE_LOG.write_text("\n".join(console) + "\n")
    return (f"browser test failed while: {phase}\n{type(exc).__name__}: {exc}\n"
            f"page state: {state}\nscreenshot: {shot}\nserver log: {SERVER_LOG}\nbrowser console: {CONSOLE_LOG}\n"
            f"--- server log tail ---\n{log_tail(3000)}")


def test_quickstart_runs_in_jupyterlab_and_shows_the_dashboard(lab, capsys):
    base = lab
    notebook = REPO / NOTEBOOK
    before = digest(notebook)
    for stale in (SCREENSHOT, FAILURE_SCREENSHOT, CONSOLE_LOG):
        stale.unlink(missing_ok=True)
    console: list[str] = []
    seconds: dict[str, float] = {}
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.on("console", lambda m: console.append(f"{m.type}: {m.text}"))
            page.on("pageerror", lambda e: console.append(f"pageerror: {e}"))
            page.set_default_timeout(PAGE_LOAD_MS)
            phase = "opening the notebook page"
            try:
                start = time.perf_counter()
                page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={TOKEN}", timeout=PAGE_LOAD_MS)

                phase = "waiting for the notebook to load and its kernel to be connected and idle"
                page.wait_for_function(READY, arg=NOTEBOOK, timeout=KERNEL_READY_MS, polling=250)
                seconds["ready"] = time.perf_counter() - start

                phase = "starting Run All Cells (notebook:run-all-cells)"
                assert page.evaluate(RUN_ALL, NOTEBOOK), "notebook:run-all-cells is not enabled"

                phase = "waiting for every code cell to run (no [*], every cell numbered, kernel idle)"
                start = time.perf_counter()
                outcome = page.wait_for_function(ALL_DONE, arg=NOTEBOOK, timeout=RUN_ALL_MS, polling=500).json_value()
                seconds["run all"] = time.perf_counter() - start
                errors = page.evaluate(f"(path) => {{ {PANEL} {ERRORS_OF} return errorsOf(panel.model.toJSON()); }}",
                                       NOTEBOOK)
                assert not errors, "\n".join(errors)
                assert outcome["state"] == "done", outcome["state"]

                phase = "checking the outputs held in JupyterLab's notebook model"
                model = page.evaluate(f"(path) => {{ {PANEL} return panel.model.toJSON(); }}", NOTEBOOK)
                check_outputs(model, Path(NOTEBOOK).name)

                phase = "waiting for the dashboard tabs"
                page.wait_for_function(TABS, arg=list(TAB_TITLES), timeout=WIDGETS_MS, polling=500)
                titles = page.locator(".widget-tab .lm-TabBar-tabLabel").all_inner_texts()
                for title in TAB_TITLES:
                    assert title in titles, titles

                phase = "waiting for the dashboard's PNG plots"
                page.wait_for_selector('.widget-tab img[src^="data:image/png"]', state="attached", timeout=WIDGETS_MS)
                dashboard_pngs = page.locator('.widget-tab img[src^="data:image/png"]')
                assert dashboard_pngs.count() >= 1
                assert page.locator('.jp-OutputArea img[src^="data:image/png"]').count() >= 3  # cmp, counts, memory

                # the second dashboard was run from code: its Parity tab holds the comparison
                phase = "opening the Parity tab of the dashboard run from code"
                page.locator(".widget-tab .lm-TabBar-tab", has_text="Parity").last.click()
                page.wait_for_selector(".widget-tab .hvl-comparison >> visible=true", timeout=WIDGETS_MS)

                # screenshot: the run dashboard from its controls down, on its Replacements tab
                phase = "screenshot of the run dashboard"
                replacements = page.locator(".widget-tab .lm-TabBar-tab", has_text="Replacements").last
                replacements.click()
                page.wait_for_function("e => e.classList.contains('lm-mod-current')", arg=replacements.element_handle(),
                                       timeout=WIDGETS_MS)
                page.get_by_text("hfvllm_lab dashboard").last.evaluate("e => e.scrollIntoView({block: 'start'})")
                page.evaluate(PAINTED)
                page.screenshot(path=str(SCREENSHOT))
                assert SCREENSHOT.stat().st_size > 10_000
            except Exception as exc:  # assertions included: name the phase, save what the page showed
                raise AssertionError(failure_message(page, phase, exc, console)) from exc
        finally:
            browser.close()
    with capsys.disabled():
        print(f"\n{Path(NOTEBOOK).name} in JupyterLab: kernel ready {seconds['ready']:.1f} s, "
              f"run all {seconds['run all']:.1f} s", end="")
    assert digest(notebook) == before, "the committed notebook was modified (autosave?)"
