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
 *
 * A 401 ends the session (the login screen shows): the executions not sent yet are not sent,
 * and they and the one refused with the 401 are counted apart, to send again. A summary the
 * page could not show (it was left, by that login screen or by a link, before the last answer)
 * is kept in the tab's `sessionStorage` and shown when the executions page opens next, with
 * the executions it did not act on selected again: to the same user only (logging out forgets
 * it; another user's login does not see it), and only if it reads as a summary.
 */
import { ApiError, authorization, call, credentialOwner } from "./api.js";
import { duration, fill, h, listTable, stateBadge, when } from "./dom.js";
import { RANGES, drawSearch, filterField, filterForm, listParts, searchParams, selectFilter, textFilter } from "./list_page.js";

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
/** The page's filters, and the search route's parameter (Kestra's `filters[...]`) for each. */
const FILTERS = {
  namespace: "filters[namespace][PREFIX]",
  flow: "filters[flowId][EQUALS]",
  state: "filters[state][IN]",
  range: "filters[timeRange][EQUALS]",
  q: "filters[q][EQUALS]",
};
/** Where a bulk action's summary the page could not show waits for the page's next visit. */
const KEPT_SUMMARY = "kestream.bulk-summary";

/**
 * The search route's query for the page's filters.
 * @param {URLSearchParams} query
 */
export function searchQuery(query) {
  const out = searchParams(query, PAGE_SIZE, FILTERS);
  for (const pair of labelPairs(query.get("labels") ?? "")) out.append("filters[labels][EQUALS]", pair);
  out.set("sort", "state.startDate:desc");
  return out;
}

/**
 * What a capped total of a text of one or two characters leaves unread: no trigram index
 * answers it, so the API checks the newest 20 000 executions only (beside no label filter,
 * which reads its own rows); `undefined` for any other search.
 * @param {URLSearchParams} query
 */
export function shortTextHint(query) {
  const length = [...(query.get("q") ?? "").trim()].length;
  if (length === 0 || length > 2 || labelPairs(query.get("labels") ?? "").length) return undefined;
  return "newest 20 000 executions searched: type 3 characters or more to search them all";
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

/**
 * What a bulk action did: the action, the executions it acted on, those the API refused (with
 * its reason), and those not sent or refused for want of credentials (a 401).
 * @typedef {{name: string, done: string[], refused: [string, string][], unsent: string[]}} Summary
 */

/**
 * A summary kept for the executions page's next visit, with who asked for the action
 * ({@link credentialOwner}).
 * @typedef {Summary & {owner: string}} KeptSummary
 */

/** Forget the kept summary (logging out: the next user of the tab must not act on it). */
export function forgetKeptSummary() {
  sessionStorage.removeItem(KEPT_SUMMARY);
}

/**
 * The kept summary, taken out of `sessionStorage`, if `owner` asked for its action and it
 * reads as one (the tab's storage is the page's to read, not to trust: anything else is
 * dropped rather than stopping the page).
 * @param {string} owner
 * @returns {Summary | null}
 */
export function takeKeptSummary(owner) {
  const text = sessionStorage.getItem(KEPT_SUMMARY);
  if (text === null) return null;
  sessionStorage.removeItem(KEPT_SUMMARY);
  /** @type {unknown} */
  let value;
  try {
    value = JSON.parse(text);
  } catch {
    return null;
  }
  if (typeof value !== "object" || value === null) return null;
  const kept = /** @type {Record<string, unknown>} */ (value);
  const ids = (/** @type {unknown} */ list) => Array.isArray(list) && list.every((id) => typeof id === "string");
  const refused = kept.refused;
  const wellFormed =
    kept.owner === owner &&
    typeof kept.name === "string" &&
    Object.hasOwn(BULK, kept.name) &&
    ids(kept.done) &&
    ids(kept.unsent) &&
    Array.isArray(refused) &&
    refused.every((pair) => Array.isArray(pair) && pair.length === 2 && ids(pair));
  if (!wellFormed) return null;
  const summary = /** @type {KeptSummary} */ (value);
  return { name: summary.name, done: summary.done, refused: summary.refused, unsent: summary.unsent };
}

/**
 * A bulk action's summary from what each execution's request threw.
 * @param {string} name
 * @param {string[]} ids
 * @param {Map<string, Error>} failed
 * @returns {Summary}
 */
export function summarise(name, ids, failed) {
  /** @type {Summary} */
  const summary = { name, done: [], refused: [], unsent: [] };
  for (const id of ids) {
    const error = failed.get(id);
    if (!error) summary.done.push(id);
    else if (error instanceof NotSent || (error instanceof ApiError && error.status === 401)) summary.unsent.push(id);
    else summary.refused.push([id, error.message]);
  }
  return summary;
}

/** An execution of a bulk action left unsent: the session ended (a 401) before its turn. */
class NotSent extends Error {}

/** @type {import("./app.js").Page} */
export function executionsPage(root, _params, query) {
  const parts = listParts();
  const body = h("tbody");
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
    const owner = credentialOwner(authorization()); // a 401 under the action forgets the header
    const cancel = () => {
      fill(confirmBox);
      /** @type {HTMLElement | null} */ (root.querySelector(`#bulk-${name}`))?.focus();
    };
    const go = async () => {
      fill(confirmBox, h("p", { class: "muted" }, `${action.label}: sending ${ids.length}…`));
      let ended = false; // a 401: the session is over, the rest is not sent
      const failed = await eachOf(ids, async (id) => {
        if (ended) throw new NotSent("not sent");
        try {
          await call(action.method, `/executions/${encodeURIComponent(id)}${action.suffix}`);
        } catch (error) {
          if (error instanceof ApiError && error.status === 401) ended = true;
          throw error;
        }
      }, BULK_PARALLEL);
      const summary = summarise(name, ids, failed);
      if (stopped) {
        /** @type {KeptSummary} */
        const kept = { ...summary, owner };
        sessionStorage.setItem(KEPT_SUMMARY, JSON.stringify(kept));
        return;
      }
      for (const id of summary.done) selected.delete(id);
      showSummary(summary);
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
  /** @param {Summary} summary */
  const showSummary = ({ name, done, refused, unsent }) => {
    const action = BULK[name];
    if (!action) return;
    const counts = [
      `${done.length} ${action.done}`,
      refused.length ? `${refused.length} refused` : "",
      unsent.length ? `${unsent.length} not sent (the session ended: send them again)` : "",
    ];
    fill(
      confirmBox,
      h("p", { class: refused.length || unsent.length ? "error" : "notice", id: "bulk-result", role: "status" },
        `${action.label}: ${counts.filter(Boolean).join(", ")}`),
      refused.length ? h("ul", { class: "problems" }, refused.map(([id, message]) => h("li", { class: "error" }, h("span", { class: "mono" }, id), `: ${message}`))) : null,
    );
  };
  fill(
    root,
    h("h1", {}, "Executions"),
    filterForm(
      "#/executions",
      "Filter",
      filterField("namespace", "Namespace", textFilter(query, "namespace", "company.team")),
      filterField("flow", "Flow", textFilter(query, "flow", "flow id")),
      filterField("state", "State", selectFilter(query, "state", [["", "Any state"], ...STATES.map((s) => [s, s])])),
      filterField("range", "Started", selectFilter(query, "range", RANGES)),
      filterField("labels", "Labels", textFilter(query, "labels", "key:value")),
      filterField("q", "Text", textFilter(query, "q", "id, namespace or flow")),
    ),
    h("div", { class: "row bulk", id: "bulk", role: "toolbar", "aria-label": "Selected executions" },
      parts.total, selectedCount, bulkButtons),
    confirmBox,
    parts.status,
    h("div", { class: "table-wrap" }, listTable("executions", [selectAll, "Id", "Namespace", "Flow", "State", "Started", "Duration"], body)),
    parts.pager,
  );

  let stopped = false;
  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  const list = { route: "#/executions", query, size: PAGE_SIZE, noun: "execution", stopped: () => stopped, cappedHint: shortTextHint(query) };
  const load = async () => {
    await drawSearch(`/executions/search?${searchQuery(query)}`, parts, list, render);
    if (!stopped) timer = setTimeout(load, document.hidden ? REFRESH_MS * 4 : REFRESH_MS);
  };

  /** @param {any[]} results */
  const render = (results) => {
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
  };

  // A summary from before a login (or another page): shown, what it did not act on selected.
  const summary = takeKeptSummary(credentialOwner(authorization()));
  if (summary) {
    for (const id of [...summary.refused.map(([id]) => id), ...summary.unsent]) selected.add(id);
    showSummary(summary);
  }
  load();
  return () => {
    stopped = true;
    clearTimeout(timer);
  };
}
