// @ts-check
/**
 * The API as the page calls it: the public routes under `/api/v1/{tenant}`, with the
 * credentials typed on the login screen in every request's `Authorization` header (the API's
 * own scheme: HTTP Basic or a bearer token). They are kept in `sessionStorage`, so they last as
 * long as the tab and are never written to disk.
 *
 * Live updates read the API's server-sent event routes with `fetch` and a stream reader rather
 * than `EventSource`, which cannot send an `Authorization` header.
 *
 * Requests are sent without the browser's own credentials (`credentials: "omit"`): the header is
 * the page's, and a same-origin request that may carry them gets the browser's own login prompt
 * for the API's `WWW-Authenticate: Basic` answer to a 401 (the request waits on it, unseen in a
 * headless browser), where the page's login screen should show.
 */

const AUTH_KEY = "kestream.authorization";
const meta = /** @type {HTMLMetaElement | null} */ (
  document.querySelector('meta[name="kestream-tenant"]')
);
const TENANT = meta?.content || "main";
export const API_BASE = `/api/v1/${encodeURIComponent(TENANT)}`;

/**
 * A flow's path: its API route under the tenant, and (after `#`) its page's route.
 * @param {string} namespace
 * @param {string} id
 */
export function flowPath(namespace, id) {
  return `/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(id)}`;
}

/** An answer other than 2xx, with the message of Kestra's JSON error body. */
export class ApiError extends Error {
  /**
   * @param {number} status
   * @param {string} message
   * @param {{message?: string, path?: string}[]} [problems]
   */
  constructor(status, message, problems = []) {
    super(message);
    this.status = status;
    this.problems = problems;
  }
}

/** @type {() => void} */
let onUnauthorized = () => {};

/** @param {() => void} handler called when the API answers 401 (the login screen shows) */
export function whenUnauthorized(handler) {
  onUnauthorized = handler;
}

/** @returns {string | null} */
export function authorization() {
  return sessionStorage.getItem(AUTH_KEY);
}

/** @param {string | null} value an `Authorization` header value, or null to forget it */
export function setAuthorization(value) {
  if (value === null) sessionStorage.removeItem(AUTH_KEY);
  else sessionStorage.setItem(AUTH_KEY, value);
}

/**
 * Who `header` logs in as, without its secret: the user name of `Basic` credentials, a digest
 * of any other (a bearer token: enough to tell two apart, too short to stand for one), `""`
 * without credentials (an open server). What the tab keeps across a login, such as a bulk
 * action's summary, is shown again only to the same one.
 * @param {string | null} header
 */
export function credentialOwner(header) {
  if (!header) return "";
  const basicValue = /^Basic (.*)$/.exec(header)?.[1];
  if (basicValue !== undefined) {
    try {
      const text = new TextDecoder().decode(Uint8Array.from(atob(basicValue), (c) => c.charCodeAt(0)));
      const colon = text.indexOf(":");
      if (colon >= 0) return `user:${text.slice(0, colon)}`;
    } catch {
      // not base64: told apart by its digest, as a token is
    }
  }
  return `digest:${fnv1a(header)}`;
}

/**
 * FNV-1a, 32 bits: a short digest computed without `crypto.subtle` (which a page served over
 * plain HTTP to another host does not have).
 * @param {string} text
 */
function fnv1a(text) {
  let hash = 0x811c9dc5;
  for (let i = 0; i < text.length; i++) {
    hash = Math.imul(hash ^ text.charCodeAt(i), 0x01000193) >>> 0;
  }
  return hash.toString(16).padStart(8, "0");
}

/**
 * `Basic` credentials as the header carries them (UTF-8, then base64).
 * @param {string} username
 * @param {string} password
 */
export function basic(username, password) {
  const bytes = new TextEncoder().encode(`${username}:${password}`);
  return `Basic ${btoa(String.fromCharCode(...bytes))}`;
}

/**
 * Whether `header` (or no header: an open server) is accepted, asked of a cheap route.
 * @param {string | null} header
 */
export async function accepts(header) {
  const headers = header ? { Authorization: header } : undefined;
  const response = await fetch(`${API_BASE}/flows/search?size=1`, { headers, credentials: "omit" });
  if (response.status === 401) return false;
  if (!response.ok) throw await asError(response);
  return true;
}

/**
 * @param {string} path under the tenant (`/executions/search?...`)
 * @param {RequestInit} [init]
 */
async function send(path, init = {}) {
  const headers = new Headers(init.headers);
  const header = authorization();
  if (header) headers.set("Authorization", header);
  const response = await fetch(API_BASE + path, { ...init, headers, credentials: "omit" });
  if (response.status === 401) {
    onUnauthorized();
    throw await asError(response);
  }
  if (!response.ok) throw await asError(response);
  return response;
}

/** @param {Response} response */
async function asError(response) {
  let message = `${response.status} ${response.statusText}`;
  /** @type {{message?: string, path?: string}[]} */
  let problems = [];
  try {
    const body = await response.json();
    if (body && typeof body.message === "string") message = body.message;
    problems = body?._embedded?.errors ?? [];
  } catch {
    // not JSON: the status line says it
  }
  return new ApiError(response.status, message, problems);
}

/**
 * GET (or another method) and read the JSON answer.
 * @param {string} path
 * @param {RequestInit} [init]
 * @returns {Promise<any>}
 */
export async function getJson(path, init) {
  const response = await send(path, init);
  return response.status === 204 ? null : response.json();
}

/**
 * A request whose answer is not read (a kill's 202, a delete's 204).
 * @param {string} method
 * @param {string} path
 * @param {BodyInit} [body]
 * @param {string} [contentType]
 */
export async function call(method, path, body, contentType) {
  const headers = contentType ? { "Content-Type": contentType } : undefined;
  return send(path, { method, body, headers });
}

/**
 * Save what a route answers as a file the browser downloads (a link to the route cannot be
 * followed as is: the browser would not send the credentials). The file is named as the
 * answer's `Content-Disposition` names it, else `fallback`.
 * @param {string} path
 * @param {string} fallback
 */
export async function download(path, fallback) {
  const response = await send(path);
  const named = /filename="([^"]+)"/.exec(response.headers.get("Content-Disposition") ?? "");
  const url = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  link.href = url;
  link.download = named ? named[1] : fallback;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(url), 60_000);
}

/**
 * Read a server-sent event stream frame by frame until it ends or `signal` aborts.
 * Resolves when the stream ends; an abort resolves quietly.
 * @param {string} path
 * @param {(id: string, data: any) => void} onFrame
 * @param {AbortSignal} signal
 */
export async function follow(path, onFrame, signal) {
  let response;
  try {
    response = await send(path, { signal, headers: { Accept: "text/event-stream" } });
  } catch (error) {
    if (signal.aborted) return;
    throw error;
  }
  const body = response.body;
  if (!body) return;
  const reader = body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  try {
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer += value;
      let end;
      while ((end = buffer.indexOf("\n\n")) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        dispatch(frame, onFrame);
      }
    }
  } catch (error) {
    if (signal.aborted) return;
    throw error;
  }
}

/**
 * @param {string} frame
 * @param {(id: string, data: any) => void} onFrame
 */
function dispatch(frame, onFrame) {
  let id = "";
  const data = [];
  for (const line of frame.split("\n")) {
    if (line.startsWith("id:")) id = line.slice(3).trim();
    else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
  }
  if (data.length) onFrame(id, JSON.parse(data.join("\n")));
}
