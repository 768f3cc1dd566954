// @ts-check
/**
 * Executions: the search route's filters, its total and pages, refreshed while the page is
 * shown. The list is read again every {@link REFRESH_MS} from the execution index (the search
 * route answers from it), so states change in place as executions run; following every row's
 * event stream instead would take one connection per row, past what a browser opens to one
 * host. The filters live in the URL, so a filtered list is a link.
 *
 * Rows are selected with their checkboxes (kept across refreshes) for a bulk kill, restart or
 * delete, confirmed first. The API has no route that acts on many executions by id, so each
 * is sent to its own route, a few at a time; what each answered is summed up (an execution in
 * a state the route refuses is counted, with the API's reason, not hidden).
 */
import { call, getJson } from "./api.js";
import { duration, errorBox, fill, h, stateBadge, when } from "./dom.js";

const REFRESH_MS = 1500;
const PAGE_SIZE = 25;
const STATES = [
  "CREATED", "QUEUED", "RUNNING", "PAUSED", "RETRYING", "KILLING",
  "SUCCESS", "WARNING", "FAILED", "KILLED", "CANCELLED",
];
/** Requests of a bulk action under way at once. */
const BULK_PARALLEL = 4;
/** @type {Record<string, {label: string, method: string, suffix: string, done: string}>} */
const BULK = {
  kill: { label: "Kill", method: "DELETE", suffix: "/kill", done: "kill requested" },
  restart: { label: "Restart", method: "POST", suffix: "/restart", done: "restarted" },
  delete: { label: "Delete", method: "DELETE", suffix: "", done: "deleted" },
};
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
  for (const pair of labelPairs(query.get("labels") ?? "")) out.append("filters[labels][EQUALS]", pair);
  out.set("page", query.get("page") || "1");
  out.set("size", String(PAGE_SIZE));
  out.set("sort", "state.startDate:desc");
  return out;
}

/**
 * The `key:value` pairs typed in the labels filter (separated by spaces or commas).
 * @param {string} text
 */
export function labelPairs(text) {
  return text.split(/[\s,]+/).filter((pair) => pair.includes(":"));
}

/**
 * Run `act` on each id, at most `parallel` at once; what each threw, by id.
 * @param {string[]} ids
 * @param {(id: string) => Promise<unknown>} act
 * @param {number} parallel
 * @returns {Promise<Map<string, Error>>}
 */
