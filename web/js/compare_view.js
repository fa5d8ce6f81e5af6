// Several runs overlaid: one chart per metric (or the one picked), one color
// per run, `val_` dashed beside its metric; the same x axis and smoothing
// controls as the run page; and a table of the params that differ between the
// runs. Live like the run page: subscribe, wait for "subscribed", fetch, merge.

import * as api from "./api.js";
import { Chart, themeColors } from "./charts.js";
import { ChartControls } from "./controls.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatValue } from "./format.js";
import { chartKey } from "./run_view.js";
import { statusBadge } from "./runs_view.js";
import { RunData } from "./store.js";

const MAX_POINTS = { batch: 2000, epoch: 5000 };
const LR_KEY = "learning_rate";
const SUBSCRIBE_WAIT_MS = 3000;
const MAX_GL_CHARTS = 10;

/** Param rows whose value is not the same in every run: [{key, values: [text per run]}]. */
export function differingParams(runs) {
  const rows = [];
  const described = runs.map(describe);
  const keys = [...new Set(described.flatMap((d) => Object.keys(d)))];
  for (const key of keys) {
    const values = described.map((d) => (Object.hasOwn(d, key) ? formatValue(d[key]) : "—"));
    if (new Set(values).size > 1) rows.push({ key, values });
  }
  return rows;
}

/** What tells runs apart: their params, then what Keras reported. */
function describe(run) {
  const meta = run.meta || {};
  const out = { ...(run.params || {}) };
  const opt = meta.optimizer || {};
  if (opt.class_name) out.optimizer = opt.class_name;
  const lr = opt.config && opt.config.learning_rate;
  if (lr !== undefined) out["initial LR"] = lr;
  for (const k of ["epochs", "batch_size", "param_count", "model_name"]) {
    if (meta[k] !== undefined && meta[k] !== null) out[k] = meta[k];
  }
  return out;
}

export class CompareView {
  constructor(live) {
    this.live = live;
    this.section = $("#view-compare");
    this.ids = [];
    this.scope = "epoch";
    this.charts = new Map(); // base → {card, chart, signature}
    this.loadToken = 0;
    this.controls = new ChartControls($("#compare-toolbar"), () => this.applyControls());
    for (const b of document.querySelectorAll("#compare-scope button")) {
      b.addEventListener("click", () => this.setScope(b.dataset.scope));
    }
    $("#compare-metric").addEventListener("change", () => this.syncCharts(true));
  }

  show(ids) {
    this.section.hidden = false;
    document.title = "Compare · fitdeck";
    if (ids.join(",") !== this.ids.join(",")) this.open(ids);
    else this.controls.refresh();
  }

  hide() {
    this.section.hidden = true;
    if (this.ids.length) this.close();
  }

  open(ids) {
    this.close();
    this.ids = ids;
    this.runs = new Map(); // id → Run
    this.data = new Map(ids.map((id) => [id, new RunData()]));
    this.buffer = [];
    this.loaded = false;
    this.controls.refresh();
    this.renderScope();
    this.renderRuns();
    this.live.subscribe(ids);
    clearTimeout(this.subscribeTimer);
    this.subscribeTimer = setTimeout(() => {
      if (this.ids === ids && !this.loaded) this.load();
    }, SUBSCRIBE_WAIT_MS);
  }

  close() {
    if (!this.ids.length) return;
    this.loadToken += 1;
    clearTimeout(this.subscribeTimer);
    this.live.subscribe([]);
    this.destroyCharts();
    this.ids = [];
  }

  destroyCharts() {
    for (const { chart } of this.charts.values()) chart.destroy();
    this.charts.clear();
    replaceChildren($("#compare-charts"));
  }

