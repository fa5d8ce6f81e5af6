// The controls card of the run page: stop training (after a confirmation)
// and set the learning rate. Both POST a command; its progress shows in the
// commands table (run_commands.js).

import * as api from "./api.js";
import { $, setText } from "./dom.js";
import { formatLr } from "./format.js";
import { ENDED } from "./protocol.js";

const DECIMAL = /^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;

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

export class RunControls {
  /** view: {runId, run} of the open run; onSent(command): a command was stored. */
  constructor(view, onSent) {
    this.view = view;
    this.onSent = onSent;
    this.lrDirty = false; // the user typed in the LR input: do not overwrite it
    this.input = $("#lr-input");
    this.wireStop();
    this.wireLr();
  }

  /** A run was opened. */
  reset() {
    this.lrDirty = false;
    this.input.value = "";
    this.showError("");
    setText($("#control-message"), "");
  }

  /** Enable or disable the controls for the run's status; show its LR. */
  render(run) {
    const ended = !run || ENDED.includes(run.status);
    $("#stop-button").disabled = ended;
    this.input.disabled = ended;
    $("#lr-submit").disabled = ended;
    setText($("#lr-current"), run ? formatLr(run.lr) : "—");
    if (run && !this.lrDirty && document.activeElement !== this.input && run.lr !== null) {
      this.input.value = formatLr(run.lr);
    }
    if (ended && run) setText($("#control-message"), `Training ${run.status}: no more commands.`);
  }

  showError(text) {
    setText($("#lr-error"), text);
    if (text) this.input.setAttribute("aria-invalid", "true");
    else this.input.removeAttribute("aria-invalid");
  }

  wireStop() {
    const dialog = $("#stop-dialog");
    $("#stop-button").addEventListener("click", () => {
      const run = this.view.run;
      if (!run) return;
      setText($("#stop-dialog-run"), run.name || run.id);
      dialog.showModal();
    });
    $("#cancel-stop").addEventListener("click", () => dialog.close("cancel"));
    $("#confirm-stop").addEventListener("click", () => {
      dialog.close("confirm");
      this.send({ kind: "stop" }, "Stop");
    });
  }

  wireLr() {
    const input = this.input;
    input.addEventListener("input", () => {
      this.lrDirty = true;
      this.showError("");
    });
    input.addEventListener("blur", () => {
      const run = this.view.run;
      if (run && input.value.trim() === formatLr(run.lr)) this.lrDirty = false;
    });
    $("#lr-form").addEventListener("submit", async (ev) => {
      ev.preventDefault();
      const parsed = parseLr(input.value);
      if (parsed.error) {
        this.showError(parsed.error);
        input.focus();
        return;
      }
      this.showError("");
      const ok = await this.send({ kind: "set_lr", lr: parsed.value }, `Set LR ${formatLr(parsed.value)}`);
      if (ok) this.lrDirty = false;
    });
  }

  /** POST a command; says how it went. Resolves to whether the server took it. */
  async send(command, label) {
    const runId = this.view.runId;
    const message = $("#control-message");
    setText(message, `${label}: sending…`);
    try {
      const stored = await api.postCommand(runId, command);
      if (runId !== this.view.runId) return true;
      this.onSent(stored);
      setText(message, `${label}: sent as command #${stored.id}, status below.`);
      return true;
    } catch (err) {
      if (runId === this.view.runId) setText(message, `${label} failed: ${err.message}`);
      return false;
    }
  }
}
