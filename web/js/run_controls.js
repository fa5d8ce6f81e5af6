// The controls card of the run page: stop training (after a confirmation)
// and set the learning rate. Both POST a command; its progress shows in the
// commands table (run_commands.js).
//
// Guards (lr.js): a learning rate more than LR_CONFIRM_FACTOR times away from
// the current one (up or down) asks for a confirmation first; Set LR is
// disabled, with the reason shown, when the optimizer's rate comes from a
// schedule (the run's meta.lr_schedule), which would refuse it.

import * as api from "./api.js";
import { $, setText } from "./dom.js";
import { formatLr } from "./format.js";
import { lrJump, lrLockedReason, parseLr } from "./lr.js";
import { ENDED } from "./protocol.js";

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

  /** Enable or disable the controls for the run's status and LR schedule; show its LR. */
  render(run) {
    const ended = !run || ENDED.includes(run.status);
    const locked = lrLockedReason(run);
    $("#stop-button").disabled = ended;
    this.input.disabled = ended || locked !== null;
    $("#lr-submit").disabled = ended || locked !== null;
    const note = $("#lr-locked");
    note.hidden = locked === null;
    setText(note, locked || "");
    $("#lr-submit").title = locked || "";
    setText($("#lr-current"), run ? formatLr(run.lr) : "—");
    const untouched = !this.lrDirty && document.activeElement !== this.input; // the user is not typing
    if (run && run.lr !== null && (locked !== null || untouched)) {
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
      const { run, runId } = this.view;
      const factor = run ? lrJump(parsed.value, run.lr) : null;
      if (factor !== null && !(await this.confirmJump(parsed.value, run.lr, factor))) {
        if (runId !== this.view.runId) return; // another run was opened meanwhile
        setText($("#control-message"), `Set LR ${formatLr(parsed.value)}: cancelled, nothing sent.`);
        input.focus();
        return;
      }
      if (runId !== this.view.runId) return;
      const ok = await this.send({ kind: "set_lr", lr: parsed.value }, `Set LR ${formatLr(parsed.value)}`);
      if (ok) this.lrDirty = false;
    });
    const dialog = $("#lr-dialog");
    $("#cancel-lr").addEventListener("click", () => dialog.close("cancel"));
    $("#confirm-lr").addEventListener("click", () => dialog.close("confirm"));
  }

  /** Ask before a learning rate `factor` times away from the current one. Resolves to yes/no. */
  confirmJump(lr, current, factor) {
    const dialog = $("#lr-dialog");
    const way = lr > current ? "larger" : "smaller";
    const times = factor < 1e12 ? Math.round(factor).toLocaleString("en") : factor.toExponential(0).replace("e+", "e");
    setText(
      $("#lr-dialog-text"),
      `${formatLr(lr)} is ${times}× ${way} than the current ${formatLr(current)}. ` +
        "The optimizer uses it from the next batch; a rate that far off can make the loss " +
        "diverge (or training stall) at once.",
    );
    setText($("#confirm-lr"), `Set ${formatLr(lr)}`);
    dialog.returnValue = "";
    return new Promise((resolve) => {
      dialog.addEventListener("close", () => resolve(dialog.returnValue === "confirm"), { once: true });
      dialog.showModal();
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
