// The run list: one row per run, updated in place from /ws/live "run" messages.

import * as api from "./api.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatNumber, formatTime } from "./format.js";

/** Epochs done / total. The server sets `epoch` at each epoch end (null before the first). */
export function epochsDone(run) {
  return run.epoch === null || run.epoch === undefined ? 0 : run.epoch + 1;
}

export function epochsText(run) {
  const total = run.meta && run.meta.epochs;
  const done = epochsDone(run);
  return total ? `${done} / ${total}` : String(done);
}

/** "loss 0.31 · accuracy 0.91" from run.last_metrics (at most `max` entries). */
export function latestMetricsText(run, max = 4) {
  const entries = Object.entries(run.last_metrics || {}).filter(([k]) => k !== "learning_rate");
  entries.sort(([a], [b]) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
  const shown = entries.slice(0, max).map(([k, v]) => `${k} ${formatNumber(v)}`);
  if (entries.length > max) shown.push(`+${entries.length - max}`);
  return shown.join(" · ");
}

export function statusBadge(el, status) {
  setText(el, status || "unknown");
  el.dataset.status = status || "unknown";
}

export class RunsView {
  constructor() {
    this.runs = new Map(); // id → Run
    this.rows = new Map(); // id → <tr>
    this.section = $("#view-runs");
    this.body = $("#runs-body");
    this.empty = $("#runs-empty");
  }

  show() {
    this.section.hidden = false;
    document.title = "Runs · fitdeck";
  }

  hide() {
    this.section.hidden = true;
  }

  /** Fetch all runs (at start and after the live connection came back). */
  async load() {
    const runs = await api.listRuns();
    for (const run of runs) this.upsert(run, false);
    this.reorder();
  }

  /** A run from the API or a live "run" message. */
  upsert(run, reorder = true) {
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
    if (reorder && !known) this.reorder();
  }

  createRow(id) {
    const link = h("a", { href: `#/runs/${id}`, class: "run-link" });
    return h(
      "tr",
      { dataset: { runId: id } },
      h("td", { class: "name" }, link),
      h("td", { class: "project" }),
      h("td", { class: "status" }, h("span", { class: "badge" })),
      h("td", { class: "started" }),
      h("td", { class: "epochs num" }),
      h("td", { class: "metrics" }),
    );
  }

  fillRow(row, run) {
    row.dataset.status = run.status;
    setText(row.querySelector(".run-link"), run.name || run.id.slice(0, 8));
    setText(row.querySelector(".project"), run.project || "—");
    statusBadge(row.querySelector(".badge"), run.status);
    setText(row.querySelector(".started"), formatTime(run.created_at));
    setText(row.querySelector(".epochs"), epochsText(run));
    setText(row.querySelector(".metrics"), latestMetricsText(run));
  }

  reorder() {
    const ordered = [...this.runs.values()].sort((a, b) => (b.created_at || 0) - (a.created_at || 0));
    replaceChildren(this.body, ordered.map((run) => this.rows.get(run.id)));
    this.empty.hidden = ordered.length > 0;
    $("#runs-table").hidden = ordered.length === 0;
  }
}
