// Number, time and text formatting shared by the views.
//
// Numbering: the server stores what Keras passes to callbacks, a 0-based
// epoch index and a 0-based batch index within the epoch; the page shows both
// 1-based, as Keras' progress bar does ("Epoch 1/5" is the first epoch). A
// step is the count of batches done in the run (the first batch ends step 1).

import { encodeNumber } from "./protocol.js";

/** A metric value for people: 4 significant digits, NaN/±Infinity spelled out. */
export function formatNumber(v, digits = 4) {
  if (v === null || v === undefined) return "—";
  if (!Number.isFinite(v)) return encodeNumber(v); // spelled as on the wire
  if (v === 0) return "0";
  const abs = Math.abs(v);
  if (abs >= 1e5 || abs < 1e-3) return v.toExponential(digits - 1).replace(/\.?0+e/, "e");
  return String(Number(v.toPrecision(digits)));
}

/** A learning rate: enough digits to tell 0.001 from 0.0011. */
export function formatLr(v) {
  if (v === null || v === undefined) return "—";
  if (!Number.isFinite(v)) return formatNumber(v);
  return String(Number(v.toPrecision(6)));
}

/** Unix seconds → local date and time ("2025-11-21 15:04:05"). */
export function formatTime(seconds) {
  if (seconds === null || seconds === undefined) return "—";
  const d = new Date(seconds * 1000);
  const pad = (n) => String(n).padStart(2, "0");
  return (
    `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())} ` +
    `${pad(d.getHours())}:${pad(d.getMinutes())}:${pad(d.getSeconds())}`
  );
}

/** Unix seconds → local time only ("15:04:05"). */
export function formatClock(seconds) {
  return formatTime(seconds).slice(11);
}

/** A duration in seconds → "1h 02m", "3m 04s", "12s". */
export function formatDuration(seconds) {
  if (!Number.isFinite(seconds) || seconds < 0) return "—";
  const s = Math.round(seconds);
  if (s < 60) return `${s}s`;
  const m = Math.floor(s / 60);
  if (m < 60) return `${m}m ${String(s % 60).padStart(2, "0")}s`;
  const h = Math.floor(m / 60);
  return `${h}h ${String(m % 60).padStart(2, "0")}m`;
}

/**
 * Text for Plotly titles, legends and hover labels. Plotly reads a small HTML
 * subset in those strings (<b>, <a href>, <br>); a metric name must show as
 * written, so its markup characters become entities, which Plotly shows as text.
 */
export function plotlyText(s) {
  return String(s)
    .replace(/&/g, "&amp;")
    .replace(/</g, "&lt;")
    .replace(/>/g, "&gt;")
    .replace(/\{/g, "&#123;"); // no %{...} template fields inside hover texts
}

/** A params/meta value as short text (objects as compact JSON). */
export function formatValue(v) {
  if (v === null || v === undefined) return "—";
  if (typeof v === "number") return formatLr(v);
  if (typeof v === "string") return v;
  return JSON.stringify(v);
}

/** "epoch 2, batch 3" for the 0-based epoch and batch indices Keras uses (shown 1-based). */
export function formatWhere(epoch, batch) {
  const e = Number.isInteger(epoch) ? `epoch ${epoch + 1}` : null;
  const b = Number.isInteger(batch) ? `batch ${batch + 1}` : null;
  return [e, b].filter(Boolean).join(", ");
}

/** The 1-based epoch a batch-scope progress value (e + b / steps) falls in. */
export function epochOfProgress(progress) {
  return Number.isFinite(progress) ? Math.floor(progress + 1e-9) + 1 : null;
}
