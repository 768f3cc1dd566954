// @ts-check
/**
 * The shell: theme, login, and a hash router that mounts one page at a time in `<main>`.
 *
 * Routes are in the URL's fragment (`#/executions?state=FAILED`), so a page is a link that
 * can be bookmarked and the server serves one HTML file. A page is a function that fills its
 * container and returns a cleanup, called when another page replaces it: that is where live
 * streams are aborted and timers stopped, so a left page never keeps a connection open.
 */
import { accepts, authorization, basic, setAuthorization, whenUnauthorized } from "./api.js";
import { clusterPage } from "./cluster_page.js";
import { errorBox, failure, fill, h, messageOf } from "./dom.js";
import { executionPage } from "./execution_page.js";
import { executionsPage, forgetKeptSummary } from "./executions_page.js";
import { flowPage } from "./flow_page.js";
import { flowsPage } from "./flows_page.js";
import { logsPage } from "./logs_page.js";

/** @typedef {(root: HTMLElement, params: string[], query: URLSearchParams) => (() => void)} Page */

/** @type {[RegExp, string, Page][]} pattern, navigation entry, page */
const ROUTES = [
  [/^\/executions$/, "executions", executionsPage],
  [/^\/executions\/([^/]+)$/, "executions", executionPage],
  [/^\/flows$/, "flows", flowsPage],
  [/^\/flows\/new$/, "flows", (root, _p, q) => flowPage(root, [], q)],
  [/^\/flows\/([^/]+)\/([^/]+)$/, "flows", flowPage],
  [/^\/logs$/, "logs", logsPage],
  [/^\/cluster$/, "cluster", clusterPage],
];

const THEME_KEY = "kestream.theme";
const main = /** @type {HTMLElement} */ (document.getElementById("main"));
const logout = /** @type {HTMLButtonElement} */ (document.getElementById("logout"));
const themeButton = /** @type {HTMLButtonElement} */ (document.getElementById("theme"));
/** @type {() => void} */
let cleanup = () => {};
let loggedIn = false;
/** The server has no credentials set: nothing to remember, nothing to log out of. */
let openServer = false;

function applyTheme() {
  const stored = localStorage.getItem(THEME_KEY);
  const dark = stored ? stored === "dark" : matchMedia("(prefers-color-scheme: dark)").matches;
  document.documentElement.dataset.theme = dark ? "dark" : "light";
  themeButton.textContent = dark ? "Light theme" : "Dark theme";
}

themeButton.addEventListener("click", () => {
  const next = document.documentElement.dataset.theme === "dark" ? "light" : "dark";
  localStorage.setItem(THEME_KEY, next);
  applyTheme();
});

logout.addEventListener("click", () => {
  setAuthorization(null);
  forgetKeptSummary(); // not on a 401 (below): that summary is shown after logging in again
  loggedIn = false;
  route();
});

whenUnauthorized(() => {
  setAuthorization(null);
  if (!loggedIn) return; // requests in flight answered 401 too: the login screen shows already
  loggedIn = false;
  route();
});

/** The login screen: user name and password (HTTP Basic), or a bearer token. */
function loginPage() {
  const status = h("div", { "aria-live": "polite" });
  const username = h("input", { id: "username", name: "username", autocomplete: "username" });
  const password = h("input", {
    id: "password",
    name: "password",
    type: "password",
    autocomplete: "current-password",
  });
  const token = h("input", { id: "token", name: "token", type: "password", autocomplete: "off" });
  /** @param {SubmitEvent} event */
  async function submit(event) {
    event.preventDefault();
    // Nothing typed: a server without credentials set (it answers loopback only).
    const header = token.value
      ? `Bearer ${token.value}`
      : username.value || password.value
        ? basic(username.value, password.value)
        : null;
    try {
      if (await accepts(header)) {
        setAuthorization(header);
        openServer = header === null;
        loggedIn = true;
        route();
      } else {
        fill(status, errorBox("These credentials are not accepted."));
      }
    } catch (error) {
      fill(status, failure(error));
    }
  }
  fill(
    main,
    h(
      "form",
      { class: "login card", onsubmit: submit, "aria-labelledby": "login-title" },
      h("h1", { id: "login-title" }, "Log in"),
      h("p", { class: "muted" }, "The API's credentials: a user name and password, or a token (nothing, on a server without credentials)."),
      h("label", { for: "username" }, "User name"),
      username,
      h("label", { for: "password" }, "Password"),
      password,
      h("label", { for: "token" }, "Or a bearer token"),
      token,
      h("button", { type: "submit", class: "primary" }, "Log in"),
      status,
    ),
  );
  username.focus();
}

async function route() {
  cleanup();
  cleanup = () => {};
  if (!loggedIn && authorization() !== null) {
    try {
      loggedIn = await accepts(authorization());
    } catch (error) {
      fill(main, errorBox(`The API cannot be reached: ${messageOf(error)}`));
      return;
    }
  }
  logout.hidden = !loggedIn || openServer;
  if (!loggedIn) {
    markNav("");
    loginPage();
    return;
  }
  const hash = location.hash.replace(/^#/, "") || "/executions";
  const [path, search = ""] = hash.split("?", 2);
  for (const [pattern, nav, page] of ROUTES) {
    const match = pattern.exec(path);
    if (!match) continue;
    markNav(nav);
    main.replaceChildren();
    cleanup = page(main, match.slice(1).map(decodeURIComponent), new URLSearchParams(search));
    return;
  }
  markNav("");
  fill(main, h("h1", {}, "Not found"), h("p", {}, h("a", { href: "#/executions" }, "Executions")));
}

/** @param {string} current */
function markNav(current) {
  for (const link of document.querySelectorAll("[data-nav]")) {
    const here = /** @type {HTMLElement} */ (link).dataset.nav === current;
    if (here) link.setAttribute("aria-current", "page");
    else link.removeAttribute("aria-current");
  }
}

applyTheme();
addEventListener("hashchange", () => {
  route();
  main.focus({ preventScroll: true });
});
route();
