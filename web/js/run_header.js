// The top of the run page: name, project, status, facts and error; the
// parameters and model cards; the export links; and the notice shown instead
// of the page when the run is missing or was deleted. Names from the training
// script are set as text, never markup.

import * as api from "./api.js";
import { $, h, replaceChildren, setText } from "./dom.js";
import { formatLr, formatTime, formatValue } from "./format.js";
import { statusBadge } from "./runs_view.js";

/** Reset the header for a run being opened. */
export function resetHeader(runId) {
  showPage();
  setText($("#run-name"), "Loading…");
  setText($("#run-project"), "");
  setText($("#run-facts"), "");
  const short = runId.slice(0, 8);
  // The same file names the server gives them (Content-Disposition).
  setLink($("#export-link"), api.exportUrl(runId), `fitdeck-${short}.csv`);
  setLink($("#export-json"), api.exportJsonUrl(runId), `fitdeck-${short}.json`);
  setLink($("#export-report"), api.reportUrl(runId), `fitdeck-${short}-report.html`);
}

function setLink(a, href, download) {
  a.href = href;
  a.download = download;
}

/** Show `run`; `first`: its params and meta too (they do not change). */
export function renderHeader(run, first) {
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
  setText($("#run-facts"), factsText(run));
  if (first) {
    renderKv($("#run-params"), run.params || {});
    renderMeta(run.meta || {});
  }
}

/** "Adam · LR 0.001 · 4,810 params · 3 layers" under the name. */
function factsText(run) {
  const meta = run.meta || {};
  const parts = [];
  const opt = meta.optimizer && meta.optimizer.class_name;
  if (opt) parts.push(opt);
  if (run.lr !== null && run.lr !== undefined) parts.push(`LR ${formatLr(run.lr)}`);
  if (meta.lr_schedule) parts.push(`schedule ${formatValue(meta.lr_schedule)}`);
  if (Number.isFinite(meta.param_count)) parts.push(`${meta.param_count.toLocaleString()} params`);
  if (Array.isArray(meta.layers) && meta.layers.length) parts.push(`${meta.layers.length} layers`);
  if (meta.batch_size) parts.push(`batch ${meta.batch_size}`);
  return parts.join(" · ");
}

function renderKv(dl, obj) {
  const entries = Object.entries(obj);
  replaceChildren(
    dl,
    entries.length
      ? entries.map(([k, v]) => [h("dt", {}, k), h("dd", {}, formatValue(v))])
      : h("dd", { class: "empty small" }, "none"),
  );
}

function renderMeta(meta) {
  const opt = meta.optimizer || {};
  const info = {};
  if (opt.class_name) info.optimizer = opt.class_name;
  if (meta.lr_schedule) info["LR schedule"] = meta.lr_schedule;
  if (meta.model_name) info.model = meta.model_name;
  if (meta.param_count !== undefined) info.parameters = meta.param_count?.toLocaleString();
  if (meta.trainable_param_count !== undefined) info.trainable = meta.trainable_param_count?.toLocaleString();
  if (meta.epochs !== undefined) info.epochs = meta.epochs;
  if (meta.steps_per_epoch !== undefined) info["steps/epoch"] = meta.steps_per_epoch ?? "unknown";
  if (meta.batch_size !== undefined && meta.batch_size !== null) info["batch size"] = meta.batch_size; // Keras 3 never says
  if (meta.keras_version) info.keras = `${meta.keras_version}${meta.backend ? ` (${meta.backend})` : ""}`;
  renderKv($("#run-meta"), info);
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

/** The notice instead of the page: the run is not there (`text` says why). */
export function showMissing(text) {
  $("#run-page").hidden = true;
  const missing = $("#run-missing");
  missing.hidden = false;
  setText(missing, text);
}

export function showPage() {
  $("#run-missing").hidden = true;
  $("#run-page").hidden = false;
}
