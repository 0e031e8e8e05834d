"""One call in a fresh spawned process: transformers' classes as the library defines them, room for an
engine of its own, memory given back on exit. Arguments and the result cross by pickle."""

from __future__ import annotations

from collections.abc import Callable


def run_spawned(fn: Callable, *args):
    """`fn(*args)` in a spawned child process; its exception, if any, re-raised here."""
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
        return pool.submit(fn, *args).result()


__all__ = ["run_spawned"]
