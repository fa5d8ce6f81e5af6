// The page of one run: header, progress, controls (stop, learning rate),
// metric charts (batch or epoch view; x by step, epoch, relative or wall
// time; EMA smoothing; log y per chart; events marked), LR chart, commands
// and events.
//
// Opening a run: subscribe on /ws/live and wait for the server's
// "subscribed" (from then on every change is pushed), then fetch the run, its
// metrics of both scopes, commands and events over HTTP while buffering what
// arrives live, merge (series deduplicate by step), then apply the buffer.
// Each later "subscribed" (the live connection came back) loads again and
// merges what was missed.

import * as api from "./api.js";
import { Chart } from "./charts.js";
import { ChartControls } from "./controls.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatClock, formatDuration, formatLr, formatNumber, formatTime, formatValue } from "./format.js";
import { epochsDone, statusBadge } from "./runs_view.js";
import { RunData } from "./store.js";

const ENDED = new Set(["finished", "stopped", "failed"]);
const COMMAND_RANK = { pending: 0, delivered: 1, applied: 2, rejected: 2, expired: 2 };
const BATCH_MAX_POINTS = 5000;
const EPOCH_MAX_POINTS = 5000;
const MAX_GL_CHARTS = 12; // browsers keep ~16 WebGL contexts per page
const LR_KEY = "learning_rate";
const SUBSCRIBE_WAIT_MS = 3000; // load anyway if the live socket does not confirm by then
const DECIMAL = /^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;

/** The metric key a chart is named after: "val_loss" → "loss". */
export function chartKey(key) {
  return key.startsWith("val_") && key.length > 4 ? key.slice(4) : key;
}

/** Parse the LR input: a finite number > 0, or an error message naming what was typed. */
export function parseLr(text) {
  const s = String(text).trim();
  if (!s) return { error: "Enter a learning rate, e.g. 0.001 or 1e-4." };
  const value = Number(s);
  if (Number.isFinite(value) && value <= 0) return { error: `A learning rate must be > 0; got ${s}.` };
  if (!DECIMAL.test(s) || !Number.isFinite(value)) {
    return { error: `A learning rate is a finite number > 0; got "${s}".` };
  }
  return { value };
}

export class RunView {
  constructor(live) {
    this.live = live;
    this.section = $("#view-run");
    this.runId = null;
    this.scope = "batch";
    this.charts = new Map(); // chart key → {card, chart, keys}
    this.lrChart = null;
    this.loadToken = 0;
    this.timer = null;
    this.subscribeTimer = null;
    this.controls = new ChartControls($("#run-toolbar"), () => this.applyControls());
    this.wireControls();
  }

  // ---- lifecycle ------------------------------------------------------------

  show(runId) {
    this.section.hidden = false;
    if (runId !== this.runId) this.open(runId);
    else this.controls.refresh();
  }

  hide() {
    this.section.hidden = true;
    if (this.runId) this.close();
  }

  open(runId) {
    this.close();
    this.runId = runId;
    this.run = null;
    this.keys = { batch: [], epoch: [] };
    this.data = new RunData();
    this.commands = new Map();
    this.events = new Map();
    this.progress = null; // the batch point with the highest step: {step, epoch, t}
    this.rateSamples = [];
    this.lrDirty = false;
    $("#lr-input").value = "";
    setText($("#lr-error"), "");
    setText($("#control-message"), "");
    this.missing = false;
    $("#run-missing").hidden = true;
    $("#run-page").hidden = false;
    setText($("#run-name"), "Loading…");
    setText($("#run-project"), "");
    $("#export-link").href = api.exportUrl(runId);
    $("#export-json").href = api.exportJsonUrl(runId);
    $("#export-report").href = api.reportUrl(runId);
    // The same names the server gives them (Content-Disposition).
    $("#export-link").download = `fitdeck-${runId.slice(0, 8)}.csv`;
    $("#export-json").download = `fitdeck-${runId.slice(0, 8)}.json`;
    $("#export-report").download = `fitdeck-${runId.slice(0, 8)}-report.html`;
    setText($("#run-facts"), "");
    this.controls.refresh();
    this.setScopeButtons();
    this.lrChart = new Chart($("#lr-chart"), {
      xMode: this.controls.xMode,
      uirevision: `${runId}:lr`,
      logY: $("#lr-log").getAttribute("aria-pressed") === "true",
    });
    this.renderCommands();
    this.renderEvents();
    this.timer = setInterval(() => this.renderProgress(), 1000);
    this.buffer = []; // live messages wait here until the first load has merged
    this.live.subscribe([runId]);
    // The load starts on "subscribed" (see handle); without a live socket, after a while.
    clearTimeout(this.subscribeTimer);
    this.subscribeTimer = setTimeout(() => {
      if (this.runId === runId && !this.run) this.load();
    }, SUBSCRIBE_WAIT_MS);
  }

