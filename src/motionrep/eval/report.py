"""The HTML report: one side-by-side table of every model's metrics (best value per row in bold), then each
model's figures. Self-contained apart from the PNG files it links (relative paths)."""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone
from pathlib import Path

LOWER_IS_BETTER = ("epe",)

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #ccc; padding: 4px 10px; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f2f2f2; }
td.best { font-weight: bold; background: #eef7ee; }
img { max-width: 100%; border: 1px solid #ddd; }
figure { margin: 1em 0; }
.meta { color: #666; font-size: 0.9em; }
"""


def lower_is_better(key: str) -> bool:
    """Whether smaller values of metric ``<protocol>.<metric>`` are better (EPE: pixels)."""
    return key.rsplit(".", 1)[-1] in LOWER_IS_BETTER


def metric_rows(metrics: dict[str, dict[str, float | None]]) -> list[str]:
    """All metric keys in first-seen order across models."""
    keys: list[str] = []
    for values in metrics.values():
        keys += [k for k in values if k not in keys]
    return keys


def _fmt(v: float | None) -> str:
    return "–" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.2f}"


def table_html(metrics: dict[str, dict[str, float | None]]) -> str:
    models = list(metrics)
    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    rows = []
    for key in metric_rows(metrics):
        values = [metrics[m].get(key) for m in models]
        present = [v for v in values if v is not None and not math.isnan(v)]
        best = (min(present) if lower_is_better(key) else max(present)) if len(present) > 1 else None
        unit = " (px)" if lower_is_better(key) else ""
        cells = "".join(
            f'<td class="best">{_fmt(v)}</td>' if v is not None and v == best else f"<td>{_fmt(v)}</td>" for v in values
        )
        rows.append(f"<tr><td>{html.escape(key)}{unit}</td>{cells}</tr>")
    return f"<table><thead><tr><th>metric</th>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def write_report(
    path: str | Path,
    metrics: dict[str, dict[str, float | None]],
    figures: dict[str, list[tuple[str, str]]],
    info: dict[str, str],
) -> Path:
    """Write ``report.html``: the metrics table (percentages, EPE in pixels) and every model's figures."""
    path = Path(path)
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    meta = " · ".join(f"{html.escape(k)}: {html.escape(str(v))}" for k, v in info.items())
    parts = [
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>motionrep evaluation</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>motionrep evaluation</h1>",
        f"<p class='meta'>{meta} · {stamp}</p>",
        "<p>Percentages for mIoU, accuracy, J&amp;F, δ and px-accuracies; end-point error (EPE) in pixels. "
        "Best value per row in bold. Protocol definitions: docs/evaluation.md.</p>",
        table_html(metrics),
    ]
    for model, figs in figures.items():
        if not figs:
            continue
        parts.append(f"<h2>{html.escape(model)}</h2>")
        for caption, rel in figs:
            parts.append(
                f"<figure><img src='{html.escape(rel)}' alt='{html.escape(caption)}'>"
                f"<figcaption>{html.escape(caption)}</figcaption></figure>"
            )
    parts.append("</body></html>")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(parts))
    return path
