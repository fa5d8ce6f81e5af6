// The run list: one row per run, updated in place from /ws/live "run" and
// "run_deleted" messages. A text filter (a regular expression, or plain text
// when it is not one) over name, project, id, status and params; a project
// filter; sorting by any column (click its header; again to reverse); rename
// and delete per row; tick two or more rows to compare them.

import * as api from "./api.js";
import { askDelete, askRename } from "./dialogs.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatDuration, formatNumber, formatTime, formatValue } from "./format.js";
import { ENDED, LR_KEY } from "./protocol.js";

const STATUS_ORDER = { running: 0, paused: 0, disconnected: 1, failed: 2, stopped: 3, finished: 4 };

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

/** A predicate for the filter text: a case-insensitive regex, or plain text if it is not one. */
export function runMatcher(text) {
  const q = String(text || "").trim();
  if (!q) return { test: () => true, error: "" };
  let re = null;
  let error = "";
  try {
    re = new RegExp(q, "i");
  } catch {
    error = "Not a regular expression: matching it as plain text.";
  }
  const lower = q.toLowerCase();
  return {
    error,
    test(run) {
      const hay = [run.name, run.project, run.id, run.status, JSON.stringify(run.params || {})].join("\n");
      return re ? re.test(hay) : hay.toLowerCase().includes(lower);
    },
  };
}

const SORT_KEYS = {
  name: (r) => (r.name || "").toLowerCase(),
  project: (r) => (r.project || "").toLowerCase(),
  status: (r) => STATUS_ORDER[r.status] ?? 9,
  created_at: (r) => r.created_at || 0,
  duration: (r) => durationOf(r) ?? -1,
  epochs: (r) => epochsDone(r),
  loss: (r) => {
    const v = (r.last_metrics || {}).loss;
    return Number.isFinite(v) ? v : Infinity;
  },
};

