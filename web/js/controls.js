// The chart toolbar shared by the run and compare pages: x axis (step, epoch,
// relative time, wall time) and EMA smoothing. The choice is remembered in
// localStorage, like TensorBoard remembers its slider.
//
// Markup inside `root`:
//   <button data-x="step" aria-pressed="true">…</button> (one per X_MODES entry)
//   <input type="range" class="smoothing-input"> <output class="smoothing-value">

import { X_MODES } from "./chart_axes.js";
import { clampWeight } from "./ema.js";

const STORAGE_KEY = "fitdeck.chart-controls";
export const DEFAULT_SMOOTHING = 0.6;

function loadSaved() {
  try {
    const saved = JSON.parse(localStorage.getItem(STORAGE_KEY) || "{}");
    return {
      xMode: X_MODES.includes(saved.xMode) ? saved.xMode : "step",
      smoothing: saved.smoothing === undefined ? DEFAULT_SMOOTHING : clampWeight(saved.smoothing),
    };
  } catch {
    return { xMode: "step", smoothing: DEFAULT_SMOOTHING };
  }
}

export class ChartControls {
  constructor(root, onChange) {
    this.root = root;
    this.onChange = onChange;
    const saved = loadSaved();
    this.xMode = saved.xMode;
    this.smoothing = saved.smoothing;
    this.xButtons = [...root.querySelectorAll("button[data-x]")];
    this.input = root.querySelector(".smoothing-input");
    this.output = root.querySelector(".smoothing-value");
    for (const b of this.xButtons) {
      b.addEventListener("click", () => this.set({ xMode: b.dataset.x }));
    }
    this.input.addEventListener("input", () => this.set({ smoothing: Number(this.input.value) }));
    this.render();
  }

  /** Re-read what another page may have chosen (both pages share the saved choice). */
  refresh() {
    const saved = loadSaved();
    this.xMode = saved.xMode;
    this.smoothing = saved.smoothing;
    this.render();
  }

  set({ xMode = this.xMode, smoothing = this.smoothing }) {
    const changed = xMode !== this.xMode || clampWeight(smoothing) !== this.smoothing;
    this.xMode = xMode;
    this.smoothing = clampWeight(smoothing);
    this.render();
    try {
      localStorage.setItem(STORAGE_KEY, JSON.stringify({ xMode: this.xMode, smoothing: this.smoothing }));
    } catch {
      // private mode: the choice lasts for this page only
    }
    if (changed) this.onChange(this);
  }

  render() {
    for (const b of this.xButtons) b.setAttribute("aria-pressed", String(b.dataset.x === this.xMode));
    if (Number(this.input.value) !== this.smoothing) this.input.value = String(this.smoothing);
    const text = this.smoothing.toFixed(2);
    this.output.textContent = text;
    this.input.setAttribute("aria-valuetext", this.smoothing ? `EMA weight ${text}` : "off");
  }
}
