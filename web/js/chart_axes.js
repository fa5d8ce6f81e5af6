// What every chart shares: the theme's colors, whether WebGL traces may be
// used, and the x axes (step, epoch, relative time, wall time).

import { plotlyText } from "./format.js";

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

export const X_MODES = ["step", "epoch", "relative", "wall"];
const X_TITLES = { step: "step", epoch: "epoch", relative: "time since start (s)", wall: "wall time" };
// Plotly shows a date axis's milliseconds as UTC: shifting by the local offset shows local time.
const TZ_SHIFT_MS = new Date().getTimezoneOffset() * 60000;

/** How an x axis is labelled: {title, hover (a Plotly hover template field), type}. */
export function xAxisText(mode) {
  const wall = mode === "wall";
  return {
    title: plotlyText(X_TITLES[mode] || mode),
    hover: wall ? "%{x|%H:%M:%S}" : "%{x:.6~g}",
    type: wall ? "date" : "linear",
  };
}

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

/**
 * The x range a Plotly relayout event zoomed to: [x0, x1] as numbers, null
 * when it went back to the whole range, undefined when the x axis did not move.
 */
export function zoomedRange(ev) {
  if (ev["xaxis.autorange"]) return null;
  let range;
  if (ev["xaxis.range[0]"] !== undefined) range = [ev["xaxis.range[0]"], ev["xaxis.range[1]"]];
  else if (Array.isArray(ev["xaxis.range"])) range = ev["xaxis.range"];
  else return undefined;
  return range.map(xNumber);
}
