"""The backend registry as Python reads it: every backend's name, options (type, unit,
default, doc, scheduler flag), defaults and worker-id rule, from the one table in Rust
(``crates/shoal-sched/src/registry.rs``, through ``_native.backends_json()``)."""

from __future__ import annotations

import functools
import json
import os
from typing import Any, Optional

from shoal import _native


@functools.cache
def _registry() -> dict[str, Any]:
    data: dict[str, Any] = json.loads(_native.backends_json())
    return data


def names() -> tuple[str, ...]:
    return tuple(b["name"] for b in _registry()["backends"])


def _backend(name: str) -> Optional[dict[str, Any]]:
    return next((b for b in _registry()["backends"] if b["name"] == name), None)


def option_names(name: str) -> tuple[str, ...]:
    """The backend's own options (not the generic ones every backend takes)."""
    b = _backend(name)
    return tuple(o["name"] for o in b["options"]) if b else ()


def generic_names() -> tuple[str, ...]:
    return tuple(o["name"] for o in _registry()["generic"])


def portable(name: str) -> dict[str, str]:
    """joblib-htcondor option name -> this backend's option with the same meaning."""
    b = _backend(name)
    if b is None:
        return {}
    return {o["portable"]: o["name"] for o in b["options"] if o["portable"]}


def defaults(name: str) -> dict[str, Any]:
    """Workers, idle timeout, poll interval and driver timeout when the caller gives none.
    An unknown name gets neutral values: the native session rejects it with a hint."""
    b = _backend(name)
    if b is None:
        return {"workers": 1, "idle_timeout": None, "poll_interval": 1.0, "driver_timeout": None}
    d = dict(b["defaults"])
    workers = d["workers"]
    d["workers"] = (os.cpu_count() or 1) if workers == "cpus" else int(workers["fixed"])
    return d


def bare_sizes(name: str, options: dict[str, Any]) -> list[str]:
    """What to warn about: size options given as a bare number, which the backend reads in
    the option's unit (``memory=2`` is 2 MB on Slurm), naming that unit and how to be sure.
    The registry's rule, shared with ``shoal.toml`` templates and ``shoal run --opt``."""
    numbers = {
        k: v for k, v in options.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    return list(_native.bare_sizes(name, json.dumps(numbers))) if numbers else []
