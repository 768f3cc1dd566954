// @ts-check
/**
 * The execution page's task-run tree, virtualised (`virtual_list.js`): an execution may hold
 * 10 000 task runs (a ForEach of 10 000). The tree is flattened (children right under the run
 * that started them, one `aria-level` deeper) and only the rows in the scrolled window, plus a
 * margin, exist. A frame costs a pass over the runs to order them, and rebuilds only the shown
 * rows whose run changed.
 *
 * Rows are one line tall, except those whose outputs are open (a `<details>` with the outputs
 * as JSON): their height is measured once drawn and kept by task-run id, so the rows below move
 * down. Which outputs are open is kept across frames and scrolling.
 *
 * The tree is one stop of the Tab key: the list holds the focus and names its active row with
 * `aria-activedescendant` (the row itself may be scrolled away and dropped). The arrow keys,
 * Home, End, Page Up and Page Down move the active row, scrolling it into view; Enter or Space
 * opens or closes its outputs.
 */
import { duration, h, jsonBlock, stateBadge } from "./dom.js";
import { VirtualList } from "./virtual_list.js";

/** A row's height until one is measured (px). */
const DEFAULT_ROW = 30;
const PAGE = 10;
/** The mark set when the first rows are drawn. */
export const FIRST_ROWS_MARK = "kestream:task-runs:first";

/**
 * The runs in tree order (depth first, children after their parent), each with its depth.
 * A run whose parent is not in the list is at the top level.
 * @param {any[]} runs
 * @returns {{run: any, depth: number}[]}
 */
export function flatten(runs) {
  /** @type {Map<string | null, any[]>} */
  const children = new Map();
  const ids = new Set(runs.map((run) => run.id));
  for (const run of runs) {
    const parent = run.parentTaskRunId && ids.has(run.parentTaskRunId) ? run.parentTaskRunId : null;
    const list = children.get(parent);
    if (list) list.push(run);
    else children.set(parent, [run]);
  }
  /** @type {{run: any, depth: number}[]} */
  const rows = [];
  /** @type {[any, number][]} */
  const stack = (children.get(null) ?? []).map((run) => /** @type {[any, number]} */ ([run, 0])).reverse();
  while (stack.length) {
    const [run, depth] = /** @type {[any, number]} */ (stack.pop());
    rows.push({ run, depth });
    const below = children.get(run.id);
    if (below) for (let i = below.length - 1; i >= 0; i--) stack.push([below[i], depth + 1]);
  }
  return rows;
}

/**
 * What a row is drawn from: it is drawn again only when this changes. A running row's duration
 * grows, so it is drawn on every frame while shown.
 * (Opening the outputs toggles the row's `<details>` in place, so the focus stays where it is.)
 * @param {any} run
 */
function signatureOf(run) {
  const ended = Boolean(run.state?.endDate);
  return `${run.state?.current}|${run.state?.histories?.length ?? 0}|${(run.attempts ?? []).length}|${ended ? "" : Date.now()}|${run.outputs ? Object.keys(run.outputs).length : 0}`;
}

export class RunTree {
  /**
   * @param {(value: unknown) => HTMLElement | null} files download links for a value's files
   */
  constructor(files) {
    this.files = files;
    this.list = h("ul", { role: "tree", "aria-label": "Task runs", tabindex: 0, class: "run-rows" });
    this.empty = h("p", { class: "muted" }, "No task run yet.");
    this.element = h("div", { class: "tree", id: "task-runs" }, this.empty, this.list);
    /** @type {{run: any, depth: number}[]} */
    this.rows = [];
    /** @type {Set<string>} task runs whose outputs are open */
    this.open = new Set();
    this.active = "";
    this.window = new VirtualList(this.element, this.list, {
      key: (i) => this.rows[i].run.id,
      signature: (i) => signatureOf(this.rows[i].run),
      render: (i) => this.row(this.rows[i].run, this.rows[i].depth, this.open.has(this.rows[i].run.id)),
      place: (item, i) => {
        item.setAttribute("aria-posinset", String(i + 1));
        item.setAttribute("aria-setsize", String(this.rows.length));
        item.classList.toggle("active", this.rows[i].run.id === this.active);
      },
      afterDraw: () => {
        this.list.setAttribute("aria-activedescendant", this.window.element(this.active) ? `run-${this.active}` : "");
        // A User Timing mark (seen in the browser's performance tools, and by bench/ui_page.py).
        if (this.window.drawn.size && !performance.getEntriesByName(FIRST_ROWS_MARK).length) performance.mark(FIRST_ROWS_MARK);
      },
    }, { rowHeight: DEFAULT_ROW });
    this.list.addEventListener("keydown", (event) => this.key(event));
  }

