// Unit tests of the cockpit's pure helpers (run_knobs.js parseKnob, run_callbacks.js
// stateRows), run by tests/test_web_cockpit.py with `node --test`. WEB_JS is a file
// URL of a copy of web/js/ that Node reads as ESM.
import assert from "node:assert/strict";
import { test } from "node:test";

const { parseKnob } = await import(`${process.env.WEB_JS}/run_knobs.js`);
const { stateRows } = await import(`${process.env.WEB_JS}/run_callbacks.js`);

test("an int knob takes whole numbers only", () => {
  assert.deepEqual(parseKnob("5", "int"), { value: 5 });
  assert.deepEqual(parseKnob(" -2 ", "int"), { value: -2 });
  assert.match(parseKnob("2.5", "int").error, /whole number/);
  assert.match(parseKnob("abc", "int").error, /not a finite number/);
  assert.match(parseKnob("", "int").error, /Type a value/);
});

test("a float knob takes finite numbers and null", () => {
  assert.deepEqual(parseKnob("0.25", "float"), { value: 0.25 });
  assert.deepEqual(parseKnob("1e-3", "float"), { value: 0.001 });
  assert.deepEqual(parseKnob("null", "float"), { value: null });
  assert.match(parseKnob("Infinity", "float").error, /finite/);
  assert.match(parseKnob("NaN", "float").error, /finite/);
});

test("a bool knob takes true or false", () => {
  assert.deepEqual(parseKnob("true", "bool"), { value: true });
  assert.deepEqual(parseKnob("False", "bool"), { value: false });
  assert.match(parseKnob("1", "bool").error, /true or false/);
});

test("wait and patience read as one row, known fields first, others after", () => {
  const rows = stateRows({ extra: "x", patience: 3, wait: 1, monitor: "val_loss", best: 0.31 });
  assert.deepEqual(
    rows.map((r) => [r.key, r.label, r.text]),
    [
      ["monitor", "monitor", "val_loss"],
      ["best", "best", "0.31"],
      ["wait", "wait / patience", "1 / 3"],
      ["extra", "extra", "x"],
    ],
  );
});

test("missing values are a dash and non-finite ones stay as sent", () => {
  const rows = stateRows({ best: null, last_loss: "NaN", save_best_only: true });
  assert.deepEqual(
    rows.map((r) => r.text),
    ["—", "true", "NaN"],
  );
});
