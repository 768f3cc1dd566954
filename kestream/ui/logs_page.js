// @ts-check
/**
 * Logs: the lines of every execution, newest first, from the logs search route (text in the
 * message, namespace and its children, flow, lowest level, time range), with its total and
 * pages. Each line links to its execution. The filters live in the URL, so a search is a link.
 */
import { fill, h } from "./dom.js";
import { RANGES, drawSearch, filterField, filterForm, listParts, searchParams, selectFilter, textFilter } from "./list_page.js";
import { LEVELS, logLine } from "./log_view.js";

const PAGE_SIZE = 50;
/** The page's fields and the search route's parameter for each. */
const PARAMETERS = { q: "q", namespace: "namespace", flow: "flowId", level: "minLevel", range: "timeRange" };

/** @type {import("./app.js").Page} */
export function logsPage(root, _params, query) {
  const parts = listParts();
  const lines = h("div", { class: "logs logs-page", id: "log-results", role: "log" });
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
    h("p", {}, parts.total),
    parts.status,
    lines,
    parts.pager,
  );
  let stopped = false;
  const list = { route: "#/logs", query, size: PAGE_SIZE, noun: "line", stopped: () => stopped };
  drawSearch(`/logs/search?${searchParams(query, PAGE_SIZE, PARAMETERS)}`, parts, list, (results) =>
    fill(
      lines,
      results.length
        ? results.map((line) =>
            logLine(line, h("a", { class: "mono", href: `#/executions/${encodeURIComponent(line.executionId)}`, title: `${line.namespace}.${line.flowId}` }, line.executionId)),
          )
        : h("p", { class: "muted" }, "No line matches."),
    ),
  );
  return () => {
    stopped = true;
  };
}