  close() {
    if (!this.runId) return;
    this.loadToken += 1;
    this.live.subscribe([]);
    clearInterval(this.timer);
    clearTimeout(this.subscribeTimer);
    for (const { chart } of this.charts.values()) chart.destroy();
    this.charts.clear();
    replaceChildren($("#charts"));
    if (this.lrChart) this.lrChart.destroy();
    this.lrChart = null;
    this.runId = null;
    this.buffer = null;
  }

  /** Fetch everything over HTTP while live messages are buffered, then merge. */
  async load() {
    const token = ++this.loadToken;
    const runId = this.runId;
    if (!this.buffer) this.buffer = [];
    try {
      const [info, batch, epoch, commands, events] = await Promise.all([
        api.getRun(runId),
        api.getMetrics(runId, "batch", { maxPoints: BATCH_MAX_POINTS }),
        api.getMetrics(runId, "epoch", { maxPoints: EPOCH_MAX_POINTS }),
        api.getCommands(runId),
        api.getEvents(runId).catch(() => []),
      ]);
      if (token !== this.loadToken) return;
      this.keys = info.keys;
      this.setRun(info.run);
      this.data.addFetched("batch", batch);
      this.data.addFetched("epoch", epoch);
      this.seedProgress(batch);
      for (const c of commands) this.putCommand(c);
      for (const e of events) this.events.set(e.id, e);
      const buffered = this.buffer;
      this.buffer = null;
      for (const message of buffered) this.apply(message);
      this.syncCharts();
      this.invalidateAll();
      this.renderCommands();
      this.renderEvents();
      this.markEvents();
      this.renderProgress();
    } catch (err) {
      if (token !== this.loadToken) return;
      const buffered = this.buffer || [];
      this.buffer = null;
      if (err.status === 404) {
        this.missing = true; // shown again as soon as a "run" message names it
        $("#run-page").hidden = true;
        const missing = $("#run-missing");
        missing.hidden = false;
        setText(missing, err.message);
        return;
      }
      document.dispatchEvent(new CustomEvent("fitdeck:error", { detail: err }));
      for (const message of buffered) this.apply(message);
    }
  }

  // ---- live messages ---------------------------------------------------------

  handle(message) {
    if (!this.runId) return;
    if (message.type === "subscribed") {
      // Every change of the run is pushed from now on: fetch history (again after a reconnect).
      if ((message.run_ids || []).includes(this.runId)) this.load();
      return;
    }
    if (message.type === "run_deleted") {
      if (message.run_id === this.runId) this.showDeleted();
      return;
    }
    const runId = message.type === "run" ? message.run.id : message.run_id;
    if (runId !== this.runId) return;
    if (this.missing) {
      if (message.type !== "run") return;
      this.missing = false;
      $("#run-missing").hidden = true;
      $("#run-page").hidden = false;
      this.load();
      return;
    }
    if (this.buffer) this.buffer.push(message);
    else this.apply(message);
  }

  apply(message) {
    switch (message.type) {
      case "run":
        this.setRun(message.run);
        break;
      case "metrics":
        this.addPoints(message.scope, message.points);
        break;
      case "command":
        this.putCommand(api.decodeCommand(message.command));
        this.renderCommands();
        break;
      case "event":
        this.events.set(message.event.id, message.event);
        this.renderEvents();
        this.markEvents();
        break;
      default:
        break;
    }
  }

  addPoints(scope, points) {
    const decoded = points.map((p) => ({ ...p, logs: api.decodeLogs(p.logs) }));
    const touched = this.data.addPoints(scope, decoded);
    if (!touched.size || !this.run) return;
    if (scope === "batch") {
      for (const p of decoded) this.noteProgress(p);
      this.renderProgress();
    }
    if (this.buffer) return;
    if (scope === this.scope) {
      let added = false;
      for (const key of touched) {
        if (key === LR_KEY) continue;
        const entry = this.charts.get(chartKey(key));
        if (entry && entry.keys.includes(key)) entry.chart.invalidate();
        else added = true;
      }
      if (added) this.syncCharts();
    }
    if (this.lrChart && (scope === "batch" || touched.has(LR_KEY))) {
      this.syncLrChart();
      this.lrChart.invalidate(); // the step line runs to the latest step
    }
  }

