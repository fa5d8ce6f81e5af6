// The learning-rate input's rules, pure (no DOM: tests/js/lr.test.mjs runs them
// in Node): what parses as a rate, which change needs a confirmation, and when
// Set LR cannot be used at all.

const DECIMAL = /^\s*\+?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*$/;

/** A new learning rate this many times above or below the current one needs a confirmation. */
export const LR_CONFIRM_FACTOR = 10;

/**
 * How many times `lr` is away from `current` (≥ 1, either direction) when that
 * is more than LR_CONFIRM_FACTOR; null when no confirmation is needed (or the
 * current rate is not known).
 */
export function lrJump(lr, current) {
  if (!Number.isFinite(current) || current <= 0 || !Number.isFinite(lr) || lr <= 0) return null;
  const factor = Math.max(lr / current, current / lr);
  return factor > LR_CONFIRM_FACTOR ? factor : null;
}

/** Why Set LR cannot be used on `run` (its LR comes from a schedule), or null. */
export function lrLockedReason(run) {
  const schedule = run && run.meta && run.meta.lr_schedule;
  if (!schedule) return null;
  return (
    `The learning rate comes from a ${schedule} schedule, which sets it every step: ` +
    "Set LR is off for this run. Build the optimizer with a float learning_rate to steer it."
  );
}

/** Parse the LR input: a finite number > 0, or an error message naming what was typed. */
export function parseLr(text) {
  const s = String(text).trim();
  if (!s) return { error: "Enter a learning rate, e.g. 0.001 or 1e-4." };
  const value = Number(s);
  if (Number.isFinite(value) && value <= 0) return { error: `A learning rate must be > 0; got ${s}.` };
  if (!DECIMAL.test(s) || !Number.isFinite(value)) {
    return { error: `A learning rate is a finite number > 0; got "${s}".` };
  }
  return { value };
}
