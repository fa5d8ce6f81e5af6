// The commands table of the run page: every stop and set_lr sent, with its
// status as it moves pending → delivered → applied (or rejected, expired).

import { $, h, replaceChildren } from "./dom.js";
import { formatClock, formatLr, formatWhere } from "./format.js";
import { COMMAND_STATUSES, FINAL_COMMAND } from "./protocol.js";
import { statusBadge } from "./runs_view.js";

/** How far a command has come: its status's place, every final status alike. */
function rank(status) {
  if (FINAL_COMMAND.includes(status)) return COMMAND_STATUSES.length;
  return Math.max(0, COMMAND_STATUSES.indexOf(status));
}

export class CommandList {
  constructor() {
    this.commands = new Map(); // id → command
  }

  clear() {
    this.commands.clear();
  }

  /** A command from the API or a live message; an older state arriving late is ignored. */
  put(command) {
    const known = this.commands.get(command.id);
    if (known && rank(command.status) < rank(known.status)) return;
    this.commands.set(command.id, { ...known, ...command });
  }

  render() {
    const commands = [...this.commands.values()].sort((a, b) => a.id - b.id);
    replaceChildren($("#commands-body"), commands.map(commandRow));
    $("#commands-empty").hidden = commands.length > 0;
    $("#commands").hidden = commands.length === 0;
  }
}

function commandRow(c) {
  const what = c.kind === "set_lr" ? `set LR → ${formatLr(c.lr)}` : c.kind;
  let detail = "";
  const where = formatWhere(c.epoch, c.batch); // 1-based, as the progress card counts
  if (c.status === "applied") {
    detail = where || "applied";
  } else if (FINAL_COMMAND.includes(c.status)) {
    detail = c.reason || "";
  }
  const badge = h("span", { class: "badge" });
  statusBadge(badge, c.status);
  const step =
    c.step !== null && c.step !== undefined
      ? `${where ? `${where}: ` : ""}took effect after step ${c.step} (batches done in the run)`
      : null;
  return h(
    "tr",
    { dataset: { commandId: c.id, status: c.status, kind: c.kind } },
    h("td", { class: "num" }, c.id),
    h("td", { class: "what" }, what),
    h("td", { class: "sent" }, formatClock(c.created_at)),
    h("td", { class: "status" }, badge),
    h("td", { class: "detail", title: step }, detail),
  );
}
