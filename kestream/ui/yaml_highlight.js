// @ts-check
/**
 * YAML syntax highlighting for the flow editor: a `<pre>` under a transparent `<textarea>`
 * (same font, same padding, scrolled together) shows the text coloured, while the textarea
 * stays the control that is typed in, so editing, selection, undo and accessibility are the
 * browser's own. Each line is split by a small tokenizer (keys, comments, strings, numbers and
 * booleans, list dashes, `{{ }}` expressions): enough for flow files, not a YAML parser.
 */
import { h } from "./dom.js";

/** @typedef {{kind: string, text: string}} Token */

const SCALAR = /^(?:true|false|null|~|-?\d+(?:\.\d+)?(?:[eE][-+]?\d+)?)$/;

/**
 * The tokens of one line (their texts joined give the line back).
 * @param {string} line
 * @returns {Token[]}
 */
export function tokens(line) {
  /** @type {Token[]} */
  const out = [];
  const indent = /^(\s*)((?:-\s+)*)/.exec(line) ?? ["", "", ""];
  if (indent[1]) out.push({ kind: "", text: indent[1] });
  if (indent[2]) out.push({ kind: "dash", text: indent[2] });
  let rest = line.slice(indent[0].length);
  const key = /^([A-Za-z_@$][\w.@$-]*|"[^"]*"|'[^']*')(\s*:)(?=\s|$)/.exec(rest);
  if (key) {
    out.push({ kind: "key", text: key[1] }, { kind: "", text: key[2] });
    rest = rest.slice(key[0].length);
  }
  return out.concat(value(rest));
}

/**
 * A value's tokens: a comment (`#` after a space), quoted strings, expressions, scalars.
 * @param {string} text
 * @returns {Token[]}
 */
function value(text) {
  /** @type {Token[]} */
  const out = [];
  let plain = "";
  const flush = () => {
    if (!plain) return;
    const trimmed = plain.trim();
    out.push({ kind: trimmed && SCALAR.test(trimmed) ? "scalar" : "", text: plain });
    plain = "";
  };
  for (let i = 0; i < text.length; ) {
    const c = text[i];
    if (c === "#" && (i === 0 || /\s/.test(text[i - 1]))) {
      flush();
      out.push({ kind: "comment", text: text.slice(i) });
      return out;
    }
    if (c === '"' || c === "'") {
      let j = i + 1;
      while (j < text.length && text[j] !== c) j += c === '"' && text[j] === "\\" ? 2 : 1;
      flush();
      // A quoted expression (`"{{ inputs.x }}"`) is shown as an expression inside the string.
      for (const part of text.slice(i, j + 1).split(/({{.*?}})/)) {
        if (part) out.push({ kind: part.startsWith("{{") ? "expr" : "string", text: part });
      }
      i = j + 1;
      continue;
    }
    if (text.startsWith("{{", i)) {
      const end = text.indexOf("}}", i + 2);
      const j = end < 0 ? text.length : end + 2;
      flush();
      out.push({ kind: "expr", text: text.slice(i, j) });
      i = j;
      continue;
    }
    plain += c;
    i++;
  }
  flush();
  return out;
}

/**
 * The highlighted text of `source` as the overlay's children (a trailing newline keeps the
 * last empty line's height, as the textarea has it).
 * @param {string} source
 */
export function highlighted(source) {
  return source.split("\n").flatMap((line, i) => [
    i ? "\n" : "",
    ...tokens(line).map((token) => (token.kind ? h("span", { class: `y-${token.kind}` }, token.text) : token.text)),
  ]).concat("\n");
}
