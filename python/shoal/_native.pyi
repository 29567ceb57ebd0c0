"""Type stubs for the Rust extension module shoal._native."""

from os import PathLike
from typing import Any, Callable, Optional, Union

__version__: str

_Event = tuple

class Session:
    def __init__(
        self,
        *,
        backend: str,
        workers: int,
        python: Union[str, PathLike[str]],
        cwd: Union[str, PathLike[str]],
        env: list[tuple[str, str]],
        worker_config: str,
        backend_options: str,
        work_dir: Optional[Union[str, PathLike[str]]] = None,
        progress: bool = False,
        heartbeat_timeout: Optional[float] = None,
        max_attempts: int = 3,
        metadata: str = "null",
        transport: str = "auto",
        listen: str = "",
    ) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def path(self) -> str: ...
    def put_blob(self, data: bytes) -> int: ...
    def release_blob(self, blob: int) -> None: ...
    def submit(self, payload: bytes, ntasks: int, blobs: list[int] = ...) -> tuple[int, int]: ...
    def wait_room(self) -> None: ...
    def withdraw(self, chunks: list[int]) -> int: ...
    def events(self, timeout: float) -> list[_Event]: ...
    def read_log(
        self, worker: str, start: int, end: int, tail: int, stream: str = "stderr"
    ) -> bytes: ...
    def stats(self) -> dict[str, int]: ...
    def shutdown(self, grace: Optional[float] = None) -> None: ...
    def finish(
        self, state: str, message: Optional[str] = None, keep: bool = False
    ) -> Optional[str]: ...

class Worker:
    def __init__(
        self,
        session_dir: Union[str, PathLike[str]],
        worker_id: Optional[str] = None,
        connect: Optional[str] = None,
        fingerprint: Optional[str] = None,
    ) -> None: ...
    def close(self, reason: str) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def key(self) -> str: ...
    @property
    def config(self) -> str: ...
    def read_blob(self, blob: int) -> bytes: ...
    def read_checkpoint(self, chunk: int, task: int) -> bytes: ...
    @property
    def walltime(self) -> Optional[tuple[float, str]]: ...
    def claim(
        self,
        timeout: Optional[float] = None,
        stop: Optional[Callable[[], bool]] = None,
    ) -> Union[tuple[int, int, int, int, int, bool, bool, bytes], str]: ...
    def running(self, chunk: int, attempt: int, task: int) -> None: ...
    def publish(
        self,
        chunk: int,
        attempt: int,
        first_task: int,
        ntasks: int,
        from_: int,
        count: int,
        last: bool,
        payload: bytes,
        out: int,
        err: int,
        marks: list[tuple[int, int, int]],
        failed: list[tuple[int, str]],
        chunk_error: Optional[str] = None,
        elapsed: float = 0.0,
        release: Optional[tuple[str, str]] = None,
        checkpoint: Optional[bytes] = None,
    ) -> None: ...

class Registry:
    """The run registry (SQLite) shared by `shoal run` and `shoal.runner`."""

    def __init__(self, path: Optional[Union[str, PathLike[str]]] = None) -> None: ...
    def run(self, run_id: int) -> dict[str, Any]: ...
    def tasks(self, run_id: int, states: Optional[list[str]] = None) -> list[dict[str, Any]]: ...
    def start_driver(self, run_id: int, pid: int, host: str) -> None: ...
    def set_session(self, run_id: int, session: str, path: str) -> None: ...
    def launches(self, run_id: int) -> list[dict[str, Any]]: ...
    def mark_running(self, run_id: int, idxs: list[int]) -> int: ...
    def record(
        self,
        run_id: int,
        outcomes: list[
            tuple[
                int,
                int,
                str,
                Optional[int],
                Optional[float],
                Optional[float],
                Optional[float],
                Optional[str],
                Optional[str],
                Optional[str],
                Optional[int],
            ]
        ],
    ) -> int: ...
    def set_states(self, run_id: int, from_states: list[str], to: str) -> int: ...
    def set_status(self, run_id: int, status: str, message: Optional[str] = None) -> None: ...
    def settle(self, run_id: int) -> str: ...

def cli_main(argv: list[str]) -> int: ...
def default_work_dir() -> str: ...
def backends_json() -> str: ...
