// The charts of the run page: one card per metric of the chosen scope
// (batches or epochs), and the learning-rate chart. Zooming into a series the
// server sent downsampled fetches the visible steps again at full detail.

import * as api from "./api.js";
import { ChartGrid, chartKey, groupByChart, wireLogToggle } from "./chart_grid.js";
import { Chart } from "./charts.js";
import { $, setText } from "./dom.js";
import { LR_KEY } from "./protocol.js";
import { isSetting, settingTail } from "./settings.js";

export const MAX_POINTS = { batch: 5000, epoch: 5000 }; // per series and request

export class RunCharts {
  /**
   * view: the RunView ({runId, run, data, progress, toolbar, eventMarks()}).
   */
  constructor(view) {
    this.view = view;
    this.scope = "batch";
    this.grid = new ChartGrid($("#charts"), {
      maxGl: 12,
      chartOptions: (base, { gl }) => ({
        xMode: view.toolbar.xMode,
        smoothing: view.toolbar.smoothing,
        uirevision: `${view.runId}:${this.scope}:${base}`,
        markers: this.scope === "epoch",
        integerX: this.scope === "epoch",
        gl,
        onZoom: (range) => this.fetchZoomed(base, range),
      }),
    });
    this.lrChart = null;
    $("#lr-chart").dataset.key = LR_KEY;
    const lrLog = $("#lr-log");
    wireLogToggle(lrLog, (on) => this.lrChart && this.lrChart.setLogY(on));
    for (const b of document.querySelectorAll("#scope-switch button")) {
      b.addEventListener("click", () => this.setScope(b.dataset.scope));
    }
  }

  /** A run was opened: an empty LR chart, the scope buttons as they are. */
  open() {
    this.renderScope();
    this.lrChart = new Chart($("#lr-chart"), {
      xMode: this.view.toolbar.xMode,
      uirevision: `${this.view.runId}:lr`,
      logY: $("#lr-log").getAttribute("aria-pressed") === "true",
    });
  }

  close() {
    this.grid.clear();
    if (this.lrChart) this.lrChart.destroy();
    this.lrChart = null;
  }

  all() {
    return this.lrChart ? [...this.grid.charts(), this.lrChart] : this.grid.charts();
  }

  /** New points of `scope` for the metrics `touched` (a Set of keys). */
  pointsAdded(scope, touched) {
    if (scope === this.scope) {
      let added = false;
      for (const key of touched) {
        if (key === LR_KEY) continue;
        const card = this.grid.get(chartKey(key));
        if (card && card.keys.includes(key)) card.chart.invalidate();
        else added = true;
      }
      if (added) this.sync();
      if (scope === "batch") {
        // A setting's step line runs on to the latest batch.
        for (const card of this.grid.all()) if (card.chart.sources.some((src) => src.tail)) card.chart.invalidate();
      }
    }
    if (this.lrChart && (scope === "batch" || touched.has(LR_KEY))) {
      this.syncLr();
      this.lrChart.invalidate(); // the step line runs to the latest step
    }
  }

  setScope(scope) {
    if (scope === this.scope) return;
    this.scope = scope;
    this.renderScope();
    this.grid.clear();
    if (this.view.runId && this.view.run) {
      this.sync();
      this.syncLr(true);
      this.invalidateAll();
    }
  }

  renderScope() {
    for (const b of document.querySelectorAll("#scope-switch button")) {
      b.setAttribute("aria-pressed", String(b.dataset.scope === this.scope));
    }
  }

  /** The x axis or the smoothing changed. */
  applyControls({ xMode, smoothing }) {
    for (const chart of this.grid.charts()) {
      chart.setXMode(xMode);
      chart.setSmoothing(smoothing);
    }
    if (this.lrChart) this.lrChart.setXMode(xMode);
    this.markEvents();
  }

  markEvents() {
    const marks = this.view.eventMarks();
    for (const chart of this.all()) chart.setEvents(marks);
  }

  invalidateAll() {
    for (const chart of this.grid.charts()) chart.invalidate();
    this.syncLr();
    if (this.lrChart) this.lrChart.invalidate();
  }

  /** Make one chart per metric (x with val_x) of the current scope. */
  sync() {
    const { data, run } = this.view;
    const keys = data.keys(this.scope).filter((k) => k !== LR_KEY && data.series(this.scope, k).length);
    const groups = groupByChart(keys);
    const order = [...groups.keys()];
    let created = false;
    for (const [base, group] of groups) {
      const made = this.grid.ensure(base);
      const card = made.card;
      created ||= made.created;
      if (card.keys.join("\n") !== group.join("\n")) {
        card.keys = group;
        const epochOffset = this.scope === "batch" ? 0 : 1;
        const t0 = run ? run.created_at : 0;
        card.chart.setSources(
          group.map((k) => {
            const series = data.series(this.scope, k);
            const source = { label: k, series, epochOffset, t0 };
            if (!isSetting(run, k)) return source;
            const tail = this.scope === "batch" ? settingTail(data, series, run) : null;
            return { ...source, setting: true, tail };
          }),
        );
        card.chart.setEvents(this.view.eventMarks());
      }
    }
    if (created) this.grid.place(order);
    $("#charts-empty").hidden = this.grid.size > 0;
    const thinned = this.grid.all().some((card) => card.keys.some((k) => data.series(this.scope, k).thinned));
    setText($("#charts-note"), thinned ? "long series are shown downsampled (min/max kept)" : "");
  }

  /**
   * Zoomed into a series the server sent downsampled: fetch the visible steps
   * again, at full detail up to MAX_POINTS, and merge them in.
   */
  async fetchZoomed(base, range) {
    const card = this.grid.get(base);
    if (!range || !card || this.scope !== "batch") return; // epoch series are short
    const { data, runId } = this.view;
    const keys = card.keys.filter((k) => data.series("batch", k).thinned);
    if (!keys.length) return;
    const steps = card.chart.stepRange(range); // the range is in the x axis' units
    if (!steps) return;
    try {
      const series = await api.getMetrics(runId, "batch", {
        keys,
        maxPoints: MAX_POINTS.batch,
        start: Math.max(0, Math.floor(steps[0])),
        end: Math.ceil(steps[1]),
      });
      if (runId !== this.view.runId) return;
      data.addFetched("batch", series);
      card.chart.invalidate();
    } catch (err) {
      console.warn("fitdeck: could not fetch the zoomed range", err);
    }
  }

  /** The LR chart: the batch-scope learning rate as a step line up to the latest step. */
  syncLr(force = false) {
    if (!this.lrChart) return;
    const { data, run, progress } = this.view;
    const batchLr = data.scopes.batch.get(LR_KEY);
    const epochLr = data.scopes.epoch.get(LR_KEY);
    const t0 = run ? run.created_at : 0;
    let source;
    if (batchLr && batchLr.length) {
      const tail = () => {
        const p = progress.latest;
        return p && { step: p.step, epoch: p.epoch, t: p.t, y: batchLr.value[batchLr.length - 1] };
      };
      source = { label: LR_KEY, series: batchLr, epochOffset: 0, t0, setting: true, tail };
    } else if (epochLr && epochLr.length) {
      source = { label: LR_KEY, series: epochLr, epochOffset: 1, t0, setting: true };
    } else {
      return;
    }
    const current = this.lrChart.sources[0];
    if (force || !current || current.series !== source.series) {
      this.lrChart.setSources([source]);
      this.lrChart.setEvents(this.view.eventMarks());
    }
  }
}
