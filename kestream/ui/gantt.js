// @ts-check
/**
 * A Gantt timeline of an execution's task runs: one row per task run, its bar from the first
 * to the last date of its state's history (to now while it runs), with one segment per
 * attempt (a retry is a new attempt, so retries show as segments side by side), each coloured
 * by its state. A loop's runs carry their value (`taskrun.value`) and iteration in the label.
 *
 * Virtualised (`virtual_list.js`): an execution may hold 10 000 task runs, and only the rows in
 * the scrolled window exist. The execution page calls `update` with each frame of its live
 * feed; frames arriving faster than the screen paints are taken once, at the next animation
 * frame, in one pass over the runs that reuses what an unchanged run's dates gave, and only the
 * rows drawn whose run changed (or still runs) are drawn again, in place, so the focus and the
 * scroll position stay where they are.
 *
 * The timeline is one stop of the Tab key (a roving tabindex): the arrow keys, Home, End, Page
 * Up and Page Down move between its rows, scrolling the row into view, each of which reads its
 * task, state, attempts and duration. The row with the focus stays drawn when scrolled away.
 */
import { duration, h, isTerminal } from "./dom.js";
import { VirtualList } from "./virtual_list.js";

/**
 * The first and last date of a state's history, in ms (the end: `now` when not ended).
 * @param {any} state
 * @param {number} now
 * @param {boolean} ended
 * @returns {[number, number] | null}
 */
export function span(state, now, ended) {
  const dates = (state?.histories ?? []).map((/** @type {any} */ entry) => Date.parse(entry.date)).filter(Number.isFinite);
  if (!dates.length) return null;
  const start = Math.min(...dates);
  const end = ended ? Math.max(...dates) : Math.max(now, ...dates);
  return [start, end];
}

/** @param {any} run */
export function runLabel(run) {
  const loop = [
    run.value != null ? `[${run.value}]` : "",
    run.iteration != null ? `#${run.iteration}` : "",
  ].filter(Boolean);
  return loop.length ? `${run.taskId} ${loop.join(" ")}` : run.taskId;
}

/** Rows moved by Page Up and Page Down. */
const PAGE = 10;
/** A User Timing mark set when the first rows of the timeline are drawn. */
export const GANTT_FIRST_MARK = "kestream:gantt:first";

/**
 * What a run's row is drawn from, as cheap to compare as it can be: a run changes only by
 * moving to another state (its history grows) or by a new attempt (a retry, a restart).
 * @param {any} run
 */
function versionOf(run) {
  const attempts = /** @type {any[]} */ (run.attempts ?? []);
  const last = attempts[attempts.length - 1];
  return `${run.state?.current}|${run.state?.histories?.length ?? 0}|${attempts.length}|${last?.state?.current ?? ""}|${last?.state?.histories?.length ?? 0}`;
}

/**
 * @typedef {{version: string, ended: boolean, span: [number, number] | null,
 *   attempts: {state: string, span: [number, number] | null}[]}} Placed
 */

export class Gantt {
  constructor() {
    this.list = h("ol", { class: "gantt-rows", "aria-label": "Timeline of the task runs" });
    this.element = h("div", { class: "gantt", id: "gantt" }, this.list);
    this.axis = h("p", { class: "muted gantt-axis", id: "gantt-axis" });
    /** @type {any[]} the task runs of the frame last taken, in the execution's order */
    this.runs = [];
    /** @type {Map<string, number>} each run's row, by task-run id */
    this.index = new Map();
    /** @type {Map<string, Placed>} what each run's dates gave, by task-run id */
    this.placed = new Map();
    /** The task-run id of the row that takes the focus when the timeline is tabbed into. */
    this.current = "";
    /** @type {number | null} the instant bars are placed from (ms) */
    this.origin = null;
    this.now = Date.now();
    /** @type {any} the frame not taken yet */
    this.incoming = null;
    this.pending = 0;
    this.rows = new VirtualList(this.element, this.list, {
      key: (i) => this.runs[i].id,
      signature: (i) => {
        const placed = this.placed.get(this.runs[i].id);
        return placed?.ended ? `${placed.version}|${this.origin}` : `${placed?.version}|${this.now}`;
      },
      render: (i, previous) => this.row(i, previous),
      place: (element, i) => {
        element.tabIndex = this.runs[i].id === this.current ? 0 : -1;
        element.setAttribute("aria-posinset", String(i + 1));
        element.setAttribute("aria-setsize", String(this.runs.length));
      },
      keep: () => this.index.get(this.current) ?? -1,
      afterDraw: () => {
        if (this.rows.drawn.size && !performance.getEntriesByName(GANTT_FIRST_MARK).length) performance.mark(GANTT_FIRST_MARK);
      },
    }, { rowHeight: 22 });
    this.list.addEventListener("keydown", (event) => this.move(event));
    this.list.addEventListener("focusin", (event) => {
      const id = /** @type {HTMLElement} */ (event.target).dataset?.id;
      if (id && id !== this.current) this.setCurrent(id);
    });
  }

