// fetch wrappers for docs/http_api.md, and decoding of what they answer.
//
// Numbers are decoded with protocol.js's codec (NaN and ±Infinity arrive as
// strings), so the rest of the page deals with real JavaScript numbers only.

import { decodeNumber } from "./protocol.js";

/** A copy of `logs` ({key: wire value}) with every value decoded. */
export function decodeLogs(logs) {
  const out = {};
  for (const [key, value] of Object.entries(logs || {})) out[key] = decodeNumber(value);
  return out;
}

/** Live metric points ({step, epoch, t, logs}) with their logs decoded. */
export function decodePoints(points) {
  return points.map((p) => ({ ...p, logs: decodeLogs(p.logs) }));
}

/** A Run object with its numbers decoded (lr, last_metrics). Mutates and returns it. */
export function decodeRun(run) {
  if (!run) return run;
  run.lr = decodeNumber(run.lr);
  run.last_metrics = decodeLogs(run.last_metrics);
  return run;
}

/** A Command with its lr decoded. Mutates and returns it. */
export function decodeCommand(command) {
  if (command && command.lr !== null && command.lr !== undefined) {
    command.lr = decodeNumber(command.lr);
  }
  return command;
}

/** An error answered by the server: `status` is the HTTP status, `message` safe to show. */
export class ApiError extends Error {
  constructor(status, message) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

async function request(path, { method = "GET", body, signal } = {}) {
  const init = { method, credentials: "same-origin", headers: { Accept: "application/json" }, signal };
  if (body !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err.name === "AbortError") throw err;
    throw new ApiError(0, `Cannot reach the fitdeck server (${err.message}).`);
  }
  let data = null;
  try {
    data = await response.json();
  } catch {
    data = null;
  }
  if (!response.ok) {
    // A browser is signed in by its cookie: say how to get one, not how to send a header.
    const message =
      response.status === 401
        ? "Not signed in: open the dashboard URL printed by `fitdeck serve` (it ends in ?token=…)."
        : (data && data.error && data.error.message) ||
          `The server answered ${response.status} ${response.statusText} to ${method} ${path}.`;
    throw new ApiError(response.status, message);
  }
  return data;
}

const runPath = (runId) => `/api/runs/${encodeURIComponent(runId)}`;

/** Query parameters of a runs filter ({q, project, status: [...]}), empty ones left out. */
function filterParams({ q, project, status } = {}) {
  const params = new URLSearchParams();
  if (q) params.set("q", q);
  if (project) params.set("project", project);
  for (const s of status || []) params.append("status", s);
  return params;
}

/**
 * One page of runs: {runs, next, total}. `filter` {q, project, status}, `sort` such as
 * "-started", `cursor` the `next` of the page before, `signal` an AbortSignal.
 */
export async function listRuns({ filter, sort, limit, cursor, signal } = {}) {
  const params = filterParams(filter);
  if (sort) params.set("sort", sort);
  if (limit) params.set("limit", String(limit));
  if (cursor) params.set("cursor", cursor);
  const data = await request(`/api/runs?${params}`, { signal });
  return { runs: (data.runs || []).map(decodeRun), next: data.next ?? null, total: data.total ?? 0 };
}

/** Delete the runs a filter matches, running ones excepted: {matched, deleted, running}. */
export async function deleteRuns(filter, { dryRun = false } = {}) {
  const body = { ...(filter.q ? { q: filter.q } : {}), dry_run: dryRun };
  if (filter.project) body.project = filter.project;
  if (filter.status && filter.status.length) body.status = filter.status;
  return request("/api/runs/delete", { method: "POST", body });
}

/** {db_bytes, runs, projects} */
export async function getStats() {
  return request("/api/stats");
}

/**
 * One scope of many runs in one request: {runs: {id: {run, series}}, missing: [id]},
 * each series with its values decoded.
 */
export async function getManyMetrics(runIds, scope, { keys, maxPoints } = {}) {
  const params = new URLSearchParams({ scope });
  for (const id of runIds) params.append("run_id", id);
  for (const key of keys || []) params.append("key", key);
  if (maxPoints !== undefined) params.set("max_points", String(maxPoints));
  const data = await request(`/api/metrics?${params}`);
  for (const entry of Object.values(data.runs || {})) {
    decodeRun(entry.run);
    for (const s of Object.values(entry.series || {})) s.value = s.value.map(decodeNumber);
  }
  return { runs: data.runs || {}, missing: data.missing || [] };
}

/** {run, keys: {batch: [...], epoch: [...]}} */
export async function getRun(runId) {
  const data = await request(runPath(runId));
  decodeRun(data.run);
  data.keys = data.keys || { batch: [], epoch: [] };
  return data;
}

/**
 * Metric series of one scope: {key: {step, epoch, t, value, downsampled}} with
 * every value decoded.
 */
export async function getMetrics(runId, scope, { keys, maxPoints, start, end } = {}) {
  const params = new URLSearchParams({ scope });
  for (const key of keys || []) params.append("key", key);
  if (maxPoints !== undefined) params.set("max_points", String(maxPoints));
  if (start !== undefined) params.set("start", String(start));
  if (end !== undefined) params.set("end", String(end));
  const data = await request(`${runPath(runId)}/metrics?${params}`);
  const series = data.series || {};
  for (const s of Object.values(series)) s.value = s.value.map(decodeNumber);
  return series;
}

/** Commands of a run, oldest first. */
export async function getCommands(runId) {
  const data = await request(`${runPath(runId)}/commands`);
  return (data.commands || []).map(decodeCommand);
}

/** Events of a run in order of seq. */
export async function getEvents(runId) {
  const data = await request(`${runPath(runId)}/events`);
  return data.events || [];
}

/** POST a command ({kind: "stop"} or {kind: "set_lr", lr}); returns the stored command. */
export async function postCommand(runId, command) {
  const data = await request(`${runPath(runId)}/commands`, { method: "POST", body: command });
  return decodeCommand(data.command);
}

/** URL of the CSV export of a run. */
export function exportUrl(runId) {
  return `${runPath(runId)}/export.csv`;
}

/** URL of the JSON export (every series at full resolution). */
export function exportJsonUrl(runId) {
  return `${runPath(runId)}/export.json`;
}

/** URL of the standalone HTML report (a download). */
export function reportUrl(runId) {
  return `${runPath(runId)}/report.html`;
}

/** Rename a run; returns the run. */
export async function renameRun(runId, name) {
  const data = await request(runPath(runId), { method: "PATCH", body: { name } });
  return decodeRun(data.run);
}

/** Delete a run and all its data (409 while it is running). */
export async function deleteRun(runId) {
  await request(runPath(runId), { method: "DELETE" });
}
