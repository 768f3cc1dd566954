// @ts-check
/**
 * Log lines as the pages show them, and the execution page's log view.
 *
 * The view keeps every line streamed to it and draws only those in its scrolled window
 * (`virtual_list.js`): an execution of 10 000 task runs writes 10 000 lines and more, and a DOM
 * row for each made scrolling and searching slow. A line streamed in costs its own search match
 * and one addition to the rows' tops; it is drawn at the next animation frame, with the others
 * that came meanwhile. The search box narrows the lines shown without asking the API again:
 * the lines that match are listed once per keystroke, each line's text lowercased once when it
 * came.
 *
 * While the window is at the end it stays there as lines come (the newest in view); scrolled
 * elsewhere, it stays where it was put. The view is one stop of the Tab key, scrolled by the
 * keyboard as any scrolled region.
 */
import { h, when } from "./dom.js";
import { VirtualList } from "./virtual_list.js";

/** The log levels, lowest first (the level filters offer them). */
export const LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];

/**
 * One log line as the execution page and the logs page show it.
 * @param {any} line
 * @param {HTMLElement | null} [where] what to show before the task (the logs page: the execution)
 */
export function logLine(line, where = null) {
  return h(
    "div",
    { class: `log log-${String(line.level).toLowerCase()}${where ? " with-execution" : ""}` },
    h("span", { class: "mono muted" }, when(line.timestamp)),
    h("span", { class: "level" }, line.level),
    where,
    h("span", { class: "mono" }, line.taskId ?? ""),
    h("span", { class: "message" }, line.message),
  );
}

export class LogView {
  constructor() {
    this.list = h("div", { class: "log-rows" });
    this.element = h("div", { class: "logs", id: "logs", role: "log", "aria-live": "off", "aria-label": "Log lines", tabindex: 0 }, this.list);
    /** @type {{line: any, text: string}[]} every line received, with what the search reads */
    this.lines = [];
    /** @type {number[]} the lines shown (those the search matches), by their place in `lines` */
    this.shown = [];
    /** The search text, lowercased once per keystroke rather than once per line. */
    this.needle = "";
    this.rows = new VirtualList(
      this.element,
      this.list,
      {
        key: (i) => String(this.shown[i]),
        signature: () => "", // a line never changes
        render: (i) => logLine(this.lines[this.shown[i]].line),
      },
      { rowHeight: 20, followEnd: true },
    );
    this.count();
  }

  /**
   * A line streamed in.
   * @param {any} line
   */
  add(line) {
    const text = `${line.taskId ?? ""} ${line.message}`.toLowerCase();
    this.lines.push({ line, text });
    if (this.matches(text)) {
      this.shown.push(this.lines.length - 1);
      this.rows.resize(this.shown.length, this.shown.length - 1);
    }
    this.count();
  }

  /**
   * Forget every line (the stream is read again, from another level): the next ones are
   * numbered from 0 again, so nothing drawn or measured of these is kept.
   */
  clear() {
    this.lines.length = 0;
    this.shown.length = 0;
    this.rows.reset();
    this.count();
  }

  /**
   * Show only the lines that hold `text` (any case); all of them for an empty text.
   * @param {string} text
   */
  search(text) {
    this.needle = text.trim().toLowerCase();
    this.shown = [];
    for (let i = 0; i < this.lines.length; i++) if (this.matches(this.lines[i].text)) this.shown.push(i);
    this.rows.resize(this.shown.length);
  }

  /** @param {string} text */
  matches(text) {
    return !this.needle || text.includes(this.needle);
  }

  count() {
    this.element.dataset.lines = String(this.lines.length);
  }
}
