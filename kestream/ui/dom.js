// @ts-check
/**
 * A small DOM toolkit: elements are built with `h()`, never from HTML strings, so text from the
 * API (a log line, a label) is always text and never markup.
 */
import { ApiError } from "./api.js";

/** @typedef {string | number | Node | null | undefined | false} Child */
/** @typedef {Record<string, string | number | boolean | null | undefined | ((event: any) => void)>} Attrs */

/**
 * An element with attributes (`on*` ones are listeners; `false`/`null` ones are left out)
 * and children (strings become text nodes; `null`, `undefined` and `false` are skipped).
 * @template {keyof HTMLElementTagNameMap} K
 * @param {K} tag
 * @param {Attrs} [attrs]
 * @param {...(Child | Child[])} children
 * @returns {HTMLElementTagNameMap[K]}
 */
export function h(tag, attrs = {}, ...children) {
  const element = document.createElement(tag);
  for (const [name, value] of Object.entries(attrs)) {
    if (typeof value === "function") {
      element.addEventListener(name.slice(2).toLowerCase(), value);
    } else if (value === true) {
      element.setAttribute(name, "");
    } else if (value !== false && value !== null && value !== undefined) {
      element.setAttribute(name, String(value));
    }
  }
  append(element, children);
  return element;
}

/**
 * @param {Element} parent
 * @param {(Child | Child[])[]} children
 */
function append(parent, children) {
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    parent.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
}

/**
 * Replace every child of `parent`.
 * @param {Element} parent
 * @param {...(Child | Child[])} children
 */
export function fill(parent, ...children) {
  parent.replaceChildren();
  append(parent, children);
}

const TERMINAL = new Set(["SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED", "SKIPPED"]);

/** @param {string} state */
export function isTerminal(state) {
  return TERMINAL.has(state);
}

/** @param {string} state */
export function stateBadge(state) {
  return h("span", { class: `state state-${state.toLowerCase()}`, "data-state": state }, state);
}

/** @param {string | null | undefined} iso */
export function when(iso) {
  if (!iso) return "";
  const date = new Date(iso);
  return Number.isNaN(date.getTime()) ? iso : date.toLocaleString();
}

/**
 * A duration between two ISO instants (the second one: now), as `1.2 s`, `3 min 4 s`.
 * @param {string | null | undefined} start
 * @param {string | null | undefined} [end]
 */
export function duration(start, end) {
  if (!start) return "";
  const ms = (end ? Date.parse(end) : Date.now()) - Date.parse(start);
  if (!Number.isFinite(ms) || ms < 0) return "";
  if (ms < 1000) return `${ms} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  const minutes = Math.floor(ms / 60_000);
  return `${minutes} min ${Math.round((ms % 60_000) / 1000)} s`;
}

/**
 * A value as indented JSON in a `<pre>`.
 * @param {unknown} value
 */
export function jsonBlock(value) {
  return h("pre", { class: "json" }, JSON.stringify(value, null, 2));
}

/**
 * A message the user must see (an API error, say), announced to screen readers.
 * @param {string} text
 */
export function errorBox(text) {
  return h("p", { class: "error", role: "alert" }, text);
}

/**
 * What went wrong, as every page shows it: the error's message, then each problem the API
 * named (its `_embedded.errors`), or only `problems` where the page showed the others elsewhere
 * (beside the form fields they name).
 * @param {unknown} error
 * @param {string[]} [problems]
 */
export function failure(error, problems = error instanceof ApiError ? error.problems.map((p) => p.message ?? "") : []) {
  return [errorBox(messageOf(error)), ...problems.filter(Boolean).map((text) => errorBox(text))];
}

/**
 * An error's message (what a promise rejected with need not be an `Error`).
 * @param {unknown} error
 */
export function messageOf(error) {
  return error instanceof Error ? error.message : String(error);
}

/**
 * A table of a list: a head of `columns` (a header cell each) over `body`.
 * @param {string} id
 * @param {Child[]} columns
 * @param {HTMLTableSectionElement} body
 */
export function listTable(id, columns, body) {
  return h("table", { class: "list", id }, h("thead", {}, h("tr", {}, columns.map((column) => h("th", { scope: "col" }, column)))), body);
}
