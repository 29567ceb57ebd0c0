"""joblib backends on every shoal engine — ``"shoal"`` (the configured default engine),
``"local"``, ``"slurm"``, ``"htcondor"``, ``"sge"`` — and a drop-in for joblib-htcondor:

    from shoal.joblib import register_htcondor; register_htcondor()
    with parallel_config(backend="htcondor", n_jobs=-1, request_cpus=1, request_memory="1Gb"):
        Parallel()(delayed(neg)(i + 1) for i in range(5))

joblib's batches travel to shoal workers (a few scheduler jobs, not one per task). One shoal
session serves every Parallel call of a ``parallel_config`` context and ends with it (or with
the call, outside a context); an error or Ctrl-C cancels all of its workers at once.
``SHOAL_BACKEND`` picks the engine of ``"shoal"``; ``SHOAL_JOBLIB_ENGINE`` runs every
backend name on one engine (e.g. ``local``, to try cluster code on a laptop).
"""

from __future__ import annotations

import concurrent.futures as cf
import logging
import os
import sys
import threading
import warnings
import weakref
from typing import Any, Callable, Iterable, Optional, Union

import joblib  # type: ignore[import-untyped]
import joblib.parallel as _jp  # type: ignore[import-untyped]
from joblib.parallel import (
    ParallelBackendBase,
    SequentialBackend,
    register_parallel_backend,
)

try:  # every joblib from 1.3 on has it; the fallback keeps batch_size=1 behaviour
    from joblib._parallel_backends import AutoBatchingMixin  # type: ignore[import-untyped]
except ImportError:  # pragma: no cover
    AutoBatchingMixin = object
from joblib._parallel_backends import FallbackToBackend

from shoal import _imports
from shoal._batch import Batcher
from shoal._driver import Driver
from shoal._joblib_options import DEFAULT_THROTTLE, ENGINES, Settings, parse, warn_ignored
from shoal._pickling import worker_start
from shoal.errors import ConfigError, SessionError

__all__ = ["NAMES", "ShoalBackend", "register", "register_htcondor", "with_resources"]

NAMES = ("shoal", "local", "slurm", "htcondor", "sge")
_log = logging.getLogger("shoal.joblib")
# name -> fixed engine (None: resolved when a backend is made), as registered in this process.
_registered: dict[str, Optional[str]] = {}
# name -> the backend class registered for it (joblib's BACKENDS holds classes and compares them).
_classes: dict[str, type[ShoalBackend]] = {}
_hooked = False


def engine_for(name: str, fixed: Optional[str] = None) -> str:
    """The engine a backend name runs on (see the module docstring for the variables)."""
    forced = os.environ.get("SHOAL_JOBLIB_ENGINE")
    if forced:
        return forced
    if fixed:
        return fixed
    if name == "shoal" or name not in ENGINES:
        return os.environ.get("SHOAL_BACKEND") or "local"
    return name


class _BatchFuture(cf.Future[Any]):
    """A joblib batch's future; ``get`` is there for joblib versions that call it."""

    def get(self, timeout: Optional[float] = None) -> Any:
        return self.result(timeout)


class _Route:
    """Routes the one result of a batch (a shoal task) to its future."""

    def __init__(self, fut: _BatchFuture) -> None:
        self.fut = fut

    def _started(self, start: int, count: int) -> None:
        if not self.fut.done() and not self.fut.running():
            self.fut.set_running_or_notify_cancel()

    def _deliver_many(
        self, start: int, values: list[Any], errors: dict[int, BaseException]
    ) -> None:
        fut = self.fut
        if fut.done() or (not fut.running() and not fut.set_running_or_notify_cancel()):
            return
        if 0 in errors:
            fut.set_exception(errors[0])
        else:
            fut.set_result(values[0])

    def _abort(self, exc: BaseException) -> None:
        self._deliver_many(0, [None], {0: exc})


def _run_with_context(context_func: Callable[[], Any], batch: Callable[[], Any]) -> Any:
    """Worker side: joblib-htcondor's ``context_func`` runs before every batch."""
    context_func()
    return batch()


def _worker_init(names: dict[str, str], log_level: Optional[int]) -> None:
    """Worker side, once per worker: the same backend names as the driver (so tasks can use
    them), and ``worker_log_level``."""
    register(names)
    if log_level is not None:
        logging.basicConfig(level=log_level, stream=sys.stderr)
        logging.getLogger().setLevel(log_level)


