// The events of a run (fit began, LR changes, command outcomes, early stops,
// fit ended): the events list of the run page, and the marks they leave on
// its charts.

import { $, h, replaceChildren } from "./dom.js";
import { epochOfProgress, formatClock, formatLr } from "./format.js";
import { decodeNumber } from "./protocol.js";

const SHOWN = 200; // the list keeps the latest events

/** " in epoch 2 (after step 12)": where an event happened, the epoch 1-based. */
function eventWhere(e) {
  const epoch = epochOfProgress(e.epoch);
  const step = e.step !== null && e.step !== undefined ? `step ${e.step}` : null;
  if (epoch === null) return step ? ` after ${step}` : "";
  return ` in epoch ${epoch}${step ? ` (after ${step})` : ""}`;
}

function eventText(e) {
  const d = e.data || {};
  switch (e.kind) {
    case "train_begin":
      return `fit #${d.fit ?? 1} began`;
    case "lr_change": {
      const by = d.source === "command" ? `command #${d.command_id}` : d.source || "";
      return `LR ${formatLr(decodeNumber(d.previous))} → ${formatLr(decodeNumber(d.lr))} (${by})${eventWhere(e)}`;
    }
    case "command":
      return `command #${d.command_id} ${d.kind ?? ""} ${d.status ?? ""}${d.reason ? `: ${d.reason}` : ""}`;
    case "early_stop":
      return `stopped early by a callback${eventWhere(e)}`;
    case "train_end":
      return `training ${d.status ?? "ended"}${d.error && d.error.message ? `: ${d.error.message}` : ""}`;
    default:
      return `${e.kind} ${JSON.stringify(d)}`;
  }
}

/** How an event shows on the charts ({text, color, kind}), or null for none. */
function eventMark(e) {
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

export class EventList {
  constructor() {
    this.events = new Map(); // id → event
  }

  clear() {
    this.events.clear();
  }

  put(event) {
    this.events.set(event.id, event);
  }

  render() {
    const events = [...this.events.values()].sort((a, b) => (a.seq ?? a.id) - (b.seq ?? b.id)).slice(-SHOWN);
    replaceChildren(
      $("#events"),
      events.length
        ? events.map((e) =>
            h("li", { dataset: { kind: e.kind } }, h("span", { class: "time" }, formatClock(e.t)), " ", eventText(e)),
          )
        : h("li", { class: "empty small" }, "none yet"),
    );
  }

  /**
   * The events drawn on the charts: [{step, epoch, t, text, color, kind}], epoch
   * as a batch point's progress (from the step when `stepsPerEpoch` is known).
   */
  chartMarks(stepsPerEpoch) {
    const out = [];
    for (const e of [...this.events.values()].sort((a, b) => a.seq - b.seq)) {
      const mark = eventMark(e);
      if (!mark || e.step === null || e.step === undefined) continue;
      const epoch = stepsPerEpoch ? e.step / stepsPerEpoch : e.epoch;
      out.push({ step: e.step, epoch, t: e.t, ...mark });
    }
    return out;
  }
}
