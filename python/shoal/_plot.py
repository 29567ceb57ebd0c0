"""Draw a session's timeline: ``shoal show SESSION --plot FILE`` runs this with the timeline
as JSON on stdin. Workers on the vertical axis, time since the session started on the
horizontal one, chunks of tasks as bars coloured by outcome, throughput below. PNG or SVG
(by the file's suffix), with matplotlib.
"""

from __future__ import annotations

import json
import sys
from typing import Any, Optional

COLOURS = {
    "ok": "#4c9f70",
    "partial": "#e0a030",
    "failed": "#d1495b",
    "lost": "#6c4f9e",
    "duplicate": "#bbbbbb",
    "running": "#3d7dd8",
    "unfinished": "#888888",
}
LABELS = {
    "ok": "succeeded",
    "partial": "some tasks failed",
    "failed": "failed",
    "lost": "worker lost",
    "duplicate": "ran twice (result unused)",
    "running": "running",
    "unfinished": "unfinished at the end",
}
QUEUED = "#c9c9c9"
STARTING = "#f2c48d"
UP = "#f1f1f1"
MAX_LABELLED = 40


def _unit(end: float) -> tuple[float, str]:
    if end <= 180:
        return 1.0, "s"
    if end <= 3 * 3600:
        return 60.0, "min"
    return 3600.0, "h"


def _time(w: dict[str, Any], key: str) -> Optional[float]:
    v = w.get(key)
    return None if v is None else float(v)


def _order(workers: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def first(w: dict[str, Any]) -> float:
        times = [w.get(k) for k in ("submitted", "running", "announced")]
        times += [b["start"] for b in w["bars"][:1]]
        known = [t for t in times if t is not None]
        return min(known) if known else float("inf")

    return sorted(workers, key=lambda w: (first(w), w["id"]))


def draw(data: dict[str, Any], path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    tl = data["timeline"]
    workers = _order(tl["workers"])
    end = max(float(tl["end"]), 1e-3)
    scale, unit = _unit(end)
    n = max(len(workers), 1)
    height = min(2.2 + 0.28 * n, 30.0)
    fig, (ax, tp) = plt.subplots(
        2,
        1,
        sharex=True,
        figsize=(11, height + 1.6),
        gridspec_kw={"height_ratios": [height, 1.6]},
        constrained_layout=True,
    )
    used: set[str] = set()
    lane = 0.7
    for y, w in enumerate(workers):
        top = y - lane / 2
        submitted, running, announced, ended = (
            _time(w, k) for k in ("submitted", "running", "announced", "ended")
        )
        until = ended if ended is not None else end
        if submitted is not None:
            job_start = running if running is not None else until
            ax.hlines(y, submitted / scale, job_start / scale, colors=QUEUED, lw=1.2)
            if job_start - submitted > end * 0.002:  # visible at all
                used.add("queued")
        up = announced if announced is not None else running
        if running is not None and up is not None and up > running:
            ax.broken_barh([(running / scale, (up - running) / scale)], (top, lane), color=STARTING)
            used.add("starting")
        if up is not None and until > up:
            ax.broken_barh([(up / scale, (until - up) / scale)], (top, lane), color=UP)
        by_outcome: dict[str, list[tuple[float, float]]] = {}
        for b in w["bars"]:
            width = max(b["end"] - b["start"], end * 1e-4)
            by_outcome.setdefault(b["outcome"], []).append((b["start"] / scale, width / scale))
        # Thin white edges tell chunks apart while they are few enough to see.
        edges = {"edgecolor": "white", "linewidth": 0.5} if len(w["bars"]) < 400 else {"lw": 0}
        for outcome, spans in by_outcome.items():
            ax.broken_barh(spans, (top, lane), facecolor=COLOURS.get(outcome, "#444444"), **edges)
            used.add(outcome)
        if w["status"] in ("lost", "fenced") and ended is not None:
            ax.plot([ended / scale], [y], marker="x", color=COLOURS["failed"], ms=6, mew=2)
    labels = [f"{w['id']} · {w['host']}" if w.get("host") else w["id"] for w in workers]
    step = max(1, len(workers) // MAX_LABELLED + (len(workers) % MAX_LABELLED > 0))
    ax.set_yticks(range(0, len(workers), step))
    ax.set_yticklabels(labels[::step], fontsize=8 if len(workers) > 20 else 9)
    ax.set_ylim(len(workers) - 0.5, -0.5)
    ax.set_xlim(0, end / scale)
    ax.set_ylabel("worker · host")
    ax.grid(axis="x", color="#dddddd", lw=0.6)
    ax.set_axisbelow(True)
    session = tl["session"]
    tasks = data.get("tasks", {})
    title = f"session {session['id']} · {session['backend']} · {tl['state']}"
    if tasks:
        title += f" · {tasks.get('finished', 0):,} tasks"
        if tasks.get("failed"):
            title += f" ({tasks['failed']:,} failed)"
    ax.set_title(title, fontsize=11, loc="left")
    legend = [Patch(color=COLOURS[k], label=LABELS[k]) for k in COLOURS if k in used]
    if "queued" in used:
        legend.append(Patch(color=QUEUED, label="queued"))
    if "starting" in used:
        legend.append(Patch(color=STARTING, label="starting"))
    legend.append(Patch(color=UP, label="up, idle"))
    ax.legend(handles=legend, loc="upper center", bbox_to_anchor=(0.5, -0.02), ncol=5,
              fontsize=8, frameon=False)  # fmt: skip

    tput = data.get("throughput") or {}
    rates = tput.get("rates") or []
    if rates:
        width = float(tput["bin"])
        xs = [i * width / scale for i in range(len(rates) + 1)]
        tp.stairs(rates, xs, fill=True, color="#9fb8d8", edgecolor="#3d7dd8")
    tp.set_ylabel("tasks/s")
    tp.set_xlabel(f"time since the session started ({unit})")
    tp.grid(axis="both", color="#eeeeee", lw=0.6)
    fig.savefig(path, dpi=150)
    plt.close(fig)


def main(argv: list[str]) -> int:
    if len(argv) != 1:
        print("usage: python -m shoal._plot FILE < timeline.json", file=sys.stderr)
        return 2
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        print(
            "error: drawing the timeline needs matplotlib, which is not installed\n"
            f"hint: {sys.executable} -m pip install matplotlib",
            file=sys.stderr,
        )
        return 3
    draw(json.load(sys.stdin), argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
