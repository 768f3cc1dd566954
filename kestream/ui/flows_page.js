// @ts-check
/** Flows: the flow search route (text and namespace), with its total and pages. */
import { flowPath } from "./api.js";
import { fill, h, listTable } from "./dom.js";
import { drawSearch, filterField, filterForm, listParts, searchParams, textFilter } from "./list_page.js";

const PAGE_SIZE = 25;
/** The page's filters, and the search route's parameter for each. */
const PARAMETERS = { namespace: "namespace", q: "q" };

/** @type {import("./app.js").Page} */
export function flowsPage(root, _params, query) {
  const parts = listParts();
  const body = h("tbody");
  fill(
    root,
    h("div", { class: "row" }, h("h1", {}, "Flows"), h("a", { class: "button primary", href: "#/flows/new" }, "New flow")),
    filterForm(
      "#/flows",
      "Filter",
      filterField("namespace", "Namespace", textFilter(query, "namespace")),
      filterField("q", "Text", textFilter(query, "q")),
    ),
    h("p", {}, parts.total),
    parts.status,
    h("div", { class: "table-wrap" }, listTable("flows", ["Namespace", "Id", "Revision", "Tasks"], body)),
    parts.pager,
  );
  let stopped = false;
  const list = { route: "#/flows", query, size: PAGE_SIZE, noun: "flow", stopped: () => stopped };
  drawSearch(`/flows/search?${searchParams(query, PAGE_SIZE, PARAMETERS)}`, parts, list, (results) =>
    fill(
      body,
      results.length
        ? results.map((flow) =>
            h(
              "tr",
              {},
              h("td", {}, flow.namespace),
              h("td", {}, h("a", { href: `#${flowPath(flow.namespace, flow.id)}` }, flow.id)),
              h("td", {}, String(flow.revision ?? "")),
              h("td", {}, String((flow.tasks ?? []).length)),
            ),
          )
        : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No flow matches.")),
    ),
  );
  return () => {
    stopped = true;
  };
}
