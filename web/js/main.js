// Front door: routing (#/, #/runs/<id>, #/compare/<id>,<id>…), the live connection, wiring.

import { ApiError, decodeRun } from "./api.js";
import { CompareView } from "./compare_view.js";
import { $, setText } from "./dom.js";
import { LiveClient } from "./live.js";
import { RUN_ID_PATTERN } from "./protocol.js";
import { RunView } from "./run_view.js";
import { RunsView } from "./runs_view.js";

const RUN_ROUTE = new RegExp(`^#/runs/(${RUN_ID_PATTERN})/?$`);
const COMPARE_ROUTE = new RegExp(`^#/compare/(${RUN_ID_PATTERN}(?:,${RUN_ID_PATTERN})*)/?$`);

const live = new LiveClient();
const runsView = new RunsView();
const runView = new RunView(live);
const compareView = new CompareView(live);

function showBanner(message) {
  const banner = $("#banner");
  banner.hidden = !message;
  setText(banner, message || "");
}

function reportError(err) {
  console.error("fitdeck:", err);
  showBanner(err instanceof ApiError ? err.message : `Something went wrong: ${err.message || err}`);
}

async function loadRuns() {
  try {
    await runsView.load();
    showBanner("");
  } catch (err) {
    reportError(err);
  }
}

function route() {
  const run = RUN_ROUTE.exec(location.hash);
  const compare = COMPARE_ROUTE.exec(location.hash);
  if (run) {
    runsView.hide();
    compareView.hide();
    runView.show(run[1]);
  } else if (compare) {
    runsView.hide();
    runView.hide();
    compareView.show([...new Set(compare[1].split(","))]);
  } else {
    runView.hide();
    compareView.hide();
    runsView.show();
    if (location.hash && location.hash !== "#/") history.replaceState(null, "", "#/");
  }
  window.scrollTo(0, 0);
}

// The server's storage health, from the live hello and every `storage` message.
function showStorage(storage) {
  const banner = $("#storage-banner");
  const degraded = Boolean(storage && storage.status === "degraded");
  banner.hidden = !degraded;
  setText(
    banner,
    degraded
      ? `The server cannot store new records (${storage.reason}); trainers keep them and resend once it can.`
      : "",
  );
}

live.on("message", (message) => {
  if (message.type === "hello" || message.type === "storage") {
    showStorage(message.storage);
    return;
  }
  if (message.type === "run" && message.run) {
    // decodeRun mutates: each view gets its own copy.
    runsView.upsert(decodeRun({ ...message.run }));
    runView.handle({ ...message, run: decodeRun({ ...message.run }) });
    compareView.handle({ ...message, run: decodeRun({ ...message.run }) });
    return;
  }
  if (message.type === "run_deleted") runsView.remove(message.run_id);
  runView.handle(message);
  compareView.handle(message);
});

live.on("open", ({ reconnect }) => {
  // Run messages sent while the socket was down are fetched again.
  // (The open run page reloads on the server's "subscribed" answer.)
  if (reconnect) loadRuns();
});

live.on("state", ({ state, retryIn, reason }) => {
  const el = $("#live-status");
  el.dataset.state = state;
  if (state === "open") setText(el, "live");
  else if (state === "connecting") setText(el, "connecting…");
  else setText(el, `offline (${reason}), retrying in ${Math.ceil(retryIn / 1000)}s`);
});

document.addEventListener("fitdeck:error", (ev) => reportError(ev.detail));

window.matchMedia("(prefers-color-scheme: dark)").addEventListener("change", () => {
  runView.invalidateAll();
  compareView.invalidateAll();
});

window.addEventListener("hashchange", route);

// For tests and debugging in the console.
window.fitdeck = { live, runsView, runView, compareView };

if (!window.Plotly) {
  showBanner("Plotly did not load (/static/vendor/plotly.min.js): charts cannot be drawn.");
}
live.start();
loadRuns();
route();
