// The rename and delete confirmations (native <dialog>: focus moves in, Esc
// cancels, focus returns). Each does its request and shows the server's
// refusal inside the dialog, so the user can fix it or cancel.

import * as api from "./api.js";
import { $, setText } from "./dom.js";
import { MAX_NAME } from "./protocol.js";

$("#rename-input").maxLength = MAX_NAME;

/** A run name as typed: trimmed, 1 to MAX_NAME characters; or an error message. */
export function parseName(text) {
  const name = String(text).trim();
  if (!name) return { error: "A name needs at least one character." };
  if (name.length > MAX_NAME) return { error: `At most ${MAX_NAME} characters; this has ${name.length}.` };
  return { name };
}

function runLabel(run) {
  return run.name || run.id;
}

/** Ask for a new name and rename the run. Resolves to the renamed run, or null if cancelled. */
export function askRename(run) {
  const dialog = $("#rename-dialog");
  const input = $("#rename-input");
  const error = $("#rename-error");
  input.value = run.name || "";
  setText(error, "");
  input.removeAttribute("aria-invalid");
  return new Promise((resolve) => {
    let busy = false;
    const submit = async (ev) => {
      ev.preventDefault();
      if (busy) return;
      const parsed = parseName(input.value);
      if (parsed.error) {
        setText(error, parsed.error);
        input.setAttribute("aria-invalid", "true");
        input.focus();
        return;
      }
      busy = true;
      try {
        const renamed = await api.renameRun(run.id, parsed.name);
        finish(renamed);
      } catch (err) {
        setText(error, err.message);
        busy = false;
      }
    };
    const cancel = () => finish(null);
    const onClose = () => finish(null);
    const finish = (result) => {
      $("#rename-form").removeEventListener("submit", submit);
      $("#cancel-rename").removeEventListener("click", cancel);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    $("#rename-form").addEventListener("submit", submit);
    $("#cancel-rename").addEventListener("click", cancel);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
    input.select();
  });
}

/** Confirm and delete the run. Resolves to true once it is deleted, false if cancelled. */
export function askDelete(run) {
  const dialog = $("#delete-dialog");
  const error = $("#delete-error");
  setText($("#delete-dialog-run"), runLabel(run));
  setText(error, "");
  return new Promise((resolve) => {
    let busy = false;
    const confirm = async () => {
      if (busy) return;
      busy = true;
      try {
        await api.deleteRun(run.id);
        finish(true);
      } catch (err) {
        setText(error, err.message);
        busy = false;
      }
    };
    const cancel = () => finish(false);
    const onClose = () => finish(false);
    const finish = (result) => {
      $("#confirm-delete").removeEventListener("click", confirm);
      $("#cancel-delete").removeEventListener("click", cancel);
      dialog.removeEventListener("close", onClose);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    $("#confirm-delete").addEventListener("click", confirm);
    $("#cancel-delete").addEventListener("click", cancel);
    dialog.addEventListener("close", onClose);
    dialog.showModal();
  });
}

/**
 * Confirm deleting every run `filter` matches: the dry run's `counts` ({matched,
 * running}) name how many go (running ones are kept). Resolves true once deleted.
 */
export function askBulkDelete(filter, counts) {
  const deletable = counts.matched - counts.running;
  const n = (x) => x.toLocaleString("en-US");
  const parts = [];
  if (filter.q) parts.push(`name matching “${filter.q}”`);
  if (filter.project) parts.push(`project ${filter.project}`);
  if (filter.status.length) parts.push(`status ${filter.status.join(" or ")}`);
  let text = `${n(deletable)} run${deletable === 1 ? "" : "s"} (${parts.join(", ")}) and all their metrics, events and commands are deleted for good.`;
  if (counts.running) text += ` ${n(counts.running)} running run${counts.running === 1 ? " is" : "s are"} kept.`;
  if (!deletable) text = `No run to delete: ${counts.running ? "every matching run is running" : "nothing matches"}.`;
  const dialog = $("#bulk-delete-dialog");
  const confirm = $("#confirm-bulk-delete");
  const error = $("#bulk-delete-error");
  setText($("#bulk-delete-text"), text);
  setText(error, "");
  setText(confirm, `Delete ${n(deletable)} run${deletable === 1 ? "" : "s"}`);
  confirm.disabled = deletable === 0;
return new Promise((resolve) => {
    let busy = false;
    const onConfirm = async () => {
      if (busy) return;
      busy = true;
      try {
        await api.deleteRuns(filter);
        finish(true);
      } catch (err) {
        setText(error, err.message);
        busy = false;
      }
    };
    const onCancel = () => finish(false);
    const finish = (result) => {
      confirm.removeEventListener("click", onConfirm);
      $("#cancel-bulk-delete").removeEventListener("click", onCancel);
      dialog.removeEventListener("close", onCancel);
      if (dialog.open) dialog.close();
      resolve(result);
    };
    confirm.addEventListener("click", onConfirm);
    $("#cancel-bulk-delete").addEventListener("click", onCancel);
    dialog.addEventListener("close", onCancel);
    dialog.showModal();
  });
}
