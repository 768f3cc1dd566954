// @ts-check
/**
 * Executions: the search route's filters, its total and pages, refreshed while the page is
 * shown. The list is read again every {@link REFRESH_MS} from the execution index (the search
 * route answers from it), so states change in place as executions run; following every row's
 * event stream instead would take one connection per row, past what a browser opens to one
 * host. The filters live in the URL, so a filtered list is a link.
 */
import { getJson } from "./api.js";
import { duration, errorBox, fill, h, stateBadge, when } from "./dom.js";

const REFRESH_MS = 1500;
const PAGE_SIZE = 25;
const STATES = [
  "CREATED", "QUEUED", "RUNNING", "PAUSED", "RETRYING", "KILLING",
  "SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED",
];
const RANGES = [
  ["", "Any time"], ["PT1H", "Last hour"], ["P1D", "Last day"],
  ["P7D", "Last 7 days"], ["P30D", "Last 30 days"],
];

/**
 * The search route's query for the page's filters.
 * @param {URLSearchParams} query
 */
export function searchQuery(query) {
  const out = new URLSearchParams();
  const filter = (/** @type {string} */ field, /** @type {string} */ op, /** @type {string} */ key) => {
    const value = query.get(key);
    if (value) out.set(`filters[${field}][${op}]`, value);
  };
  filter("namespace", "PREFIX", "namespace");
  filter("flowId", "EQUALS", "flow");
  filter("state", "IN", "state");
  filter("timeRange", "EQUALS", "range");
  filter("q", "EQUALS", "q");
  out.set("page", query.get("page") || "1");
  out.set("size", String(PAGE_SIZE));
  out.set("sort", "state.startDate:desc");
  return out;
}

/** @type {import("./app.js").Page} */
export function executionsPage(root, _params, query) {
  const page = Math.max(1, Number(query.get("page")) || 1);
  /** @param {Record<string, string>} changes */
  const linkTo = (changes) => {
    const next = new URLSearchParams(query);
    for (const [key, value] of Object.entries(changes)) {
      if (value) next.set(key, value);
      else next.delete(key);
    }
    return `#/executions?${next}`;
  };

  /** @param {string} name @param {string} label @param {HTMLElement} control */
  const field = (name, label, control) =>
    h("div", { class: "field" }, h("label", { for: `f-${name}` }, label), control);
  const text = (/** @type {string} */ name, /** @type {string} */ placeholder) =>
    h("input", { id: `f-${name}`, name, value: query.get(name) ?? "", placeholder });
  const select = (/** @type {string} */ name, /** @type {string[][]} */ options) =>
    h(
      "select",
      { id: `f-${name}`, name },
      options.map(([value, label]) =>
        h("option", { value, selected: (query.get(name) ?? "") === value }, label),
      ),
    );

  /** @param {SubmitEvent} event */
  const submit = (event) => {
    event.preventDefault();
    const form = new FormData(/** @type {HTMLFormElement} */ (event.target));
    const next = new URLSearchParams();
    for (const [key, value] of form) if (typeof value === "string" && value) next.set(key, value);
    location.hash = `#/executions?${next}`;
  };

  const status = h("div", { "aria-live": "polite" });
  const body = h("tbody");
  const total = h("span", { class: "total", id: "total" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  fill(
    root,
    h("h1", {}, "Executions"),
    h(
      "form",
      { class: "filters", onsubmit: submit, role: "search" },
      field("namespace", "Namespace", text("namespace", "company.team")),
      field("flow", "Flow", text("flow", "flow id")),
      field("state", "State", select("state", [["", "Any state"], ...STATES.map((s) => [s, s])])),
      field("range", "Started", select("range", RANGES)),
      field("q", "Text", text("q", "id, namespace or flow")),
      h("button", { type: "submit", class: "primary" }, "Filter"),
    ),
    h("p", {}, total),
    status,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "list", id: "executions" },
        h(
          "thead",
          {},
          h("tr", {}, ["Id", "Namespace", "Flow", "State", "Started", "Duration"].map((c) => h("th", { scope: "col" }, c))),
        ),
        body,
      ),
    ),
    pager,
  );

  let stopped = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const load = async () => {
    try {
      const answer = await getJson(`/executions/search?${searchQuery(query)}`);
      if (stopped) return;
      fill(status);
      render(answer.results, answer.total);
    } catch (error) {
      if (!stopped) fill(status, errorBox(/** @type {Error} */ (error).message));
    }
    if (!stopped) timer = setTimeout(load, document.hidden ? REFRESH_MS * 4 : REFRESH_MS);
  };

  /** @param {any[]} results @param {number} count */
  const render = (results, count) => {
    const pages = Math.max(1, Math.ceil(count / PAGE_SIZE));
    fill(total, `${count} execution${count === 1 ? "" : "s"}`);
    fill(
      body,
      results.length
        ? results.map((execution) =>
            h(
              "tr",
              { "data-id": execution.id },
              h("td", {}, h("a", { href: `#/executions/${encodeURIComponent(execution.id)}`, class: "mono" }, execution.id)),
              h("td", {}, execution.namespace),
              h("td", {}, execution.flowId),
              h("td", {}, stateBadge(execution.state.current)),
              h("td", {}, when(execution.state.startDate)),
              h("td", {}, duration(execution.state.startDate, execution.state.endDate)),
            ),
          )
        : h("tr", {}, h("td", { colspan: 6, class: "muted" }, "No execution matches.")),
    );
    fill(
      pager,
      page > 1 ? h("a", { href: linkTo({ page: String(page - 1) }), rel: "prev" }, "Previous") : null,
      h("span", {}, `Page ${page} of ${pages}`),
      page < pages ? h("a", { href: linkTo({ page: String(page + 1) }), rel: "next" }, "Next") : null,
    );
  };

  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
