// Unit tests of web/js/ema.js, run by tests/test_web_ema.py with `node --test`.
// EMA_MODULE is a file URL of the module (copied as .mjs so Node reads it as ESM).
import assert from "node:assert/strict";
import { test } from "node:test";

const { Ema, MAX_WEIGHT, clampWeight, smooth } = await import(process.env.EMA_MODULE);

const close = (a, b, eps = 1e-12) => Math.abs(a - b) <= eps * Math.max(1, Math.abs(b));

test("weight 0 leaves values as they are", () => {
  assert.deepEqual(smooth([3, 1, 2], 0), [3, 1, 2]);
});

test("debiased: the first point is the first value, not pulled toward zero", () => {
  const out = smooth([10, 10, 10], 0.9);
  assert.equal(out[0], 10);
  for (const v of out) assert.ok(close(v, 10), `${v}`);
});

test("matches TensorBoard's formula", () => {
  const w = 0.6;
  const values = [1, 2, 3, 5, 8];
  let last = 0;
  const expected = values.map((v, i) => {
    last = last * w + (1 - w) * v;
    return last / (1 - w ** (i + 1));
  });
  smooth(values, w).forEach((v, i) => assert.ok(close(v, expected[i]), `${i}: ${v} vs ${expected[i]}`));
});

test("NaN and ±Infinity are gaps that do not poison the average", () => {
  const out = smooth([1, NaN, Infinity, -Infinity, 3], 0.5);
  assert.equal(out[0], 1);
  assert.deepEqual(out.slice(1, 4), [null, null, null]);
  // As if the non-finite points were not there: smooth([1, 3], 0.5)[1]
  assert.ok(close(out[4], smooth([1, 3], 0.5)[1]));
  assert.ok(Number.isFinite(out[4]));
  assert.ok(close(out[4], (0.25 * 1 + 0.5 * 3) / 0.75));
});

test("a series that starts with NaN starts its average at the first number", () => {
  assert.deepEqual(smooth([NaN, 4, 4], 0.9).map((v) => (v === null ? null : Math.round(v * 1e9) / 1e9)), [null, 4, 4]);
});

test("null and non-number inputs are gaps", () => {
  assert.deepEqual(smooth([null, undefined, "1"], 0.5), [null, null, null]);
});

test("weights are clamped to [0, MAX_WEIGHT]", () => {
  assert.equal(clampWeight(-1), 0);
  assert.equal(clampWeight(NaN), 0);
  assert.equal(clampWeight(1), MAX_WEIGHT);
  assert.equal(clampWeight(0.6), 0.6);
  const out = smooth([1, 2, 3], 1);
  assert.ok(out.every(Number.isFinite));
});

test("incremental use gives the same values as the whole-array call", () => {
  const values = Array.from({ length: 1000 }, (_, i) => Math.sin(i) + (i % 97 === 0 ? NaN : 0));
  const ema = new Ema(0.95);
  const incremental = values.map((v) => ema.next(v));
  assert.deepEqual(incremental, smooth(values, 0.95));
});

test("long series stay finite (w ** n underflows to 0, no division by zero)", () => {
  const out = smooth(new Array(100000).fill(2), 0.999);
  assert.ok(close(out[out.length - 1], 2, 1e-9));
});
