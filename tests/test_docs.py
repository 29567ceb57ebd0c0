"""Every Python code block of README.md runs verbatim, as a script of its own (what a reader
pastes into a file). Blocks that name a cluster backend run on the local engine
(SHOAL_JOBLIB_ENGINE=local), as the README says one can try cluster code on a laptop."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DOCS = ["README.md"]


def _blocks() -> list[tuple[str, int, str]]:
    out = []
    for name in DOCS:
        with open(os.path.join(ROOT, name)) as f:
            text = f.read()
        for m in re.finditer(r"^```python\n(.*?)^```", text, re.S | re.M):
            out.append((name, text[: m.start()].count("\n") + 1, m.group(1)))
    return out


@pytest.mark.parametrize("doc,line,code", _blocks(), ids=lambda v: str(v)[:40])
def test_python_block_runs(tmp_path, doc: str, line: int, code: str) -> None:
    script = tmp_path / "block.py"
    script.write_text(code)
    env = dict(os.environ, SHOAL_JOBLIB_ENGINE="local")
    res = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=120, env=env,
        cwd=tmp_path,
    )  # fmt: skip
    assert res.returncode == 0, f"{doc}:{line}\n{res.stderr}"
    assert res.stdout.strip(), f"{doc}:{line} printed nothing"
