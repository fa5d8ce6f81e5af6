// Opening runs without a gap, for the run page and the compare page alike:
//
// 1. subscribe on /ws/live and wait for the server's "subscribed": from then
//    on every change of the runs is pushed (without a live socket, load
//    anyway after SUBSCRIBE_WAIT_MS);
// 2. fetch the history over HTTP while live messages wait in a buffer;
// 3. merge it, then apply the buffer (series deduplicate by step: what came
//    both ways counts once).
//
// Each later "subscribed" (the live connection came back) loads again and
// merges what was missed.

import * as api from "./api.js";
import { SCOPES } from "./protocol.js";

const SUBSCRIBE_WAIT_MS = 3000;

/** The run a live message is about. */
export function messageRunId(message) {
  return message.type === "run" ? message.run.id : message.run_id;
}

export class LiveLoader {
  /**
   * fetch(ids)          → a promise of the history, given to merge
   * merge(history)      puts the history in the view
   * apply(message)      one live message about the runs
   * ready()             after a load merged and the buffer was applied
   * fail(err, buffered) a load failed; `buffered` held the messages that waited for it
   */
  constructor(live, { fetch, merge, apply, ready, fail }) {
    this.live = live;
    this.hooks = { fetch, merge, apply, ready, fail };
    this.ids = [];
    this.session = 0; // one per open(): a timer of an earlier one does nothing
    this.token = 0; // one per load(): the answer of an earlier load is dropped
    this.buffer = null; // live messages while a load is under way
    this.loaded = false; // a load has merged since open()
    this.timer = null;
  }

  open(ids) {
    this.close();
    this.ids = [...ids];
    this.loaded = false;
    this.buffer = [];
    this.live.subscribe(this.ids);
    const session = this.session;
    this.timer = setTimeout(() => {
      if (session === this.session && !this.loaded) this.load();
    }, SUBSCRIBE_WAIT_MS);
  }

  close() {
    if (!this.ids.length) return;
    this.session += 1;
    this.token += 1;
    clearTimeout(this.timer);
    this.live.subscribe([]);
    this.ids = [];
    this.buffer = null;
    this.loaded = false;
  }

  /** A live message: "subscribed" to all the runs starts a load; one about them is applied. */
  handle(message) {
    if (!this.ids.length) return;
    if (message.type === "subscribed") {
      const subscribed = new Set(message.run_ids || []);
      if (this.ids.every((id) => subscribed.has(id))) this.load();
      return;
    }
    if (!this.ids.includes(messageRunId(message))) return;
    if (this.buffer) this.buffer.push(message);
    else this.hooks.apply(message);
  }

  async load() {
    const token = ++this.token;
    if (!this.buffer) this.buffer = [];
    try {
      const history = await this.hooks.fetch(this.ids);
      if (token !== this.token) return;
      this.loaded = true;
      this.hooks.merge(history);
      for (const message of this.takeBuffer()) this.hooks.apply(message);
      this.hooks.ready();
    } catch (err) {
      if (token !== this.token) return;
      this.hooks.fail(err, this.takeBuffer());
    }
  }

  takeBuffer() {
    const buffered = this.buffer || [];
    this.buffer = null;
    return buffered;
  }
}

/**
 * A run and its series of both scopes: {run, series: {batch, epoch}}.
 * `lenient`: a deleted run is null and a scope that fails to load is empty,
 * instead of a rejection.
 */
export async function fetchHistory(runId, maxPoints, { lenient = false } = {}) {
  const tolerate = (promise, onError) => (lenient ? promise.catch(onError) : promise);
  const metrics = (scope) => tolerate(api.getMetrics(runId, scope, { maxPoints: maxPoints[scope] }), () => ({}));
  const [info, ...series] = await Promise.all([
    tolerate(api.getRun(runId), (err) => (err.status === 404 ? null : Promise.reject(err))),
    ...SCOPES.map(metrics),
  ]);
  if (!info) return null;
  return { run: info.run, series: Object.fromEntries(SCOPES.map((scope, i) => [scope, series[i]])) };
}

/** Merge fetched series into a RunData. */
export function mergeHistory(data, history) {
  for (const scope of SCOPES) data.addFetched(scope, history.series[scope]);
}