  // ---- run, header, progress, controls ----------------------------------------

  setRun(run) {
    if (this.run && (this.run.updated_at || 0) > (run.updated_at || 0)) return;
    const first = !this.run;
    this.run = run;
    document.title = `${run.name || run.id.slice(0, 8)} · fitdeck`;
    setText($("#run-name"), run.name || run.id);
    setText($("#run-project"), run.project || "");
    $("#run-project").hidden = !run.project;
    statusBadge($("#run-status"), run.status);
    const ended = run.ended_at ? ` · ended ${formatTime(run.ended_at)}` : "";
    setText($("#run-summary"), `started ${formatTime(run.created_at)}${ended} · id ${run.id}`);
    const errorEl = $("#run-error");
    errorEl.hidden = !run.error;
    if (run.error) setText(errorEl, `${run.error.type || "Error"}: ${run.error.message || ""}`);
    this.renderControls();
    this.renderProgress();
    this.renderFacts();
    if (first) {
      this.renderKv($("#run-params"), run.params || {});
      this.renderMeta(run.meta || {});
    }
    if (this.lrChart) this.lrChart.invalidate();
  }

  /** "Adam · LR 0.001 · 4,810 params · 3 layers" under the name. */
  renderFacts() {
    const run = this.run;
    const meta = run.meta || {};
    const parts = [];
    const opt = meta.optimizer && meta.optimizer.class_name;
    if (opt) parts.push(opt);
    if (run.lr !== null && run.lr !== undefined) parts.push(`LR ${formatLr(run.lr)}`);
    if (meta.lr_schedule) parts.push(`schedule ${formatValue(meta.lr_schedule)}`);
    if (Number.isFinite(meta.param_count)) parts.push(`${meta.param_count.toLocaleString()} params`);
    if (Array.isArray(meta.layers) && meta.layers.length) parts.push(`${meta.layers.length} layers`);
    if (meta.batch_size) parts.push(`batch ${meta.batch_size}`);
    setText($("#run-facts"), parts.join(" · "));
  }

  /** The open run was deleted (here or in another tab). */
  showDeleted() {
    this.missing = true;
    $("#run-page").hidden = true;
    const missing = $("#run-missing");
    missing.hidden = false;
    setText(missing, `The run ${this.run ? `"${this.run.name || this.runId}"` : this.runId} was deleted.`);
  }

  renderControls() {
    const run = this.run;
    const ended = !run || ENDED.has(run.status);
    $("#stop-button").disabled = ended;
    $("#lr-input").disabled = ended;
    $("#lr-submit").disabled = ended;
    setText($("#lr-current"), run ? formatLr(run.lr) : "—");
    const input = $("#lr-input");
    if (run && !this.lrDirty && document.activeElement !== input && run.lr !== null) {
      input.value = formatLr(run.lr);
    }
    if (ended && run) setText($("#control-message"), `Training ${run.status}: no more commands.`);
  }

