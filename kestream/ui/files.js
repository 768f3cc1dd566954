// @ts-check
/**
 * An execution's stored files, as links that download them through the file route
 * (`/executions/{id}/file?path=kestra:///...`). A file is found in a value (a task's outputs,
 * the execution's inputs or outputs) as a `kestra://` URI, or as the `{"@ref": "kestra://...",
 * "size": n}` marker that stands for an output too large to travel inline. One function,
 * {@link fileLinks}, makes them, so the marker's shape is known in one place.
 */
import { API_BASE, download } from "./api.js";
import { errorBox, h, messageOf } from "./dom.js";

const SCHEME = "kestra://";

/**
 * Every stored file that `value` names, with the path of the entry that names it
 * (`outputs.uri`, `rows[2]`), each once.
 * @param {unknown} value
 * @returns {{uri: string, where: string, size: number | null}[]}
 */
export function storedFiles(value) {
  /** @type {Map<string, {uri: string, where: string, size: number | null}>} */
  const found = new Map();
  /** @param {unknown} node @param {string} where */
  const walk = (node, where) => {
    if (typeof node === "string") {
      if (node.startsWith(SCHEME) && !found.has(node)) found.set(node, { uri: node, where, size: null });
    } else if (Array.isArray(node)) {
      node.forEach((item, i) => walk(item, `${where}[${i}]`));
    } else if (node && typeof node === "object") {
      const ref = /** @type {Record<string, unknown>} */ (node)["@ref"];
      if (typeof ref === "string" && ref.startsWith(SCHEME)) {
        const size = /** @type {Record<string, unknown>} */ (node).size;
        if (!found.has(ref)) found.set(ref, { uri: ref, where, size: typeof size === "number" ? size : null });
        return;
      }
      for (const [key, item] of Object.entries(node)) walk(item, where ? `${where}.${key}` : key);
    }
  };
  walk(value, "");
  return [...found.values()];
}

/** @param {number} bytes */
function sizeText(bytes) {
  if (bytes < 1024) return `${bytes} B`;
  if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(1)} KiB`;
  return `${(bytes / 1024 / 1024).toFixed(1)} MiB`;
}

/**
 * Download links for the files `value` names, or null when it names none. Each link's `href`
 * is the file route itself; a click fetches it with the credentials and saves it.
 * @param {string} executionId
 * @param {unknown} value
 * @param {HTMLElement} status where a failed download says why
 */
export function fileLinks(executionId, value, status) {
  const files = storedFiles(value);
  if (!files.length) return null;
  return h(
    "ul",
    { class: "files", "aria-label": "Files" },
    files.map(({ uri, where, size }) => {
      const name = uri.slice(uri.lastIndexOf("/") + 1) || uri;
      const route = `/executions/${encodeURIComponent(executionId)}/file?path=${encodeURIComponent(uri)}`;
      /** @param {MouseEvent} event */
      const save = (event) => {
        event.preventDefault();
        download(route, name).catch((error) => {
          status.replaceChildren(errorBox(`${name}: ${messageOf(error)}`));
        });
      };
      return h(
        "li",
        {},
        h("a", { href: API_BASE + route, class: "file mono", "data-uri": uri, onclick: save }, name),
        h("span", { class: "muted" }, ` ${where}${size === null ? "" : `, ${sizeText(size)}`}`),
      );
    }),
  );
}
