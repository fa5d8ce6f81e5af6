// Settings: series whose values hold until changed (the learning rate, and the
// keys a run lists in meta[SETTINGS_META]), as opposed to measurements. The
// charts draw them as steps, never smoothed, running on to the latest batch.
// Pure (no DOM): tests/js/lr.test.mjs runs it in Node.

import { LR_KEY, SETTINGS_META } from "./protocol.js";

/**
 * Whether a series of `run` is a setting (a value that holds until changed:
 * the learning rate, and whatever the run's meta lists under SETTINGS_META),
 * which the charts draw as steps and never smooth.
 */
export function isSetting(run, key) {
  if (key === LR_KEY) return true;
  const listed = run && run.meta && run.meta[SETTINGS_META];
  return Array.isArray(listed) && listed.includes(key);
}

/**
 * How far a step-shaped batch-scope `series` runs on: its last value at the
 * latest batch point of `data` (a RunData), found among its measured series.
 * A setting has points only where it changed; its line goes on to the end.
 */
export function settingTail(data, series, run) {
  return () => {
    if (!series.length) return null;
    let latest = null;
    for (const [key, s] of data.scopes.batch) {
      const n = s.length;
      if (!n || isSetting(run, key)) continue;
      if (!latest || s.step[n - 1] > latest.step) latest = { step: s.step[n - 1], epoch: s.epoch[n - 1], t: s.t[n - 1] };
    }
    return latest && { ...latest, y: series.value[series.length - 1] };
  };
}
