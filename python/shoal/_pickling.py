"""How work and results travel: pickling with the fast C pickler or cloudpickle, errors that
keep the original exception's type while naming what could not be pickled, and the worker's
results frame payload. Imported by the driver and by workers, so it stays light.
"""

from __future__ import annotations

import io
import pickle
import sys
import traceback
import types

from shoal.errors import PicklingError, ResultPicklingError

TYPE_CHECKING = False  # typing.TYPE_CHECKING, without importing typing (~8 ms per worker)

if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Optional

    ErrorRecord = tuple[Optional[bytes], str, str, str]

PROTOCOL = pickle.HIGHEST_PROTOCOL
_DYNAMIC = "<dynamic-code>"


def _name(fn: Any) -> str:
    return getattr(fn, "__qualname__", None) or getattr(fn, "__name__", None) or repr(fn)


_pickler: Any = None


def _cloud_pickler() -> Any:
    """cloudpickle's Pickler, keeping code objects' file names: cloudpickle (3.x) renames every
    function it sends by value to "<dynamic-code>", and a task's traceback should point at the
    user's own file and line. Made on first use: workers seldom need cloudpickle to send
    results, and importing it costs each worker's start ~10 ms."""
    global _pickler
    if _pickler is None:
        from collections import ChainMap

        import cloudpickle  # type: ignore[import-untyped]

        reducers = cloudpickle.Pickler.dispatch_table

        def reduce_code(code: types.CodeType) -> Any:
            rv = reducers[types.CodeType](code)
            return (rv[0], tuple(code.co_filename if a == _DYNAMIC else a for a in rv[1]), *rv[2:])

        class Pickler(cloudpickle.Pickler):
            dispatch_table = ChainMap({types.CodeType: reduce_code}, reducers)

        _pickler = Pickler
    return _pickler


def cloud_dumps(obj: Any) -> bytes:
    """cloudpickle, keeping code objects' file names."""
    buf = io.BytesIO()
    _cloud_pickler()(buf, protocol=PROTOCOL).dump(obj)
    return buf.getvalue()


# The user's own modules (not the standard library's, not an installed package's) that travel
# by value like __main__, once a TCP session exists in this process: its workers run where
# the driver's files are not (docs/transport-tcp.md). Names as they appear in a pickle.
_by_value: set[bytes] = set()
_scanned = -1  # len(sys.modules) at the last look; -1: no TCP session yet


def send_own_modules_by_value() -> None:
    """From now on, send the modules of the user's own code by value (a TCP session). Set
    SHOAL_PICKLE_BY_VALUE=0 when the workers can import them (an installed package)."""
    global _scanned
    import os

    if os.environ.get("SHOAL_PICKLE_BY_VALUE", "1") == "0":
        return
    if _scanned < 0:
        _scanned = 0
    _register_new_modules()


_roots: Optional[tuple[str, ...]] = None


def _installed_roots() -> tuple[str, ...]:
    """The interpreter's installation and site-packages directories (computed once)."""
    global _roots
    if _roots is not None:
        return _roots
    import os
    import site
    import sysconfig

    dirs = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    dirs.update(p for p in sysconfig.get_paths().values() if p)
    try:
        dirs.update(site.getsitepackages())
        dirs.add(site.getusersitepackages())
    except AttributeError:  # a virtualenv's stripped site module
        pass
    _roots = tuple(os.path.realpath(d) + os.sep for d in dirs if d)
    return _roots


def _register_new_modules() -> None:
    """Register the own modules imported since the last look (cheap when none were)."""
    global _scanned
    if _scanned < 0 or len(sys.modules) == _scanned:
        return
    import os

    import cloudpickle

    _scanned = len(sys.modules)
    roots = _installed_roots()
    for name, mod in list(sys.modules.items()):
        file = getattr(mod, "__file__", None)
        if (
            name == "__main__"
            or name.split(".")[0] == "shoal"
            or name.encode() in _by_value
            or not isinstance(file, str)
            or not file.endswith(".py")  # extension modules cannot travel
        ):
            continue
        real = os.path.realpath(file)
        if real.startswith(roots) or os.sep + "site-packages" + os.sep in real:
            continue
        try:
            cloudpickle.register_pickle_by_value(mod)
        except ValueError:  # not importable under that name (e.g. run as a script)
            continue
        _by_value.add(name.encode())


