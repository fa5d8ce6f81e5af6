// Several runs overlaid: one chart per metric (or the one picked), one color
// per run, `val_` dashed beside its metric; the same x axis and smoothing
// controls as the run page; and a table of the params that differ between the
// runs. Live like the run page, through the same LiveLoader (loader.js).

import * as api from "./api.js";
import { themeColors } from "./chart_axes.js";
import { ChartGrid, chartKey, groupByChart } from "./chart_grid.js";
import { ChartControls } from "./controls.js";
import { $, h, replaceChildren } from "./dom.js";
import { formatValue } from "./format.js";
import { LiveLoader, fetchHistory, mergeHistory, messageRunId } from "./loader.js";
import { LR_KEY } from "./protocol.js";
import { statusBadge } from "./runs_view.js";
import { isSetting, settingTail } from "./settings.js";
import { RunData } from "./store.js";

const MAX_POINTS = { batch: 2000, epoch: 5000 };

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
  const lr = opt.config && opt.config[LR_KEY]; // Keras names it as the LR series
  if (lr !== undefined) out["initial LR"] = lr;
  for (const k of ["epochs", "batch_size", "param_count", "model_name"]) {
    if (meta[k] !== undefined && meta[k] !== null) out[k] = meta[k];
  }
  return out;
}

export class CompareView {
  constructor(live) {
    this.section = $("#view-compare");
    this.ids = [];
    this.runs = new Map(); // id → Run
    this.data = new Map(); // id → RunData
    this.scope = "epoch";
    this.controls = new ChartControls($("#compare-toolbar"), () => this.applyControls());
    this.charts = new ChartGrid($("#compare-charts"), {
      maxGl: 10,
      chartOptions: (base, { gl }) => ({
        xMode: this.controls.xMode,
        smoothing: this.controls.smoothing,
        uirevision: `compare:${this.ids.join(",")}:${this.scope}:${base}`,
        markers: this.scope === "epoch",
        integerX: this.scope === "epoch",
        gl,
      }),
    });
    this.loader = new LiveLoader(live, {
      fetch: (ids) => Promise.all(ids.map((id) => fetchHistory(id, MAX_POINTS, { lenient: true }))),
      merge: (histories) => this.merge(histories),
      apply: (message) => this.apply(message),
      ready: () => {
        this.renderRuns();
        this.renderParams();
        this.syncCharts(true);
      },
      fail: (err) => document.dispatchEvent(new CustomEvent("fitdeck:error", { detail: err })),
    });
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
    this.runs = new Map();
    this.data = new Map(ids.map((id) => [id, new RunData()]));
    this.controls.refresh();
    this.renderScope();
    this.renderRuns();
    this.loader.open(ids);
  }

  close() {
    if (!this.ids.length) return;
    this.loader.close();
    this.charts.clear();
    this.ids = [];
  }

  merge(histories) {
    histories.forEach((history, i) => {
      const id = this.ids[i];
      if (!history) {
        this.runs.delete(id);
        return;
      }
      this.runs.set(id, history.run);
      mergeHistory(this.data.get(id), history);
    });
  }

  handle(message) {
    this.loader.handle(message);
  }

  apply(message) {
    const runId = messageRunId(message);
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
        const touched = this.data.get(runId).addPoints(message.scope, api.decodePoints(message.points));
        if (message.scope !== this.scope || !touched.size) return;
        let added = false;
        for (const key of touched) {
          const card = this.charts.get(chartKey(key));
          if (card) card.chart.invalidate();
          else if (key !== LR_KEY) added = true;
        }
        if (added) this.syncCharts();
        if (message.scope === "batch") {
          // A setting's step line runs on to the latest batch.
          for (const card of this.charts.all()) if (card.chart.sources.some((src) => src.tail)) card.chart.invalidate();
        }
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
    replaceChildren(
      $("#compare-runs"),
      this.ids.map((id, i) => {
        const run = this.runs.get(id);
        const badge = h("span", { class: "badge" });
        statusBadge(badge, run ? run.status : this.loader.loaded ? "deleted" : "…");
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
    this.charts.clear();
    this.syncCharts(true);
  }

  applyControls() {
    for (const chart of this.charts.charts()) {
      chart.setXMode(this.controls.xMode);
      chart.setSmoothing(this.controls.smoothing);
    }
  }

  invalidateAll() {
    for (const chart of this.charts.charts()) chart.invalidate();
  }

  /** Metric groups of the current scope over all runs: base → keys. */
  groups() {
    const keys = new Set();
    for (const id of this.present()) {
      const data = this.data.get(id);
      for (const key of data.keys(this.scope)) if (data.series(this.scope, key).length) keys.add(key);
    }
    return groupByChart(keys);
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

  /** The sources of one chart: one per (run, key), colored by run, val_ dashed. */
  sources(keys) {
    const theme = themeColors();
    const sources = [];
    this.ids.forEach((id, i) => {
      const run = this.runs.get(id);
      if (!run) return;
      const data = this.data.get(id);
      for (const key of keys) {
        if (!data.keys(this.scope).includes(key)) continue;
        const series = data.series(this.scope, key);
        const source = {
          label: `${run.name || id.slice(0, 8)} · ${key}`,
          series,
          epochOffset: this.scope === "epoch" ? 1 : 0,
          t0: run.created_at,
          color: theme.series[i % theme.series.length],
          dash: key.startsWith("val_") ? "dash" : "solid",
        };
        if (isSetting(run, key)) {
          // Drawn as steps, never smoothed; in batch scope it runs on to the run's last batch.
          source.setting = true;
          if (this.scope === "batch") source.tail = settingTail(data, series, run);
        }
        sources.push(source);
      }
    });
    return sources;
  }

  /** One chart per metric base, one source per (run, key). */
  syncCharts(force = false) {
    if (!this.loader.loaded) return;
    const groups = this.groups();
    const bases = [...groups.keys()];
    const picked = this.renderMetricPicker(bases);
    const shown = picked ? bases.filter((b) => b === picked) : bases;
    this.charts.keepOnly(shown);
    for (const base of shown) {
      const sources = this.sources(groups.get(base));
      const signature = sources.map((s) => s.label).join("\n");
      const { card, created } = this.charts.ensure(base);
      if (force || created || card.signature !== signature) {
        card.signature = signature;
        card.chart.setSources(sources);
      }
    }
    this.charts.place(shown);
    $("#compare-empty").hidden = shown.length > 0 || this.present().length === 0;
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
