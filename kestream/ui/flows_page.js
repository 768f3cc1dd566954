// @ts-check
/** Flows: the flow search route (text and namespace), with its total and pages. */
import { getJson } from "./api.js";
import { flowPath } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { drawPager, filterField, filterForm, pageOf, textFilter } from "./list_page.js";

const PAGE_SIZE = 25;

/** @type {import("./app.js").Page} */
export function flowsPage(root, _params, query) {
  const page = pageOf(query);
  const status = h("div", { "aria-live": "polite" });
  const body = h("tbody");
  const total = h("span", { id: "total" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  fill(
    root,
    h("div", { class: "row" }, h("h1", {}, "Flows"), h("a", { class: "button primary", href: "#/flows/new" }, "New flow")),
    filterForm(
      "#/flows",
      "Filter",
      filterField("namespace", "Namespace", textFilter(query, "namespace")),
      filterField("q", "Text", textFilter(query, "q")),
    ),
    h("p", {}, total),
    status,
    h(
      "div",
      { class: "table-wrap" },
      h(
        "table",
        { class: "list", id: "flows" },
        h("thead", {}, h("tr", {}, ["Namespace", "Id", "Revision", "Tasks"].map((c) => h("th", { scope: "col" }, c)))),
        body,
      ),
    ),
    pager,
  );
  const search = new URLSearchParams({ page: String(page), size: String(PAGE_SIZE) });
  for (const key of ["namespace", "q"]) {
    const value = query.get(key);
    if (value) search.set(key, value);
  }
  getJson(`/flows/search?${search}`)
    .then(({ results, total: count }) => {
      fill(total, `${count} flow${count === 1 ? "" : "s"}`);
      fill(
        body,
        results.length
          ? results.map((/** @type {any} */ flow) =>
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
      );
      drawPager(pager, "#/flows", query, count, PAGE_SIZE);
    })
    .catch((error) => fill(status, errorBox(error.message)));
  return () => {};
}
