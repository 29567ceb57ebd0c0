"""Type stubs for the Rust extension module shoal._native."""

from os import PathLike
from typing import Optional, Union

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
    ) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def path(self) -> str: ...
    def put_blob(self, data: bytes) -> int: ...
    def submit(self, payload: bytes, ntasks: int) -> tuple[int, int]: ...
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
        self, session_dir: Union[str, PathLike[str]], worker_id: Optional[str] = None
    ) -> None: ...
    @property
    def id(self) -> str: ...
    @property
    def config(self) -> str: ...
    def read_blob(self, blob: int) -> bytes: ...
    def claim(self, timeout: Optional[float] = None) -> Union[tuple[int, int, int, bytes], str]: ...
    def complete(
        self,
        chunk: int,
        first_task: int,
        ntasks: int,
        payload: bytes,
        out: list[int],
        err: list[int],
        failed: list[tuple[int, str]],
        chunk_error: Optional[str] = None,
        elapsed: float = 0.0,
    ) -> None: ...

def cli_main(argv: list[str]) -> int: ...
def default_work_dir() -> str: ...
