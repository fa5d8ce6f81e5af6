// The knobs card of the run page: every value the run lets a `set` command
// change (docs/http_api.md, Knobs), with its current value and type, and a
// form to set one. Values come from the newest `state` event of the run
// (fetched with the events, then pushed live); a `set` goes out as
// {"kind": "set", "name", "value"} through RunControls.send.

import { $, h, replaceChildren, setText } from "./dom.js";
import { formatValue } from "./format.js";
import { ENDED, decodeNumber } from "./protocol.js";

/**
 * The text typed for a knob of `type`, as the value to send, or {error}.
 * float: a finite number (or "null" for a knob without a value, e.g. baseline);
 * int: a whole number; bool: true/false.
 */
export function parseKnob(text, type) {
  const s = String(text).trim().toLowerCase();
  if (s === "") return { error: "Type a value." };
  if (type === "bool") {
    if (s === "true" || s === "false") return { value: s === "true" };
    return { error: "Type true or false." };
  }
  if (s === "null" || s === "none") return { value: null };
  const n = Number(s);
  if (!Number.isFinite(n)) return { error: `"${text}" is not a finite number.` };
  if (type === "int" && !Number.isInteger(n)) return { error: `"${text}" is not a whole number.` };
  return { value: n };
}

function shown(value) {
  if (value === null || value === undefined) return "—";
  if (typeof value === "boolean") return String(value);
  if (typeof value === "number" || typeof value === "string") {
    const n = decodeNumber(value);
    return n === null ? String(value) : formatValue(n);
  }
  return JSON.stringify(value);
}

export class KnobPanel {
  /** view: {runId, run}; send(command, label): RunControls.send. */
  constructor(view, send) {
    this.view = view;
    this.send = send;
    this.knobs = {};
    this.select = $("#knob-name");
    this.input = $("#knob-value");
    this.dirty = false;
    this.select.addEventListener("change", () => {
      this.dirty = false;
      this.fill();
    });
    this.input.addEventListener("input", () => {
      this.dirty = true;
      setText($("#knob-error"), "");
    });
    $("#knob-form").addEventListener("submit", (ev) => {
      ev.preventDefault();
      this.submit();
    });
  }

  clear() {
    this.knobs = {};
    this.dirty = false;
    this.input.value = "";
    setText($("#knob-error"), "");
    this.render();
  }

  /** The knobs of a `state` event: {name: {value, type}}. */
  update(knobs) {
    this.knobs = knobs || {};
    this.render();
  }

  render() {
    const names = Object.keys(this.knobs).sort();
    replaceChildren(
      $("#knobs-body"),
      names.map((name) => {
        const k = this.knobs[name];
        return h(
          "tr",
          { dataset: { knob: name } },
          h("td", { class: "name" }, name),
          h("td", { class: "num value" }, shown(k.value)),
          h("td", { class: "type" }, k.type),
        );
      }),
    );
    $("#knobs").hidden = names.length === 0;
    $("#knobs-empty").hidden = names.length > 0;
    const listed = [...this.select.options].map((o) => o.value);
    if (listed.join("\n") !== names.join("\n")) {
      // Rebuilt only when the names change: an open drop-down stays open on each push.
      const chosen = this.select.value;
      replaceChildren(
        this.select,
        names.map((name) => h("option", { value: name }, name)),
      );
      if (names.includes(chosen)) this.select.value = chosen;
    }
    const run = this.view.run;
    const off = names.length === 0 || !run || ENDED.includes(run.status);
    this.select.disabled = off;
    this.input.disabled = off;
    $("#knob-submit").disabled = off;
    this.fill();
  }

  /** Put the chosen knob's current value in the input, unless the user is typing. */
  fill() {
    const k = this.knobs[this.select.value];
    if (!k || this.dirty || document.activeElement === this.input) return;
    this.input.value = k.value === null || k.value === undefined ? "null" : String(k.value);
    this.input.placeholder = k.type;
  }

  async submit() {
    const name = this.select.value;
    const k = this.knobs[name];
    if (!k) return;
    const parsed = parseKnob(this.input.value, k.type);
    if (parsed.error) {
      setText($("#knob-error"), parsed.error);
      this.input.focus();
      return;
    }
    setText($("#knob-error"), "");
    const ok = await this.send({ kind: "set", name, value: parsed.value }, `Set ${name} = ${shown(parsed.value)}`);
    if (ok) this.dirty = false;
  }
}
