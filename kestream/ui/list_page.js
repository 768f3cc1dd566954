// @ts-check
/**
 * What the list pages (executions, flows, logs) share: a filter form whose values live in the
 * URL's query (so a filtered list is a link, and its fields are filled from the link), the
 * page number read from it, the search route's page read and drawn with its total, and the
 * pager under the list.
 */
import { call } from "./api.js";
import { failure, fill, h } from "./dom.js";

/** The time ranges a list filters on (ISO-8601 durations back from now, as the API takes). */
export const RANGES = [
  ["", "Any time"], ["PT1H", "Last hour"], ["P1D", "Last day"],
  ["P7D", "Last 7 days"], ["P30D", "Last 30 days"],
];

/**
 * The page asked for (from 1).
 * @param {URLSearchParams} query
 */
export function pageOf(query) {
  return Math.max(1, Number(query.get("page")) || 1);
}

/**
 * The search route's query for a list's page of `size`: the page asked for, and each filter
 * of the URL's query that is set, under the route's name for it.
 * @param {URLSearchParams} query
 * @param {number} size
 * @param {Record<string, string>} parameters the route's parameter by the filter's name
 */
export function searchParams(query, size, parameters) {
  const search = new URLSearchParams({ page: String(pageOf(query)), size: String(size) });
  for (const [key, parameter] of Object.entries(parameters)) {
    const value = query.get(key);
    if (value) search.set(parameter, value);
  }
  return search;
}

/**
 * What every list page has beside its filters and rows: where a failure shows, the total and
 * the pager.
 */
export function listParts() {
  return {
    status: h("div", { "aria-live": "polite" }),
    total: h("span", { class: "total", id: "total" }),
    pager: h("nav", { class: "pager", "aria-label": "Pages" }),
  };
}

/**
 * @typedef {ReturnType<typeof listParts>} ListParts
 */

/**
 * Read a page of a search route (`path`, its query included) and draw it: the total (a lower
 * bound, "10000+", when the index stopped counting: `X-Kestream-Total-Capped`), the rows
 * (`draw`, given the results) and the pager; a failure in the status. Nothing is drawn once
 * `stopped()` (the page was left).
 * @param {string} path
 * @param {ListParts} parts
 * @param {{route: string, query: URLSearchParams, size: number, noun: string, stopped: () => boolean, cappedHint?: string}} list
 *   the list's hash route, the URL's query, its page size and what it lists (singular); what
 *   a capped total leaves unread, said beside it, when the search's own filters explain it
 * @param {(results: any[]) => void} draw
 */
export async function drawSearch(path, parts, { route, query, size, noun, stopped, cappedHint }, draw) {
  try {
    const response = await call("GET", path);
    const { results, total } = await response.json();
    if (stopped()) return;
    const capped = totalCapped(response);
    fill(parts.status);
    fill(parts.total, totalText(total, capped, noun), capped && cappedHint ? h("span", { class: "muted" }, ` (${cappedHint})`) : null);
    draw(results);
    drawPager(parts.pager, route, query, total, size, capped);
  } catch (error) {
    if (!stopped()) fill(parts.status, failure(error));
  }
}

/**
 * A labelled field of a filter form.
 * @param {string} name the query parameter, and the control's id (`f-<name>`)
 * @param {string} label
 * @param {HTMLElement} control
 */
export function filterField(name, label, control) {
  return h("div", { class: "field" }, h("label", { for: `f-${name}` }, label), control);
}

/**
 * A text filter, filled from the query.
 * @param {URLSearchParams} query
 * @param {string} name
 * @param {string} [placeholder]
 */
export function textFilter(query, name, placeholder) {
  return h("input", { id: `f-${name}`, name, value: query.get(name) ?? "", placeholder });
}

/**
 * A select filter of `[value, label]` options, the query's value chosen.
 * @param {URLSearchParams} query
 * @param {string} name
 * @param {string[][]} options
 */
export function selectFilter(query, name, options) {
  return h(
    "select",
    { id: `f-${name}`, name },
    options.map(([value, label]) => h("option", { value, selected: (query.get(name) ?? "") === value }, label)),
  );
}

/**
 * A filter form: sent, its non-empty values become the query of `route` (from page 1).
 * @param {string} route the list's hash route (`#/executions`)
 * @param {string} submit the button's text
 * @param {...HTMLElement} fields
 */
export function filterForm(route, submit, ...fields) {
  /** @param {SubmitEvent} event */
  const send = (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(/** @type {HTMLFormElement} */ (event.target))) {
      if (typeof value === "string" && value) next.set(key, value);
    }
    location.hash = `${route}?${next}`;
  };
  return h("form", { class: "filters", role: "search", onsubmit: send }, fields, h("button", { type: "submit", class: "primary" }, submit));
}

/**
 * Whether a search's total is a lower bound: the index stopped counting at its bound and said
 * so in the `X-Kestream-Total-Capped` header.
 * @param {Response} response
 */
export function totalCapped(response) {
  return response.headers.get("X-Kestream-Total-Capped") === "true";
}

/**
 * A list's total as shown: "1 line", "3 lines", or "10000+ lines" when capped.
 * @param {number} count
 * @param {boolean} capped
 * @param {string} noun singular; the plural adds an "s"
 */
export function totalText(count, capped, noun) {
  return `${count}${capped ? "+" : ""} ${noun}${count === 1 && !capped ? "" : "s"}`;
}

/**
 * Draw the pager of a list of `count` items, `size` a page, on page `page`: links to the
 * pages before and after (the query kept, its page changed). A `capped` count is a lower
 * bound, and so is its number of pages ("of 400+").
 * @param {HTMLElement} pager
 * @param {string} route
 * @param {URLSearchParams} query
 * @param {number} count
 * @param {number} size
 * @param {boolean} [capped]
 */
export function drawPager(pager, route, query, count, size, capped = false) {
  const page = pageOf(query);
  const pages = Math.max(1, Math.ceil(count / size));
  /** @param {number} to */
  const linkTo = (to) => {
    const next = new URLSearchParams(query);
    next.set("page", String(to));
    return `${route}?${next}`;
  };
  fill(
    pager,
    page > 1 ? h("a", { href: linkTo(page - 1), rel: "prev" }, "Previous") : null,
    h("span", {}, `Page ${page} of ${pages}${capped ? "+" : ""}`),
    page < pages ? h("a", { href: linkTo(page + 1), rel: "next" }, "Next") : null,
  );
}
