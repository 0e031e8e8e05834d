"""End to end in a real browser: JupyterLab on loopback, headless Chromium driven by Playwright.

Opens notebooks/01_quickstart.ipynb, runs all cells from the Run menu, and checks in the DOM that
the dashboard rendered with its tabs and that plots arrived as PNG images; a screenshot is saved
to build/browser_quickstart.png. The server runs with clean HOME/Jupyter dirs, autosave off (the
committed notebook must stay without outputs), and is terminated in a finally.

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

REPO = Path(__file__).resolve().parents[1]
NOTEBOOK = "notebooks/01_quickstart.ipynb"
SCREENSHOT = REPO / "build" / "browser_quickstart.png"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-quic"]
TOKEN = "hfvllm-lab-browser-test"
SERVER_START_S = 90
PAGE_LOAD_MS = 90_000
RUN_ALL_MS = 300_000  # the notebook takes ~20 s on a CPU; generous for a slow CI machine


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


def wait_for_server(proc: subprocess.Popen, url: str, log: Path) -> None:
    deadline = time.monotonic() + SERVER_START_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"jupyter lab exited with {proc.returncode}:\n{log.read_text()[-4000:]}")
        try:
            with urllib.request.urlopen(url, timeout=5) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.5)
    raise TimeoutError(f"jupyter lab did not answer {url} in {SERVER_START_S} s:\n{log.read_text()[-4000:]}")


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
    port = free_port()
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={TOKEN}", "--ServerApp.password=",
           f"--ServerApp.root_dir={REPO}", "--ServerApp.open_browser=False",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate", "--LabApp.extension_manager=readonly",
           "--ServerApp.terminals_enabled=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")  # CI runs as root
    with open(log, "wb") as out:
        proc = subprocess.Popen(cmd, env=server_env(tmp_path), cwd=REPO, stdout=out, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, start_new_session=True)
    try:
        wait_for_server(proc, f"http://127.0.0.1:{port}/api/status?token={TOKEN}", log)
        yield f"http://127.0.0.1:{port}", log
    finally:
        stop(proc)


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


ALL_DONE = """() => {
  const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];
  if (!cells.length) return false;
  return cells.every(c => /\\[\\d+\\]/.test(c.querySelector('.jp-InputArea-prompt')?.textContent || ''));
}"""


def test_quickstart_runs_in_jupyterlab_and_shows_the_dashboard(lab):
    base, log = lab
    notebook = REPO / NOTEBOOK
    before = digest(notebook)
    SCREENSHOT.parent.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1000})
            page.set_default_timeout(PAGE_LOAD_MS)
            page.goto(f"{base}/lab/tree/{NOTEBOOK}?token={TOKEN}", timeout=PAGE_LOAD_MS)
            page.wait_for_selector(".jp-Notebook .jp-CodeCell", timeout=PAGE_LOAD_MS)
            page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=PAGE_LOAD_MS)

            page.locator(".lm-MenuBar-itemLabel", has_text="Run").first.click()
            page.locator(".lm-Menu-itemLabel", has_text="Run All Cells").first.click()
            try:
                page.wait_for_function(ALL_DONE, timeout=RUN_ALL_MS, polling=1000)
                page.wait_for_selector('.jp-Notebook-ExecutionIndicator[data-status="idle"]', timeout=60_000)
            finally:
                page.screenshot(path=str(SCREENSHOT))

            errors = page.locator('.jp-OutputArea-output[data-mime-type="application/vnd.jupyter.error"]')
            assert errors.count() == 0, errors.first.inner_text()[:2000]

            tabs = page.locator(".widget-tab .lm-TabBar-tabLabel")
            tabs.first.wait_for(timeout=60_000)
            titles = tabs.all_inner_texts()
            for title in ("Replacements", "Memory", "Attention", "Timing", "Parity"):
                assert title in titles, titles
            dashboard_pngs = page.locator('.widget-tab img[src^="data:image/png"]')
            assert dashboard_pngs.count() >= 1
            assert page.locator('.jp-OutputArea img[src^="data:image/png"]').count() >= 3  # cmp, counts, memory

            # the second dashboard was run from code: its Parity tab holds the comparison
            parity = page.locator(".widget-tab .lm-TabBar-tab", has_text="Parity").last
            parity.click()
            page.wait_for_selector(".widget-tab .hvl-comparison >> visible=true", timeout=30_000)
            # screenshot: the run dashboard from its controls down, on its Replacements tab
            page.locator(".widget-tab .lm-TabBar-tab", has_text="Replacements").last.click()
            page.get_by_text("hfvllm_lab dashboard").last.evaluate("e => e.scrollIntoView({block: 'start'})")
            page.wait_for_timeout(500)
            page.screenshot(path=str(SCREENSHOT))
        finally:
            browser.close()
    assert SCREENSHOT.stat().st_size > 10_000
    assert digest(notebook) == before, "the committed notebook was modified (autosave?)"
