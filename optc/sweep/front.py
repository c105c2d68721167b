"""The accuracy/latency/size Pareto front of a sweep, and the files that show it.

    RUN_DIR/pareto.json   every non-dominated point: pipeline, fidelity, latency, size (+ baseline)
    RUN_DIR/pareto.csv    the same as a table
    RUN_DIR/pareto.png    fidelity against latency: every point, the front, the baseline
    RUN_DIR/report.html   self-contained (the plot inline): the front and every measured point

A point dominates another when it is at least as good in fidelity (higher), latency and size
(lower) and better in one of them.
"""

from __future__ import annotations

import base64
import csv
import html
import io
import json
from pathlib import Path

from .trial import TrialResult

__all__ = ["pareto", "show", "write_outputs"]

FIELDS = ("pipeline", "fidelity", "worst", "latency_ms", "size_mb", "speedup")


def _dominates(a: TrialResult, b: TrialResult) -> bool:
    ge = a.fidelity >= b.fidelity and a.latency_ms <= b.latency_ms and a.size_mb <= b.size_mb
    gt = a.fidelity > b.fidelity or a.latency_ms < b.latency_ms or a.size_mb < b.size_mb
    return ge and gt


def pareto(results: list[TrialResult]) -> list[TrialResult]:
    """The non-dominated measured points, fastest first."""
    ok = [r for r in results if r.ok]
    front = [r for r in ok if not any(_dominates(o, r) for o in ok if o is not r)]
    return sorted(front, key=lambda r: (r.latency_ms, -r.fidelity))


def _row(r: TrialResult, baseline: TrialResult | None) -> dict:
    speed = baseline.latency_ms / r.latency_ms if baseline is not None and baseline.ok and r.latency_ms else None
    return {"pipeline": r.pipeline, "fidelity": round(r.fidelity, 6), "worst": round(r.worst, 6),
            "latency_ms": round(r.latency_ms, 4), "size_mb": round(r.size_mb, 3),
            "speedup": None if speed is None else round(speed, 3)}


def _plot(results: list[TrialResult], front: list[TrialResult], baseline: TrialResult | None) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in results if r.ok]
    fig, ax = plt.subplots(figsize=(7, 4.5), dpi=110)
    ax.scatter([r.latency_ms for r in ok], [r.fidelity for r in ok], s=14, c="#bbbbbb", label="measured points")
    ax.plot([r.latency_ms for r in front], [r.fidelity for r in front], "o-", c="#c0392b", ms=5, label="Pareto front")
    if baseline is not None and baseline.ok:
        ax.scatter([baseline.latency_ms], [baseline.fidelity], marker="*", s=160, c="#2c3e50", label="uncompressed")
    ax.set_xlabel("latency (ms)")
    ax.set_ylabel("held-out mean cosine")
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    return buf.getvalue()


def write_outputs(run_dir: Path, results: list[TrialResult], baseline: TrialResult | None, meta: dict) -> list[dict]:
    """Write the four files (each atomically); returns the front's rows."""
    from ..fileio import atomic_path

    front = pareto(results)
    rows = [_row(r, baseline) for r in front]
    with atomic_path(run_dir / "pareto.json") as tmp:
        tmp.write_text(json.dumps({**meta, "baseline": None if baseline is None or not baseline.ok else _row(baseline, baseline),
                                   "points": len([r for r in results if r.ok]), "front": rows}, indent=1))
    with atomic_path(run_dir / "pareto.csv") as tmp, open(tmp, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=FIELDS)
        w.writeheader()
        w.writerows(rows)
    png = _plot(results, front, baseline)
    with atomic_path(run_dir / "pareto.png") as tmp:
        tmp.write_bytes(png)
    with atomic_path(run_dir / "report.html") as tmp:
        tmp.write_text(_html(results, rows, baseline, meta, png))
    return rows


def _table(rows: list[dict]) -> str:
    head = "".join(f"<th>{html.escape(k)}</th>" for k in FIELDS)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(str(r.get(k)))}</td>" for k in FIELDS) + "</tr>" for r in rows)
    return f"<table><tr>{head}</tr>{body}</table>"


def _html(results, rows, baseline, meta, png: bytes) -> str:
    every = [_row(r, baseline) for r in sorted((r for r in results if r.ok), key=lambda r: r.latency_ms)]
    failed = [r for r in results if not r.ok]
    info = html.escape(json.dumps(meta))
    fails = "".join(f"<li><code>{html.escape(r.pipeline)}</code>: {html.escape(r.error or '')}</li>" for r in failed)
    return ("<!doctype html><meta charset=utf-8><title>optc sweep</title>"
            "<style>body{font:14px sans-serif;margin:2em}td,th{padding:2px 8px;border-bottom:1px solid #ddd;"
            "text-align:left}code{font-size:12px}</style>"
            f"<h1>optc sweep</h1><p><code>{info}</code></p>"
            f"<img alt='Pareto front' src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
            f"<h2>Pareto front ({len(rows)} points)</h2>{_table(rows)}"
            f"<h2>Every measured point ({len(every)})</h2>{_table(every)}"
            + (f"<h2>Points without a measurement ({len(failed)})</h2><ul>{fails}</ul>" if failed else ""))


def show(run_dir: str | Path) -> str:
    """The front of a finished (or running) sweep as a text table."""
    from ..errors import OptcError

    path = Path(run_dir) / "pareto.json"
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise OptcError(f"{run_dir} has no pareto.json: not an optc sweep folder (or no point measured yet)") from None
    except (OSError, ValueError) as e:
        raise OptcError(f"cannot read {path}: {e}") from None
    rows = data["front"]
    threads = f", {data['threads']} thread(s)" if data.get("threads") else ""
    lines = [f"{data.get('model', '?')} on {data.get('target', '?')}{threads}: {len(rows)} Pareto point(s) of "
             f"{data['points']} measured"]
    if data.get("baseline"):
        b = data["baseline"]
        lines.append(f"uncompressed: fidelity {b['fidelity']:.5f}, {b['latency_ms']:.2f} ms, {b['size_mb']:.1f} MB")
    lines.append(f"{'fidelity':>9} {'worst':>8} {'ms':>8} {'speedup':>8} {'MB':>7}  pipeline")
    for r in rows:
        sp = "-" if r["speedup"] is None else f"{r['speedup']:.2f}x"
        lines.append(f"{r['fidelity']:9.5f} {r['worst']:8.4f} {r['latency_ms']:8.2f} {sp:>8} {r['size_mb']:7.1f}  {r['pipeline']}")
    return "\n".join(lines)
