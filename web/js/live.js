// The /ws/live client: one WebSocket, subscription kept across reconnects,
// capped exponential backoff with jitter when the connection drops.
//
// Listeners (on(type, fn)):
//   "message"  every decoded frame from the server ({type: "run" | "metrics" | ...}),
//              including {type: "subscribed", run_ids}: the server confirms a
//              subscription; history fetched after it leaves no gap
//   "open"     {reconnect: bool} after the socket opened and the subscription was sent;
//              reconnect is true when an earlier connection existed (data may be missing)
//   "state"    {state: "connecting" | "open" | "closed", retryIn?: ms, reason?: string}

import { CLOSE } from "./protocol.js";

const BACKOFF_START_MS = 500;
const REFUSED_RETRY_MS = 5000; // a refused connection will not get better by hammering
const BACKOFF_MAX_MS = 15000;

export class LiveClient {
  constructor(url = LiveClient.defaultUrl()) {
    this.url = url;
    this.runIds = [];
    this.socket = null;
    this.listeners = new Map();
    this.attempt = 0;
    this.everOpened = false;
    this.retryTimer = null;
  }

  static defaultUrl() {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    return `${scheme}//${location.host}/ws/live`;
  }

  on(type, fn) {
    if (!this.listeners.has(type)) this.listeners.set(type, new Set());
    this.listeners.get(type).add(fn);
    return () => this.listeners.get(type).delete(fn);
  }

  emit(type, detail) {
    for (const fn of this.listeners.get(type) || []) {
      try {
        fn(detail);
      } catch (err) {
        console.error("fitdeck: a live listener failed", err);
      }
    }
  }

  /** Receive metrics, events and commands of these runs (replaces the previous choice). */
  subscribe(runIds) {
    this.runIds = [...runIds];
    this.send({ type: "subscribe", run_ids: this.runIds });
  }

  send(message) {
    if (this.socket && this.socket.readyState === WebSocket.OPEN) {
      this.socket.send(JSON.stringify(message));
      return true;
    }
    return false; // sent on (re)connect
  }

  start() {
    this.connect();
  }

  /** Close the socket as if the network dropped it (for tests and debugging). */
  drop() {
    if (this.socket) this.socket.close(CLOSE.PAGE_LEFT, "dropped by the page");
  }

  connect() {
    clearTimeout(this.retryTimer);
    this.emit("state", { state: "connecting" });
    let socket;
    try {
      socket = new WebSocket(this.url);
    } catch (err) {
      this.scheduleReconnect(String(err));
      return;
    }
    this.socket = socket;
    socket.addEventListener("open", () => {
      if (socket !== this.socket) return;
      const reconnect = this.everOpened;
      this.everOpened = true;
      this.attempt = 0;
      socket.send(JSON.stringify({ type: "subscribe", run_ids: this.runIds }));
      this.emit("state", { state: "open" });
      this.emit("open", { reconnect });
    });
    socket.addEventListener("message", (ev) => {
      if (socket !== this.socket) return;
      let message;
      try {
        message = JSON.parse(ev.data);
      } catch {
        console.warn("fitdeck: ignoring a live frame that is not JSON");
        return;
      }
      this.emit("message", message);
    });
    socket.addEventListener("close", (ev) => {
      if (socket !== this.socket) return;
      this.socket = null;
      let reason = ev.reason || `code ${ev.code}`;
      if (ev.code === CLOSE.POLICY) reason = `refused: ${ev.reason || "not signed in"}`;
      if (ev.code === CLOSE.TRY_AGAIN_LATER) reason = "too slow, catching up";
      this.scheduleReconnect(reason, ev.code);
    });
    // "error" is always followed by "close"; nothing to do here.
  }

  scheduleReconnect(reason, code) {
    this.attempt += 1;
    const base = Math.min(BACKOFF_MAX_MS, BACKOFF_START_MS * 2 ** (this.attempt - 1));
    const floor = code === CLOSE.POLICY ? REFUSED_RETRY_MS : 0;
    const delay = Math.max(floor, base / 2 + Math.random() * (base / 2));
    this.emit("state", { state: "closed", retryIn: delay, reason });
    this.retryTimer = setTimeout(() => this.connect(), delay);
  }
}
