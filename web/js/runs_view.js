// The run list, paged from the server (GET /api/runs): the first PAGE rows at
// once, more as the list scrolls to its end ("Load more runs" too). The server
// filters (name text or regex, project, status) and sorts (click a header;
// again to reverse); this page never holds more runs than it has shown.
//
// Live: a /ws/live "run" message updates its row in place when the row is on
// the page; a run not on the page is added only when it sorts among the rows
// shown (a new run under the default sort), and bumps the total; any other
// is ignored. Rename and delete per row; delete every run the filter matches
// (running ones are kept) after a confirmation that names the count; each
// run's size and the database's.

import * as api from "./api.js";
import { askDelete, askRename } from "./dialogs.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatBytes, formatDuration, formatNumber, formatTime, formatValue } from "./format.js";
import { ENDED, LR_KEY, MAX_COMPARE, REGEX_CHARS, RUN_STATUSES } from "./protocol.js";

/** Runs fetched per page. */
export const PAGE = 100;
/** Typing settles this long before the server is asked. */
const FILTER_DELAY_MS = 40;
const hasRegexChars = (text) => [...text].some((c) => REGEX_CHARS.includes(c));

// The server's order of statuses for sort=status (server/runs_query.py).
const STATUS_ORDER = { running: 0, paused: 1, disconnected: 2, failed: 3, stopped: 4, finished: 5 };

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

const PLAIN_NOTE = "Not a regular expression: matching it as plain text.";

