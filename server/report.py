"""A standalone HTML report of one run: its charts with plotly.js inlined, readable offline.

Built with Plotly's Python API (`plotly.graph_objects`), which is imported on
first use: the server starts without it. Names from the training script are
written as text (Plotly reads a small HTML subset in titles and legends, so
markup characters become entities there; its JSON escapes `<` and `/`).
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from typing import Any

from server.downsample import Point
from server.protocol import LR_KEY, SETTINGS_META

__all__ = ["build", "chart_groups", "figure", "setting_keys"]

Series = dict[str, tuple[list[Point], bool]]
COLORS = ["#1f6feb", "#e8710a", "#1a7f37", "#8250df", "#d1242f"]


def _text(s: object) -> str:
    return html.escape(str(s), quote=False).replace("{", "&#123;")


def chart_groups(keys: Sequence[str]) -> dict[str, list[str]]:
    """Metric keys by chart: `val_x` beside `x`, loss first, learning rate left out."""
    groups: dict[str, list[str]] = {}
    for key in sorted(keys):
        if key == LR_KEY:
            continue
        base = key[4:] if key.startswith("val_") and len(key) > 4 else key
        groups.setdefault(base, []).append(key)
    for keys_ in groups.values():
        keys_.sort(key=lambda k: (k.startswith("val_"), k))
    return dict(sorted(groups.items(), key=lambda kv: (kv[0] != "loss", kv[0])))


def setting_keys(run: dict[str, Any]) -> frozenset[str]:
    """The run's series that are settings (drawn as steps): LR_KEY and meta's SETTINGS_META."""
    listed = (run.get("meta") or {}).get(SETTINGS_META)
    extra = [k for k in listed if isinstance(k, str)] if isinstance(listed, list) else []
    return frozenset({LR_KEY, *extra})


def _run_end_x(epoch: Series, batch: Series) -> float | None:
    """How far the run got on the x axis (epochs done): its last batch or epoch point."""
    ends = [p[-1].epoch for p, _ in batch.values() if p and p[-1].epoch is not None]
    ends += [p[-1].epoch + 1 for p, _ in epoch.values() if p and p[-1].epoch is not None]
    return max(ends) if ends else None


def _hold_to(
    x: list[float], y: list[float | None], end: float | None
) -> tuple[list[float], list[float | None]]:
    """A setting's step line carried on to `end`: its last value holds until the run ended."""
    if end is None or not x or end <= x[-1]:
        return x, y
    return [*x, end], [*y, y[-1]]


def _xy(points: list[Point], epoch_plus_one: bool) -> tuple[list[float], list[float | None]]:
    xs: list[float] = []
    ys: list[float | None] = []
    for p in points:
        if p.epoch is None:
            continue
        xs.append(p.epoch + 1 if epoch_plus_one else p.epoch)
        v = p.value
        ys.append(v if v is not None and math.isfinite(v) else None)
    return xs, ys


def _nonfinite(points: list[Point], epoch_plus_one: bool) -> tuple[list[float], list[str]]:
    xs: list[float] = []
    names: list[str] = []
    for p in points:
        if p.epoch is None or (p.value is not None and math.isfinite(p.value)):
            continue
        xs.append(p.epoch + 1 if epoch_plus_one else p.epoch)
        v = p.value
        names.append(
            "NaN" if v is None or math.isnan(v) else ("Infinity" if v > 0 else "-Infinity")
        )
    return xs, names


def build(run: dict[str, Any], epoch: Series, batch: Series, events: list[dict[str, Any]]) -> str:
    """The report as one HTML document (plotly.js included)."""
    fig = figure(run, epoch, batch, events)
    name = run.get("name") or run["id"]
    out: str = fig.to_html(
        include_plotlyjs=True, full_html=True, config={"displaylogo": False}, div_id="report"
    )
    return out.replace("<head>", f"<head><title>{html.escape(name)} · fitdeck report</title>", 1)


