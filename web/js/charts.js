// Plotly charts of metric series (global `Plotly` from /static/vendor/plotly.min.js).
//
// A chart draws one or more sources (a Series and how to read its x). The x
// axis is one of X_MODES (chart_axes.js): step, epoch, relative time (seconds
// since the run began) or wall time. With smoothing on, each source is drawn
// twice: the raw values faint behind, the EMA (ema.js, debiased like
// TensorBoard's) on top; hovering either shows exact values. How the traces
// look, non-finite markers and event lines included, is chart_traces.js.
//
// Long series are drawn as per-bucket min/max (decimate.js), re-bucketed over
// the visible range when zooming. Redraws are coalesced with
// requestAnimationFrame: a batch-level run can push hundreds of points a
// second, the charts redraw at most once a frame (and less often when a redraw
// is slow).

import { WEBGL_TRACES_ALLOWED, themeColors, xAxisText, xOf, zoomedRange } from "./chart_axes.js";
import {
  PLOT_CONFIG,
  chartLayout,
  eventMarks,
  nonFiniteTrace,
  nonFiniteY,
  rawTrace,
  smoothedTrace,
  sourceStyle,
} from "./chart_traces.js";
import { decimate, lowerBound } from "./decimate.js";
import { Ema, clampWeight } from "./ema.js";
import { formatNumber } from "./format.js";
import { encodeNumber } from "./protocol.js";

// A trace longer than this is drawn as per-bucket min and max: a chart a few
// hundred pixels wide shows the same shape, and a redraw stays cheap however
// long the run is. Zooming in draws the visible range with fresh buckets.
const DRAW_BUCKETS = 1500;

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

// ---- one chart ---------------------------------------------------------------

/** Arrays of one source, extended in place while its series only grows at the end. */
function emptyCache(series, smoothing) {
  return {
    edits: series.edits,
    length: 0,
    x: [],
    y: [], // raw value, null where not finite
    sy: [], // smoothed value (null where the raw one is not finite)
    step: [],
    ema: new Ema(smoothing),
    mx: [], // non-finite markers: x, y on the overlay axis, text
    my: [],
    mtext: [],
    min: Infinity,
    max: -Infinity,
  };
}