export class RunsView {
  constructor() {
    this.runs = new Map(); // id → Run
    this.rows = new Map(); // id → <tr>
    this.selected = new Set();
    this.sort = { key: "created_at", dir: -1 };
    this.section = $("#view-runs");
    this.body = $("#runs-body");
    this.empty = $("#runs-empty");
    this.filterInput = $("#runs-filter");
    this.projectSelect = $("#runs-project");
    this.frame = 0;
    this.timer = null;
    this.filterInput.addEventListener("input", () => this.refresh());
    this.projectSelect.addEventListener("change", () => this.refresh());
    for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.sortBy(th.dataset.sort));
    }
    $("#compare-button").addEventListener("click", () => {
      const ids = [...this.selected].filter((id) => this.runs.has(id));
      if (ids.length >= 2) location.hash = `#/compare/${ids.join(",")}`;
    });
  }

  show() {
    this.section.hidden = false;
    document.title = "Runs · fitdeck";
    clearInterval(this.timer);
    this.timer = setInterval(() => this.tick(), 1000);
  }

  hide() {
    this.section.hidden = true;
    clearInterval(this.timer);
  }

  /** Fetch all runs (at start and after the live connection came back). */
  async load() {
    const runs = await api.listRuns();
    const ids = new Set(runs.map((r) => r.id));
    for (const id of [...this.runs.keys()]) if (!ids.has(id)) this.remove(id, false);
    for (const run of runs) this.upsert(run, false);
    this.refresh();
  }

  /** A run from the API or a live "run" message. */
  upsert(run, refresh = true) {
    const known = this.runs.get(run.id);
    // Keep the newest state when messages and a fetch cross.
    if (known && (known.updated_at || 0) > (run.updated_at || 0)) return;
    this.runs.set(run.id, run);
    let row = this.rows.get(run.id);
    if (!row) {
      row = this.createRow(run.id);
      this.rows.set(run.id, row);
    }
    this.fillRow(row, run);
    if (refresh) this.scheduleRefresh();
  }

  /** A run was deleted (here or elsewhere). */
  remove(runId, refresh = true) {
    this.runs.delete(runId);
    this.selected.delete(runId);
    const row = this.rows.get(runId);
    if (row) row.remove();
    this.rows.delete(runId);
    if (refresh) this.scheduleRefresh();
  }

  scheduleRefresh() {
    if (this.frame) return;
    this.frame = requestAnimationFrame(() => {
      this.frame = 0;
      this.refresh();
    });
  }

  createRow(id) {
    const link = h("a", { href: `#/runs/${id}`, class: "run-link" });
    const check = h("input", { type: "checkbox", class: "pick" });
    check.addEventListener("change", () => {
      if (check.checked) this.selected.add(id);
      else this.selected.delete(id);
      this.renderCompareButton();
    });
    const rename = h("button", { type: "button", class: "small-button rename" }, "Rename");
    rename.addEventListener("click", async () => {
      const run = this.runs.get(id);
      if (!run) return;
      const renamed = await askRename(run);
      if (renamed) this.upsert(renamed);
      rename.focus();
    });
    const del = h("button", { type: "button", class: "small-button danger-outline delete" }, "Delete");
    del.addEventListener("click", async () => {
      const run = this.runs.get(id);
      if (!run) return;
      if (await askDelete(run)) {
        this.remove(id);
        this.filterInput.focus();
      } else {
        del.focus();
      }
    });
    return h(
      "tr",
      { dataset: { runId: id } },
      h("td", { class: "select" }, check),
      h("td", { class: "name" }, link),
      h("td", { class: "project" }),
      h("td", { class: "status" }, h("span", { class: "badge" })),
      h("td", { class: "started" }),
      h("td", { class: "duration num" }),
      h("td", { class: "epochs num" }),
      h("td", { class: "metrics" }),
      h("td", { class: "params" }),
      h("td", { class: "actions" }, rename, del),
    );
  }

  fillRow(row, run) {
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
  }

  /** Live durations of running runs. */
  tick() {
    for (const run of this.runs.values()) {
      if (ENDED.includes(run.status)) continue;
      const row = this.rows.get(run.id);
      if (row) setText(row.querySelector(".duration"), formatDuration(durationOf(run)));
    }
  }

  sortBy(key) {
    if (this.sort.key === key) this.sort.dir = -this.sort.dir;
    else this.sort = { key, dir: key === "created_at" || key === "duration" || key === "epochs" ? -1 : 1 };
    this.refresh();
  }

  renderProjects() {
    const projects = [...new Set([...this.runs.values()].map((r) => r.project).filter(Boolean))].sort();
    const current = this.projectSelect.value;
    const options = [...this.projectSelect.options].slice(1).map((o) => o.value);
    if (options.join("\n") !== projects.join("\n")) {
      replaceChildren(
        this.projectSelect,
        h("option", { value: "" }, "All projects"),
        projects.map((p) => h("option", { value: p }, p)),
      );
      this.projectSelect.value = projects.includes(current) ? current : "";
    }
  }

  renderCompareButton() {
    const n = [...this.selected].filter((id) => this.runs.has(id)).length;
    const button = $("#compare-button");
    button.disabled = n < 2;
    setText(button, n ? `Compare selected (${n})` : "Compare selected");
  }

  /** Filter, sort and lay out the rows. */
  refresh() {
    this.renderProjects();
    const matcher = runMatcher(this.filterInput.value);
    setText($("#runs-filter-error"), matcher.error);
    const project = this.projectSelect.value;
    const all = [...this.runs.values()];
    const shown = all.filter((r) => (!project || r.project === project) && matcher.test(r));
    const { key, dir } = this.sort;
    const get = SORT_KEYS[key] || SORT_KEYS.created_at;
    shown.sort((a, b) => {
      const x = get(a);
      const y = get(b);
      const c = x < y ? -1 : x > y ? 1 : 0;
      return c * dir || (b.created_at || 0) - (a.created_at || 0);
    });
    replaceChildren(this.body, shown.map((run) => this.rows.get(run.id)));
    for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
    this.empty.hidden = all.length > 0;
    $("#runs-table").hidden = all.length === 0;
    setText(
      $("#runs-count"),
      all.length === 0 ? "" : shown.length === all.length ? `${all.length} runs` : `${shown.length} of ${all.length} runs`,
    );
    this.renderCompareButton();
  }
}