function isRegex(text) {
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

export class RunsView {
  constructor() {
    this.runs = new Map(); // id → Run, the rows on the page
    this.rows = new Map(); // id → <tr>
    this.order = []; // ids in the order shown
    this.selected = new Set();
    this.sort = { key: "started", dir: -1 };
    this.next = null; // cursor of the page after the last one shown
    this.total = 0; // runs the filter matches
    this.stats = { db_bytes: null, runs: 0, projects: [] };
    this.seq = 0; // one per load: the answer of an earlier one is dropped
    this.abort = null;
    this.loadingMore = false;
    this.loaded = false;
    this.filterTimer = 0;
    this.filterNote = "";
    this.section = $("#view-runs");
    this.body = $("#runs-body");
    this.empty = $("#runs-empty");
    this.filterInput = $("#runs-filter");
    this.projectSelect = $("#runs-project");
    this.statusSelect = $("#runs-status");
    this.moreButton = $("#runs-more");
    this.timer = null;
    replaceChildren(
      this.statusSelect,
      h("option", { value: "" }, "All statuses"),
      RUN_STATUSES.map((s) => h("option", { value: s }, s)),
    );
    this.filterInput.addEventListener("input", () => {
      clearTimeout(this.filterTimer);
      this.filterTimer = setTimeout(() => this.load(), FILTER_DELAY_MS);
    });
    this.projectSelect.addEventListener("change", () => this.load());
    this.statusSelect.addEventListener("change", () => this.load());
    for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
      th.querySelector("button").addEventListener("click", () => this.sortBy(th.dataset.sort));
    }
    $("#compare-button").addEventListener("click", () => {
      const ids = [...this.selected];
      if (ids.length >= 2 && ids.length <= MAX_COMPARE) location.hash = `#/compare/${ids.join(",")}`;
    });
    $("#runs-delete-matching").addEventListener("click", () => this.deleteMatching());
    this.moreButton.addEventListener("click", () => this.loadMore());
    // The end of the list in view: the next page.
    this.observer = new IntersectionObserver((entries) => {
      if (entries.some((e) => e.isIntersecting) && !this.section.hidden) this.loadMore();
    });
    this.observer.observe(this.moreButton);
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

  /** The filter as the controls say: {q, project, status}. */
  filter() {
    const status = this.statusSelect.value;
    return {
      q: this.filterInput.value.trim(),
      project: this.projectSelect.value,
      status: status ? [status] : [],
    };
  }

  /** The filter the page was loaded with: `q` escaped when it is matched as plain text. */
  effectiveFilter() {
    const filter = this.filter();
    if (this.filterNote === PLAIN_NOTE) filter.q = escapeRegex(filter.q);
    return filter;
  }

  filtered() {
    const f = this.filter();
    return Boolean(f.q || f.project || f.status.length);
  }

  sortParam() {
    return (this.sort.dir < 0 ? "-" : "") + this.sort.key;
  }

  /**
   * The first page for the current filter and sort (at start, when they change,
   * after the live connection came back). A `q` that is no regular expression
   * is asked for as plain text.
   */
  async load() {
    clearTimeout(this.filterTimer);
    const seq = ++this.seq;
    if (this.abort) this.abort.abort();
    this.abort = new AbortController();
    const signal = this.abort.signal;
    const filter = this.filter();
    let note = "";
    if (filter.q && hasRegexChars(filter.q) && !isRegex(filter.q)) {
      note = PLAIN_NOTE;
      filter.q = escapeRegex(filter.q);
    }
    const statsPromise = api.getStats().catch(() => null);
    let page;
    try {
      page = await api.listRuns({ filter, sort: this.sortParam(), limit: PAGE, signal });
    } catch (err) {
      if (seq !== this.seq || err.name === "AbortError") return;
      if (err instanceof api.ApiError && err.status === 400) {
        // A filter the server refused (not a regular expression to Python, too costly): say why.
        this.filterNote = err.message;
        this.replaceAll([], null, 0);
        return;
      }
      throw err;
    }
    if (seq !== this.seq) return;
    this.filterNote = note;
    // Runs pushed live while the page was on its way may be newer than it: keep them.
    const pushed = [...this.runs.values()].filter((run) => run.pushedSeq === seq);
    this.replaceAll(page.runs, page.next, page.total);
    for (const run of pushed) this.upsert(run);
    const stats = await statsPromise;
    if (seq !== this.seq || !stats) return;
    this.stats = stats;
    this.renderProjects();
    this.renderCount();
  }

  /** The next page, when there is one and none is on its way. */
  async loadMore() {
    if (!this.next || this.loadingMore) return;
    this.loadingMore = true;
    const seq = this.seq;
    const filter = this.effectiveFilter();
    try {
      const page = await api.listRuns({ filter, sort: this.sortParam(), limit: PAGE, cursor: this.next });
      if (seq !== this.seq) return;
      for (const run of page.runs) {
        if (this.runs.has(run.id)) continue; // added live meanwhile
        this.add(run, this.order.length);
      }
      this.next = page.next;
      this.total = page.total;
      this.render();
    } catch (err) {
      if (seq === this.seq) document.dispatchEvent(new CustomEvent("fitdeck:error", { detail: err }));
    } finally {
      this.loadingMore = false;
    }
  }

  replaceAll(runs, next, total) {
    this.runs.clear();
    this.rows.clear();
    this.order = [];
    for (const run of runs) this.add(run, this.order.length);
    this.next = next;
    this.total = total;
    this.loaded = true;
    replaceChildren(this.body, this.order.map((id) => this.rows.get(id)));
    this.render();
  }

  /** Put a run on the page at position `index` (its row is placed by render). */
  add(run, index) {
    this.runs.set(run.id, run);
    const row = this.createRow(run.id);
    this.rows.set(run.id, row);
    this.fillRow(row, run);
    this.order.splice(index, 0, run.id);
    const before = this.rows.get(this.order[index + 1]);
    if (before) this.body.insertBefore(row, before);
    else this.body.append(row);
  }

  /** A run from a live "run" message (or an answer such as a rename). */
  upsert(run) {
    if (!this.loaded) return;
    run.pushedSeq = this.seq;
    const known = this.runs.get(run.id);
    const matches = filterMatcher(this.effectiveFilter())(run);
    if (known) {
      // Keep the newest state when messages and a fetch cross.
      if ((known.updated_at || 0) > (run.updated_at || 0)) return;
      if (!matches) {
        this.drop(run.id);
        this.total = Math.max(0, this.total - 1);
        this.render();
        return;
      }
      run.size_bytes = run.size_bytes ?? known.size_bytes;
      this.runs.set(run.id, run);
      this.fillRow(this.rows.get(run.id), run); // in place: rows do not jump under the pointer
      return;
    }
    if (run.project && !this.stats.projects.includes(run.project)) {
      this.stats.projects = [...this.stats.projects, run.project].sort();
      this.renderProjects();
    }
    if (!matches) return;
    // Off the page unless it sorts before the last row shown (or every row is shown).
    const { key, dir } = this.sort;
    let index = this.order.findIndex((id) => compareRuns(run, this.runs.get(id), key, dir) < 0);
    if (index < 0) {
      if (this.next) return;
      index = this.order.length;
    }
    this.add(run, index);
    this.total += 1;
    this.stats.runs += 1;
    this.render();
  }

  /** A run was deleted (here or elsewhere). */
  remove(runId) {
    this.selected.delete(runId);
    if (!this.runs.has(runId)) return;
    this.drop(runId);
    this.total = Math.max(0, this.total - 1);
    this.stats.runs = Math.max(0, this.stats.runs - 1);
    this.render();
  }

  drop(runId) {
    this.runs.delete(runId);
    const row = this.rows.get(runId);
    if (row) row.remove();
    this.rows.delete(runId);
    this.order = this.order.filter((id) => id !== runId);
  }

  createRow(id) {
    const link = h("a", { href: `#/runs/${id}`, class: "run-link" });
    const check = h("input", { type: "checkbox", class: "pick" });
    check.checked = this.selected.has(id);
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
      h("td", { class: "size num" }),
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
    const size = row.querySelector(".size");
    setText(size, run.size_bytes === undefined ? "—" : formatBytes(run.size_bytes));
    size.title = "Estimated from the points it stored";
  }

  /** Live durations of the running runs on the page. */
  tick() {
    for (const run of this.runs.values()) {
      if (ENDED.includes(run.status)) continue;
      const row = this.rows.get(run.id);
      if (row) setText(row.querySelector(".duration"), formatDuration(durationOf(run)));
    }
  }

  sortBy(key) {
    if (this.sort.key === key) this.sort.dir = -this.sort.dir;
    else this.sort = { key, dir: key === "started" || key === "duration" || key === "epochs" ? -1 : 1 };
    this.renderSort();
    this.load();
  }

  renderSort() {
    const { key, dir } = this.sort;
    for (const th of document.querySelectorAll("#runs-table th[data-sort]")) {
      if (th.dataset.sort === key) th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      else th.removeAttribute("aria-sort");
    }
  }

  renderProjects() {
    const projects = this.stats.projects || [];
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
    const n = this.selected.size;
    const button = $("#compare-button");
    button.disabled = n < 2 || n > MAX_COMPARE;
    button.title = n > MAX_COMPARE ? `At most ${MAX_COMPARE} runs at once` : "";
    setText(button, n ? `Compare selected (${n})` : "Compare selected");
  }

  renderCount() {
    const all = Math.max(this.stats.runs || 0, this.total);
    const n = (x) => x.toLocaleString("en-US");
    let text = "";
    if (this.total || this.filtered()) {
      text = this.filtered() ? `${n(this.total)} of ${n(all)} runs` : `${n(this.total)} runs`;
      if (this.order.length < this.total) text += ` (${n(this.order.length)} shown)`;
    }
    if (Number.isFinite(this.stats.db_bytes)) text += `${text ? " · " : ""}database ${formatBytes(this.stats.db_bytes)}`;
    setText($("#runs-count"), text);
  }

  /** Counts, the empty state, the "more" button, the controls. */
  render() {
    setText($("#runs-filter-error"), this.filterNote);
    const none = this.total === 0 && !this.filtered() && this.order.length === 0;
    this.empty.hidden = !none;
    $("#runs-table").hidden = none;
    this.moreButton.hidden = !this.next;
    const bulk = $("#runs-delete-matching");
    bulk.disabled = !this.filtered() || this.total === 0;
    bulk.title = this.filtered() ? "" : "Filter the runs first";
    this.renderSort();
    this.renderCount();
    this.renderCompareButton();
  }

  /** Count what the filter matches, ask, then delete it (running runs are kept). */
  async deleteMatching() {
    const filter = this.effectiveFilter();
    let counts;
    try {
      counts = await api.deleteRuns(filter, { dryRun: true });
    } catch (err) {
      document.dispatchEvent(new CustomEvent("fitdeck:error", { detail: err }));
      return;
    }
    const deletable = counts.matched - counts.running;
    const n = (x) => x.toLocaleString("en-US");
    const parts = [];
    if (filter.q) parts.push(`name matching “${filter.q}”`);
    if (filter.project) parts.push(`project ${filter.project}`);
    if (filter.status.length) parts.push(`status ${filter.status.join(" or ")}`);
    let text = `${n(deletable)} run${deletable === 1 ? "" : "s"} (${parts.join(", ")}) and all their metrics, events and commands are deleted for good.`;
    if (counts.running) text += ` ${n(counts.running)} running run${counts.running === 1 ? " is" : "s are"} kept.`;
    if (!deletable) text = `No run to delete: ${counts.running ? "every matching run is running" : "nothing matches"}.`;
    const dialog = $("#bulk-delete-dialog");
    const confirm = $("#confirm-bulk-delete");
    const error = $("#bulk-delete-error");
    setText($("#bulk-delete-text"), text);
    setText(error, "");
    setText(confirm, `Delete ${n(deletable)} run${deletable === 1 ? "" : "s"}`);
    confirm.disabled = deletable === 0;
    const done = await new Promise((resolve) => {
      let busy = false;
      const onConfirm = async () => {
        if (busy) return;
        busy = true;
        try {
          await api.deleteRuns(filter);
          finish(true);
        } catch (err) {
          setText(error, err.message);
          busy = false;
        }
      };
      const onCancel = () => finish(false);
      const finish = (result) => {
        confirm.removeEventListener("click", onConfirm);
        $("#cancel-bulk-delete").removeEventListener("click", onCancel);
        dialog.removeEventListener("close", onCancel);
        if (dialog.open) dialog.close();
        resolve(result);
      };
      confirm.addEventListener("click", onConfirm);
      $("#cancel-bulk-delete").addEventListener("click", onCancel);
      dialog.addEventListener("close", onCancel);
      dialog.showModal();
    });
    if (done) await this.load();
    $("#runs-delete-matching").focus();
  }
}