/**
 * A Plotly chart in `container` (a div that becomes the Plotly graph div).
 * sources: [{label, series, epochOffset: 0 | 1, t0, color?, dash?, shape: "linear" | "hv",
 *            setting?: true, tail: () => ({step, epoch, t, y}) | null}]
 *          `setting`: a value that holds until changed (the learning rate): drawn
 *          as steps ("hv") and never smoothed, whatever the chart's smoothing.
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
    this.resetCache();
  }

  setLogY(on) {
    this.logY = on;
    this.invalidate();
  }

  setXMode(mode) {
    if (mode === this.xMode) return;
    this.xMode = mode;
    this.xRange = null; // a zoom in other units means nothing here
    this.resetCache();
  }

  setSmoothing(weight) {
    const w = clampWeight(weight);
    if (w === this.smoothing) return;
    this.smoothing = w;
    this.resetCache();
  }

  setEvents(events) {
    this.events = events;
    this.invalidate();
  }

  resetCache() {
    this.cache = this.sources.map(() => null);
    this.invalidate();
  }

  /** Mark for redraw (next animation frame). */
  invalidate() {
    if (!this.alive) return;
    dirty.add(this);
    requestFrame();
  }

  destroy() {
    this.alive = false;
    dirty.delete(this);
    if (this.drawn) window.Plotly.purge(this.el);
  }

  /** The cached arrays of source `i`, brought up to date with its series. */
  build(i) {
    const src = this.sources[i];
    const s = src.series;
    let c = this.cache[i];
    if (!c || c.edits !== s.edits || c.length > s.length) {
      c = emptyCache(s, this.smoothing);
      this.cache[i] = c;
    }
    for (let j = c.length; j < s.length; j++) {
      const x = xOf(this.xMode, src, s.step[j], s.epoch[j], s.t[j]);
      const v = s.value[j];
      if (v === null || v === undefined || x === null) continue;
      c.step.push(s.step[j]);
      c.x.push(x);
      if (Number.isFinite(v)) {
        c.y.push(v);
        c.sy.push(c.ema.next(v));
        if (v < c.min) c.min = v;
        if (v > c.max) c.max = v;
      } else {
        c.y.push(null); // a gap in the line where the value is not a number
        c.sy.push(null);
        c.mx.push(x);
        c.my.push(nonFiniteY(v));
        c.mtext.push(encodeNumber(v));
      }
    }
    c.length = s.length;
    return c;
  }

  /** The raw points of a source inside the zoomed range, with its tail (the LR line runs on). */
  visiblePoints(src, c) {
    const drawn = decimate(c.x, c.y, this.xRange, DRAW_BUCKETS);
    const tail = src.tail ? src.tail() : null;
    if (!tail) return drawn;
    const tx = xOf(this.xMode, src, tail.step, tail.epoch, tail.t);
    if (tx === null || !c.x.length || tx <= c.x[c.x.length - 1]) return drawn;
    return { ...drawn, x: drawn.x.concat([tx]), y: drawn.y.concat([tail.y]) };
  }

  /** Traces of every source: {lines (raw and smoothed, by source), markers, stats}. */
  sourceTraces(theme, axis) {
    const smoothing = this.smoothing > 0;
    const lines = [];
    const markers = [];
    const stats = { points: 0, nonFinite: 0, min: Infinity, max: -Infinity, maxX: -Infinity };
    this.sources.forEach((src, i) => {
      const c = this.build(i);
      const smoothed = smoothing && !src.setting; // a setting's steps were never in between
      const style = sourceStyle(src, {
        color: src.color || theme.series[i % theme.series.length],
        type: this.traceType,
        withMarkers: this.markers || c.x.length < 3,
        smoothing: smoothed,
        axis,
      });
      const raw = this.visiblePoints(src, c);
      lines.push(rawTrace(raw, style));
      if (smoothed) lines.push(smoothedTrace(decimate(c.x, c.sy, this.xRange, DRAW_BUCKETS), c.y, style));
      markers.push(nonFiniteTrace({ x: c.mx, y: c.my, text: c.mtext }, style, theme.danger));
      stats.points += c.y.length;
      stats.nonFinite += c.mx.length;
      stats.min = Math.min(stats.min, c.min);
      stats.max = Math.max(stats.max, c.max);
      if (raw.x.length) stats.maxX = Math.max(stats.maxX, raw.x[raw.x.length - 1]);
    });
    return { lines, markers, stats };
  }

  draw() {
    const theme = themeColors();
    const axis = xAxisText(this.xMode);
    const { lines, markers, stats } = this.sourceTraces(theme, axis);
    const t0 = this.sources.length ? this.sources[0].t0 : undefined;
    const events = eventMarks(this.events, this.xMode, t0, theme);
    this.revision += 1;
    const layout = chartLayout({
      theme,
      axis,
      uirevision: `${this.uirevision}:${this.xMode}`,
      revision: this.revision,
      height: this.el.clientHeight || 260,
      logY: this.logY,
      shapes: events.shapes,
      epochTicks: this.integerX && this.xMode === "epoch" ? stats.maxX : null,
      // One flat value (a constant learning rate): Plotly would span value ± 1.
      flat: !this.logY && stats.min === stats.max ? stats.min : null,
    });
    const traces = [...lines, ...markers];
    if (events.trace) traces.push(events.trace);
    this.render(traces, layout);
    this.describe(stats, events.shapes.length);
  }

  render(traces, layout) {
    window.Plotly.react(this.el, traces, layout, PLOT_CONFIG);
    if (!this.drawn) {
      // Zooming redraws the visible range at full detail (see decimate()).
      this.el.on("plotly_relayout", (ev) => this.onRelayout(ev));
    }
    this.drawn = true;
  }

  /** What was drawn, for screen readers (aria-label) and tests (data-*). */
  describe(stats, events) {
    const d = this.el.dataset;
    d.points = String(stats.points);
    d.nonfinite = String(stats.nonFinite);
    d.xMode = this.xMode;
    d.smoothing = String(this.smoothing);
    d.logY = String(this.logY);
    d.events = String(events);
    this.el.setAttribute(
      "aria-label",
      `${d.key} chart, ${stats.points} points` +
        (stats.nonFinite ? `, ${stats.nonFinite} not finite` : "") +
        this.lastValuesText(),
    );
  }

  onRelayout(ev) {
    const range = zoomedRange(ev);
    if (range === undefined) return;
    this.xRange = range;
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
