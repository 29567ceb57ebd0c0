"""Task functions of the transport benchmark (importable, so they pickle by reference)."""

from __future__ import annotations

from typing import Any


def noop(x: Any) -> Any:
    return x