export async function eachOf(ids, act, parallel) {
  /** @type {Map<string, Error>} */
  const failed = new Map();
  let next = 0;
  const lane = async () => {
    while (next < ids.length) {
      const id = ids[next++];
      try {
        await act(id);
      } catch (error) {
        failed.set(id, /** @type {Error} */ (error));
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(parallel, ids.length) }, lane));
  return failed;
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
  /** @type {Set<string>} the ids checked, kept while the list refreshes */
  const selected = new Set();
  /** @type {string[]} the ids on the page as last drawn */
  let shown = [];
  const selectedCount = h("span", { class: "muted", id: "selected-count", "aria-live": "polite" });
  const confirmBox = h("div", { id: "bulk-confirm" });
  const bulkButtons = Object.entries(BULK).map(([name, action]) =>
    h("button", { type: "button", id: `bulk-${name}`, class: name === "kill" || name === "delete" ? "danger" : null, disabled: true, onclick: () => askToConfirm(name) }, action.label),
  );
  const selectAll = h("input", { type: "checkbox", id: "select-all", "aria-label": "Select every execution of this page" });
  selectAll.addEventListener("change", () => {
    for (const id of shown) {
      if (selectAll.checked) selected.add(id);
      else selected.delete(id);
    }
    for (const box of body.querySelectorAll("input[data-select]")) {
      /** @type {HTMLInputElement} */ (box).checked = selectAll.checked;
    }
    countSelected();
  });
  const countSelected = () => {
    for (const id of selected) if (!shown.includes(id)) selected.delete(id);
    fill(selectedCount, selected.size ? `${selected.size} selected` : "");
    for (const button of bulkButtons) button.disabled = selected.size === 0;
    selectAll.checked = shown.length > 0 && shown.every((id) => selected.has(id));
  };
  /** @param {string} name */
  const askToConfirm = (name) => {
    const action = BULK[name];
    const ids = [...selected];
    const cancel = () => {
      fill(confirmBox);
      /** @type {HTMLElement | null} */ (root.querySelector(`#bulk-${name}`))?.focus();
    };
    const go = async () => {
      fill(confirmBox, h("p", { class: "muted" }, `${action.label}: sending ${ids.length}…`));
      const failed = await eachOf(ids, (id) => call(action.method, `/executions/${encodeURIComponent(id)}${action.suffix}`), BULK_PARALLEL);
      if (stopped) return;
      for (const id of ids) if (!failed.has(id)) selected.delete(id);
      const done = ids.length - failed.size;
      fill(
        confirmBox,
        h("p", { class: failed.size ? "error" : "notice", id: "bulk-result", role: "status" },
          `${action.label}: ${done} ${action.done}${failed.size ? `, ${failed.size} refused` : ""}`),
        failed.size ? h("ul", { class: "problems" }, [...failed].map(([id, error]) => h("li", { class: "error" }, h("span", { class: "mono" }, id), `: ${error.message}`))) : null,
      );
      countSelected();
      clearTimeout(timer);
      load();
    };
    const yes = h("button", { type: "button", class: name === "restart" ? "primary" : "danger", id: "bulk-confirm-yes", onclick: go }, `${action.label} ${ids.length}`);
    fill(
      confirmBox,
      h("div", { class: "card row", role: "alertdialog", "aria-label": `${action.label} the selected executions` },
        h("span", {}, `${action.label} ${ids.length} execution${ids.length === 1 ? "" : "s"}?`),
        yes,
        h("button", { type: "button", onclick: cancel }, "Cancel")),
    );
    yes.focus();
  };
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
      field("labels", "Labels", text("labels", "key:value")),
      field("q", "Text", text("q", "id, namespace or flow")),
      h("button", { type: "submit", class: "primary" }, "Filter"),
    ),
    h("div", { class: "row bulk", id: "bulk", role: "toolbar", "aria-label": "Selected executions" },
      total, selectedCount, bulkButtons),
    confirmBox,
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
          h("tr", {}, h("th", { scope: "col" }, selectAll), ["Id", "Namespace", "Flow", "State", "Started", "Duration"].map((c) => h("th", { scope: "col" }, c))),
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
      const response = await call("GET", `/executions/search?${searchQuery(query)}`);
      const answer = await response.json();
      if (stopped) return;
      fill(status);
      // A total the index stopped counting at (X-Kestream-Total-Capped) shows as "10000+".
      render(answer.results, answer.total, response.headers.get("X-Kestream-Total-Capped") === "true");
    } catch (error) {
      if (!stopped) fill(status, errorBox(/** @type {Error} */ (error).message));
    }
    if (!stopped) timer = setTimeout(load, document.hidden ? REFRESH_MS * 4 : REFRESH_MS);
  };

  /** @param {any[]} results @param {number} count @param {boolean} capped */
  const render = (results, count, capped) => {
    const pages = Math.max(1, Math.ceil(count / PAGE_SIZE));
    fill(total, `${count}${capped ? "+" : ""} execution${count === 1 && !capped ? "" : "s"}`);
    // A redraw replaces the rows: the control that had the focus gets it back in its new row.
    const focused = /** @type {HTMLElement | null} */ (document.activeElement);
    const focusRow = focused && body.contains(focused) ? focused.closest("tr")?.dataset.id : undefined;
    const focusWhat = focused?.tagName === "INPUT" ? "input" : "a";
    shown = results.map((execution) => execution.id);
    fill(
      body,
      results.length
        ? results.map((execution) =>
            h(
              "tr",
              { "data-id": execution.id },
              h("td", {}, h("input", {
                type: "checkbox",
                "data-select": execution.id,
                checked: selected.has(execution.id),
                "aria-label": `Select ${execution.id}`,
                onchange: (/** @type {Event} */ event) => {
                  if (/** @type {HTMLInputElement} */ (event.target).checked) selected.add(execution.id);
                  else selected.delete(execution.id);
                  countSelected();
                },
              })),
              h("td", {}, h("a", { href: `#/executions/${encodeURIComponent(execution.id)}`, class: "mono" }, execution.id)),
              h("td", {}, execution.namespace),
              h("td", {}, execution.flowId),
              h("td", {}, stateBadge(execution.state.current)),
              h("td", {}, when(execution.state.startDate)),
              h("td", {}, duration(execution.state.startDate, execution.state.endDate)),
            ),
          )
        : h("tr", {}, h("td", { colspan: 7, class: "muted" }, "No execution matches.")),
    );
    if (focusRow) {
      const row = body.querySelector(`tr[data-id="${CSS.escape(focusRow)}"]`);
      /** @type {HTMLElement | null | undefined} */ (row?.querySelector(focusWhat))?.focus();
    }
    countSelected();
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