  async load() {
    const token = ++this.loadToken;
    const ids = this.ids;
    if (!this.buffer) this.buffer = [];
    try {
      const results = await Promise.all(
        ids.map((id) =>
          Promise.all([
            api.getRun(id).catch((err) => (err.status === 404 ? null : Promise.reject(err))),
            api.getMetrics(id, "epoch", { maxPoints: MAX_POINTS.epoch }).catch(() => ({})),
            api.getMetrics(id, "batch", { maxPoints: MAX_POINTS.batch }).catch(() => ({})),
          ]),
        ),
      );
      if (token !== this.loadToken) return;
      results.forEach(([info, epoch, batch], i) => {
        const id = ids[i];
        if (!info) {
          this.runs.delete(id);
          return;
        }
        this.runs.set(id, info.run);
        this.data.get(id).addFetched("epoch", epoch);
        this.data.get(id).addFetched("batch", batch);
      });
      this.loaded = true;
      const buffered = this.buffer;
      this.buffer = null;
      for (const message of buffered) this.apply(message);
      this.renderRuns();
      this.renderParams();
      this.syncCharts(true);
    } catch (err) {
      if (token !== this.loadToken) return;
      this.buffer = null;
      document.dispatchEvent(new CustomEvent("fitdeck:error", { detail: err }));
    }
  }

  handle(message) {
    if (!this.ids.length) return;
    if (message.type === "subscribed") {
      const subscribed = new Set(message.run_ids || []);
      if (this.ids.every((id) => subscribed.has(id))) this.load();
      return;
    }
    const runId = message.type === "run" ? message.run.id : message.run_id;
    if (!this.ids.includes(runId)) return;
    if (this.buffer) this.buffer.push(message);
    else this.apply(message);
  }

  apply(message) {
    const runId = message.type === "run" ? message.run.id : message.run_id;
    switch (message.type) {
      case "run": {
        const known = this.runs.get(runId);
        if (known && (known.updated_at || 0) > (message.run.updated_at || 0)) return;
        this.runs.set(runId, message.run);
        this.renderRuns();
        if (!known || known.name !== message.run.name) this.syncCharts(true);
        break;
      }
      case "run_deleted":
        this.runs.delete(runId);
        this.renderRuns();
        this.renderParams();
        this.syncCharts(true);
        break;
      case "metrics": {
        const points = message.points.map((p) => ({ ...p, logs: api.decodeLogs(p.logs) }));
        const touched = this.data.get(runId).addPoints(message.scope, points);
        if (message.scope !== this.scope || !touched.size) return;
        let added = false;
        for (const key of touched) {
          const entry = this.charts.get(chartKey(key));
          if (entry) entry.chart.invalidate();
          else if (key !== LR_KEY) added = true;
        }
        if (added) this.syncCharts();
        break;
      }
      default:
        break;
    }
  }

  /** Runs still here, in the order they were picked. */
  present() {
    return this.ids.filter((id) => this.runs.has(id));
  }

  renderRuns() {
    const theme = themeColors();
    const list = $("#compare-runs");
    replaceChildren(
      list,
      this.ids.map((id, i) => {
        const run = this.runs.get(id);
        const badge = h("span", { class: "badge" });
        statusBadge(badge, run ? run.status : this.loaded ? "deleted" : "…");
        const swatch = h("span", { class: "swatch", "aria-hidden": "true" });
        swatch.style.background = theme.series[i % theme.series.length];
        return h(
          "li",
          { dataset: { runId: id } },
          swatch,
          run ? h("a", { href: `#/runs/${id}` }, run.name || id.slice(0, 8)) : id.slice(0, 8),
          run && run.project ? h("span", { class: "project" }, run.project) : null,
          badge,
        );
      }),
    );
  }

  renderScope() {
    for (const b of document.querySelectorAll("#compare-scope button")) {
      b.setAttribute("aria-pressed", String(b.dataset.scope === this.scope));
    }
  }

  setScope(scope) {
    if (scope === this.scope) return;
    this.scope = scope;
    this.renderScope();
    this.destroyCharts();
    this.syncCharts(true);
  }

  applyControls() {
    for (const { chart } of this.charts.values()) {
      chart.setXMode(this.controls.xMode);
      chart.setSmoothing(this.controls.smoothing);
    }
  }

  invalidateAll() {
    for (const { chart } of this.charts.values()) chart.invalidate();
  }

  /** Metric groups of the current scope over all runs: base → keys. */
  groups() {
    const groups = new Map();
    for (const id of this.present()) {
      const data = this.data.get(id);
      for (const key of data.keys(this.scope)) {
        if (!data.series(this.scope, key).length) continue;
        const base = chartKey(key);
        if (!groups.has(base)) groups.set(base, new Set());
        groups.get(base).add(key);
      }
    }
    return groups;
  }

