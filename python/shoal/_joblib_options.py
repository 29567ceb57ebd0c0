"""How joblib backend options (joblib-htcondor's names, and each engine's own) become a shoal
session: the one table mapping names across engines, checks, and the resulting settings.

Nothing here starts processes: it only validates and translates, so it is unit-tested alone.
"""

from __future__ import annotations

import logging
import re
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Union

from shoal import _backends
from shoal.errors import ConfigError

ENGINES = _backends.names()

# Each engine's own option names (its Scheduler implementation reads them); passed unchanged.
NATIVE: dict[str, tuple[str, ...]] = {e: _backends.option_names(e) for e in ENGINES}


def _sge_mem(value: Any) -> tuple[str, str]:
    """request_memory -> an SGE `-l h_vmem=` request in whole MiB (SGE has no "Gb" suffix)."""
    return ("h_vmem", f"{memory_mib('request_memory', value)}M")


# joblib-htcondor's scheduler options -> the option each engine understands, from the
# registry's `portable` names. None: the engine has no equivalent and the option is ignored
# with a warning. A (name, fn) pair converts the value; for "resources" fn returns one
# (key, value) resource request. LOCAL: on the local engine request_cpus means CPUs per
# worker (n_jobs=-1 starts cpu_count // it workers).
LOCAL = "<cpus per local worker>"
Target = Union[None, str, tuple[str, Callable[[Any], Any]]]
COLUMNS = ("htcondor", "slurm", "sge", "local")
_CONVERTED: dict[tuple[str, str], Target] = {
    ("sge", "request_memory"): ("resources", _sge_mem),
    ("local", "request_cpus"): LOCAL,
}
TABLE: dict[str, tuple[Target, ...]] = {
    name: tuple(_CONVERTED.get((e, name), _backends.portable(e).get(name)) for e in COLUMNS)
    for name in _backends.portable("htcondor")
}

# Options of the joblib backend itself (same meaning on every engine).
BEHAVIOUR = (
    "throttle", "batch_size", "max_recursion_level", "export_metadata", "context_func",
    "worker_log_level", "delete_task_file_on_load", "shared_data_dir", "initial_dir",
    "python_path",
)  # fmt: skip
# shoal's generic session options (as for shoal.Pool / shoal.Executor).
GENERIC = (
    "work_dir", "keep_work_dir", "idle_timeout", "heartbeat_timeout", "max_attempts", "env",
    "metadata", "progress", "transport", "listen",
)  # fmt: skip
DEFAULT_THROTTLE = 1000
_MEM = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*$", re.IGNORECASE)


