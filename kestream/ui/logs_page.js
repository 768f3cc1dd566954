// @ts-check
/**
 * Logs: the lines of every execution, newest first, from the logs search route (text in the
 * message, namespace and its children, flow, lowest level, time range), with its total and
 * pages. Each line links to its execution. The filters live in the URL, so a search is a link.
 */
import { call } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { RANGES, drawPager, filterField, filterForm, pageOf, selectFilter, textFilter, totalCapped, totalText } from "./list_page.js";
import { LEVELS, logLine } from "./log_view.js";

const PAGE_SIZE = 50;
/** The page's fields and the search route's parameter for each. */
const PARAMETERS = { q: "q", namespace: "namespace", flow: "flowId", level: "minLevel", range: "timeRange" };

/** @type {import("./app.js").Page} */
export function logsPage(root, _params, query) {
  const page = pageOf(query);
  const status = h("div", { "aria-live": "polite" });
  const lines = h("div", { class: "logs logs-page", id: "log-results", role: "log" });
  const total = h("span", { id: "total" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  fill(
    root,
    h("h1", {}, "Logs"),
    filterForm(
      "#/logs",
      "Search",
      filterField("q", "Text", textFilter(query, "q", "text in the message")),
      filterField("namespace", "Namespace", textFilter(query, "namespace", "company.team")),
      filterField("flow", "Flow", textFilter(query, "flow", "flow id")),
      filterField("level", "From level", selectFilter(query, "level", [["", "Any level"], ...LEVELS.map((l) => [l, l])])),
      filterField("range", "When", selectFilter(query, "range", RANGES)),
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
  call("GET", `/logs/search?${search}`)
    .then(async (response) => {
      const { results, total: count } = await response.json();
      if (stopped) return;
      // A total the index stopped counting at (X-Kestream-Total-Capped) shows as "10000+".
      const capped = totalCapped(response);
      fill(total, totalText(count, capped, "line"));
      fill(
        lines,
        results.length
          ? results.map((/** @type {any} */ line) =>
              logLine(line, h("a", { class: "mono", href: `#/executions/${encodeURIComponent(line.executionId)}`, title: `${line.namespace}.${line.flowId}` }, line.executionId)),
            )
          : h("p", { class: "muted" }, "No line matches."),
      );
      drawPager(pager, "#/logs", query, count, PAGE_SIZE, capped);
    })
    .catch((error) => stopped || fill(status, errorBox(error.message)));
  return () => {
    stopped = true;
  };
}