  renderMetricPicker(bases) {
    const select = $("#compare-metric");
    const current = select.value;
    const values = ["", ...bases];
    if ([...select.options].map((o) => o.value).join("\n") !== values.join("\n")) {
      replaceChildren(
        select,
        h("option", { value: "" }, "All metrics"),
        bases.map((b) => h("option", { value: b }, b)),
      );
      select.value = values.includes(current) ? current : "";
    }
    return select.value;
  }

  /** One chart per metric base, one source per (run, key). */
  syncCharts(force = false) {
    if (!this.loaded) return;
    const theme = themeColors();
    const groups = this.groups();
    const bases = [...groups.keys()].sort((a, b) => (a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b)));
    const picked = this.renderMetricPicker(bases);
    const shown = picked ? bases.filter((b) => b === picked) : bases;
    for (const [base, entry] of [...this.charts]) {
      if (!shown.includes(base)) {
        entry.chart.destroy();
        entry.card.remove();
        this.charts.delete(base);
      }
    }
    const container = $("#compare-charts");
    for (const base of shown) {
      const keys = [...groups.get(base)].sort((a, b) => (a === base ? -1 : b === base ? 1 : a.localeCompare(b)));
      const sources = [];
      this.ids.forEach((id, i) => {
        const run = this.runs.get(id);
        if (!run) return;
        const data = this.data.get(id);
        for (const key of keys) {
          if (!data.keys(this.scope).includes(key)) continue;
          sources.push({
            label: `${run.name || id.slice(0, 8)} · ${key}`,
            series: data.series(this.scope, key),
            epochOffset: this.scope === "epoch" ? 1 : 0,
            t0: run.created_at,
            color: theme.series[i % theme.series.length],
            dash: key.startsWith("val_") ? "dash" : "solid",
          });
        }
      });
      const signature = sources.map((s) => s.label).join("\n");
      let entry = this.charts.get(base);
      if (!entry) {
        entry = this.createChart(base);
        this.charts.set(base, entry);
        force = true;
      }
      if (force || entry.signature !== signature) {
        entry.signature = signature;
        entry.chart.setSources(sources);
      }
    }
    for (const base of shown) container.appendChild(this.charts.get(base).card);
    $("#compare-empty").hidden = shown.length > 0 || this.present().length === 0;
  }

  createChart(base) {
    const div = h("div", { class: "chart", dataset: { key: base }, role: "img" });
    const logButton = h(
      "button",
      { type: "button", class: "log-toggle", "aria-pressed": "false", "aria-label": `logarithmic y axis for ${base}` },
      "log y",
    );
    const card = h(
      "section",
      { class: "card chart-card", dataset: { key: base } },
      h("header", { class: "chart-head" }, h("h2", {}, base), logButton),
      div,
    );
    const chart = new Chart(div, {
      xMode: this.controls.xMode,
      smoothing: this.controls.smoothing,
      uirevision: `compare:${this.ids.join(",")}:${this.scope}:${base}`,
      markers: this.scope === "epoch",
      integerX: this.scope === "epoch",
      gl: this.charts.size < MAX_GL_CHARTS,
    });
    logButton.addEventListener("click", () => {
      const on = logButton.getAttribute("aria-pressed") !== "true";
      logButton.setAttribute("aria-pressed", String(on));
      chart.setLogY(on);
    });
    return { card, chart, signature: null };
  }

  renderParams() {
    const ids = this.present();
    const runs = ids.map((id) => this.runs.get(id));
    const rows = differingParams(runs);
    const table = $("#compare-params");
    $("#compare-params-same").hidden = rows.length > 0 || runs.length < 2;
    table.hidden = rows.length === 0;
    replaceChildren(
      table,
      h(
        "thead",
        {},
        h("tr", {}, h("th", { scope: "col" }, "param"), runs.map((r) => h("th", { scope: "col" }, r.name || r.id.slice(0, 8)))),
      ),
      h(
        "tbody",
        {},
        rows.map((row) =>
          h("tr", { dataset: { param: row.key } }, h("th", { scope: "row" }, row.key), row.values.map((v) => h("td", {}, v))),
        ),
      ),
    );
  }
}