  renderKv(dl, obj) {
    const entries = Object.entries(obj);
    replaceChildren(
      dl,
      entries.length
        ? entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, formatValue(v))])
        : h("dd", { class: "empty small" }, "none"),
    );
  }

  renderMeta(meta) {
    const opt = meta.optimizer || {};
    const info = {};
    if (opt.class_name) info.optimizer = opt.class_name;
    if (meta.lr_schedule) info["LR schedule"] = meta.lr_schedule;
    if (meta.model_name) info.model = meta.model_name;
    if (meta.param_count !== undefined) info.parameters = meta.param_count?.toLocaleString();
    if (meta.trainable_param_count !== undefined)
      info.trainable = meta.trainable_param_count?.toLocaleString();
    if (meta.epochs !== undefined) info.epochs = meta.epochs;
    if (meta.steps_per_epoch !== undefined) info["steps/epoch"] = meta.steps_per_epoch ?? "unknown";
    if (meta.batch_size !== undefined) info["batch size"] = meta.batch_size;
    if (meta.keras_version) info.keras = `${meta.keras_version}${meta.backend ? ` (${meta.backend})` : ""}`;
    this.renderKv($("#run-meta"), info);
    if (Array.isArray(meta.layers) && meta.layers.length) {
      const list = h(
        "ol",
        { class: "layers" },
        meta.layers.map((l) =>
          h("li", {}, `${l.name} · ${l.class_name} · ${l.output_shape ?? ""} · ${l.params ?? 0} params`),
        ),
      );
      $("#run-meta").append(h("dt", {}, "layers"), h("dd", {}, list));
    }
  }

  seedProgress(batchSeries) {
    for (const s of Object.values(batchSeries)) {
      const n = s.step.length;
      if (!n) continue;
      for (let i = Math.max(0, n - 20); i < n; i++) {
        this.noteProgress({ step: s.step[i], epoch: s.epoch[i], t: s.t[i] });
      }
    }
  }

  noteProgress(p) {
    if (!this.progress || p.step > this.progress.step) this.progress = { step: p.step, epoch: p.epoch, t: p.t };
    const last = this.rateSamples[this.rateSamples.length - 1];
    if (!last || (p.t - last.t >= 0.25 && p.step > last.step)) {
      this.rateSamples.push({ step: p.step, t: p.t });
      if (this.rateSamples.length > 40) this.rateSamples.shift();
    }
  }

  /** Steps per second over the last seconds of batch points (or the whole run). */
  stepRate() {
    const s = this.rateSamples;
    if (s.length >= 2 && s[s.length - 1].t > s[0].t) {
      return (s[s.length - 1].step - s[0].step) / (s[s.length - 1].t - s[0].t);
    }
    const run = this.run;
    const elapsed = (run.updated_at || 0) - (run.created_at || 0);
    return run.step > 0 && elapsed > 0 ? run.step / elapsed : null;
  }

  renderProgress() {
    const run = this.run;
    if (!run) return;
    const meta = run.meta || {};
    const epochs = meta.epochs || null;
    const spe = meta.steps_per_epoch || null;
    const p = this.progress;
    const steps = Math.max(run.step || 0, p ? p.step : 0);
    const done = epochsDone(run);
    let epochIdx; // 0-based epoch shown as in progress
    let batch = null; // batches done in it
    if (p && spe && Number.isFinite(p.epoch)) {
      // The batch point's epoch is e + (b + 1) / steps_per_epoch.
      epochIdx = Math.max(0, Math.ceil(p.epoch - 1e-9) - 1);
      batch = Math.min(spe, Math.max(0, Math.round((p.epoch - epochIdx) * spe)));
    } else if (spe) {
      epochIdx = Math.min(Math.floor(steps / spe), Math.max(0, (epochs || Infinity) - 1));
      batch = Math.min(spe, steps - epochIdx * spe);
    } else {
      epochIdx = ENDED.has(run.status) ? Math.max(0, done - 1) : done;
    }
    const ended = ENDED.has(run.status);
    let fraction = 0;
    if (epochs && spe && batch !== null) fraction = (epochIdx * spe + batch) / (epochs * spe);
    else if (epochs) fraction = done / epochs;
    fraction = Math.min(1, Math.max(0, fraction));

    setText($("#progress-epoch"), `Epoch ${epochIdx + 1}${epochs ? ` / ${epochs}` : ""}`);
    setText(
      $("#progress-step"),
      batch === null ? `step ${steps}` : `step ${batch} / ${spe}`,
    );
    let eta = "";
    if (ended) eta = run.status;
    else if (run.status === "disconnected") eta = "ETA — (disconnected)";
    else {
      const rate = this.stepRate();
      if (rate && epochs && spe) {
        const remaining = epochs * spe - (epochIdx * spe + (batch || 0));
        eta = `ETA ${formatDuration(remaining / rate)}`;
      } else eta = "ETA —";
    }
    setText($("#progress-eta"), eta);
    const bar = $("#progress-bar");
    bar.value = fraction;
    bar.setAttribute("aria-valuetext", `${Math.round(fraction * 100)}%`);
    $("#progress").dataset.status = run.status;
    const endT = run.ended_at || (ended ? run.updated_at : Date.now() / 1000);
    const rate = this.stepRate();
    setText(
      $("#progress-elapsed"),
      `elapsed ${formatDuration(endT - run.created_at)}` +
        (rate && !ended ? ` · ${formatNumber(rate, 3)} steps/s` : "") +
        ` · ${steps} steps`,
    );
    setText($("#progress-latest"), p ? `last batch ${formatClock(p.t)}` : "");
  }

  // ---- charts ------------------------------------------------------------------

  setScope(scope) {
    if (scope === this.scope) return;
    this.scope = scope;
    this.setScopeButtons();
    for (const { chart } of this.charts.values()) chart.destroy();
    this.charts.clear();
    replaceChildren($("#charts"));
    if (this.runId && this.run) {
      this.syncCharts();
      this.syncLrChart(true);
      this.invalidateAll();
    }
  }

  setScopeButtons() {
    for (const b of document.querySelectorAll("#scope-switch button")) {
      b.setAttribute("aria-pressed", String(b.dataset.scope === this.scope));
    }
  }

  /** The x axis or the smoothing changed. */
  applyControls() {
    const { xMode, smoothing } = this.controls;
    for (const { chart } of this.charts.values()) {
      chart.setXMode(xMode);
      chart.setSmoothing(smoothing);
    }
    if (this.lrChart) this.lrChart.setXMode(xMode);
    this.markEvents();
  }

  /** Events drawn on the charts: LR changes, command outcomes, early stops. */
  chartEvents() {
    const spe = (this.run && this.run.meta && this.run.meta.steps_per_epoch) || null;
    const out = [];
    for (const e of [...this.events.values()].sort((a, b) => a.seq - b.seq)) {
      const mark = eventMark(e);
      if (!mark || e.step === null || e.step === undefined) continue;
      // Progress in epochs, as a batch point's: from the step when the epoch length is known.
      const epoch = spe ? e.step / spe : e.epoch;
      out.push({ step: e.step, epoch, t: e.t, ...mark });
    }
    return out;
  }

  markEvents() {
    const events = this.chartEvents();
    for (const { chart } of this.charts.values()) chart.setEvents(events);
    if (this.lrChart) this.lrChart.setEvents(events);
  }

  invalidateAll() {
    for (const { chart } of this.charts.values()) chart.invalidate();
    this.syncLrChart();
    if (this.lrChart) this.lrChart.invalidate();
  }

  /** Make one chart per metric (x with val_x) of the current scope. */
  syncCharts() {
    const groups = new Map();
    for (const key of this.data.keys(this.scope)) {
      if (key === LR_KEY || !this.data.series(this.scope, key).length) continue;
      const base = chartKey(key);
      if (!groups.has(base)) groups.set(base, []);
      groups.get(base).push(key);
    }
    const order = [...groups.keys()].sort((a, b) =>
      a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b),
    );
    const container = $("#charts");
    let changedOrder = false;
    for (const base of order) {
      const keys = groups.get(base).sort((a, b) => (a === base ? -1 : b === base ? 1 : a.localeCompare(b)));
      let entry = this.charts.get(base);
      if (!entry) {
        entry = this.createChart(base);
        this.charts.set(base, entry);
        changedOrder = true;
      }
      if (entry.keys.join("\n") !== keys.join("\n")) {
        entry.keys = keys;
        const epochOffset = this.scope === "batch" ? 0 : 1;
        const t0 = this.run ? this.run.created_at : 0;
        entry.chart.setSources(
          keys.map((k) => ({ label: k, series: this.data.series(this.scope, k), epochOffset, t0 })),
        );
        entry.chart.setEvents(this.chartEvents());
      }
    }
    if (changedOrder) {
      for (const base of order) container.appendChild(this.charts.get(base).card);
    }
    $("#charts-empty").hidden = this.charts.size > 0;
    const thinned = [...this.charts.values()].some((e) =>
      e.keys.some((k) => this.data.series(this.scope, k).thinned),
    );
    setText($("#charts-note"), thinned ? "long series are shown downsampled (min/max kept)" : "");
  }

  createChart(base) {
    const div = h("div", { class: "chart", dataset: { key: base }, role: "img" });
    const logButton = h(
      "button",
      { type: "button", class: "log-toggle", "aria-pressed": "false", title: "logarithmic y axis" },
      "log y",
    );
    const card = h(
      "section",
      { class: "card chart-card", dataset: { key: base } },
      h("header", { class: "chart-head" }, h("h2", { id: `chart-title-${base}` }, base), logButton),
      div,
    );
    const chart = new Chart(div, {
      xMode: this.controls.xMode,
      smoothing: this.controls.smoothing,
      uirevision: `${this.runId}:${this.scope}:${base}`,
      markers: this.scope === "epoch",
      integerX: this.scope === "epoch",
      gl: this.charts.size < MAX_GL_CHARTS,
      onZoom: (range) => this.fetchZoomed(base, range),
    });
    logButton.setAttribute("aria-label", `logarithmic y axis for ${base}`);
    logButton.addEventListener("click", () => {
      const on = logButton.getAttribute("aria-pressed") !== "true";
      logButton.setAttribute("aria-pressed", String(on));
      chart.setLogY(on);
    });
    return { card, chart, keys: [] };
  }

  /**
   * Zoomed into a series the server sent downsampled: fetch the visible steps
   * again, at full detail up to max_points, and merge them in.
   */
  async fetchZoomed(base, range) {
    const entry = this.charts.get(base);
    if (!range || !entry || this.scope !== "batch") return; // epoch series are short
    const keys = entry.keys.filter((k) => this.data.series("batch", k).thinned);
    if (!keys.length) return;
    const runId = this.runId;
    const steps = entry.chart.stepRange(range); // the range is in the x axis' units
    if (!steps) return;
    try {
      const series = await api.getMetrics(runId, "batch", {
        keys,
        maxPoints: BATCH_MAX_POINTS,
        start: Math.max(0, Math.floor(steps[0])),
        end: Math.ceil(steps[1]),
      });
      if (runId !== this.runId) return;
      this.data.addFetched("batch", series);
      entry.chart.invalidate();
    } catch (err) {
      console.warn("fitdeck: could not fetch the zoomed range", err);
    }
  }

  /** The LR chart: the batch-scope learning_rate as a step line up to the latest step. */
  syncLrChart(force = false) {
    if (!this.lrChart) return;
    const batchLr = this.data.scopes.batch.get(LR_KEY);
    const epochLr = this.data.scopes.epoch.get(LR_KEY);
    let source;
    const t0 = this.run ? this.run.created_at : 0;
    if (batchLr && batchLr.length) {
      source = {
        label: LR_KEY,
        series: batchLr,
        epochOffset: 0,
        t0,
        shape: "hv",
        tail: () => {
          const p = this.progress;
          if (!p) return null;
          return { step: p.step, epoch: p.epoch, t: p.t, y: batchLr.value[batchLr.length - 1] };
        },
      };
    } else if (epochLr && epochLr.length) {
      source = { label: LR_KEY, series: epochLr, epochOffset: 1, t0, shape: "hv" };
    } else {
      return;
    }
    const current = this.lrChart.sources[0];
    if (force || !current || current.series !== source.series) {
      this.lrChart.setSources([source]);
      this.lrChart.setEvents(this.chartEvents());
    }
  }

  // ---- commands and events -------------------------------------------------------

  putCommand(command) {
    const known = this.commands.get(command.id);
    if (known) {
      const rankOld = COMMAND_RANK[known.status] ?? 0;
      const rankNew = COMMAND_RANK[command.status] ?? 0;
      if (rankNew < rankOld) return; // an older state arriving late
    }
    this.commands.set(command.id, { ...known, ...command });
  }

  renderCommands() {
    const body = $("#commands-body");
    const commands = [...this.commands.values()].sort((a, b) => a.id - b.id);
    replaceChildren(
      body,
      commands.map((c) => {
        const what = c.kind === "set_lr" ? `set LR → ${formatLr(c.lr)}` : c.kind === "stop" ? "stop" : c.kind;
        let detail = "";
        if (c.status === "applied") {
          detail = c.epoch !== null && c.epoch !== undefined ? `epoch ${c.epoch}, batch ${c.batch}` : "applied";
        } else if (c.status === "rejected" || c.status === "expired") {
          detail = c.reason || "";
        }
        const badge = h("span", { class: "badge" });
        statusBadge(badge, c.status);
        return h(
          "tr",
          { dataset: { commandId: c.id, status: c.status, kind: c.kind } },
          h("td", { class: "num" }, c.id),
          h("td", { class: "what" }, what),
          h("td", { class: "sent" }, formatClock(c.created_at)),
          h("td", { class: "status" }, badge),
          h("td", { class: "detail", title: c.step !== null && c.step !== undefined ? `step ${c.step}` : null }, detail),
        );
      }),
    );
    $("#commands-empty").hidden = commands.length > 0;
    $("#commands").hidden = commands.length === 0;
  }

  renderEvents() {
    const list = $("#events");
    const events = [...this.events.values()].sort((a, b) => (a.seq ?? a.id) - (b.seq ?? b.id)).slice(-200);
    replaceChildren(
      list,
      events.length
        ? events.map((e) =>
            h(
              "li",
              { dataset: { kind: e.kind } },
              h("span", { class: "time" }, formatClock(e.t)),
              " ",
              eventText(e),
            ),
          )
        : h("li", { class: "empty small" }, "none yet"),
    );
  }

  // ---- wiring ---------------------------------------------------------------------

  wireControls() {
    const dialog = $("#stop-dialog");
    $("#stop-button").addEventListener("click", () => {
      if (!this.run) return;
      setText($("#stop-dialog-run"), this.run.name || this.run.id);
      dialog.showModal();
    });
    $("#cancel-stop").addEventListener("click", () => dialog.close("cancel"));
    $("#confirm-stop").addEventListener("click", () => {
      dialog.close("confirm");
      this.send({ kind: "stop" }, "Stop");
    });

    const input = $("#lr-input");
    input.addEventListener("input", () => {
      this.lrDirty = true;
      setText($("#lr-error"), "");
      input.removeAttribute("aria-invalid");
    });
    input.addEventListener("blur", () => {
      if (this.run && input.value.trim() === formatLr(this.run.lr)) this.lrDirty = false;
    });
    $("#lr-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const parsed = parseLr(input.value);
      if (parsed.error) {
        setText($("#lr-error"), parsed.error);
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      input.removeAttribute("aria-invalid");
      setText($("#lr-error"), "");
      const ok = await this.send({ kind: "set_lr", lr: parsed.value }, `Set LR ${formatLr(parsed.value)}`);
      if (ok) this.lrDirty = false;
    });

    const lrLog = $("#lr-log");
    lrLog.addEventListener("click", () => {
      const on = lrLog.getAttribute("aria-pressed") !== "true";
      lrLog.setAttribute("aria-pressed", String(on));
      if (this.lrChart) this.lrChart.setLogY(on);
    });

    for (const b of document.querySelectorAll("#scope-switch button")) {
      b.addEventListener("click", () => this.setScope(b.dataset.scope));
    }
  }

  async send(command, label) {
    const runId = this.runId;
    const message = $("#control-message");
    setText(message, `${label}: sending…`);
    try {
      const stored = await api.postCommand(runId, command);
      if (runId !== this.runId) return true;
      this.putCommand(stored);
      this.renderCommands();
      setText(message, `${label}: sent as command #${stored.id}, status below.`);
      return true;
    } catch (err) {
      if (runId === this.runId) setText(message, `${label} failed: ${err.message}`);
      return false;
    }
  }
}

