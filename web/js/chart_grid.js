// The metric charts of the run and compare pages: one card per metric (`loss`
// with `val_loss`), laid out loss first, then by name.

import { Chart } from "./charts.js";
import { h } from "./dom.js";

/** The metric key a chart is named after: "val_loss" → "loss". */
export function chartKey(key) {
  return key.startsWith("val_") && key.length > 4 ? key.slice(4) : key;
}

/** Metric keys grouped by chart: base → [keys], the base's own key first. */
export function groupByChart(keys) {
  const groups = new Map();
  for (const key of keys) {
    const base = chartKey(key);
    if (!groups.has(base)) groups.set(base, new Set());
    groups.get(base).add(key);
  }
  const sorted = new Map();
  for (const base of [...groups.keys()].sort(lossFirst)) {
    sorted.set(base, [...groups.get(base)].sort((a, b) => (a === base ? -1 : b === base ? 1 : a.localeCompare(b))));
  }
  return sorted;
}

function lossFirst(a, b) {
  return a === "loss" ? -1 : b === "loss" ? 1 : a.localeCompare(b);
}

/** A "log y" button (aria-pressed) that calls onChange(on) when toggled. */
export function wireLogToggle(button, onChange) {
  button.addEventListener("click", () => {
    const on = button.getAttribute("aria-pressed") !== "true";
    button.setAttribute("aria-pressed", String(on));
    onChange(on);
  });
}

/** One chart card: the metric's name (as text), its log-y toggle and the chart. */
export class ChartCard {
  constructor(base, chartOptions) {
    const div = h("div", { class: "chart", dataset: { key: base }, role: "img" });
    const logButton = h(
      "button",
      {
        type: "button",
        class: "log-toggle",
        "aria-pressed": "false",
        "aria-label": `logarithmic y axis for ${base}`,
        title: "logarithmic y axis",
      },
      "log y",
    );
    this.card = h(
      "section",
      { class: "card chart-card", dataset: { key: base } },
      h("header", { class: "chart-head" }, h("h2", {}, base), logButton),
      div,
    );
    this.chart = new Chart(div, chartOptions);
    this.keys = []; // the metric keys drawn in it
    this.signature = null; // what the view last drew in it, to tell when to set new sources
    wireLogToggle(logButton, (on) => this.chart.setLogY(on));
  }

  destroy() {
    this.chart.destroy();
    this.card.remove();
  }
}

/** The cards of one page in `container`, by chart key. */
export class ChartGrid {
  /** chartOptions(base, {gl}) → the Chart options of a new card. */
  constructor(container, { maxGl, chartOptions }) {
    this.container = container;
    this.maxGl = maxGl; // browsers keep ~16 WebGL contexts per page: later cards draw SVG
    this.chartOptions = chartOptions;
    this.cards = new Map();
  }

  get size() {
    return this.cards.size;
  }

  get(base) {
    return this.cards.get(base);
  }

  all() {
    return [...this.cards.values()];
  }

  charts() {
    return this.all().map((card) => card.chart);
  }

  /** The card of `base`, made if new: {card, created}. */
  ensure(base) {
    let card = this.cards.get(base);
    if (card) return { card, created: false };
    card = new ChartCard(base, this.chartOptions(base, { gl: this.cards.size < this.maxGl }));
    this.cards.set(base, card);
    return { card, created: true };
  }

  /** Drop the cards not in `bases`. */
  keepOnly(bases) {
    for (const [base, card] of [...this.cards]) {
      if (!bases.includes(base)) {
        card.destroy();
        this.cards.delete(base);
      }
    }
  }

  /** Put the cards in the page in this order. */
  place(bases) {
    for (const base of bases) this.container.appendChild(this.cards.get(base).card);
  }

  clear() {
    for (const card of this.cards.values()) card.chart.destroy();
    this.cards.clear();
    this.container.replaceChildren();
  }
}
