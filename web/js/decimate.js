// Long series made short without losing their shape: per bucket the min, the
// max and the first value that is not a finite number. The charts draw with it
// (decimate), the in-memory store thins the oldest points of long series with
// it (bucketExtremes), as the server downsamples. Pure functions, no DOM.

/** The first index of sorted `arr` whose value is >= v (arr.length if none). */
export function lowerBound(arr, v) {
  let lo = 0;
  let hi = arr.length;
  while (lo < hi) {
    const mid = (lo + hi) >>> 1;
    if (arr[mid] < v) lo = mid + 1;
    else hi = mid;
  }
  return lo;
}

/**
 * Indexes in [from, to) to keep, ascending: `buckets` equal buckets, each
 * giving its min, its max and its first value that is not a finite number
 * (null, NaN, ±Infinity), so gaps and spikes survive.
 */
export function bucketExtremes(values, from, to, buckets) {
  const keep = [];
  const width = (to - from) / buckets;
  for (let b = 0; b < buckets; b++) {
    const start = from + Math.floor(b * width);
    const end = from + Math.floor((b + 1) * width);
    let lo = -1;
    let hi = -1;
    let odd = -1;
    for (let i = start; i < end; i++) {
      const v = values[i];
      if (v === null || !Number.isFinite(v)) {
        if (odd < 0) odd = i;
        continue;
      }
      if (lo < 0 || v < values[lo]) lo = i;
      if (hi < 0 || v > values[hi]) hi = i;
    }
    for (const i of [...new Set([lo, hi, odd])].filter((i) => i >= 0).sort((a, c) => a - c)) {
      keep.push(i);
    }
  }
  return keep;
}

/**
 * x/y arrays (x ascending, y null for a gap) reduced to at most ~2 points per
 * bucket over `range` ([x0, x1] or null for all), plus one point on each side
 * of the range so the line reaches the plot's edges. Returns {x, y, idx}
 * (idx: the indexes kept).
 */
export function decimate(x, y, range, buckets) {
  let from = 0;
  let to = x.length;
  if (range) {
    from = Math.max(0, lowerBound(x, range[0]) - 1);
    to = Math.min(x.length, lowerBound(x, range[1]) + 1);
  }
  let idx;
  if (to - from <= buckets * 2) {
    idx = [];
    for (let i = from; i < to; i++) idx.push(i);
  } else {
    idx = bucketExtremes(y, from, to, buckets);
  }
  return { x: idx.map((i) => x[i]), y: idx.map((i) => y[i]), idx };
}