def dumps(obj: Any, by_value: bool = False) -> bytes:
    # The C pickler is several times faster on plain data. Anything defined in __main__
    # (or a lambda, a closure) must travel by value, which only cloudpickle does; so must the
    # user's own modules in a TCP session's payloads (`by_value`), and only there: a function
    # sent by value has its own copy of its module's globals, so an initializer's state would
    # not reach the tasks of a session whose workers can import the module.
    #
    # Which modules the pickle names is read off its opcode stream. Large buffers (numpy
    # arrays: whatever pickles a PickleBuffer) are first taken out of band, so that stream
    # stays small (bytes and bytearrays stay in it, and are searched as before): searching
    # 16 MiB of array data for b"__main__" cost a sixth of the driver's time in
    # benches/transport's numpy run. Only when there were such buffers is the object pickled
    # again, in band (the buffers are views: the first pass copies none of them).
    buffers: list[pickle.PickleBuffer] = []
    try:
        head = pickle.dumps(obj, protocol=PROTOCOL, buffer_callback=buffers.append)
    except Exception:
        return cloud_dumps(obj)
    if b"__main__" in head:
        return cloud_dumps(obj)
    if by_value and _scanned >= 0:
        _register_new_modules()
        if any(name in head for name in _by_value):
            return cloud_dumps(obj)
    if not buffers:
        return head
    try:
        return pickle.dumps(obj, protocol=PROTOCOL)
    except Exception:
        return cloud_dumps(obj)


# ---------------------------------------------------------------------- driver side


_error_types: dict[type, type] = {}


def _keeping_type(original: BaseException, message: str) -> BaseException:
    """A shoal.PicklingError that is also an instance of the original exception's type (a
    TypeError for a lock, whatever a __reduce__ raised), so that the standard library's
    `except` clauses still catch it; the message names what could not be pickled."""
    cls = type(original)
    if issubclass(cls, PicklingError) or not issubclass(cls, Exception):
        base: Optional[type] = None
    else:
        base = _error_types.get(cls)
        if base is None:
            try:
                base = type("PicklingError", (PicklingError, cls), {"__module__": "shoal.errors"})
                base.__qualname__ = "PicklingError"
            except TypeError:  # e.g. a final or layout-incompatible builtin type
                base = None
            _error_types[cls] = base  # type: ignore[assignment]
    exc: BaseException
    try:
        exc = base(message) if base is not None else PicklingError(message)
    except Exception:  # the type's __init__ wants other arguments
        exc = PicklingError(message)
    exc.__dict__["original"] = original
    return exc


def _global_culprit(fn: Any) -> Optional[str]:
    """For a function sent by value: the global or closure variable it uses that cannot be
    pickled, as 'global NAME (a TYPE): reason'."""
    code = getattr(fn, "__code__", None)
    if code is None:
        return None
    names: list[tuple[str, str, Any]] = []
    glb = getattr(fn, "__globals__", {})
    for name in _referenced_names(code):
        if name in glb and not isinstance(glb[name], types.ModuleType):
            names.append(("global", name, glb[name]))
    for name, cell in zip(code.co_freevars, fn.__closure__ or ()):
        try:
            names.append(("variable", name, cell.cell_contents))
        except ValueError:  # an empty cell
            pass
    for kind, name, value in names:
        if callable(value) and getattr(value, "__code__", None) is not None and value is not fn:
            continue  # another function: it travels (or fails) on its own terms
        try:
            dumps(value)
        except Exception as e:
            return f"{kind} {name!r} (a {type(value).__name__}): {e}"
    return None


def _referenced_names(code: types.CodeType) -> Iterable[str]:
    yield from code.co_names
    for const in code.co_consts:
        if isinstance(const, types.CodeType):
            yield from _referenced_names(const)