  /**
   * Take a frame's task runs; the rows are drawn at the next animation frame (frames arriving
   * faster than the screen paints cost one drawing).
   * @param {any[]} runs
   */
  update(runs) {
    this.rows = flatten(runs);
    this.empty.hidden = this.rows.length > 0;
    this.list.dataset.runs = String(this.rows.length);
    if (!this.rows.some((row) => row.run.id === this.active)) this.active = this.rows[0]?.run.id ?? "";
    this.window.resize(this.rows.length);
  }

  /**
   * @param {any} run
   * @param {number} depth
   * @param {boolean} open
   */
  row(run, depth, open) {
    const outputs = run.outputs && Object.keys(run.outputs).length ? run.outputs : null;
    const details = outputs
      ? h(
          "details",
          {
            open,
            ontoggle: (/** @type {Event} */ event) => {
              const details = /** @type {HTMLDetailsElement} */ (event.target);
              if (details.open === this.open.has(run.id)) return;
              if (details.open) this.open.add(run.id);
              else this.open.delete(run.id);
              details.closest("li")?.setAttribute("aria-expanded", String(details.open));
              this.window.measure();
            },
          },
          h("summary", {}, "Outputs"),
          jsonBlock(outputs),
        )
      : null;
    const item = h(
      "li",
      {
        role: "treeitem",
        id: `run-${run.id}`,
        "data-task": run.taskId,
        "data-id": run.id,
        "aria-level": depth + 1,
        "aria-expanded": outputs ? String(open) : null,
        onclick: () => this.activate(run.id, false),
      },
      h(
        "div",
        { class: "run" },
        h("span", { class: "mono" }, run.taskId),
        run.value != null ? h("span", { class: "muted" }, `[${run.value}]`) : null,
        stateBadge(run.state.current),
        h("span", { class: "muted" }, `${(run.attempts ?? []).length} attempt(s)`),
        h("span", { class: "muted" }, duration(run.state.startDate, run.state.endDate)),
      ),
      details,
      outputs ? this.files(outputs) : null,
    );
    item.style.paddingLeft = `${depth * 20}px`; // CSSOM: the page's CSP refuses style attributes
    return item;
  }

  /**
   * Make a row the active one and scroll it into view.
   * @param {string} id
   * @param {boolean} reveal
   */
  activate(id, reveal = true) {
    this.active = id;
    const index = this.rows.findIndex((row) => row.run.id === id);
    if (reveal && index >= 0) this.window.reveal(index);
    else this.window.draw();
  }

  /** @param {KeyboardEvent} event */
  key(event) {
    if (event.target !== this.list || !this.rows.length) return;
    const at = Math.max(0, this.rows.findIndex((row) => row.run.id === this.active));
    const last = this.rows.length - 1;
    const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: last, PageDown: at + PAGE, PageUp: at - PAGE }[event.key];
    if (to !== undefined) {
      event.preventDefault();
      this.activate(this.rows[Math.min(last, Math.max(0, to))].run.id);
      return;
    }
    if (event.key === "Enter" || event.key === " ") {
      const details = this.window.element(this.rows[at].run.id)?.querySelector("details");
      if (!details) return;
      event.preventDefault();
      details.open = !details.open; // its toggle event keeps the choice and measures the row
    }
  }
}
