// @ts-check
/** Flows: the flow search route (text and namespace), with its total and pages. */
import { getJson } from "./api.js";
import { errorBox, fill, h } from "./dom.js";

const PAGE_SIZE = 25;

/** @type {import("./app.js").Page} */
export function flowsPage(root, _params, query) {
  const page = Math.max(1, Number(query.get("page")) || 1);
  const status = h("div", { "aria-live": "polite" });
  const body = h("tbody");
  const total = h("span", { id: "total" });
  const pager = h("nav", { class: "pager", "aria-label": "Pages" });
  /** @param {SubmitEvent} event */
  const submit = (event) => {
    event.preventDefault();
    const next = new URLSearchParams();
    for (const [key, value] of new FormData(/** @type {HTMLFormElement} */ (event.target))) {
      if (typeof value === "string" && value) next.set(key, value);
    }
    location.hash = `#/flows?${next}`;
  };
  /** @param {number} to */
  const linkTo = (to) => {
    const next = new URLSearchParams(query);
    next.set("page", String(to));
    return `#/flows?${next}`;
  };
  fill(
    root,
    h("div", { class: "row" }, h("h1", {}, "Flows"), h("a", { class: "button primary", href: "#/flows/new" }, "New flow")),
    h(
      "form",
      { class: "filters", role: "search", onsubmit: submit },
      h("div", { class: "field" }, h("label", { for: "f-namespace" }, "Namespace"), h("input", { id: "f-namespace", name: "namespace", value: query.get("namespace") ?? "" })),
      h("div", { class: "field" }, h("label", { for: "f-q" }, "Text"), h("input", { id: "f-q", name: "q", value: query.get("q") ?? "" })),
      h("button", { type: "submit", class: "primary" }, "Filter"),
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
      const pages = Math.max(1, Math.ceil(count / PAGE_SIZE));
      fill(total, `${count} flow${count === 1 ? "" : "s"}`);
      fill(
        body,
        results.length
          ? results.map((/** @type {any} */ flow) =>
              h(
                "tr",
                {},
                h("td", {}, flow.namespace),
                h("td", {}, h("a", { href: `#/flows/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}` }, flow.id)),
                h("td", {}, String(flow.revision ?? "")),
                h("td", {}, String((flow.tasks ?? []).length)),
              ),
            )
          : h("tr", {}, h("td", { colspan: 4, class: "muted" }, "No flow matches.")),
      );
      fill(
        pager,
        page > 1 ? h("a", { href: linkTo(page - 1), rel: "prev" }, "Previous") : null,
        h("span", {}, `Page ${page} of ${pages}`),
        page < pages ? h("a", { href: linkTo(page + 1), rel: "next" }, "Next") : null,
      );
    })
    .catch((error) => fill(status, errorBox(error.message)));
  return () => {};
}
