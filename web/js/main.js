// Front door: routing (#/ and #/runs/<id>), the live connection, wiring.

import { ApiError, decodeRun } from "./api.js";
import { $, setText } from "./dom.js";
import { LiveClient } from "./live.js";
import { RunView } from "./run_view.js";
import { RunsView } from "./runs_view.js";

const RUN_ROUTE = /^#\/runs\/([0-9a-f]{32})\/?$/;

const live = new LiveClient();
const runsView = new RunsView();
const runView = new RunView(live);

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
  const match = RUN_ROUTE.exec(location.hash);
  if (match) {
    runsView.hide();
    runView.show(match[1]);
  } else {
    runView.hide();
    runsView.show();
    if (location.hash && location.hash !== "#/") history.replaceState(null, "", "#/");
  }
}

live.on("message", (message) => {
  if (message.type === "run" && message.run) {
    // decodeRun mutates: each view gets its own copy.
    runsView.upsert(decodeRun({ ...message.run }));
    runView.handle({ ...message, run: decodeRun({ ...message.run }) });
    return;
  }
  runView.handle(message);
});

live.on("open", ({ reconnect }) => {
  if (reconnect) loadRuns();
  // What was pushed while the socket was down (or before it first opened) is fetched again.
  if (reconnect || !runView.loadedLive) runView.reload();
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
});

window.addEventListener("hashchange", route);

// For tests and debugging in the console.
window.fitdeck = { live, runsView, runView };

if (!window.Plotly) {
  showBanner("Plotly did not load (/static/vendor/plotly.min.js): charts cannot be drawn.");
}
live.start();
loadRuns();
route();
