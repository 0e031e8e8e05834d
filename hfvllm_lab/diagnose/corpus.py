"""A long English text for long-context lenses and shared preambles, made offline: the docstrings of
a fixed list of standard-library modules (deterministic for a given Python; no download)."""

from __future__ import annotations

import functools

MODULES = ("argparse", "json", "collections", "textwrap", "logging", "unittest", "email", "http.client",
           "functools", "itertools", "pathlib", "subprocess", "threading", "asyncio", "dataclasses", "typing",
           "re", "string", "random", "statistics", "csv", "sqlite3", "shutil", "tempfile", "datetime",
           "decimal", "fractions", "heapq", "bisect", "contextlib")


@functools.lru_cache(maxsize=1)
def long_text() -> str:
    import importlib
    import inspect

    parts = []
    for name in MODULES:
        try:
            doc = inspect.getdoc(importlib.import_module(name)) or ""
        except ImportError:
            continue
        if doc:
            parts.append(doc)
    return "\n\n".join(parts)


def long_token_ids(tokenizer, count: int) -> list[int]:
    """The first `count` tokens of the text (repeated if a tokenizer packs it into fewer)."""
    ids = tokenizer.encode(long_text())
    if not ids:
        raise ValueError("the tokenizer made no tokens of the long text")
    while len(ids) < count:
        ids = ids + ids
    return ids[:count]


__all__ = ["long_text", "long_token_ids"]
