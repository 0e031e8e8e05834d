"""One call in a child process, memory given back on exit: a new interpreter for an HF side (transformers'
classes as the library defines them), or a fork of a vLLM-preloaded forkserver for an engine of its own.
Arguments and the result cross by pickle."""

from __future__ import annotations

import os
from collections.abc import Callable

# What an engine child imports anyway (`from vllm import LLM` alone takes ~10 s in a fresh interpreter):
# a forkserver imports it once, and each engine child is forked from there with it in place.
ENGINE_PRELOAD = ("torch", "transformers", "vllm", "vllm.entrypoints.llm", "vllm.model_executor.model_loader",
                  "vllm.v1.worker.gpu_model_runner", "hfvllm_lab.backend.model", "hfvllm_lab.paths.isolated")


def run_spawned(fn: Callable, *args):
    """`fn(*args)` in a spawned child process (a new interpreter, nothing of vLLM's imported: an HF
    side must see transformers' own classes); its exception, if any, re-raised here."""
    import multiprocessing

    return _run_in(multiprocessing.get_context("spawn"), fn, args)


def run_in_engine_child(fn: Callable, *args):
    """`fn(*args)` in a child forked from a forkserver that has torch, transformers and vLLM imported
    (for a child that starts an engine of its own); this process's environment, as it is now, is
    applied there first. Its exception, if any, re-raised here."""
    import multiprocessing

    from hfvllm_lab.paths.env import prepare_vllm_environment

    prepare_vllm_environment()  # the forkserver imports vLLM with the settings an engine here would have
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(list(ENGINE_PRELOAD))
    return _run_in(context, _with_environment, (dict(os.environ), fn, args))


def _run_in(context, fn: Callable, args: tuple):
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        return pool.submit(fn, *args).result()


def _with_environment(environ: dict[str, str], fn: Callable, args: tuple):
    # a forked child starts with the environment the forkserver had when it started, not the caller's now
    os.environ.clear()
    os.environ.update(environ)
    return fn(*args)


__all__ = ["ENGINE_PRELOAD", "run_in_engine_child", "run_spawned"]