def figure(run: dict[str, Any], epoch: Series, batch: Series, events: list[dict[str, Any]]) -> Any:
    """The report's Plotly figure: the run's table, one chart per metric, the learning rate.

    x is epochs done, as on the dashboard's epoch axis: epoch index `e` (0-based,
    as stored) ends at `e + 1`, so "Epoch 1" of Keras' progress bar is at 1.
    Settings (the learning rate, and the series in meta's SETTINGS_META) are step
    lines that hold their last value to the end of the run.
    """
    import plotly.graph_objects as go
    from plotly.subplots import make_subplots

    settings = setting_keys(run)
    end_x = _run_end_x(epoch, batch)

    groups = chart_groups(list({*epoch, *batch}))
    has_lr = LR_KEY in batch or LR_KEY in epoch
    titles = [_text(g) for g in groups] + (["learning rate"] if has_lr else [])
    rows = max(1, len(titles)) + 1
    specs: list[list[dict[str, Any]]] = [[dict(type="table")]] + [[{}] for _ in range(rows - 1)]
    fig = make_subplots(
        rows=rows,
        cols=1,
        specs=specs,
        subplot_titles=["run", *titles],
        vertical_spacing=min(0.06, 0.5 / rows),
        row_heights=[1.2] + [1.0] * (rows - 1),
    )
    info = _info(run)
    fig.add_trace(
        go.Table(
            header={"values": ["", ""], "height": 4, "line": {"width": 0}},
            cells={"values": [[_text(k) for k in info], [_text(v) for v in info.values()]]},
            columnwidth=[1, 4],
        ),
        row=1,
        col=1,
    )
    for row, (base, keys) in enumerate(groups.items(), start=2):
        for i, key in enumerate(keys):
            color = COLORS[i % len(COLORS)]
            shape = "hv" if key in settings else "linear"
            if key in batch and batch[key][0]:
                x, y = _xy(batch[key][0], epoch_plus_one=False)
                if key in settings:
                    x, y = _hold_to(x, y, end_x)
                fig.add_trace(
                    go.Scatter(
                        x=x, y=y, mode="lines", name=_text(f"{key} (batch)"),
                        line={"color": color, "width": 1, "shape": shape}, opacity=0.35,
                        legendgroup=base,
                    ),
                    row=row, col=1,
                )  # fmt: skip
            if key in epoch and epoch[key][0]:
                x, y = _xy(epoch[key][0], epoch_plus_one=True)
                fig.add_trace(
                    go.Scatter(
                        x=x, y=y, mode="lines+markers", name=_text(key),
                        line={"color": color, "width": 2, "shape": shape}, legendgroup=base,
                    ),
                    row=row, col=1,
                )  # fmt: skip
            for scope_series, plus_one in ((batch, False), (epoch, True)):
                if key not in scope_series:
                    continue
                nx, names = _nonfinite(scope_series[key][0], plus_one)
                if nx:
                    fig.add_trace(
                        go.Scatter(
                            x=nx, y=[0] * len(nx), mode="markers", name=_text(f"{key}: {names[0]}"),
                            text=names, marker={"symbol": "x", "color": "#d1242f", "size": 10},
                            hovertemplate="%{text} at epoch %{x}<extra></extra>",
                        ),
                        row=row, col=1,
                    )  # fmt: skip
        fig.update_xaxes(title_text="epoch", row=row, col=1)
    if has_lr:
        lr_points = batch[LR_KEY][0] if LR_KEY in batch else epoch[LR_KEY][0]
        x, y = _hold_to(*_xy(lr_points, epoch_plus_one=LR_KEY not in batch), end_x)
        fig.add_trace(
            go.Scatter(x=x, y=y, mode="lines", line={"shape": "hv"}, name="learning_rate"),
            row=rows, col=1,
        )  # fmt: skip
        fig.update_yaxes(type="log", row=rows, col=1)
        fig.update_xaxes(title_text="epoch", row=rows, col=1)
    # Dotted lines at LR changes and early stops, on every chart (row 1 is the table).
    refs = []
    for row in range(2, rows + 1):
        sub = fig.get_subplot(row, 1)
        refs.append((sub.xaxis.plotly_name.replace("axis", ""), sub.yaxis.plotly_name))
    spe = (run.get("meta") or {}).get("steps_per_epoch")

    def at(e: dict[str, Any]) -> Any:  # in epochs of progress, like the batch points
        return e["step"] / spe if spe and e.get("step") is not None else e.get("epoch")

    shapes = [
        dict(
            type="line", x0=at(e), x1=at(e), y0=0, y1=1,
            xref=xref, yref=f"{yaxis.replace('axis', '')} domain",
            line={"dash": "dot", "width": 1, "color": "#8250df"},
        )
        for e in events
        if e["kind"] in ("lr_change", "early_stop") and at(e) is not None
        for xref, yaxis in refs
    ]  # fmt: skip
    fig.update_layout(shapes=shapes)
    name = run.get("name") or run["id"]
    fig.update_layout(
        title={"text": f"{_text(name)} — {_text(run.get('status'))}"},
        height=320 * rows,
        template="plotly_white",
        hovermode="x unified",
        legend={"orientation": "h"},
    )
    return fig


def _info(run: dict[str, Any]) -> dict[str, str]:
    meta = run.get("meta") or {}
    done = 0 if run.get("epoch") is None else run["epoch"] + 1
    info = {
        "name": str(run.get("name") or ""),
        "project": str(run.get("project") or "—"),
        "status": str(run.get("status")),
        "id": str(run["id"]),
        "epochs": f"{done} / {meta.get('epochs', '?')}",
        "steps": str(run.get("step")),
    }
    opt = meta.get("optimizer") or {}
    if opt.get("class_name"):
        info["optimizer"] = str(opt["class_name"])
    if meta.get("param_count") is not None:
        info["parameters"] = f"{meta['param_count']:,}"
    for k, v in (run.get("params") or {}).items():
        info[f"param {k}"] = v if isinstance(v, str) else json.dumps(v)
    return info
