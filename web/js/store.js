// In-memory metric series of the open run, merged from HTTP fetches and live
// pushes, deduplicated and ordered by step.

import { bucketExtremes, lowerBound } from "./decimate.js";
import { SCOPES } from "./protocol.js";

// A series that grows past this many points (a long batch-level run watched for
// hours) has its oldest half thinned by min/max buckets, as the server does.
export const MAX_LOCAL_POINTS = 60000;

/** One metric of one scope: parallel arrays ordered by step, one point per step. */
export class Series {
  constructor() {
    this.step = [];
    this.epoch = [];
    this.t = [];
    this.value = [];
    this.edits = 0; // bumped on changes other than an append (charts then rebuild)
    this.thinned = false;
  }

  get length() {
    return this.step.length;
  }

  /** Add or replace one point (same step → the newer value wins). */
  put(step, epoch, t, value) {
    const n = this.step.length;
    if (n === 0 || step > this.step[n - 1]) {
      this.step.push(step);
      this.epoch.push(epoch);
      this.t.push(t);
      this.value.push(value);
    } else {
      const i = lowerBound(this.step, step);
      if (this.step[i] === step && Object.is(this.value[i], value)) return; // a duplicate
      this.edits += 1;
      if (this.step[i] === step) {
        this.epoch[i] = epoch;
        this.t[i] = t;
        this.value[i] = value;
      } else {
        this.step.splice(i, 0, step);
        this.epoch.splice(i, 0, epoch);
        this.t.splice(i, 0, t);
        this.value.splice(i, 0, value);
      }
    }
  }

  /** Merge a fetched series ({step, epoch, t, value} arrays, values decoded). */
  mergeFetched(s) {
    for (let i = 0; i < s.step.length; i++) {
      this.put(s.step[i], s.epoch ? s.epoch[i] : null, s.t ? s.t[i] : null, s.value[i]);
    }
    if (s.downsampled) this.thinned = true;
    this.cap();
  }

  /** Thin the oldest half when the series is too long (keeps min, max and first non-finite). */
  cap(limit = MAX_LOCAL_POINTS) {
    if (this.step.length <= limit) return;
    const half = Math.floor(this.step.length / 2);
    const keep = bucketExtremes(this.value, 0, half, Math.floor(limit / 4));
    for (const name of ["step", "epoch", "t", "value"]) {
      this[name] = keep.map((i) => this[name][i]).concat(this[name].slice(half));
    }
    this.thinned = true;
    this.edits += 1;
  }
}

/** All series of one run: scope → key → Series. */
export class RunData {
  constructor() {
    this.scopes = Object.fromEntries(SCOPES.map((scope) => [scope, new Map()]));
  }

  series(scope, key) {
    const map = this.scopes[scope];
    if (!map.has(key)) map.set(key, new Series());
    return map.get(key);
  }

  keys(scope) {
    return [...this.scopes[scope].keys()];
  }

  /** Live points ({step, epoch, t, logs} with decoded logs). Returns the set of keys touched. */
  addPoints(scope, points) {
    const touched = new Set();
    if (!this.scopes[scope]) return touched;
    for (const p of points) {
      for (const [key, value] of Object.entries(p.logs)) {
        this.series(scope, key).put(p.step, p.epoch, p.t, value);
        touched.add(key);
      }
    }
    for (const key of touched) this.series(scope, key).cap();
    return touched;
  }

  /** Series fetched over HTTP ({key: {step, epoch, t, value}}). */
  addFetched(scope, seriesByKey) {
    for (const [key, s] of Object.entries(seriesByKey)) this.series(scope, key).mergeFetched(s);
  }
}
