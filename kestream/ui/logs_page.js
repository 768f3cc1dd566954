// @ts-check
/**
 * Logs: the lines of every execution, newest first, from the logs search route (text in the
 * message, namespace and its children, flow, lowest level, time range), with its total and
 * pages. Each line links to its execution. The filters live in the URL, so a search is a link.
 */
import { getJson } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { logLine } from "./execution_page.js";

const PAGE_SIZE = 50;
const LEVELS = ["TRACE", "DEBUG", "INFO", "WARN", "ERROR"];
const RANGES = [
  ["", "Any time"], ["PT1H", "Last hour"], ["P1D", "Last day"], ["P7D", "Last 7 days"],
];
/** The page's fields and the search route's parameter for each. */
const PARAMETERS = { q: "q", namespace: "namespace", flow: "flowId", level: "minLevel", range: "timeRange" };

/** @type {import("./app.js").Page} */
export function logsPage(root, _params, query) {
  const page = Math.max(1, Number(query.get("page")) || 1);
  const status = h("div", { "aria-live": "polite" });
  const lines = h("div", { class: "logs logs-page", id: "log-results", role: "log" });
  const total = h("span", { id: "total" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  /** @param {string} name @param {string} label @param {HTMLElement} control */
  const field = (name, label, control) =>
    h("div", { class: "field" }, h("label", { for: `f-${name}` }, label), control);
  const text = (/** @type {string} */ name, /** @type {string} */ placeholder) =>
    h("input", { id: `f-${name}`, name, value: query.get(name) ?? "", placeholder });
  const select = (/** @type {string} */ name, /** @type {string[][]} */ options) =>
    h("select", { id: `f-${name}`, name }, options.map(([value, label]) => h("option", { value, selected: (query.get(name) ?? "") === value }, label)));
  /** @param {SubmitEvent} event */
  const submit = (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(/** @type {HTMLFormElement} */ (event.target))) {
      if (typeof value === "string" && value) next.set(key, value);
    }
    location.hash = `#/logs?${next}`;
  };
  /** @param {number} to */
  const linkTo = (to) => {
    const next = new URLSearchParams(query);
    next.set("page", String(to));
    return `#/logs?${next}`;
  };
  fill(
    root,
    h("h1", {}, "Logs"),
    h(
      "form",
      { class: "filters", role: "search", onsubmit: submit },
      field("q", "Text", text("q", "text in the message")),
      field("namespace", "Namespace", text("namespace", "company.team")),
      field("flow", "Flow", text("flow", "flow id")),
      field("level", "From level", select("level", [["", "Any level"], ...LEVELS.map((l) => [l, l])])),
      field("range", "When", select("range", RANGES)),
      h("button", { type: "submit", class: "primary" }, "Search"),
    ),
    h("p", {}, total),
    status,
    lines,
    pager,
  );
  const search = new URLSearchParams({ page: String(page), size: String(PAGE_SIZE) });
  for (const [key, parameter] of Object.entries(PARAMETERS)) {
    const value = query.get(key);
    if (value) search.set(parameter, value);
  }
  let stopped = false;
  getJson(`/logs/search?${search}`)
    .then(({ results, total: count }) => {
      if (stopped) return;
      const pages = Math.max(1, Math.ceil(count / PAGE_SIZE));
      fill(total, `${count} line${count === 1 ? "" : "s"}`);
      fill(
        lines,
        results.length
          ? results.map((/** @type {any} */ line) =>
              logLine(line, h("a", { class: "mono", href: `#/executions/${encodeURIComponent(line.executionId)}`, title: `${line.namespace}.${line.flowId}` }, line.executionId)),
            )
          : h("p", { class: "muted" }, "No line matches."),
      );
      fill(
        pager,
        page > 1 ? h("a", { href: linkTo(page - 1), rel: "prev" }, "Previous") : null,
        h("span", {}, `Page ${page} of ${pages}`),
        page < pages ? h("a", { href: linkTo(page + 1), rel: "next" }, "Next") : null,
      );
    })
    .catch((error) => stopped || fill(status, errorBox(error.message)));
  return () => {
    stopped = true;
  };
}
