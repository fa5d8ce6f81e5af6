// The callbacks card and the checkpoints card of the run page.
//
// Callbacks: the live state of the Keras callbacks LiveMonitor watches
// (EarlyStopping, ReduceLROnPlateau, ModelCheckpoint, LearningRateScheduler,
// TerminateOnNaN), from the newest `state` event, refreshed every epoch.
// Checkpoints: every `checkpoint` event (a checkpoint or stop+checkpoint
// command), newest last, with its step, path and size.

import { $, h, replaceChildren } from "./dom.js";
import { formatClock, formatLr, formatTime } from "./format.js";

/** Labels of the state fields, in the order shown; other fields follow as they come. */
const FIELDS = [
  ["monitor", "monitor"],
  ["best", "best"],
  ["wait", "wait"],
  ["patience", "patience"],
  ["epochs_left", "epochs left"],
  ["cooldown", "cooldown"],
  ["cooldown_left", "cooldown left"],
  ["factor", "factor"],
  ["min_lr", "min LR"],
  ["next_lr", "next LR"],
  ["lr", "LR"],
  ["save_best_only", "save best only"],
  ["last_file", "last file"],
  ["saved_at", "saved at"],
  ["watching", "watching"],
  ["last_loss", "last loss"],
];
const LABELS = new Map(FIELDS);

function fieldText(key, value) {
  if (value === null || value === undefined) return "—";
  if (key === "saved_at") return formatTime(value);
  if (typeof value === "number") return formatLr(value); // "NaN"/"Infinity" stay as sent
  if (typeof value === "object") return JSON.stringify(value);
  return String(value);
}

/** The pairs of one callback's state: [{key, label, text}], known fields first. */
export function stateRows(state) {
  const keys = [...FIELDS.map(([k]) => k).filter((k) => k in state), ...Object.keys(state).filter((k) => !LABELS.has(k))];
  const rows = keys.map((key) => ({ key, label: LABELS.get(key) || key, text: fieldText(key, state[key]) }));
  if ("wait" in state && "patience" in state) {
    // "wait / patience" reads as one thing: how close the callback is to acting.
    const i = rows.findIndex((r) => r.key === "wait");
    rows.splice(i, 1, { key: "wait", label: "wait / patience", text: `${state.wait} / ${state.patience}` });
    rows.splice(rows.findIndex((r) => r.key === "patience"), 1);
  }
  return rows;
}

export class CallbackPanel {
  constructor() {
    this.callbacks = [];
  }

  clear() {
    this.callbacks = [];
    this.render();
  }

  /** The callbacks of a `state` event: [{name, class, state}]. */
  update(callbacks) {
    this.callbacks = Array.isArray(callbacks) ? callbacks : [];
    this.render();
  }

  render() {
    const root = $("#callbacks");
    replaceChildren(
      root,
      this.callbacks.map((cb) =>
        h(
          "section",
          { class: "callback", dataset: { callback: cb.name } },
          h("h3", {}, cb.name, " ", h("span", { class: "class" }, cb.class || "")),
          h(
            "dl",
            { class: "kv" },
            stateRows(cb.state || {}).map((r) => [
              h("dt", {}, r.label),
              h("dd", { dataset: { field: r.key } }, r.text),
            ]),
          ),
        ),
      ),
    );
    $("#callbacks-empty").hidden = this.callbacks.length > 0;
  }
}

function formatBytes(n) {
  if (!Number.isFinite(n)) return "—";
  if (n < 1024) return `${n} B`;
  if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
  return `${(n / 1024 / 1024).toFixed(1)} MB`;
}

export class CheckpointList {
  constructor() {
    this.items = new Map(); // event id → event
  }

  clear() {
    this.items.clear();
    this.render();
  }

  /** Any event: keeps the `checkpoint` ones. Returns whether it was one. */
  put(event) {
    if (event.kind !== "checkpoint") return false;
    this.items.set(event.id, event);
    return true;
  }

  render() {
    const items = [...this.items.values()].sort((a, b) => a.t - b.t);
    replaceChildren(
      $("#checkpoints"),
      items.map((e) => {
        const d = e.data || {};
        return h(
          "li",
          { dataset: { step: e.step ?? "" } },
          h("span", { class: "time" }, formatClock(e.t)),
          ` step ${e.step ?? "—"} · ${formatBytes(d.bytes)}`,
          d.command_id !== null && d.command_id !== undefined ? ` · command #${d.command_id}` : "",
          h("div", { class: "path" }, d.path || ""),
        );
      }),
    );
    $("#checkpoints-empty").hidden = items.length > 0;
  }
}
