// Plotly charts of metric series (global `Plotly` from /static/vendor/plotly.min.js).
//
// A chart draws one or more sources (a Series and how to read its x). The x
// axis is one of X_MODES: step, epoch, relative time (seconds since the run
// began) or wall time. With smoothing on, each source is drawn twice: the raw
// values faint behind, the EMA (ema.js, debiased like TensorBoard's) on top;
// hovering either shows exact values. Non-finite values (NaN, ±Infinity) are
// never drawn as numbers: the line has a gap there, and a red x marker sits at
// the top edge (NaN, +Infinity) or bottom edge (-Infinity) of the plot, on an
// invisible overlay axis fixed to [0, 1], with hover text naming the value.
// Events (LR changes, commands, early stops) are dotted vertical lines with a
// hoverable triangle at the top.
//
// Long series are drawn as per-bucket min/max (decimate), re-bucketed over the
// visible range when zooming. Redraws are coalesced with requestAnimationFrame:
// a batch-level run can push hundreds of points a second, the charts redraw at
// most once a frame (and less often when a redraw is slow).
//
// Every trace carries meta {role: "raw" | "smoothed" | "nonfinite" | "events", label}.

import { Ema, clampWeight } from "./ema.js";
import { formatNumber, plotlyText } from "./format.js";

const NONFINITE_Y = { NaN: 0.97, Infinity: 0.97, "-Infinity": 0.03 };

/**
 * Plotly's WebGL traces compile their shaders' glue code at run time (regl
 * calls `new Function`). Under a Content-Security-Policy without
 * 'unsafe-eval' that throws and Plotly shows "WebGL is not supported": the
 * charts then use SVG traces instead, which draw the same data.
 */
export const WEBGL_TRACES_ALLOWED = (() => {
  try {
    return typeof new Function("return 1") === "function";
  } catch {
    return false;
  }
})();

function nonFiniteName(v) {
  if (Number.isNaN(v)) return "NaN";
  return v > 0 ? "Infinity" : "-Infinity";
}

/** Colors of the current light/dark theme, read from the CSS custom properties. */
export function themeColors() {
  const css = getComputedStyle(document.documentElement);
  const get = (name, fallback) => css.getPropertyValue(name).trim() || fallback;
  return {
    bg: get("--surface", "#ffffff"),
    fg: get("--fg", "#1b1f24"),
    muted: get("--muted", "#57606a"),
    grid: get("--grid", "#e5e8eb"),
    danger: get("--danger", "#d1242f"),
    series: [
      get("--series-1", "#1f6feb"),
      get("--series-2", "#e8710a"),
      get("--series-3", "#1a7f37"),
      get("--series-4", "#8250df"),
      get("--series-5", "#bf3989"),
      get("--series-6", "#0a7b83"),
      get("--series-7", "#9a6700"),
      get("--series-8", "#57606a"),
    ],
  };
}

// ---- drawing long series ----------------------------------------------------

// A trace longer than this is drawn as per-bucket min and max: a chart a few
// hundred pixels wide shows the same shape, and a redraw stays cheap however
// long the run is. Zooming in draws the visible range with fresh buckets.
const DRAW_BUCKETS = 1500;

/**
 * x/y arrays (x ascending, y null for a gap) reduced to at most ~2 points per
 * bucket over `range` ([x0, x1] or null for all), keeping each bucket's min,
 * max and first gap in x order, plus one point on each side of the range so
 * the line reaches the plot's edges. Returns {x, y, idx} (idx: the indexes kept).
 */
export function decimate(x, y, range, buckets) {
  let from = 0;
  let to = x.length;
  if (range) {
    from = Math.max(0, lowerBound(x, range[0]) - 1);
    to = Math.min(x.length, lowerBound(x, range[1]) + 1);
  }
  const idx = [];
  if (to - from <= buckets * 2) {
    for (let i = from; i < to; i++) idx.push(i);
  } else {
    const width = (to - from) / buckets;
    for (let b = 0; b < buckets; b++) {
      const start = from + Math.floor(b * width);
      const end = from + Math.floor((b + 1) * width);
      let lo = -1;
      let hi = -1;
      let gap = -1;
      for (let i = start; i < end; i++) {
        const v = y[i];
        if (v === null) {
          if (gap < 0) gap = i;
        } else {
          if (lo < 0 || v < y[lo]) lo = i;
          if (hi < 0 || v > y[hi]) hi = i;
        }
      }
      for (const i of [lo, hi, gap].filter((i, k, all) => i >= 0 && all.indexOf(i) === k).sort((a, c) => a - c)) {
        idx.push(i);
      }
    }
  }
  return { x: idx.map((i) => x[i]), y: idx.map((i) => y[i]), idx };
}

function lowerBound(arr, v) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