def diagnose(fn: Any, items: Iterable[Any], first_index: int, exc: Exception) -> BaseException:
    """Say which of the function or arguments cannot be pickled, keeping `exc`'s type."""
    try:
        dumps(fn)
    except Exception as e:
        culprit = _global_culprit(fn)
        what = f"it uses the {culprit}" if culprit else str(e)
        return _keeping_type(
            e,
            f"cannot pickle the function {_name(fn)!r}: {what}\n"
            "hint: tasks run in other processes; pass a module-level function, a lambda, or a "
            "closure over picklable values"
            + ("; create such objects inside the task instead" if culprit else ""),
        )
    for i, item in enumerate(items):
        try:
            dumps(item)
        except Exception as e:
            return _keeping_type(
                e,
                f"cannot pickle argument {first_index + i} of {_name(fn)!r} "
                f"(a {type(item).__name__}): {e}\n"
                "hint: open files, locks, sockets and generators cannot be sent to workers; "
                "pass what is needed to re-create them instead",
            )
    return _keeping_type(exc, f"cannot pickle the work for {_name(fn)!r}: {exc}")


# ---------------------------------------------------------------------- worker side


def error_record(exc: BaseException) -> ErrorRecord:
    """A task's exception as it travels: (pickled exception or None, traceback text, type
    name, message)."""
    # Skip the worker's own frame: the traceback starts in the user's function.
    tb_start = exc.__traceback__.tb_next if exc.__traceback__ is not None else None
    tb = "".join(traceback.format_exception(type(exc), exc, tb_start))
    blob: Optional[bytes] = None
    try:
        data = cloud_dumps(exc)
        pickle.loads(data)
        blob = data
    except BaseException:  # even SystemExit from a __reduce__ must not end the worker
        blob = None
    return blob, tb, f"{type(exc).__module__}.{type(exc).__qualname__}", str(exc)


def dump_results(
    values: list[Any],
    errors: dict[int, ErrorRecord],
    failed: list[tuple[int, str]],
    record: Callable[[BaseException], ErrorRecord] = error_record,
) -> bytes:
    """The payload of a chunk's result: (values, errors). A result that cannot be pickled
    fails its task with the pickling error itself (even SystemExit or KeyboardInterrupt from a
    __reduce__), wrapped in ResultPicklingError; the worker and the chunk's other tasks go on."""
    for dump in (pickle.dumps, cloud_dumps):
        try:
            return (
                dump((values, errors), protocol=PROTOCOL)
                if dump is pickle.dumps
                else dump((values, errors))
            )
        except BaseException:
            pass
    for i, value in enumerate(values):
        if i in errors:
            continue
        try:
            cloud_dumps(value)
        except BaseException as exc:
            rec = record(ResultPicklingError(exc, value).with_traceback(exc.__traceback__))
            values[i] = None
            errors[i] = rec
            failed.append((i, rec[1]))
    for i, rec in list(errors.items()):
        try:
            cloud_dumps(rec)
        except BaseException:
            errors[i] = (None, rec[1], rec[2], rec[3])
    failed.sort()
    return cloud_dumps((values, errors))


# ---------------------------------------------------------------------- worker start-up


def worker_start(
    initializer: Optional[Callable[..., Any]], initargs: Iterable[Any], *, local: bool
) -> tuple[Callable[..., Any], tuple[Any, ...]]:
    """The workers' initializer: first what a multiprocessing child inherits — the driver's
    ``sys.argv`` and, on this host only (the key must not leave it), its authkey, so that
    Manager proxies passed to tasks connect — then the user's initializer."""
    import multiprocessing

    initargs = tuple(initargs)
    user = None
    if initializer is not None:
        # Pickled apart: its arguments (proxies) may be unpickled only once the key is set.
        try:
            user = dumps((initializer, initargs))
        except Exception as e:
            raise diagnose(initializer, initargs, 0, e) from None
    key = bytes(multiprocessing.current_process().authkey) if local else None
    return _start_worker, (list(sys.argv), key, user)


def _start_worker(argv: list[str], key: Optional[bytes], user: Optional[bytes]) -> None:
    sys.argv[:] = argv
    if key is not None:
        from shoal._imports import when_imported

        def adopt(multiprocessing: Any) -> None:
            multiprocessing.current_process().authkey = key

        # Only tasks that use multiprocessing (a Manager proxy) pay for importing it.
        when_imported("multiprocessing", adopt)
    if user is not None:
        initializer, initargs = pickle.loads(user)
        initializer(*initargs)