  /** @param {KeyboardEvent} event */
  move(event) {
    const at = this.index.get(/** @type {HTMLElement} */ (event.target).dataset?.id ?? "");
    if (at === undefined) return;
    const last = this.runs.length - 1;
    const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: last, PageDown: at + PAGE, PageUp: at - PAGE }[event.key];
    if (to === undefined) return;
    event.preventDefault();
    this.focusRow(Math.min(last, Math.max(0, to)));
  }

  /**
   * Move the focus to row `index`, scrolled into view.
   * @param {number} index
   */
  focusRow(index) {
    this.setCurrent(this.runs[index].id);
    this.rows.reveal(index);
    this.rows.element(this.current)?.focus({ preventScroll: true });
  }

  /**
   * Make the row of `id` the timeline's one Tab stop.
   * @param {string} id
   */
  setCurrent(id) {
    const before = this.rows.element(this.current);
    if (before) before.tabIndex = -1;
    this.current = id;
    const now = this.rows.element(id);
    if (now) now.tabIndex = 0;
  }

  /**
   * Take a frame of the follow route (or the clock while the execution runs): it is drawn at
   * the next animation frame, with the latest frame taken then.
   * @param {any} execution
   */
  update(execution) {
    this.incoming = execution;
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      const latest = this.incoming;
      this.incoming = null;
      if (latest) this.take(latest);
    });
  }

  /**
   * One pass over the runs: their bars' dates (reused for a run that did not change), the
   * timeline's extent, and the rows that are new.
   *
   * Bars are placed by CSS from custom properties: each bar's start and length in ms from the
   * execution's start (`--s`, `--w`), and the timeline's length (`--total`) once on the list.
   * So when the timeline grows only `--total` changes, and a drawn row is drawn again only when
   * its run changed or is still running.
   * @param {any} execution
   */
  take(execution) {
    const runs = /** @type {any[]} */ (execution.taskRunList ?? []);
    const now = (this.now = Date.now());
    const whole = span(execution.state, now, isTerminal(execution.state?.current));
    let first = whole ? whole[0] : now;
    let last = whole ? whole[1] : now;
    // Task runs are only ever appended: the rows before the first that differs keep their place.
    let from = Math.min(runs.length, this.runs.length);
    for (let i = 0; i < from; i++) {
      if (runs[i].id !== this.runs[i].id) from = i;
    }
    if (from < this.runs.length || runs.length < this.runs.length) {
      for (const [id, at] of this.index) if (at >= from) this.index.delete(id);
    }
    /** @type {Set<string>} */
    const seen = new Set();
    for (let i = 0; i < runs.length; i++) {
      const run = runs[i];
      seen.add(run.id);
      if (i >= from) this.index.set(run.id, i);
      const version = versionOf(run);
      let placed = this.placed.get(run.id);
      if (!placed || placed.version !== version || !placed.ended) {
        const state = String(run.state?.current ?? "CREATED");
        const ended = isTerminal(state);
        placed = {
          version,
          ended,
          span: span(run.state, now, ended),
          attempts: (run.attempts ?? []).map((/** @type {any} */ attempt) => {
            const attemptState = String(attempt.state?.current ?? state);
            return { state: attemptState, span: span(attempt.state, now, isTerminal(attemptState)) };
          }),
        };
        this.placed.set(run.id, placed);
      }
      if (placed.span) {
        if (placed.span[0] < first) first = placed.span[0];
        if (placed.span[1] > last) last = placed.span[1];
      }
    }
    if (seen.size !== this.placed.size) {
      for (const id of this.placed.keys()) if (!seen.has(id)) this.placed.delete(id);
    }
    this.runs = runs;
    if (this.origin === null || first < this.origin) {
      this.origin = first; // every bar is placed from it: every row drawn again
      this.rows.redraw();
    }
    const origin = this.origin;
    this.list.style.setProperty("--total", String(Math.max(1, last - origin)));
    if (!this.index.has(this.current)) this.current = runs[0]?.id ?? "";
    this.element.dataset.runs = String(runs.length);
    this.rows.resize(runs.length, from);
    this.rows.draw();
    this.axis.textContent = runs.length
      ? `${new Date(origin).toLocaleTimeString()} → ${new Date(last).toLocaleTimeString()} (${duration(new Date(origin).toISOString(), new Date(last).toISOString())})`
      : "No task run yet.";
  }

  /**
   * Draw row `i`: its label, its state for the eye and for a screen reader, its bar and one
   * segment per attempt, in `previous` when there is one (the focus stays on it).
   * @param {number} i
   * @param {HTMLElement | null} previous
   * @returns {HTMLElement}
   */
  row(i, previous) {
    const run = this.runs[i];
    const placed = /** @type {Placed} */ (this.placed.get(run.id));
    const origin = this.origin ?? 0;
    const item = previous ?? h("li", { class: "gantt-row", tabindex: -1 }, h("span", { class: "gantt-label mono" }), h("div", { class: "gantt-track" }));
    const [label, track] = /** @type {[HTMLElement, HTMLElement]} */ ([item.children[0], item.children[1]]);
    const state = String(run.state?.current ?? "CREATED");
    const attempts = placed.attempts;
    const took = duration(run.state?.startDate, run.state?.endDate);
    item.dataset.task = run.taskId;
    item.dataset.id = run.id;
    item.dataset.state = state;
    item.dataset.attempts = String(attempts.length);
    label.textContent = runLabel(run);
    item.setAttribute("aria-label", `${runLabel(run)}: ${state}, ${attempts.length} attempt(s)${took ? `, ${took}` : ""}`);
    item.title = `${state} ${took}`;
    /** @param {HTMLElement} element @param {[number, number] | null} s */
    const place = (element, s) => {
      if (!s) return element;
      element.style.setProperty("--s", String(s[0] - origin));
      element.style.setProperty("--w", String(s[1] - s[0]));
      return element;
    };
    track.replaceChildren(
      place(h("div", { class: `gantt-bar bg-${state.toLowerCase()}` }), placed.span),
      ...attempts.map((attempt, index) =>
        place(
          h("div", {
            class: `gantt-attempt bg-${attempt.state.toLowerCase()}`,
            "data-attempt": index + 1,
            "data-state": attempt.state,
            title: `attempt ${index + 1}: ${attempt.state}`,
          }),
          attempt.span,
        ),
      ),
    );
    return item;
  }
}