// ---- redraw scheduling --------------------------------------------------------

const MIN_REDRAW_MS = 100; // live enough for eyes, cheap for WebGL canvases
const dirty = new Set();
let frameRequested = false;

function requestFrame() {
  if (frameRequested) return;
  frameRequested = true;
  requestAnimationFrame(drawDirty);
}

function drawDirty(now) {
  frameRequested = false;
  for (const chart of [...dirty]) {
    if (!chart.alive) {
      dirty.delete(chart);
      continue;
    }
    if (now < chart.nextDrawAt) continue; // drew recently and drawing is slow: wait
    dirty.delete(chart);
    const started = performance.now();
    chart.draw();
    const took = performance.now() - started;
    // At most MIN_REDRAW_MS apart, and below ~25% of the main thread: a 40 ms
    // draw waits 160 ms before the next.
    chart.nextDrawAt = now + Math.min(1000, Math.max(MIN_REDRAW_MS, took * 4));
  }
  if (dirty.size) requestFrame();
}

// ---- x axes ------------------------------------------------------------------

export const X_MODES = ["step", "epoch", "relative", "wall"];
const X_TITLES = { step: "step", epoch: "epoch", relative: "time since start (s)", wall: "wall time" };
// Plotly shows a date axis's milliseconds as UTC: shifting by the local offset shows local time.
const TZ_SHIFT_MS = new Date().getTimezoneOffset() * 60000;

/**
 * The x of one point in `mode`. `src.epochOffset` is 1 for epoch-scope series
 * (their epoch is the 0-based index of a finished epoch, drawn at its end),
 * 0 for batch-scope ones (their epoch is the progress e + (b + 1) / steps).
 */
export function xOf(mode, src, step, epoch, t) {
  switch (mode) {
    case "epoch":
      return epoch === null || epoch === undefined ? null : epoch + (src.epochOffset || 0);
    case "relative":
      return t === null || t === undefined ? null : t - (src.t0 || 0);
    case "wall":
      return t === null || t === undefined ? null : t * 1000 - TZ_SHIFT_MS;
    default:
      return step;
  }
}

/** An x value from a Plotly relayout event (date axes give strings) as a number. */
function xNumber(v) {
  if (typeof v === "number") return v;
  const parsed = Date.parse(String(v).replace(" ", "T") + "Z");
  return Number.isNaN(parsed) ? Number(v) : parsed;
}

// ---- one chart ---------------------------------------------------------------

/**
 * A Plotly chart in `container` (a div that becomes the Plotly graph div).
 * sources: [{label, series, epochOffset: 0 | 1, t0, color?, dash?, shape: "linear" | "hv",
 *            tail: () => ({step, epoch, t, y}) | null}]
 * events:  [{step, epoch, t, text, color}] (epoch: progress, as a batch point's)
 */
export class Chart {
  constructor(
    container,
    {
      xMode = "step",
      uirevision,
      logY = false,
      markers = false,
      gl = true,
      integerX = false,
      smoothing = 0,
      onZoom = null,
    },
  ) {
    this.onZoom = onZoom; // called with the new x range ([x0, x1] or null) after a zoom
    this.integerX = integerX; // in epoch mode, x is a count (epoch scope): no ticks between integers
    this.el = container;
    // WebGL traces when the page may compile them (see WEBGL_TRACES_ALLOWED), else SVG.
    this.traceType = gl && WEBGL_TRACES_ALLOWED ? "scattergl" : "scatter";
    this.xMode = xMode;
    this.uirevision = uirevision;
    this.logY = logY;
    this.smoothing = clampWeight(smoothing);
    this.markers = markers; // draw point markers on the lines (epoch view: few points)
    this.sources = [];
    this.events = [];
    this.cache = [];
    this.revision = 0;
    this.alive = true;
    this.nextDrawAt = 0;
    this.drawn = false;
    this.xRange = null; // the zoomed x range, null for all
  }

  setSources(sources) {
    this.sources = sources;
    this.cache = sources.map(() => null);
    this.invalidate();
  }

  setLogY(on) {
    this.logY = on;
    this.invalidate();
  }

  setXMode(mode) {
    if (mode === this.xMode) return;
    this.xMode = mode;
    this.xRange = null; // a zoom in other units means nothing here
    this.cache = this.sources.map(() => null);
    this.invalidate();
  }

  setSmoothing(weight) {
    const w = clampWeight(weight);
    if (w === this.smoothing) return;
    this.smoothing = w;
    this.cache = this.sources.map(() => null);
    this.invalidate();
  }

  setEvents(events) {
    this.events = events;
    this.invalidate();
  }

  /** Mark for redraw (next animation frame). */
  invalidate() {
    if (!this.alive) return;
    dirty.add(this);
    requestFrame();
  }

