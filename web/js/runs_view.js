// The run list, paged from the server (GET /api/runs): the first PAGE rows at
// once, more as it scrolls ("Load more runs" too), filtered (name text or
// regex, project, status) and sorted (click a header; again to reverse) by the
// server. Live: a "run" message updates its row in place; a run not on the page
// is added only when it sorts among the rows shown, else ignored. Rename and
// delete per row; delete every run the filter matches (running ones are kept)
// after a confirmation that names the count.

import * as api from "./api.js";
import { askBulkDelete, askDelete, askRename } from "./dialogs.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatBytes, formatDuration } from "./format.js";
import { ENDED, MAX_COMPARE, RUN_STATUSES } from "./protocol.js";
import {
  PLAIN_NOTE,
  compareRuns,
  durationOf,
  escapeRegex,
  fillRunRow,
  filterMatcher,
  hasRegexChars,
  isRegex,
} from "./run_summary.js";

/** Runs fetched per page. */
export const PAGE = 100;
/** Typing settles this long before the server is asked. */
const FILTER_DELAY_MS = 40;

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
    fillRunRow(row, run);
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
      fillRunRow(this.rows.get(run.id), run); // in place: rows do not jump under the pointer
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
    const done = await askBulkDelete(filter, counts);
    if (done) await this.load();
    $("#runs-delete-matching").focus();
  }
}
