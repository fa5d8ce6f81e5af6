// The progress card of the run page: epoch and batch, a bar, the ETA from the
// recent step rate, elapsed time. Fed with the run and its batch points.

import { $, setText } from "./dom.js";
import { formatClock, formatDuration, formatNumber } from "./format.js";
import { ENDED } from "./protocol.js";
import { epochsDone } from "./runs_view.js";

const RATE_SAMPLES = 40; // step rate over about the last 10 s of batch points
const RATE_SPACING_S = 0.25;

export class Progress {
  constructor() {
    this.latest = null; // the batch point with the highest step: {step, epoch, t}
    this.samples = []; // {step, t} at least RATE_SPACING_S apart
  }

  /** The last batch points of fetched series ({key: {step, epoch, t}}). */
  seed(batchSeries) {
    for (const s of Object.values(batchSeries)) {
      const n = s.step.length;
      for (let i = Math.max(0, n - 20); i < n; i++) this.note({ step: s.step[i], epoch: s.epoch[i], t: s.t[i] });
    }
  }

  /** One batch point ({step, epoch, t}). */
  note(p) {
    if (!this.latest || p.step > this.latest.step) this.latest = { step: p.step, epoch: p.epoch, t: p.t };
    const last = this.samples[this.samples.length - 1];
    if (!last || (p.t - last.t >= RATE_SPACING_S && p.step > last.step)) {
      this.samples.push({ step: p.step, t: p.t });
      if (this.samples.length > RATE_SAMPLES) this.samples.shift();
    }
  }

  /** Steps per second over the last seconds of batch points (or the whole run). */
  stepRate(run) {
    const s = this.samples;
    if (s.length >= 2 && s[s.length - 1].t > s[0].t) {
      return (s[s.length - 1].step - s[0].step) / (s[s.length - 1].t - s[0].t);
    }
    const elapsed = (run.updated_at || 0) - (run.created_at || 0);
    return run.step > 0 && elapsed > 0 ? run.step / elapsed : null;
  }

  /** Where the run is: {epochIdx (0-based, in progress), batch (done in it, or null), steps}. */
  position(run) {
    const meta = run.meta || {};
    const epochs = meta.epochs || null;
    const spe = meta.steps_per_epoch || null;
    const p = this.latest;
    const steps = Math.max(run.step || 0, p ? p.step : 0);
    if (p && spe && Number.isFinite(p.epoch)) {
      // The batch point's epoch is e + (b + 1) / steps_per_epoch.
      const epochIdx = Math.max(0, Math.ceil(p.epoch - 1e-9) - 1);
      return { epochIdx, batch: Math.min(spe, Math.max(0, Math.round((p.epoch - epochIdx) * spe))), steps };
    }
    if (spe) {
      const epochIdx = Math.min(Math.floor(steps / spe), Math.max(0, (epochs || Infinity) - 1));
      return { epochIdx, batch: Math.min(spe, steps - epochIdx * spe), steps };
    }
    const done = epochsDone(run);
    return { epochIdx: ENDED.includes(run.status) ? Math.max(0, done - 1) : done, batch: null, steps };
  }

  render(run) {
    if (!run) return;
    const meta = run.meta || {};
    const epochs = meta.epochs || null;
    const spe = meta.steps_per_epoch || null;
    const { epochIdx, batch, steps } = this.position(run);
    const ended = ENDED.includes(run.status);
    let fraction = 0;
    if (epochs && spe && batch !== null) fraction = (epochIdx * spe + batch) / (epochs * spe);
    else if (epochs) fraction = epochsDone(run) / epochs;
    fraction = Math.min(1, Math.max(0, fraction));

    setText($("#progress-epoch"), `Epoch ${epochIdx + 1}${epochs ? ` / ${epochs}` : ""}`);
    // Batches done in the epoch, as Keras' progress bar counts them (1-based: "batch 3 / 10").
    setText($("#progress-step"), batch === null ? `step ${steps}` : `batch ${batch} / ${spe}`);
    const rate = this.stepRate(run);
    let eta = "ETA —";
    if (ended) eta = run.status;
    else if (run.status === "disconnected") eta = "ETA — (disconnected)";
    else if (rate && epochs && spe) {
      const remaining = epochs * spe - (epochIdx * spe + (batch || 0));
      eta = `ETA ${formatDuration(remaining / rate)}`;
    }
    setText($("#progress-eta"), eta);
    const bar = $("#progress-bar");
    bar.value = fraction;
    bar.setAttribute("aria-valuetext", `${Math.round(fraction * 100)}%`);
    $("#progress").dataset.status = run.status;
    const endT = run.ended_at || (ended ? run.updated_at : Date.now() / 1000);
    setText(
      $("#progress-elapsed"),
      `elapsed ${formatDuration(endT - run.created_at)}` +
        (rate && !ended ? ` · ${formatNumber(rate, 3)} steps/s` : "") +
        ` · ${steps} steps`,
    );
    setText($("#progress-latest"), this.latest ? `last batch ${formatClock(this.latest.t)}` : "");
  }
}
