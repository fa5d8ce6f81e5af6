// Exponential moving average smoothing, as TensorBoard's scalars page does it.
//
//   last = last * w + (1 - w) * value;  n += 1;  smoothed = last / (1 - w ** n)
//
// Dividing by (1 - w ** n) removes the bias toward the starting 0, so the first
// smoothed points sit on the data instead of climbing up from zero. Values that
// are not finite (NaN, ±Infinity) are not folded in: their smoothed value is
// null (a gap; the chart marks the raw value) and the average carries on over
// them. Pure functions, no DOM: tests run this module in Node.

/** Largest weight the slider offers: at 1 nothing would ever move. */
export const MAX_WEIGHT = 0.999;

export function clampWeight(weight) {
  const w = Number(weight);
  if (!Number.isFinite(w) || w <= 0) return 0;
  return Math.min(w, MAX_WEIGHT);
}

/** Running state of one smoothed series (extend it point by point as data arrives). */
export class Ema {
  constructor(weight) {
    this.weight = clampWeight(weight);
    this.last = 0;
    this.n = 0;
  }

  /** The smoothed value after `value` (null when `value` is not a finite number). */
  next(value) {
    if (typeof value !== "number" || !Number.isFinite(value)) return null;
    const w = this.weight;
    if (w === 0) return value;
    this.last = this.last * w + (1 - w) * value;
    this.n += 1;
    const smoothed = this.last / (1 - w ** this.n);
    // Rounding can put a smoothed constant a hair off its value; keep it exact.
    return this.n === 1 ? value : smoothed;
  }
}

/** `values` smoothed with weight `weight` in [0, 1): an array of numbers or nulls. */
export function smooth(values, weight) {
  const ema = new Ema(weight);
  const out = new Array(values.length);
  for (let i = 0; i < values.length; i++) out[i] = ema.next(values[i]);
  return out;
}