  /** Redraw now if something changed since the last draw (used after a theme change). */
  restyleTheme() {
    this.invalidate();
  }

  destroy() {
    this.alive = false;
    dirty.delete(this);
    if (this.drawn) window.Plotly.purge(this.el);
  }

  // Arrays for one source, extended in place while its series only grows at the end.
  build(i) {
    const src = this.sources[i];
    const s = src.series;
    let c = this.cache[i];
    if (!c || c.edits !== s.edits || c.length > s.length) {
      c = {
        edits: s.edits,
        length: 0,
        x: [],
        y: [], // raw value, null where not finite
        sy: [], // smoothed value (null where the raw one is not finite)
        step: [],
        ema: new Ema(this.smoothing),
        mx: [],
        my: [],
        mtext: [],
        min: Infinity,
        max: -Infinity,
      };
      this.cache[i] = c;
    }
    for (let j = c.length; j < s.length; j++) {
      const x = xOf(this.xMode, src, s.step[j], s.epoch[j], s.t[j]);
      const v = s.value[j];
      if (v === null || v === undefined || x === null) continue;
      c.step.push(s.step[j]);
      if (Number.isFinite(v)) {
        c.x.push(x);
        c.y.push(v);
        c.sy.push(c.ema.next(v));
        if (v < c.min) c.min = v;
        if (v > c.max) c.max = v;
      } else {
        const name = nonFiniteName(v);
        c.x.push(x); // a gap in the line where the value is not a number
        c.y.push(null);
        c.sy.push(null);
        c.mx.push(x);
        c.my.push(NONFINITE_Y[name]);
        c.mtext.push(name);
      }
    }
    c.length = s.length;
    return c;
  }

  draw() {
    const theme = themeColors();
    const xTitle = plotlyText(X_TITLES[this.xMode] || this.xMode);
    const xHover = this.xMode === "wall" ? "%{x|%H:%M:%S}" : "%{x:.6~g}";
    const smoothing = this.smoothing > 0;
    const lines = [];
    const markerTraces = [];
    let points = 0;
    let nonFinite = 0;
    let min = Infinity;
    let max = -Infinity;
    let maxX = -Infinity;
    this.sources.forEach((src, i) => {
      const c = this.build(i);
      const color = src.color || theme.series[i % theme.series.length];
      const label = plotlyText(src.label);
      const raw = decimate(c.x, c.y, this.xRange, DRAW_BUCKETS);
      let { x, y } = raw;
      const tail = src.tail ? src.tail() : null;
      if (tail) {
        const tx = xOf(this.xMode, src, tail.step, tail.epoch, tail.t);
        if (tx !== null && c.x.length && tx > c.x[c.x.length - 1]) {
          x = x.concat([tx]);
          y = y.concat([tail.y]);
        }
      }
      const mode = this.markers || c.x.length < 3 ? "lines+markers" : "lines";
      lines.push({
        type: this.traceType,
        mode,
        name: label,
        legendgroup: label,
        showlegend: !smoothing,
        meta: { role: "raw", label: src.label },
        x,
        y,
        connectgaps: false,
        opacity: smoothing ? 0.3 : 1,
        line: { color, width: smoothing ? 1 : 1.5, shape: src.shape || "linear", dash: src.dash || "solid" },
        marker: { color, size: smoothing ? 3 : 5 },
        hovertemplate: `${label} = %{y:.8g}<br>${xTitle} ${xHover}<extra></extra>`,
      });
      if (smoothing) {
        const sm = decimate(c.x, c.sy, this.xRange, DRAW_BUCKETS);
        lines.push({
          type: this.traceType,
          mode,
          name: label,
          legendgroup: label,
          meta: { role: "smoothed", label: src.label },
          x: sm.x,
          y: sm.y,
          customdata: sm.idx.map((k) => c.y[k]),
          connectgaps: true, // a NaN point does not cut the trend; its marker shows it
          line: { color, width: 2, shape: src.shape || "linear", dash: src.dash || "solid" },
          marker: { color, size: 5 },
          hovertemplate:
            `${label} = %{customdata:.8g} (smoothed %{y:.6g})` +
            `<br>${xTitle} ${xHover}<extra></extra>`,
        });
      }
      markerTraces.push({
        type: this.traceType,
        mode: "markers",
        name: `${label}: NaN/Inf`,
        meta: { role: "nonfinite", label: src.label },
        x: c.mx,
        y: c.my,
        text: c.mtext,
        yaxis: "y2",
        showlegend: c.mx.length > 0,
        marker: { symbol: "x", size: 10, color: theme.danger, line: { width: 1, color: theme.danger } },
        hovertemplate: `${label} = %{text}<br>${xTitle} ${xHover}<extra></extra>`,
      });
      points += c.y.length;
      nonFinite += c.mx.length;
      min = Math.min(min, c.min);
      max = Math.max(max, c.max);
      if (x.length) maxX = Math.max(maxX, x[x.length - 1]);
    });
    const { shapes, trace: eventTrace } = this.eventMarks(theme);
    this.revision += 1;
    const layout = {
      uirevision: `${this.uirevision}:${this.xMode}`,
      datarevision: this.revision,
      autosize: true,
      height: this.el.clientHeight || 260,
      margin: { l: 56, r: 12, t: 28, b: 40 },
      paper_bgcolor: theme.bg,
      plot_bgcolor: theme.bg,
      font: { color: theme.fg, size: 12, family: "system-ui, sans-serif" },
      hovermode: "closest",
      hoverlabel: { namelength: -1 },
      legend: { orientation: "h", x: 0, xanchor: "left", y: 1.0, yanchor: "bottom", font: { size: 11 } },
      xaxis: {
        title: { text: xTitle, standoff: 6 },
        type: this.xMode === "wall" ? "date" : "linear",
        gridcolor: theme.grid,
        zeroline: false,
        automargin: true,
      },
      yaxis: {
        type: this.logY ? "log" : "linear",
        gridcolor: theme.grid,
        zeroline: false,
        exponentformat: "e",
        automargin: true,
      },
      yaxis2: { overlaying: "y", range: [0, 1], visible: false, fixedrange: true },
      shapes,
    };
    if (this.integerX && this.xMode === "epoch") {
      layout.xaxis.tick0 = 0;
      layout.xaxis.dtick = Math.max(1, Math.ceil(Math.max(1, maxX) / 10));
    }
    if (!this.logY && min === max) {
      // One flat value (a constant learning rate): Plotly would span value ± 1.
      const pad = Math.abs(min) * 0.5 || 1;
      layout.yaxis.range = [min - pad, max + pad];
      layout.yaxis.autorange = false;
    }
    const config = {
      responsive: true,
      displaylogo: false,
      modeBarButtonsToRemove: ["select2d", "lasso2d", "toImage"],
    };
    const traces = [...lines, ...markerTraces];
    if (eventTrace) traces.push(eventTrace);
    window.Plotly.react(this.el, traces, layout, config);
    if (!this.drawn) {
      // Zooming redraws the visible range at full detail (see decimate()).
      this.el.on("plotly_relayout", (ev) => this.onRelayout(ev));
    }
    this.drawn = true;
    this.el.dataset.points = String(points);
    this.el.dataset.nonfinite = String(nonFinite);
    this.el.dataset.xMode = this.xMode;
    this.el.dataset.smoothing = String(this.smoothing);
    this.el.dataset.logY = String(this.logY);
    this.el.dataset.events = String(shapes.length);
    this.el.setAttribute(
      "aria-label",
      `${this.el.dataset.key} chart, ${points} points` +
        (nonFinite ? `, ${nonFinite} not finite` : "") +
        this.lastValuesText(),
    );
  }

