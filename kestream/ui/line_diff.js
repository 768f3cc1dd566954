// @ts-check
/**
 * A line diff of two texts (two revisions of a flow): the common head and tail are cut off,
 * and the lines between are aligned by a longest common subsequence. Past
 * {@link MAX_CELLS} cells of that table (two very different large texts) the middle is shown
 * as removed then added, which is still correct, only less precise.
 */

const MAX_CELLS = 4_000_000;

/** @typedef {{op: " " | "-" | "+", text: string, old: number | null, new: number | null}} DiffLine */

/**
 * @param {string} before
 * @param {string} after
 * @returns {DiffLine[]}
 */
export function lineDiff(before, after) {
  const a = before.split("\n");
  const b = after.split("\n");
  let head = 0;
  while (head < a.length && head < b.length && a[head] === b[head]) head++;
  let tail = 0;
  while (tail < a.length - head && tail < b.length - head && a[a.length - 1 - tail] === b[b.length - 1 - tail]) tail++;
  const x = a.slice(head, a.length - tail);
  const y = b.slice(head, b.length - tail);
  /** @type {DiffLine[]} */
  const out = [];
  for (let i = 0; i < head; i++) out.push({ op: " ", text: a[i], old: i + 1, new: i + 1 });
  let i = 0;
  let j = 0;
  if (x.length * y.length <= MAX_CELLS) {
    // lcs[i][j]: the longest common subsequence of x[i:] and y[j:], in one flat array.
    const width = y.length + 1;
    const lcs = new Uint32Array((x.length + 1) * width);
    for (let p = x.length - 1; p >= 0; p--) {
      for (let q = y.length - 1; q >= 0; q--) {
        lcs[p * width + q] = x[p] === y[q] ? lcs[(p + 1) * width + q + 1] + 1 : Math.max(lcs[(p + 1) * width + q], lcs[p * width + q + 1]);
      }
    }
    while (i < x.length && j < y.length) {
      if (x[i] === y[j]) {
        out.push({ op: " ", text: x[i], old: head + i + 1, new: head + j + 1 });
        i++;
        j++;
      } else if (lcs[(i + 1) * width + j] >= lcs[i * width + j + 1]) {
        out.push({ op: "-", text: x[i], old: head + i + 1, new: null });
        i++;
      } else {
        out.push({ op: "+", text: y[j], old: null, new: head + j + 1 });
        j++;
      }
    }
  }
  for (; i < x.length; i++) out.push({ op: "-", text: x[i], old: head + i + 1, new: null });
  for (; j < y.length; j++) out.push({ op: "+", text: y[j], old: null, new: head + j + 1 });
  for (let k = tail; k > 0; k--) {
    out.push({ op: " ", text: a[a.length - k], old: a.length - k + 1, new: b.length - k + 1 });
  }
  return out;
}
