// @ts-check
/**
 * A Gantt timeline of an execution's task runs: one row per task run, its bar from the first
 * to the last date of its state's history (to now while it runs), with one segment per
 * attempt (a retry is a new attempt, so retries show as segments side by side), each coloured
 * by its state. A loop's runs carry their value (`taskrun.value`) and iteration in the label.
 *
 * The execution page calls `update` with each frame of its live feed: rows are kept by task
 * run id and only their bars are moved, so a frame costs a pass over the runs and no rebuild
 * (the focus and scroll position stay where they are).
 *
 * The timeline is one stop of the Tab key (a roving tabindex): the arrow keys, Home and End
 * move between its rows, each of which reads its task, state, attempts and duration.
 */
import { duration, h } from "./dom.js";

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

const ENDED = new Set(["SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED"]);

/**
 * What an ended run's row is drawn from: it is drawn again only when this changes (a restart
 * adds to its history and attempts).
 * @param {any} run
 * @param {any[]} attempts
 */
function signatureOf(run, attempts) {
  const states = attempts.map((a) => `${a.state?.current}:${a.state?.histories?.length ?? 0}`);
  return `${run.state?.current}|${run.state?.histories?.length ?? 0}|${runLabel(run)}|${states.join(",")}`;
}

export class Gantt {
  constructor() {
    this.element = h("ol", { class: "gantt", id: "gantt", "aria-label": "Timeline of the task runs" });
    this.axis = h("p", { class: "muted gantt-axis", id: "gantt-axis" });
    /** @type {Map<string, {row: HTMLLIElement, label: HTMLSpanElement, track: HTMLDivElement}>} */
    this.rows = new Map();
    /** The task-run id of the row that takes the focus when the timeline is tabbed into. */
    this.current = "";
    /** @type {number | null} the instant bars are placed from (ms) */
    this.origin = null;
    /** @type {Map<string, string>} what each ended row was drawn from, by task-run id */
    this.signatures = new Map();
    this.element.addEventListener("keydown", (event) => this.move(event));
  }

  /** @param {KeyboardEvent} event */
  move(event) {
    const rows = /** @type {HTMLLIElement[]} */ (Array.from(this.element.children));
    const at = rows.indexOf(/** @type {HTMLLIElement} */ (document.activeElement));
    if (at < 0) return;
    const to = { ArrowDown: at + 1, ArrowUp: at - 1, Home: 0, End: rows.length - 1 }[event.key];
    if (to === undefined || to < 0 || to >= rows.length) return;
    event.preventDefault();
    this.focusRow(rows[to]);
  }

  /** @param {HTMLLIElement} row */
  focusRow(row) {
    for (const entry of this.rows.values()) entry.row.tabIndex = -1;
    row.tabIndex = 0;
    this.current = row.dataset.id ?? "";
    row.focus();
  }

  /**
   * Redraw from an execution (a frame of the follow route, or the clock while it runs).
   *
   * Bars are placed by CSS from custom properties: each bar's start and length in ms from the
   * execution's start (`--s`, `--w`), and the timeline's length (`--total`) once on the list.
   * So when the timeline grows only `--total` changes, and a row is redrawn only when its run
   * changed or is still running: a frame costs the running rows, not all of them.
   * @param {any} execution
   */
  update(execution) {
    const runs = /** @type {any[]} */ (execution.taskRunList ?? []);
    const now = Date.now();
    const whole = span(execution.state, now, ENDED.has(execution.state?.current));
    /** @type {[any, [number, number] | null, boolean][]} */
    const spans = runs.map((run) => {
      const ended = ENDED.has(run.state?.current);
      return [run, span(run.state, now, ended), ended];
    });
    let first = whole ? whole[0] : now;
    let last = whole ? whole[1] : now;
    for (const [, s] of spans) {
      if (!s) continue;
      first = Math.min(first, s[0]);
      last = Math.max(last, s[1]);
    }
    if (this.origin === null || first < this.origin) {
      this.origin = first; // every bar is placed from it: all rows again
      this.signatures.clear();
    }
    const origin = this.origin;
    this.element.style.setProperty("--total", String(Math.max(1, last - origin)));
    /** @param {HTMLElement} element @param {[number, number] | null} s */
    const place = (element, s) => {
      if (!s) return;
      element.style.setProperty("--s", String(s[0] - origin));
      element.style.setProperty("--w", String(s[1] - s[0]));
    };

    const seen = new Set();
    for (const [run, s, ended] of spans) {
      seen.add(run.id);
      let entry = this.rows.get(run.id);
      if (!entry) {
        const label = h("span", { class: "gantt-label mono" });
        const track = h("div", { class: "gantt-track" });
        const row = h("li", { class: "gantt-row", tabindex: -1, "data-task": run.taskId, "data-id": run.id }, label, track);
        entry = { row, label, track };
        this.rows.set(run.id, entry);
        this.element.append(row); // task runs are only ever added after the others
      }
      const attempts = /** @type {any[]} */ (run.attempts ?? []);
      const signature = ended ? signatureOf(run, attempts) : "";
      if (signature && this.signatures.get(run.id) === signature) continue;
      this.signatures.set(run.id, signature);
      const state = String(run.state?.current ?? "CREATED");
      const took = duration(run.state?.startDate, run.state?.endDate);
      entry.label.textContent = runLabel(run);
      entry.row.dataset.state = state;
      entry.row.dataset.attempts = String(attempts.length);
      entry.row.setAttribute("aria-label", `${runLabel(run)}: ${state}, ${attempts.length} attempt(s)${took ? `, ${took}` : ""}`);
      entry.row.title = `${state} ${took}`;
      const bar = h("div", { class: `gantt-bar bg-${state.toLowerCase()}` });
      place(bar, s);
      const segments = attempts.map((attempt, index) => {
        const attemptState = String(attempt.state?.current ?? state);
        const segment = h("div", {
          class: `gantt-attempt bg-${attemptState.toLowerCase()}`,
          "data-attempt": index + 1,
          "data-state": attemptState,
          title: `attempt ${index + 1}: ${attemptState}`,
        });
        place(segment, span(attempt.state, now, ENDED.has(attemptState)));
        return segment;
      });
      entry.track.replaceChildren(bar, ...segments);
    }
    for (const [id, entry] of this.rows) {
      if (!seen.has(id)) {
        entry.row.remove();
        this.rows.delete(id);
        this.signatures.delete(id);
      }
    }
    const current = this.rows.get(this.current) ?? this.rows.get(runs[0]?.id);
    if (current && current.row.tabIndex !== 0) {
      for (const entry of this.rows.values()) entry.row.tabIndex = -1;
      current.row.tabIndex = 0;
      this.current = current.row.dataset.id ?? "";
    }
    this.axis.textContent = runs.length
      ? `${new Date(origin).toLocaleTimeString()} → ${new Date(last).toLocaleTimeString()} (${duration(new Date(origin).toISOString(), new Date(last).toISOString())})`
      : "No task run yet.";
  }
}
