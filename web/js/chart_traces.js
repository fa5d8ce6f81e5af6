// The Plotly traces and layout of one chart (charts.js decides what to draw,
// this module how it looks). Every trace carries
// meta {role: "raw" | "smoothed" | "nonfinite" | "events", label}.
//
// Non-finite values (NaN, ±Infinity) are never drawn as numbers: the line has
// a gap there, and a red x marker sits at the top edge (NaN, +Infinity) or
// bottom edge (-Infinity) of the plot, on an invisible overlay axis fixed to
// [0, 1], with hover text naming the value. Events are dotted vertical lines
// with a hoverable triangle at the top.

import { xOf } from "./chart_axes.js";
import { plotlyText } from "./format.js";

/** Where a non-finite value's marker sits on the overlay axis: -Infinity at the bottom. */
export function nonFiniteY(v) {
  return v < 0 ? 0.03 : 0.97;
}

export const PLOT_CONFIG = Object.freeze({
  responsive: true,
  displaylogo: false,
  modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"],
});

/**
 * How one source is drawn: {type, mode, label (Plotly-safe), name (as given),
 * color, shape, dash, smoothing (bool), axis ({title, hover})}.
 */
export function sourceStyle(src, { color, type, withMarkers, smoothing, axis }) {
  return {
    type,
    mode: withMarkers ? "lines+markers" : "lines",
    label: plotlyText(src.label),
    name: src.label,
    color,
    shape: src.setting ? "hv" : src.shape || "linear",
    dash: src.dash || "solid",
    smoothing,
    axis,
  };
}

/** The values as stored (faint behind the smoothed line when smoothing is on). */
export function rawTrace({ x, y }, s) {
  return {
    type: s.type,
    mode: s.mode,
    name: s.label,
    legendgroup: s.label,
    showlegend: !s.smoothing,
    meta: { role: "raw", label: s.name },
    x,
    y,
    connectgaps: false,
    opacity: s.smoothing ? 0.3 : 1,
    line: { color: s.color, width: s.smoothing ? 1 : 1.5, shape: s.shape, dash: s.dash },
    marker: { color: s.color, size: s.smoothing ? 3 : 5 },
    hovertemplate: `${s.label} = %{y:.8g}<br>${s.axis.title} ${s.axis.hover}<extra></extra>`,
  };
}

/** The EMA line; hovering it shows the raw value (`rawY`, indexed like the drawn points' idx). */
export function smoothedTrace({ x, y, idx }, rawY, s) {
  return {
    type: s.type,
    mode: s.mode,
    name: s.label,
    legendgroup: s.label,
    meta: { role: "smoothed", label: s.name },
    x,
    y,
    customdata: idx.map((k) => rawY[k]),
    connectgaps: true, // a NaN point does not cut the trend; its marker shows it
    line: { color: s.color, width: 2, shape: s.shape, dash: s.dash },
    marker: { color: s.color, size: 5 },
    hovertemplate:
      `${s.label} = %{customdata:.8g} (smoothed %{y:.6g})` + `<br>${s.axis.title} ${s.axis.hover}<extra></extra>`,
  };
}

/** Red x markers at the plot's edge where values are NaN or ±Infinity ({x, y, text}). */
export function nonFiniteTrace({ x, y, text }, s, danger) {
  return {
    type: s.type,
    mode: "markers",
    name: `${s.label}: NaN/Inf`,
    meta: { role: "nonfinite", label: s.name },
    x,
    y,
    text,
    yaxis: "y2",
    showlegend: x.length > 0,
    marker: { symbol: "x", size: 10, color: danger, line: { width: 1, color: danger } },
    hovertemplate: `${s.label} = %{text}<br>${s.axis.title} ${s.axis.hover}<extra></extra>`,
  };
}

/**
 * Dotted vertical lines at the events ([{step, epoch, t, text, color}]) and a
 * hoverable triangle on top of each: {shapes, trace (null without events)}.
 */
export function eventMarks(events, xMode, t0, theme) {
  const shapes = [];
  const ex = [];
  const etext = [];
  const ecolor = [];
  for (const e of events) {
    const x = xOf(xMode, { t0, epochOffset: 0 }, e.step, e.epoch, e.t);
    if (x === null || x === undefined || !Number.isFinite(x)) continue;
    const color = e.color || theme.muted;
    shapes.push({
      type: "line",
      xref: "x",
      yref: "paper",
      x0: x,
      x1: x,
      y0: 0,
      y1: 1,
      layer: "below",
      line: { color, width: 1, dash: "dot" },
    });
    ex.push(x);
    etext.push(plotlyText(e.text));
    ecolor.push(color);
  }
  if (!ex.length) return { shapes, trace: null };
  const trace = {
    type: "scatter", // a handful of points: SVG keeps WebGL contexts for the lines
    mode: "markers",
    name: "events",
    meta: { role: "events", label: "events" },
    showlegend: false,
    x: ex,
    y: ex.map(() => 1),
    yaxis: "y2",
    text: etext,
    cliponaxis: false,
    marker: { symbol: "triangle-down", size: 9, color: ecolor },
    hovertemplate: "%{text}<extra></extra>",
  };
  return { shapes, trace };
}

/**
 * The layout: theme, axes and event lines. `epochTicks` (the largest x drawn,
 * or null) puts ticks on whole epochs only; `flat` (a value, or null) is a
 * series' one constant value, drawn in a range around it instead of Plotly's ±1.
 */
export function chartLayout({ theme, axis, uirevision, revision, height, logY, shapes, epochTicks, flat }) {
  const layout = {
    uirevision,
    datarevision: revision,
    autosize: true,
    height,
    margin: { l: 56, r: 12, t: 28, b: 40 },
    paper_bgcolor: theme.bg,
    plot_bgcolor: theme.bg,
    font: { color: theme.fg, size: 12, family: "system-ui, sans-serif" },
    hovermode: "closest",
    hoverlabel: { namelength: -1 },
    legend: { orientation: "h", x: 0, xanchor: "left", y: 1.0, yanchor: "bottom", font: { size: 11 } },
    xaxis: {
      title: { text: axis.title, standoff: 6 },
      type: axis.type,
      gridcolor: theme.grid,
      zeroline: false,
      automargin: true,
    },
    yaxis: {
      type: logY ? "log" : "linear",
      gridcolor: theme.grid,
      zeroline: false,
      exponentformat: "e",
      automargin: true,
    },
    yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
    shapes,
  };
  if (epochTicks !== null) {
    layout.xaxis.tick0 = 0;
    layout.xaxis.dtick = Math.max(1, Math.ceil(Math.max(1, epochTicks) / 10));
  }
  if (flat !== null) {
    const pad = Math.abs(flat) * 0.5 || 1;
    layout.yaxis.range = [flat - pad, flat + pad];
    layout.yaxis.autorange = false;
  }
  return layout;
}
