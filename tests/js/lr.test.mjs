// Unit tests of the dashboard's pure modules for the LR controls, settings and
// numbering (lr.js, settings.js, format.js), run by tests/test_web_ema.py with
// `node --test`. WEB_JS is a file URL of a copy of web/js/ that Node reads as ESM.
import assert from "node:assert/strict";
import { test } from "node:test";

const { LR_CONFIRM_FACTOR, lrJump, lrLockedReason, parseLr } = await import(`${process.env.WEB_JS}/lr.js`);
const { isSetting, settingTail } = await import(`${process.env.WEB_JS}/settings.js`);
const { epochOfProgress, formatWhere } = await import(`${process.env.WEB_JS}/format.js`);
const { LR_KEY, SETTINGS_META } = await import(`${process.env.WEB_JS}/protocol.js`);

test("a rate within 10x either way needs no confirmation", () => {
  assert.equal(LR_CONFIRM_FACTOR, 10);
  for (const lr of [0.01, 0.1, 0.001, 0.05, 0.002]) assert.equal(lrJump(lr, 0.01), null, String(lr));
});

test("a rate more than 10x away, up or down, needs one and says how far", () => {
  assert.ok(Math.abs(lrJump(0.11, 0.01) - 11) < 1e-9);
  assert.ok(Math.abs(lrJump(0.0005, 0.01) - 20) < 1e-9);
  assert.ok(Math.abs(lrJump(1e5, 0.01) - 1e7) < 1e-3);
});

test("without a known current rate nothing is asked", () => {
  for (const current of [null, undefined, NaN, 0, -1, Infinity]) assert.equal(lrJump(1, current), null);
});

test("a schedule locks Set LR and the reason names it", () => {
  assert.equal(lrLockedReason({ meta: { lr_schedule: null } }), null);
  assert.equal(lrLockedReason({ meta: {} }), null);
  assert.equal(lrLockedReason(null), null);
  assert.match(lrLockedReason({ meta: { lr_schedule: "CosineDecay" } }), /CosineDecay schedule/);
});

test("parseLr takes finite numbers > 0 only", () => {
  assert.deepEqual(parseLr(" 1e-4 "), { value: 1e-4 });
  for (const bad of ["", "abc", "0", "-0.1", "Infinity", "1e999", "0x10"]) assert.ok(parseLr(bad).error, bad);
});

test("the learning rate and the keys meta lists are settings", () => {
  const run = { meta: { [SETTINGS_META]: [LR_KEY, "momentum"] } };
  assert.ok(isSetting(run, LR_KEY) && isSetting(run, "momentum"));
  assert.ok(!isSetting(run, "loss"));
  assert.ok(isSetting({ meta: {} }, LR_KEY)); // older runs: the LR still is one
  assert.ok(!isSetting({ meta: { [SETTINGS_META]: "momentum" } }, "momentum"));
});

test("a setting's tail is its last value at the latest measured batch", () => {
  const series = (steps, values) => ({ step: steps, epoch: steps.map((s) => s / 10), t: steps, value: values, length: steps.length });
  const lr = series([0, 12], [0.01, 0.001]);
  const data = { scopes: { batch: new Map([[LR_KEY, lr], ["loss", series([1, 2, 30], [3, 2, 1])]]) } };
  assert.deepEqual(settingTail(data, lr, { meta: {} })(), { step: 30, epoch: 3, t: 30, y: 0.001 });
  assert.equal(settingTail(data, series([], []), { meta: {} })(), null);
});

test("epochs and batches are shown 1-based", () => {
  assert.equal(formatWhere(0, 0), "epoch 1, batch 1");
  assert.equal(formatWhere(3, 12), "epoch 4, batch 13");
  assert.equal(formatWhere(2, null), "epoch 3");
  assert.equal(formatWhere(null, null), "");
  assert.equal(epochOfProgress(0), 1);
  assert.equal(epochOfProgress(2.0), 3); // the first batch of the third epoch
  assert.equal(epochOfProgress(2.7), 3);
  assert.equal(epochOfProgress(null), null);
});
