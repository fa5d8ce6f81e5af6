// A run's summary as the runs table and the run page show it, pure: its epochs,
// duration, latest metrics and key params as text, its status badge, and the
// client's mirror of the server's filter and sort (server/runs_query.py).

import { setText } from "./dom.js";
import { formatBytes, formatDuration, formatNumber, formatTime, formatValue } from "./format.js";
import { LR_KEY, REGEX_CHARS } from "./protocol.js";

export const hasRegexChars = (text) => [...text].some((c) => REGEX_CHARS.includes(c));

// The server's order of statuses for sort=status (server/runs_query.py).
export const STATUS_ORDER = { running: 0, paused: 1, disconnected: 2, failed: 3, stopped: 4, finished: 5 };

/** Epochs done / total. The server sets `epoch` at each epoch end (null before the first). */
export function epochsDone(run) {
  return run.epoch === null || run.epoch === undefined ? 0 : run.epoch + 1;
}

export function epochsText(run) {
  const total = run.meta && run.meta.epochs;
  const done = epochsDone(run);
  return total ? `${done} / ${total}` : String(done);
}

/** Seconds from start to end (or to now while it runs; to the last message when it lost its stream). */
export function durationOf(run, now = Date.now() / 1000) {
  if (!run.created_at) return null;
  let end = run.ended_at;
  if (!end) end = run.status === "running" || run.status === "paused" ? now : run.updated_at;
  return Math.max(0, (end || now) - run.created_at);
}

/** "loss 0.31 · accuracy 0.91" from run.last_metrics (at most `max` entries). */
export function latestMetricsText(run, max = 4) {
  const entries = Object.entries(run.last_metrics || {}).filter(([k]) => k !== LR_KEY);
  entries.sort(([a], [b]) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
  const shown = entries.slice(0, max).map(([k, v]) => `${k} ${formatNumber(v)}`);
  if (entries.length > max) shown.push(`+${entries.length - max}`);
  return shown.join(" · ");
}

/** "dropout=0.2 · units=64" from run.params (at most `max` entries). */
export function keyParamsText(run, max = 3) {
  const entries = Object.entries(run.params || {});
  const shown = entries.slice(0, max).map(([k, v]) => `${k}=${formatValue(v)}`);
  if (entries.length > max) shown.push(`+${entries.length - max}`);
  return shown.join(" · ");
}

export function statusBadge(el, status) {
  setText(el, status || "unknown");
  el.dataset.status = status || "unknown";
}

/**
 * The client's reading of a filter ({q, project, status}), for runs pushed live:
 * `q` is a case-insensitive regular expression when it holds one of its
 * characters, else a substring, as on the server.
 */
export function filterMatcher({ q, project, status } = {}) {
  let re = null;
  const text = String(q || "");
  if (text && hasRegexChars(text)) {
    try {
      re = new RegExp(text, "i");
    } catch {
      re = /$^/; // what the server refused matches nothing
    }
  }
  const lower = text.toLowerCase();
  return (run) =>
    (!project || run.project === project) &&
    (!status || !status.length || status.includes(run.status)) &&
    (!text || (re ? re.test(run.name || "") : (run.name || "").toLowerCase().includes(lower)));
}

export const PLAIN_NOTE = "Not a regular expression: matching it as plain text.";

export function isRegex(text) {
  try {
    new RegExp(text, "i");
    return true;
  } catch {
    return false;
  }
}

/** `text` with every regular-expression character escaped (matches itself). */
export function escapeRegex(text) {
  return [...String(text)].map((c) => (REGEX_CHARS.includes(c) ? `\\${c}` : c)).join("");
}

/** The value a run sorts by on the server, for sort `key`. */
export const SORT_KEYS = {
  started: (r) => r.created_at || 0,
  name: (r) => (r.name || "").toLowerCase(),
  project: (r) => r.project || "",
  status: (r) => STATUS_ORDER[r.status] ?? 6,
  duration: (r) => (r.ended_at || r.updated_at || 0) - (r.created_at || 0),
  epochs: (r) => (r.epoch === null || r.epoch === undefined ? -1 : r.epoch),
};

/** Compare two runs as the server orders them: `dir` 1 ascending, -1 descending. */
export function compareRuns(a, b, key, dir) {
  const get = SORT_KEYS[key];
  const x = get(a);
  const y = get(b);
  const c = x < y ? -1 : x > y ? 1 : a.id < b.id ? -1 : a.id > b.id ? 1 : 0;
  return c * dir;
}

/** Fill a runs-table row (made by RunsView.createRow) with `run`, as text. */
export function fillRunRow(row, run) {
  row.dataset.status = run.status;
  const label = run.name || run.id.slice(0, 8);
  setText(row.querySelector(".run-link"), label);
  row.querySelector(".pick").setAttribute("aria-label", `Select ${label} to compare`);
  row.querySelector(".rename").setAttribute("aria-label", `Rename ${label}`);
  const del = row.querySelector(".delete");
  del.setAttribute("aria-label", `Delete ${label}`);
  const live = run.status === "running" || run.status === "paused";
  del.disabled = live;
  del.title = live ? "Stop it or let it end before deleting it" : "";
  setText(row.querySelector(".project"), run.project || "—");
  statusBadge(row.querySelector(".badge"), run.status);
  setText(row.querySelector(".started"), formatTime(run.created_at));
  setText(row.querySelector(".duration"), formatDuration(durationOf(run)));
  setText(row.querySelector(".epochs"), epochsText(run));
  setText(row.querySelector(".metrics"), latestMetricsText(run));
  const params = row.querySelector(".params");
  setText(params, keyParamsText(run));
  params.title = Object.keys(run.params || {}).length ? JSON.stringify(run.params) : "";
  const size = row.querySelector(".size");
  setText(size, run.size_bytes === undefined ? "—" : formatBytes(run.size_bytes));
  size.title = "Estimated from the points it stored";
}