  /** Dotted vertical lines at the events, and a hoverable triangle on top of each. */
  eventMarks(theme) {
    const shapes = [];
    const ex = [];
    const etext = [];
    const ecolor = [];
    const src = this.sources[0] || {};
    for (const e of this.events) {
      const x = xOf(this.xMode, { t0: src.t0, epochOffset: 0 }, e.step, e.epoch, e.t);
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

  onRelayout(ev) {
    let range = this.xRange;
    if (ev["xaxis.autorange"]) range = null;
    else if (ev["xaxis.range[0]"] !== undefined) range = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
    else if (Array.isArray(ev["xaxis.range"])) range = ev["xaxis.range"];
    else return;
    this.xRange = range ? range.map(xNumber) : null;
    this.invalidate();
    if (this.onZoom) this.onZoom(this.xRange);
  }

  /** The steps [first, last] drawn inside an x range (to re-ask the server for them). */
  stepRange(range) {
    let lo = Infinity;
    let hi = -Infinity;
    this.sources.forEach((_, i) => {
      const c = this.cache[i];
      if (!c || !c.x.length) return;
      const a = Math.max(0, lowerBound(c.x, range[0]) - 1);
      const b = Math.min(c.x.length - 1, lowerBound(c.x, range[1]));
      lo = Math.min(lo, c.step[a]);
      hi = Math.max(hi, c.step[b]);
    });
    return Number.isFinite(lo) ? [lo, hi] : null;
  }

  lastValuesText() {
    const parts = this.sources
      .filter((s) => s.series.length)
      .map((s) => `${s.label} ${formatNumber(s.series.value[s.series.length - 1])}`);
    return parts.length ? `; latest ${parts.join(", ")}` : "";
  }
}
