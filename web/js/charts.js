// Plotly charts of metric series (global `Plotly` from /static/vendor/plotly.min.js).
//
// A chart draws one or more sources (a Series and how to read its x) as WebGL
// lines. Non-finite values (NaN, ±Infinity) are never drawn as numbers: the
// line has a gap there, and a red x marker sits at the top edge (NaN,
// +Infinity) or bottom edge (-Infinity) of the plot, on an invisible overlay
// axis fixed to [0, 1], with hover text naming the value.
//
// Redraws are coalesced with requestAnimationFrame: a batch-level run can push
// hundreds of points a second, the charts redraw at most once a frame (and less
// often when a redraw is slow).

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
    series: [get("--series-1", "#1f6feb"), get("--series-2", "#e8710a"), get("--series-3", "#1a7f37")],
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
 * the line reaches the plot's edges.
 */
export function decimate(x, y, range, buckets) {
  let from = 0;
  let to = x.length;
  if (range) {
    from = Math.max(0, lowerBound(x, range[0]) - 1);
    to = Math.min(x.length, lowerBound(x, range[1]) + 1);
  }
  if (to - from <= buckets * 2) {
    return from === 0 && to === x.length ? { x, y } : { x: x.slice(from, to), y: y.slice(from, to) };
  }
  const outX = [];
  const outY = [];
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
      outX.push(x[i]);
      outY.push(y[i]);
    }
  }
  return { x: outX, y: outY };
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

// ---- one chart ---------------------------------------------------------------

/**
 * A Plotly chart in `container` (a div that becomes the Plotly graph div).
 * sources: [{label, series, x: "step" | "epoch" | "epoch+1", shape: "linear" | "hv",
 *            tail: () => ({x, y}) | null}]
 */
export class Chart {
  constructor(
    container,
    { xTitle, uirevision, logY = false, markers = false, gl = true, integerX = false, onZoom = null },
  ) {
    this.onZoom = onZoom; // called with the new x range ([x0, x1] or null) after a zoom
    this.integerX = integerX; // x is a count (epochs): no ticks between integers
    this.el = container;
    // WebGL traces; plain SVG past the ~16 WebGL contexts a browser keeps per page.
    this.traceType = gl && WEBGL_TRACES_ALLOWED ? "scattergl" : "scatter";
    this.xTitle = xTitle;
    this.uirevision = uirevision;
    this.logY = logY;
    this.markers = markers; // draw point markers on the lines (epoch view: few points)
    this.sources = [];
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
    if (!c || c.edits !== s.edits || c.length > s.length || c.xField !== src.x) {
      c = {
        edits: s.edits,
        length: 0,
        xField: src.x,
        x: [],
        y: [],
        mx: [],
        my: [],
        mtext: [],
        min: Infinity,
        max: -Infinity,
      };
      this.cache[i] = c;
    }
    for (let j = c.length; j < s.length; j++) {
      let x;
      if (src.x === "step") x = s.step[j];
      else if (src.x === "epoch+1") x = s.epoch[j] + 1;
      else x = s.epoch[j];
      const v = s.value[j];
      if (v === null || v === undefined) continue;
      if (Number.isFinite(v)) {
        c.x.push(x);
        c.y.push(v);
        if (v < c.min) c.min = v;
        if (v > c.max) c.max = v;
      } else {
        const name = nonFiniteName(v);
        c.x.push(x); // a gap in the line where the value is not a number
        c.y.push(null);
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
    const traces = [];
    const markerTraces = [];
    let points = 0;
    let nonFinite = 0;
    let min = Infinity;
    let max = -Infinity;
    this.sources.forEach((src, i) => {
      const c = this.build(i);
      const color = theme.series[i % theme.series.length];
      const label = plotlyText(src.label);
      let { x, y } = decimate(c.x, c.y, this.xRange, DRAW_BUCKETS);
      const tail = src.tail ? src.tail() : null;
      if (tail && c.x.length && tail.x > c.x[c.x.length - 1]) {
        x = x.concat([tail.x]);
        y = y.concat([tail.y]);
      }
      traces.push({
        type: this.traceType,
        mode: this.markers || c.x.length < 3 ? "lines+markers" : "lines",
        name: label,
        x,
        y,
        connectgaps: false,
        line: { color, width: 1.5, shape: src.shape || "linear" },
        marker: { color, size: 5 },
        hovertemplate: `${label} = %{y:.6g}<br>${plotlyText(this.xTitle)} %{x}<extra></extra>`,
      });
      markerTraces.push({
        type: this.traceType,
        mode: "markers",
        name: `${label}: NaN/Inf`,
        x: c.mx,
        y: c.my,
        text: c.mtext,
        yaxis: "y2",
        showlegend: c.mx.length > 0,
        marker: { symbol: "x", size: 10, color: theme.danger, line: { width: 1, color: theme.danger } },
        hovertemplate: `${label} = %{text}<br>${plotlyText(this.xTitle)} %{x}<extra></extra>`,
      });
      points += c.x.length;
      nonFinite += c.mx.length;
      min = Math.min(min, c.min);
      max = Math.max(max, c.max);
    });
    this.revision += 1;
    const layout = {
      uirevision: this.uirevision,
      datarevision: this.revision,
      autosize: true,
      height: this.el.clientHeight || 260,
      margin: { l: 60, r: 12, t: 28, b: 40 },
      paper_bgcolor: theme.bg,
      plot_bgcolor: theme.bg,
      font: { color: theme.fg, size: 12, family: "system-ui, sans-serif" },
      hovermode: "closest",
      hoverlabel: { namelength: -1 },
      legend: { orientation: "h", x: 0, xanchor: "left", y: 1.0, yanchor: "bottom", font: { size: 11 } },
      xaxis: {
        title: { text: plotlyText(this.xTitle), standoff: 6 },
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
    };
    if (this.integerX) {
      let maxX = 1;
      for (const t of traces) if (t.x.length) maxX = Math.max(maxX, t.x[t.x.length - 1]);
      layout.xaxis.tick0 = 0;
      layout.xaxis.dtick = Math.max(1, Math.ceil(maxX / 10));
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
    window.Plotly.react(this.el, [...traces, ...markerTraces], layout, config);
    if (!this.drawn) {
      // Zooming redraws the visible range at full detail (see decimate()).
      this.el.on("plotly_relayout", (ev) => this.onRelayout(ev));
    }
    this.drawn = true;
    this.el.dataset.points = String(points);
    this.el.dataset.nonfinite = String(nonFinite);
    this.el.setAttribute(
      "aria-label",
      `${this.el.dataset.key} chart, ${points} points` +
        (nonFinite ? `, ${nonFinite} not finite` : "") +
        this.lastValuesText(),
    );
  }

  onRelayout(ev) {
    let range = this.xRange;
    if (ev["xaxis.autorange"]) range = null;
    else if (ev["xaxis.range[0]"] !== undefined) range = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
    else if (Array.isArray(ev["xaxis.range"])) range = ev["xaxis.range"];
    else return;
    this.xRange = range;
    this.invalidate();
    if (this.onZoom) this.onZoom(range);
  }

  lastValuesText() {
    const parts = this.sources
      .filter((s) => s.series.length)
      .map((s) => `${s.label} ${formatNumber(s.series.value[s.series.length - 1])}`);
    return parts.length ? `; latest ${parts.join(", ")}` : "";
  }
}
