// The wire protocol as the browser needs it: the one copy of server/protocol.py's
// constants in JavaScript (`browser_constants()` there names them), and the one
// NaN/±Infinity codec of the page. tests/test_protocol_js.py fails when this
// file and server/protocol.py disagree; every other module imports from here.
//
// Strict JSON has no literal for NaN and ±Infinity: every fitdeck message
// writes them as the strings "NaN", "Infinity" and "-Infinity".

/** A run id: 32 lowercase hex characters. */
export const RUN_ID_PATTERN = "[0-9a-f]{32}";
/** RUN_ID_PATTERN anchored: RUN_ID.test(text) says whether `text` is a whole run id. */
export const RUN_ID = new RegExp(`^${RUN_ID_PATTERN}$`);

/** Longest run name, project, metric name, event kind or LR source (characters). */
export const MAX_NAME = 200;
/** Most runs one /ws/live connection may follow. */
export const MAX_SUBSCRIPTIONS = 64;
/** The series (and epoch log) holding the learning rate. */
export const LR_KEY = "learning_rate";
/**
 * The run meta field listing the series that are settings (values that hold
 * until changed): drawn as steps, never smoothed. LR_KEY always is one.
 */
export const SETTINGS_META = "settings";

export const SCOPES = Object.freeze(["epoch", "batch"]);
export const RUN_STATUSES = Object.freeze(["running", "paused", "finished", "stopped", "failed", "disconnected"]);
/** Run statuses after which no command can apply (sorted). */
export const ENDED = Object.freeze(["failed", "finished", "stopped"]);
export const COMMAND_KINDS = Object.freeze(["stop", "set_lr"]);
/** In the order a command moves through them; it never moves back. */
export const COMMAND_STATUSES = Object.freeze(["pending", "delivered", "applied", "rejected", "expired"]);
/** Command statuses nothing follows (sorted). */
export const FINAL_COMMAND = Object.freeze(["applied", "expired", "rejected"]);
/** Every `type` a /ws/live message can have. */
export const LIVE_MESSAGES = Object.freeze([
  "subscribe",
  "hello",
  "subscribed",
  "run",
  "run_deleted",
  "metrics",
  "event",
  "command",
  "error",
  "storage",
]);

/** WebSocket close codes. */
export const CLOSE = Object.freeze({
  NORMAL: 1000,
  POLICY: 1008, // bad token, Host or Origin; a frame that breaks the protocol; rate limit
  TOO_BIG: 1009,
  UNSUPPORTED: 1003,
  TRY_AGAIN_LATER: 1013, // a browser too slow to keep up: reconnect and refetch
  PAGE_LEFT: 4000, // the page drops its own socket
});

/** How non-finite numbers are written on the wire (sorted). */
export const NON_FINITE = Object.freeze(["-Infinity", "Infinity", "NaN"]);

const DECODED = new Map(NON_FINITE.map((name) => [name, Number(name)]));

/**
 * A wire value as a number: numbers as they are, "NaN"/"Infinity"/"-Infinity"
 * as NaN/±Infinity; null (and anything that is not a number) is null.
 */
export function decodeNumber(value) {
  if (typeof value === "number") return value;
  if (typeof value === "string" && DECODED.has(value)) return DECODED.get(value);
  return null;
}

/** A number as a wire value: finite as it is, NaN/±Infinity as their strings; null stays null. */
export function encodeNumber(value) {
  if (typeof value !== "number") return null;
  return Number.isFinite(value) ? value : String(value); // String(-Infinity) === "-Infinity"
}
