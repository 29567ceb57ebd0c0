"""Every code block of README.md and docs/ runs verbatim, as a reader would paste it: a Python
block as a script of its own, a shell block (`sh`, `console`: the `$ ` lines) with bash in a
fresh directory and SHOAL_HOME, one line after the other, failing on the first error.

Blocks about a cluster backend (docs/backends/B.md) run on that real cluster (their pytest
marker); joblib blocks that name one run on the local engine (SHOAL_JOBLIB_ENGINE=local), as
the README says one can try cluster code on a laptop. A block tagged `python file=NAME` is a
file the doc's shell blocks use (written next to them). Blocks that show output or formats are
`text` (or untagged) and are not code. A block preceded by `<!-- doc-test: not run: WHY -->`
is left out, for the reason given there (what CI itself runs, an interactive screen)."""

from __future__ import annotations

import glob
import os
import re
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PAGES = glob.glob(f"{ROOT}/docs/**/*.md", recursive=True)
DOCS = ["README.md", *sorted(os.path.relpath(p, ROOT) for p in PAGES)]
RUN = {"python", "sh", "console"}
NOT_RUN = re.compile(r"<!-- doc-test: not run: ([^>]+) -->\s*\Z")
BLOCK = re.compile(r"^```(\w*)( file=\S+)?\n(.*?)^```", re.S | re.M)


def _blocks() -> list:
    out = []
    for name in DOCS:
        with open(os.path.join(ROOT, name)) as f:
            text = f.read()
        backend = re.fullmatch(r"docs/backends/(slurm|sge|htcondor)\.md", name)
        marks = [getattr(pytest.mark, backend.group(1))] if backend else []
        blocks = list(BLOCK.finditer(text))
        # `python file=train.py`: a file the doc's shell blocks use (written next to them).
        files = {m.group(2)[6:]: m.group(3) for m in blocks if m.group(2)}
        for m in blocks:
            lang, code = m.group(1), m.group(3)
            if lang not in RUN or m.group(2) or NOT_RUN.search(text[: m.start()]):
                continue
            line = text[: m.start()].count("\n") + 1
            param = (name, line, lang, code, files)
            out.append(pytest.param(*param, marks=marks, id=f"{name}:{line}"))
    return out


def _commands(lang: str, code: str) -> str:
    """The shell lines of a block: a console transcript's `$ ` lines and their `\\`
    continuations; a sh block as it is."""
    if lang == "sh":
        return code
    lines, cont = [], False
    for ln in code.splitlines():
        if ln.startswith("$ ") or cont:
            lines.append(ln[2:] if ln.startswith("$ ") else ln)
            cont = ln.rstrip().endswith("\\")
    return "\n".join(lines) + "\n"


def test_every_block_is_found():
    langs = {p.values[2] for p in _blocks()}
    assert langs == RUN  # each kind occurs, so none is silently left out by a typo


@pytest.mark.parametrize("doc,line,lang,code,files", _blocks())
def test_block_runs_verbatim(
    tmp_path, doc: str, line: int, lang: str, code: str, files: dict[str, str]
) -> None:
    for fname, text in files.items():
        (tmp_path / fname).write_text(text)
    env = dict(os.environ, SHOAL_JOBLIB_ENGINE="local", SHOAL_HOME=str(tmp_path / "home"))
    if lang == "python":
        (tmp_path / "block.py").write_text(code)
        argv = [sys.executable, "block.py"]
    else:
        (tmp_path / "block.sh").write_text("set -euo pipefail\n" + _commands(lang, code))
        env["PATH"] = os.path.dirname(sys.executable) + os.pathsep + env["PATH"]
        argv = ["bash", "block.sh"]
    res = subprocess.run(
        argv, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )  # fmt: skip
    assert res.returncode == 0, f"{doc}:{line}\n{res.stdout[-2000:]}\n{res.stderr[-3000:]}"
    assert res.stdout.strip(), f"{doc}:{line} printed nothing"