class _Session:
    """The live session of a backend. The finalizer holds this, never the backend."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.driver: Optional[Driver] = None
        self.batcher: Optional[Batcher] = None
        self.workers = 0

    def usable(self, workers: int) -> bool:
        d = self.driver
        return d is not None and d.broken is None and self.workers == workers

    def close(self, graceful: bool) -> None:
        with self.lock:
            driver, batcher = self.driver, self.batcher
            self.driver = self.batcher = None
        if driver is None or batcher is None:
            return
        if graceful:
            batcher.close()
            if driver.backend != "local" and driver.outstanding == 0 and driver.broken is None:
                # Every result is in: cancelling the idle cluster jobs ends the session at
                # once, where a graceful stop waits for each job's exit to be seen.
                driver.close(graceful=False, failed=False)
            else:
                driver.close(graceful=True)
        else:
            # Workers first (every scheduler job at once), then whatever was still buffered
            # fails to send and its futures get the error.
            driver.close(graceful=False, interrupted=True)
            try:
                batcher.close()
            except Exception:
                pass


class ShoalBackend(AutoBatchingMixin, ParallelBackendBase):
    """A joblib backend running batches on a shoal engine; see the module docstring.

    Options are joblib-htcondor's (``request_cpus``, ``request_memory``, ``throttle``,
    ``max_recursion_level``, ...), the engine's own (``partition``, ``queue``, ...) and shoal's
    generic ones (``work_dir``, ``env``, ``max_attempts``, ...).
    """

    # The name and fixed engine a registered class stands for (see backend_class).
    backend_name = "shoal"
    fixed_engine: Optional[str] = None
    supports_retrieve_callback = True
    supports_inner_max_num_threads = True
    supports_sharedmem = False
    uses_threads = False

    def __init__(
        self,
        nesting_level: Optional[int] = None,
        inner_max_num_threads: Optional[int] = None,
        *,
        _name: Optional[str] = None,
        _engine: Optional[str] = None,
        _level: int = 0,
        _parent: Optional[str] = None,
        _quiet: bool = False,
        **options: Any,
    ) -> None:
        super().__init__(nesting_level=nesting_level, inner_max_num_threads=inner_max_num_threads)
        self.name = _name or self.backend_name
        self.engine = engine_for(self.name, _engine or self.fixed_engine)
        self.options = options
        self.settings: Settings = parse(self.engine, options)
        if not _quiet:
            warn_ignored(self.engine, self.settings.ignored)
        self.recursion_level = _level
        self.parent_session = _parent
        self.parallel: Any = None
        self._n_workers = 1
        self._requested_n_jobs: Optional[int] = None
        self._warned_throttle = False
        self._session = _Session()
        self._starting = threading.Lock()
        # A view (with_resources) shares its owner's session and asks for workers of a shape.
        self._owner: Optional[ShoalBackend] = None
        self._resources: dict[str, Any] = {}
        self._shape = 0
        # A backend dropped without a context exit or terminate() still leaves nothing behind.
        weakref.finalize(self, self._session.close, True)

    def with_resources(self, **resources: Any) -> ShoalBackend:
        """A view of this backend whose Parallel calls run on workers of their own shape
        (docs/resources.md), in this backend's session:
        ``Parallel(n_jobs=2, backend=backend.with_resources(gpus=1))``. The call's n_jobs is
        the shape's own cap on workers. The keys are the engine's per-call resources; they
        are checked when the call starts, before anything is submitted."""
        if "workers" in resources:
            raise ConfigError(
                "with_resources takes no `workers`: the Parallel call's n_jobs is the shape's "
                "cap on workers\nhint: Parallel(n_jobs=N, backend=...with_resources(...))"
            )
        owner = self._owner or self
        view = type(self)(
            nesting_level=owner.nesting_level,
            inner_max_num_threads=owner.inner_max_num_threads,
            _name=owner.name,
            _engine=owner.engine,
            _level=owner.recursion_level,
            _parent=owner.parent_session,
            _quiet=True,
            **owner.options,
        )
        view._session, view._starting = owner._session, owner._starting
        view._owner, view._resources = owner, {**self._resources, **resources}
        return view

    def __reduce__(self) -> tuple[Any, ...]:
        # Nested calls ship the backend to workers: options travel, the session does not.
        return (
            _rebuild,
            (self.name, self.engine, self.options, self.recursion_level, self.parent_session,
             self.nesting_level, self.inner_max_num_threads),
        )  # fmt: skip

    # ------------------------------------------------------------------ sizing

    @property
    def session(self) -> Optional[str]:
        """The id of the live session (for ``shoal sessions`` / ``shoal logs``), if any."""
        d = self._session.driver
        return None if d is None else d.id

    def _throttle(self) -> Optional[int]:
        t = self.settings.throttle
        return t[0] if t else None

    @property
    def default_n_jobs(self) -> int:
        """What Parallel() takes when n_jobs is unset (joblib reads it, as for its dask backend)."""
        return 1 if self.engine == "local" else -1

    def effective_n_jobs(self, n_jobs: Optional[int]) -> int:
        """n_jobs > 0: that many workers; n_jobs < 0: as the engine allows (local: the CPUs,
        divided by request_cpus; clusters: the throttle, 1000 unless set), joblib-style (-2 is
        one fewer). None: 1 locally, as for joblib's own backends; on a cluster -1, because
        joblib runs a 1-job Parallel in this process, and naming a cluster backend means the
        work should go to the cluster. An explicit throttle caps either."""
        if n_jobs == 0:
            raise ValueError("n_jobs == 0 in Parallel has no meaning")
        if n_jobs is None:
            n_jobs = self.default_n_jobs
        throttle = self._throttle()
        if n_jobs < 0:
            if self.engine == "local":
                avail = max(1, joblib.cpu_count() // self.settings.local_cpus_per_worker)
            else:
                avail = throttle or DEFAULT_THROTTLE
            n_jobs = max(avail + 1 + n_jobs, 1)
        return min(n_jobs, throttle) if throttle else n_jobs

    def configure(
        self,
        n_jobs: Optional[int] = 1,
        parallel: Any = None,
        prefer: Any = None,
        require: Any = None,
        **joblib_kwargs: Any,
    ) -> int:
        # joblib_kwargs are Parallel's own settings for process backends (max_nbytes,
        # temp_folder, mmap_mode, context, verbose): shoal ships arguments by pickling.
        self.parallel = parallel
        self._requested_n_jobs = n_jobs
        self._n_workers = self.effective_n_jobs(n_jobs)
        if self._n_workers == 1 and self.engine == "local":
            # As joblib's process backends do: one local worker is no better than none. (On a
            # cluster one job still moves the work off this machine.)
            raise FallbackToBackend(SequentialBackend(nesting_level=self.nesting_level))
        if hasattr(self, "reset_batch_stats"):
            self.reset_batch_stats()
        return self._n_workers

    def compute_batch_size(self) -> int:
        if self.settings.batch_size is not None:
            return self.settings.batch_size
        if AutoBatchingMixin is object or self.parallel is None:
            return 1
        return int(super().compute_batch_size())

    # ------------------------------------------------------------------ the session

    def _thread_env(self, workers: int) -> dict[str, str]:
        """Thread-pool sizes for numpy/BLAS/OpenMP in workers, as loky does: explicit
        inner_max_num_threads, else CPUs per worker (local: shared out; clusters: requested)."""
        explicit = self.inner_max_num_threads
        if explicit is not None:
            n: Optional[int] = explicit
        elif self.engine == "local":
            n = max(joblib.cpu_count() // workers, 1) * self.settings.local_cpus_per_worker
        else:
            n = self.settings.cpus_per_worker
        if n is None:
            return {}
        env = {}
        for var in self.MAX_NUM_THREADS_VARS:
            env[var] = str(n) if explicit is not None else os.environ.get(var, str(n))
        return env

    def _metadata(self, workers: int) -> Any:
        user = self.settings.session.get("metadata")
        if not self.settings.export_metadata:
            return user
        meta = {
            "backend": self.name,
            "engine": self.engine,
            "n_jobs": workers,
            "throttle": self.settings.throttle,
            "recursion_level": self.recursion_level,
            "max_recursion_level": self.settings.max_recursion_level,
            "parent_session": self.parent_session,
            "driver_pid": os.getpid(),
        }
        if isinstance(user, dict):
            return {**user, "joblib": meta}
        return {"joblib": meta} if user is None else {"user": user, "joblib": meta}

    def _ensure_session(self) -> tuple[Driver, Batcher]:
        with self._starting:
            s = self._session
            if self._owner is not None and s.usable(s.workers):
                # A view takes its owner's live session as it is (its n_jobs caps its shape).
                assert s.driver is not None and s.batcher is not None
                return s.driver, s.batcher
            return self._start_session()

    def _start_session(self) -> tuple[Driver, Batcher]:
        s = self._session
        workers = self._n_workers
        if not s.usable(workers):
            s.close(graceful=True)
            opts = dict(self.settings.session)
            cwd = opts.pop("cwd", None)
            if cwd is not None and not os.path.isdir(os.path.expanduser(cwd)):
                raise ConfigError(
                    f"initial_dir {cwd!r} is not a directory\n"
                    "hint: create it first, or leave initial_dir unset (the current directory)"
                )
            env = {**self._thread_env(workers), **(opts.pop("env", None) or {})}
            opts["metadata"] = self._metadata(workers)
            names = {name: engine_for(name, fixed) for name, fixed in _registered.items()}
            init, initargs = worker_start(
                _worker_init, (names, self.settings.worker_log_level), local=self.engine == "local"
            )
            driver = Driver(
                backend=self.engine,
                workers=workers,
                initializer=init,
                initargs=initargs,
                backend_options=dict(self.settings.backend_options),
                env=env,
                cwd=cwd,
                **opts,
            )
            with s.lock:
                s.driver, s.batcher, s.workers = driver, Batcher(driver), workers
            _log.debug("session %s on %s with %d workers", driver.id, self.engine, workers)
        assert s.driver is not None and s.batcher is not None
        return s.driver, s.batcher

    def start_call(self) -> None:
        driver, _ = self._ensure_session()
        if self._owner is not None:
            # Checked here, in the caller's thread, before any batch is submitted.
            self._shape = driver.shape({**self._resources, "workers": self._n_workers})

    def stop_call(self) -> None:
        """Keep the session: the next Parallel call of the same context reuses its workers."""

    def terminate(self) -> None:
        """End of a Parallel call: the session lives on only inside a parallel_config context
        (which closes it on exit); a backend of its own Parallel call closes it now."""
        self.parallel = None
        if not self._in_context():
            self._session.close(graceful=True)

    def _in_context(self) -> bool:
        if not _hooked:
            return False
        config = getattr(_jp._backend, "config", None)
        return isinstance(config, dict) and config.get("backend") is (self._owner or self)

    def _context_exited(self) -> None:
        self._session.close(graceful=True)

    def abort_everything(self, ensure_ready: bool = True) -> None:
        """An error or Ctrl-C: cancel every worker (every scheduler job) at once. A new
        session starts on the next call when joblib asks for the backend to stay usable."""
        self._session.close(graceful=False)

    # ------------------------------------------------------------------ tasks

    def submit(self, func: Callable[[], Any], callback: Optional[Callable[..., Any]] = None) -> Any:
        fut = _BatchFuture()
        if callback is not None:
            fut.add_done_callback(callback)
        try:
            driver, batcher = self._ensure_session()
            ctx = self.settings.context_func
            if ctx is None:
                blob = driver.pickle_call(func, (), {})
            else:
                blob = driver.pickle_call(_run_with_context, (ctx, func), {})
            batcher.add(_Route(fut), 0, blob, self._shape)
        except ValueError as exc:  # the batcher closed under us: the session was aborted
            stopped = SessionError(f"the joblib session was stopped: {exc}")
            _Route(fut)._abort(exc if isinstance(exc, ConfigError) else stopped)
        except Exception as exc:
            # Failing the future (not raising) reaches joblib the same way from its main
            # thread and from the result thread that dispatches the next batches.
            _Route(fut)._abort(exc)
        return fut

    # joblib < 1.5 calls apply_async (abstract there); newer ones call submit.
    apply_async = submit

    def retrieve_result_callback(self, out: Any) -> Any:
        return out.result()

    def retrieve_result(self, out: Any, timeout: Optional[float] = None) -> Any:
        return out.result(timeout)

    # ------------------------------------------------------------------ nesting

    def get_nested_backend(self) -> tuple[ParallelBackendBase, Optional[int]]:
        """What a Parallel call inside a task uses: the same backend one level down, with the
        rest of a throttle list and this call's n_jobs as its default, until
        max_recursion_level (0 by default; -1: no limit) makes nested calls sequential, as
        joblib-htcondor does."""
        nesting = (self.nesting_level or 0) + 1
        limit = self.settings.max_recursion_level
        if limit != -1 and self.recursion_level >= limit:
            return SequentialBackend(nesting_level=nesting), None
        opts = dict(self.options)
        throttle = self.settings.throttle
        if throttle and len(throttle) > 1:
            opts["throttle"] = throttle[1:]
        elif not self._warned_throttle:
            self._warned_throttle = True
            warnings.warn(
                "nested Parallel calls on shoal: every nested call gets the same throttle "
                f"({throttle[0] if throttle else 'default'}), so the total multiplies\n"
                "hint: give throttle as a list, one value per nesting level, e.g. [10, 100]",
                UserWarning,
                stacklevel=2,
            )
        nested = type(self)(
            nesting_level=nesting,
            inner_max_num_threads=self.inner_max_num_threads,
            _name=self.name,
            _engine=self.engine,
            _level=self.recursion_level + 1,
            _parent=self.session,
            _quiet=True,
            **opts,
        )
        return nested, self._requested_n_jobs


def with_resources(**resources: Any) -> ShoalBackend:
    """The active shoal backend (of the enclosing ``parallel_config``) as a view whose
    Parallel calls run on workers of their own shape, in the same session (docs/resources.md)::

        with parallel_config(backend="slurm", cpus=1):
            Parallel(n_jobs=16)(delayed(prep)(x) for x in xs)
            Parallel(n_jobs=2, backend=shoal.joblib.with_resources(gpus=1, cpus=8))(
                delayed(train)(c) for c in configs
            )
    """
    config = getattr(_jp._backend, "config", None)
    backend = config.get("backend") if isinstance(config, dict) else None
    if not isinstance(backend, ShoalBackend):
        raise ConfigError(
            "shoal.joblib.with_resources() needs an active shoal backend\n"
            'hint: call it inside `with parallel_config(backend="slurm", ...):` (or any shoal '
            "backend name), or use `backend.with_resources(...)` on a ShoalBackend"
        )
    return backend.with_resources(**resources)


def _rebuild(
    name: str, engine: str, options: dict[str, Any], level: int, parent: Optional[str],
    nesting_level: Optional[int], inner: Optional[int],
) -> ShoalBackend:  # fmt: skip
    return backend_class(name)(
        nesting_level=nesting_level, inner_max_num_threads=inner, _name=name, _engine=engine,
        _level=level, _parent=parent, _quiet=True, **options,
    )  # fmt: skip


def backend_class(name: str, engine: Optional[str] = None) -> type[ShoalBackend]:
    """The class joblib's BACKENDS holds for a backend name: ShoalBackend for "shoal", a
    subclass naming the backend and its fixed engine for the others."""
    cls = _classes.get(name)
    if cls is not None and cls.fixed_engine == engine:
        return cls
    if name == "shoal" and engine is None:
        cls = ShoalBackend
    else:
        cls = type(
            f"ShoalBackend[{name}]",
            (ShoalBackend,),
            {"backend_name": name, "fixed_engine": engine, "__module__": __name__},
        )
    _classes[name] = cls
    return cls


def _install_context_hook() -> None:
    """Close a context's session when its ``parallel_config`` exits: joblib has no backend
    hook for that, so ``unregister`` (what ``__exit__`` calls) is wrapped, once."""
    global _hooked
    cls = getattr(_jp, "parallel_config", None)
    original = getattr(cls, "unregister", None)
    if cls is None or original is None:
        return  # older joblib: sessions then end with each call (terminate)
    if getattr(original, "_shoal_hook", False):
        _hooked = True
        return

    def unregister(self: Any) -> None:
        original(self)
        mine = getattr(self, "parallel_config", {}).get("backend")
        restored = getattr(self, "old_parallel_config", {}).get("backend")
        if isinstance(mine, ShoalBackend) and mine is not restored:
            mine._context_exited()

    unregister._shoal_hook = True  # type: ignore[attr-defined]
    cls.unregister = unregister
    _hooked = True


def register(
    names: Union[Iterable[str], dict[str, Optional[str]]] = NAMES, *, make_default: bool = False
) -> None:
    """Register shoal's joblib backends. ``names`` are any of "shoal", "local", "slurm",
    "htcondor", "sge", or a dict of your own names to engines ({"cluster": "slurm"})."""
    pairs = names.items() if isinstance(names, dict) else ((n, None) for n in names)
    for name, engine in pairs:
        if engine is None and name not in NAMES:
            raise ConfigError(
                f"unknown shoal joblib backend {name!r}\nhint: use one of {', '.join(NAMES)}, "
                'or map your name to an engine: register({"mine": "slurm"})'
            )
        if engine is not None and engine not in ENGINES:
            raise ConfigError(f"unknown engine {engine!r}\nhint: use one of {', '.join(ENGINES)}")
        register_parallel_backend(name, backend_class(name, engine), make_default=make_default)
        _registered[name] = engine
    _install_context_hook()


def register_htcondor() -> None:
    """joblib-htcondor's entry point: registers the ``"htcondor"`` backend."""
    register(("htcondor",))


# A worker asked for the backends when joblib was first imported, which was by this module.
if _imports.joblib_registration_pending():
    register()