def memory_mib(option: str, value: Any) -> int:
    """`"1Gb"`, `"512M"`, `"2GiB"`, 1024 (MiB) -> MiB, or a ConfigError quoting the value."""
    if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
        return max(1, int(value))
    m = _MEM.match(str(value))
    if not m or float(m.group(1)) <= 0:
        raise ConfigError(
            f"invalid value {value!r} for {option}: not a memory size\n"
            'hint: write a number with a unit, e.g. "1Gb", "512M", "2GiB"'
        )
    scale = {"": 1, "k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024}[m.group(2).lower()]
    return max(1, int(float(m.group(1)) * scale))


@dataclass
class Settings:
    """A joblib backend's options, checked and split by where they go."""

    engine: str
    backend_options: dict[str, Any] = field(default_factory=dict)
    session: dict[str, Any] = field(default_factory=dict)  # generic Driver keywords
    throttle: Optional[list[int]] = None  # this level first, then nested levels
    batch_size: Optional[int] = None
    max_recursion_level: int = 0
    export_metadata: bool = False
    context_func: Optional[Callable[[], Any]] = None
    worker_log_level: Optional[int] = None
    local_cpus_per_worker: int = 1
    cpus_per_worker: Optional[int] = None  # for thread-pool sizing in workers
    ignored: list[str] = field(default_factory=list)  # with the reason, for one warning


def _int(option: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ConfigError(f"invalid value {value!r} for {option}: must be an int >= {minimum}")
    return value


def _throttle(value: Any) -> Optional[list[int]]:
    if value is None:
        return None
    values = list(value) if isinstance(value, (list, tuple)) else [value]
    if not values:
        raise ConfigError(
            "invalid value [] for throttle: the list needs at least one value\n"
            "hint: throttle=[parent, child, ...] gives the most workers per nesting level"
        )
    return [_int("throttle", v, 1) for v in values]


def _log_level(value: Any) -> int:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    level = logging.getLevelName(str(value).upper())
    if not isinstance(level, int):
        raise ConfigError(
            f"invalid value {value!r} for worker_log_level\n"
            'hint: use a logging level such as logging.INFO, 20 or "DEBUG"'
        )
    return level


def _put(out: dict[str, Any], name: str, value: Any, source: str) -> None:
    if name in out and out[name] != value:
        raise ConfigError(
            f"conflicting values for {name}: {out[name]!r} and {value!r} (from {source})\n"
            f"hint: give only one of {name} and {source}"
        )
    out[name] = value


def _scheduler_value(engine: str, name: str, value: Any) -> Any:
    """Values that must be plain data to reach the Rust backend as JSON."""
    if name == "schedd" and not isinstance(value, str):
        raise ConfigError(
            f"schedd must be the schedd's name (a str), got a {type(value).__name__}\n"
            'hint: pass schedd="<name as listed by condor_status -schedd>"'
        )
    if name == "pool" and isinstance(value, (list, tuple)):
        if len(value) != 1:
            raise ConfigError(
                f"invalid value {value!r} for pool: shoal talks to one central manager\n"
                'hint: pass one "host[:port]" string'
            )
        value = value[0]
    if name == "pool" and not isinstance(value, str):
        raise ConfigError(f'pool must be a "host[:port]" string, got a {type(value).__name__}')
    if engine == "slurm" and name == "extra_directives" and isinstance(value, dict):
        raise ConfigError(
            'extra_directives on slurm is a list of sbatch options, e.g. ["--nice=5"]; '
            f"got HTCondor-style submit directives {value!r}\n"
            "hint: translate them to sbatch options, or pass them on the htcondor backend"
        )
    if name == "poll_interval" and (
        isinstance(value, bool) or not isinstance(value, (int, float)) or value <= 0
    ):
        raise ConfigError(f"invalid value {value!r} for poll_interval: must be seconds > 0")
    return value


def _add_resource(out: dict[str, Any], key: str, value: str) -> None:
    """Merge one SGE `-l` request into `resources` (a dict, or "a=1,b=2" text)."""
    current = out.get("resources")
    if current is None:
        out["resources"] = {key: value}
    elif isinstance(current, dict):
        _put(current, key, value, "request_memory")
    elif isinstance(current, (list, tuple)):
        out["resources"] = [*current, f"{key}={value}"]
    else:
        text = str(current)
        if re.search(rf"(^|,)\s*{re.escape(key)}\s*=", text):
            raise ConfigError(
                f"conflicting values for {key}: resources={text!r} and request_memory\n"
                "hint: give the memory in only one of them"
            )
        out["resources"] = f"{text},{key}={value}" if text else f"{key}={value}"


def parse(engine: str, options: dict[str, Any]) -> Settings:
    """Check `options` for `engine` and split them; unknown names are errors, names with no
    meaning on this engine are listed in `Settings.ignored` for one warning."""
    if engine not in ENGINES:
        raise ConfigError(f"unknown backend {engine!r}\nhint: choose one of {', '.join(ENGINES)}")
    opts = dict(options)
    s = Settings(engine=engine)
    native = NATIVE[engine]
    # Behaviour options.
    s.throttle = _throttle(opts.pop("throttle", None))
    bs = opts.pop("batch_size", None)
    if bs is not None and bs != "auto":
        s.batch_size = _int("batch_size", bs, 1)
    s.max_recursion_level = _int("max_recursion_level", opts.pop("max_recursion_level", 0), -1)
    s.export_metadata = bool(opts.pop("export_metadata", False))
    s.context_func = opts.pop("context_func", None)
    if s.context_func is not None and not callable(s.context_func):
        raise ConfigError("context_func must be a callable taking no arguments")
    if opts.get("worker_log_level") is not None:
        s.worker_log_level = _log_level(opts.pop("worker_log_level"))
    opts.pop("worker_log_level", None)
    if opts.pop("delete_task_file_on_load", False):
        # shoal keeps a claimed chunk until its result is in: that is what makes a retry
        # possible. The option's documented trade-off (no retry of a lost task) is kept.
        _put(s.session, "max_attempts", 1, "delete_task_file_on_load")
    shared = opts.pop("shared_data_dir", None)
    if shared is not None:
        s.session["work_dir"] = str(shared)
    initial_dir = opts.pop("initial_dir", None)
    if initial_dir is not None:
        s.session["cwd"] = str(initial_dir)
        if "initial_dir" in native:
            s.backend_options["initial_dir"] = str(initial_dir)
    python_path = opts.pop("python_path", None)
    if python_path is not None:
        s.session["python_path"] = str(python_path)
    for name in GENERIC:
        if name in opts:
            _put(s.session, name, opts.pop(name), name)
    # Scheduler options: the engine's own names, then joblib-htcondor's through the table.
    for name in list(opts):
        if name in native:
            value = opts.pop(name)
            _put(s.backend_options, name, _scheduler_value(engine, name, value), name)
    for name in list(opts):
        if name not in TABLE:
            continue
        value = opts.pop(name)
        if value is None:
            continue
        target = TABLE[name][COLUMNS.index(engine)]
        if target is None:
            s.ignored.append(f"{name} (no equivalent on {engine})")
        elif target == LOCAL:
            s.local_cpus_per_worker = _int(name, value, 1)
        elif isinstance(target, tuple):
            _, convert = target
            key, converted = convert(value)
            _add_resource(s.backend_options, key, converted)
        else:
            _put(s.backend_options, target, _scheduler_value(engine, target, value), name)
    for name in list(opts):
        others = [e for e in ENGINES if name in NATIVE[e]]
        if others:
            opts.pop(name)
            s.ignored.append(f"{name} (a {'/'.join(others)} option)")
    if opts:
        known = sorted({*TABLE, *BEHAVIOUR, *GENERIC, *native})
        raise ConfigError(
            f"unknown option{'s' if len(opts) > 1 else ''} {', '.join(map(repr, sorted(opts)))} "
            f"for the {engine} joblib backend\nhint: valid options are {', '.join(known)}"
        )
    if engine == "sge" and s.backend_options.get("slots") == 1 and "pe" not in s.backend_options:
        # One slot is what every SGE job gets; only more needs a parallel environment.
        del s.backend_options["slots"]
    cpus = {"htcondor": "request_cpus", "slurm": "cpus", "sge": "slots"}.get(engine)
    if cpus and isinstance(s.backend_options.get(cpus), int):
        s.cpus_per_worker = s.backend_options[cpus]
    elif engine == "local":
        s.cpus_per_worker = None
    return s


def warn_ignored(engine: str, ignored: list[str], stacklevel: int = 3) -> None:
    if ignored:
        warnings.warn(
            f"shoal joblib backend on {engine}: ignoring {', '.join(ignored)}; these options "
            "have no meaning there",
            UserWarning,
            stacklevel=stacklevel,
        )
