// The page of one run: header (run_header.js), progress (run_progress.js),
// controls (run_controls.js), metric and LR charts (run_charts.js), commands
// (run_commands.js) and events (run_events.js). This module opens and closes
// the run and routes what arrives to those parts.
//
// Opening a run goes through LiveLoader (loader.js): subscribe on /ws/live,
// fetch the run, its metrics of both scopes, commands and events over HTTP,
// merge what arrived live meanwhile.

import * as api from "./api.js";
import { ChartControls } from "./controls.js";
import { $ } from "./dom.js";
import { LiveLoader, fetchHistory, mergeHistory } from "./loader.js";
import { MAX_POINTS, RunCharts } from "./run_charts.js";
import { CommandList } from "./run_commands.js";
import { CallbackPanel, CheckpointList } from "./run_callbacks.js";
import { RunControls } from "./run_controls.js";
import { EventList } from "./run_events.js";
import { renderHeader, resetHeader, showMissing, showPage } from "./run_header.js";
import { KnobPanel } from "./run_knobs.js";
import { Progress } from "./run_progress.js";
import { STATE_EVENT } from "./protocol.js";
import { RunData } from "./store.js";

export class RunView {
  constructor(live) {
    this.section = $("#view-run");
    this.runId = null;
    this.run = null;
    this.data = new RunData();
    this.progress = new Progress();
    this.commands = new CommandList();
    this.events = new EventList();
    this.missing = false; // the run is not there (yet): a "run" message naming it loads it
    this.timer = null;
    this.toolbar = new ChartControls($("#run-toolbar"), (toolbar) => this.plots.applyControls(toolbar));
    this.controls = new RunControls(this, (command) => {
      this.commands.put(command);
      this.commands.render();
    });
    this.knobs = new KnobPanel(this, (command, label) => this.controls.send(command, label));
    this.callbacks = new CallbackPanel();
    this.checkpoints = new CheckpointList();
    this.stateSeq = -1; // the newest state event shown (knobs and callbacks)
    this.plots = new RunCharts(this);
    this.loader = new LiveLoader(live, {
      fetch: ([runId]) =>
        Promise.all([
          fetchHistory(runId, MAX_POINTS),
          api.getCommands(runId),
          api.getEvents(runId).catch(() => []),
        ]),
      merge: (history) => this.merge(history),
      apply: (message) => this.apply(message),
      ready: () => this.renderAll(),
      fail: (err, buffered) => this.failed(err, buffered),
    });
  }

  /** The metric charts by chart key ({card, chart} each). */
  get charts() {
    return this.plots.grid;
  }

  // ---- lifecycle ------------------------------------------------------------

  show(runId) {
    this.section.hidden = false;
    if (runId !== this.runId) this.open(runId);
    else this.toolbar.refresh();
  }

  hide() {
    this.section.hidden = true;
    if (this.runId) this.close();
  }

  open(runId) {
    this.close();
    this.runId = runId;
    this.run = null;
    this.data = new RunData();
    this.progress = new Progress();
    this.commands.clear();
    this.events.clear();
    this.knobs.clear();
    this.callbacks.clear();
    this.checkpoints.clear();
    this.stateSeq = -1;
    this.missing = false;
    this.controls.reset();
    resetHeader(runId);
    this.toolbar.refresh();
    this.plots.open();
    this.commands.render();
    this.events.render();
    this.timer = setInterval(() => this.progress.render(this.run), 1000);
    this.loader.open([runId]);
  }

  close() {
    if (!this.runId) return;
    this.loader.close();
    clearInterval(this.timer);
    this.plots.close();
    this.runId = null;
  }

  merge([history, commands, events]) {
    this.setRun(history.run);
    mergeHistory(this.data, history);
    this.progress.seed(history.series.batch);
    for (const c of commands) this.commands.put(c);
    for (const e of events) this.putEvent(e);
  }

  /** An event for the list, the checkpoints, or (a state event) the knobs and callbacks. */
  putEvent(e) {
    if (e.kind === STATE_EVENT) {
      const order = e.seq ?? e.id;
      if (order < this.stateSeq) return;
      this.stateSeq = order;
      this.knobs.update(e.data && e.data.knobs);
      this.callbacks.update(e.data && e.data.callbacks);
      return;
    }
    if (this.checkpoints.put(e)) this.checkpoints.render();
    this.events.put(e);
  }

  renderAll() {
    this.plots.sync();
    this.plots.invalidateAll();
    this.commands.render();
    this.events.render();
    this.plots.markEvents();
    this.progress.render(this.run);
  }

  failed(err, buffered) {
    if (err.status === 404) {
      this.missing = true; // shown again as soon as a "run" message names it
      showMissing(err.message);
      return;
    }
    document.dispatchEvent(new CustomEvent("fitdeck:error", { detail: err }));
    for (const message of buffered) this.apply(message);
  }

  // ---- live messages ---------------------------------------------------------

  handle(message) {
    if (!this.runId) return;
    if (message.type === "run_deleted") {
      if (message.run_id === this.runId) this.showDeleted();
      return;
    }
    if (this.missing && message.type !== "subscribed") {
      if (message.type === "run" && message.run.id === this.runId) {
        this.missing = false;
        showPage();
        this.loader.load();
      }
      return;
    }
    this.loader.handle(message);
  }

  apply(message) {
    switch (message.type) {
      case "run":
        this.setRun(message.run);
        break;
      case "metrics":
        this.addPoints(message.scope, api.decodePoints(message.points));
        break;
      case "command":
        this.commands.put(api.decodeCommand(message.command));
        this.commands.render();
        break;
      case "event":
        this.putEvent(message.event);
        this.events.render();
        this.plots.markEvents();
        break;
      default:
        break;
    }
  }

  addPoints(scope, points) {
    const touched = this.data.addPoints(scope, points);
    if (!touched.size || !this.run) return;
    if (scope === "batch") {
      for (const p of points) this.progress.note(p);
      this.progress.render(this.run);
    }
    this.plots.pointsAdded(scope, touched);
  }

  setRun(run) {
    if (this.run && (this.run.updated_at || 0) > (run.updated_at || 0)) return;
    const first = !this.run;
    this.run = run;
    renderHeader(run, first);
    this.controls.render(run);
    this.knobs.render();
    this.progress.render(run);
    if (this.plots.lrChart) this.plots.lrChart.invalidate();
  }

  /** The open run was deleted (here or in another tab). */
  showDeleted() {
    this.missing = true;
    showMissing(`The run ${this.run ? `"${this.run.name || this.runId}"` : this.runId} was deleted.`);
  }

  /** Events drawn on the charts: LR changes, command outcomes, early stops. */
  eventMarks() {
    const spe = (this.run && this.run.meta && this.run.meta.steps_per_epoch) || null;
    return this.events.chartMarks(spe);
  }

  invalidateAll() {
    this.plots.invalidateAll();
  }
}