function eventText(e) {
  const d = e.data || {};
  switch (e.kind) {
    case "train_begin":
      return `fit #${d.fit ?? 1} began`;
    case "lr_change": {
      const by = d.source === "command" ? `command #${d.command_id}` : d.source || "";
      return `LR ${formatLr(api.decodeNumber(d.previous))} → ${formatLr(api.decodeNumber(d.lr))} (${by}) at step ${e.step}`;
    }
    case "command":
      return `command #${d.command_id} ${d.kind ?? ""} ${d.status ?? ""}${d.reason ? `: ${d.reason}` : ""}`;
    case "early_stop":
      return `stopped early by a callback at step ${e.step}`;
    case "train_end":
      return `training ${d.status ?? "ended"}${d.error && d.error.message ? `: ${d.error.message}` : ""}`;
    default:
      return `${e.kind} ${JSON.stringify(d)}`;
  }
}

/** How an event shows on the charts ({text, color}), or null for none. */
export function eventMark(e) {
  const d = e.data || {};
  switch (e.kind) {
    case "lr_change":
      return { text: eventText(e), color: "#8250df", kind: "lr" };
    case "command":
      if (d.kind === "set_lr" && d.status === "applied") return null; // its lr_change marks it
      return { text: eventText(e), color: d.status === "applied" ? "#1a7f37" : "#d1242f", kind: "command" };
    case "early_stop":
      return { text: eventText(e), color: "#9a6700", kind: "early_stop" };
    default:
      return null;
  }
}
