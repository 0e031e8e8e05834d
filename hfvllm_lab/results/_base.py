"""Shared behaviour of result objects: frames, dicts and lazy rendering hooks."""

from __future__ import annotations

from dataclasses import asdict, fields, is_dataclass
from typing import Any


def plain(value: Any) -> Any:
    """Dataclasses, tuples and dicts as JSON-ready data."""
    if is_dataclass(value) and not isinstance(value, type):
        if hasattr(value, "to_dict"):
            return value.to_dict()
        return {f.name: plain(getattr(value, f.name)) for f in fields(value)}
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def frame(rows: list[dict[str, Any]], columns: list[str] | None = None):
    import pandas as pd

    return pd.DataFrame(rows, columns=columns)


def rows_of(items) -> list[dict[str, Any]]:
    return [asdict(i) for i in items]


class Shown:
    """`repr()` and Jupyter's HTML through `hfvllm_lab.display`, rendered when shown (never stored).
    Dataclasses that mix it in say `@dataclass(repr=False)` so the dataclass keeps this `__repr__`."""

    def __repr__(self) -> str:
        from hfvllm_lab import display

        return display.text(self)

    def _repr_html_(self) -> str:
        from hfvllm_lab import display

        return display.html(self)
