// @ts-check
/**
 * A scrolled window over a long list in which only the rows in view, and a margin, exist: the
 * execution page's task-run tree, Gantt timeline and log view, each of 10 000 rows or more
 * (a ForEach of 10 000). A DOM row for each, rebuilt on every frame of the live feed, froze
 * the page; here a frame costs the rows in the window that changed.
 *
 * Rows are placed absolutely inside a list as tall as all of them (so the scroll bar is the
 * whole list's). A row's height is an estimate (the smallest measured so far) until it is
 * drawn and measured; measured heights are kept by the row's key, so a row that wraps or opens
 * moves the ones below it. The tops are a running sum recomputed from the first row that moved
 * only: rows appended one at a time (a log line streamed in) cost one addition each.
 *
 * Its owner says what the rows are: a key per row (a task-run id, a line's number), what a row
 * is drawn from (`signature`: the row is drawn again only when it changes), how to draw it, and
 * optionally a row to keep drawn out of view (the one with the focus, so the focus stays).
 */

/** Rows drawn beyond each edge of the window, so a short scroll shows rows already there. */
const MARGIN = 20;
/** How close to the end (px) the window must be to keep following the end as rows come. */
const END_SLACK = 4;

/**
 * @typedef {object} Rows
 * @property {(index: number) => string} key a row's identity (its measured height is kept by it)
 * @property {(index: number) => string} signature what the row is drawn from
 * @property {(index: number, previous: HTMLElement | null) => HTMLElement} render the row's
 *   element (`previous`, the one drawn before, may be updated in place and returned)
 * @property {(element: HTMLElement, index: number) => void} [place] called for every row drawn,
 *   after it is placed (position in the set, active state)
 * @property {() => number} [keep] the index of a row kept drawn even out of the window, or -1
 * @property {() => void} [afterDraw] called after each drawing
 */

export class VirtualList {
  /**
   * @param {HTMLElement} view the element that scrolls (positioned: the list's offset is read)
   * @param {HTMLElement} list the element the rows are placed in
   * @param {Rows} rows
   * @param {{rowHeight?: number, followEnd?: boolean}} [options] the estimated height of a row
   *   until one is measured; whether the window stays at the end while it is there as rows come
   */
  constructor(view, list, rows, { rowHeight = 24, followEnd = false } = {}) {
    this.view = view;
    this.list = list;
    this.rows = rows;
    this.rowHeight = rowHeight;
    this.measuredLine = false;
    this.followEnd = followEnd;
    this.atEnd = true;
    /** Where this list last scrolled its view itself: the scroll event of that is not a user's. */
    this.ownTop = NaN;
    this.count = 0;
    /** @type {number[]} each row's top (px), and the total height at `count` */
    this.tops = [0];
    /** @type {Map<string, number>} measured heights that differ from `rowHeight`, by key */
    this.heights = new Map();
    /** @type {Map<string, {element: HTMLElement, signature: string, index: number}>} */
    this.drawn = new Map();
    this.pending = 0;
    view.addEventListener("scroll", () => {
      // Rows may have come between a scroll of its own and its event: only a user's says
      // whether the window is still at the end.
      if (view.scrollTop !== this.ownTop) this.atEnd = this.endInView();
      this.schedule();
    });
    // A narrower view wraps rows differently: they are measured again. Once the page that
    // holds the list is left, the observer lets go of it.
    const resized = new ResizeObserver(() => {
      if (view.isConnected) this.schedule();
      else resized.disconnect();
    });
    resized.observe(view);
  }

  /**
   * The list now has `count` rows, the same as before up to `from` (rows appended: the old
   * count; rows reordered: 0). Drawn at the next animation frame.
   * @param {number} count
   * @param {number} [from]
   */
  resize(count, from = 0) {
    this.count = count;
    this.layout(Math.min(from, count));
    this.schedule();
  }

  /**
   * The tops from row `from` on.
   * @param {number} from
   */
  layout(from) {
    const tops = this.tops;
    tops.length = this.count + 1;
    let top = tops[from] ?? 0;
    for (let i = from; i < this.count; i++) {
      tops[i] = top;
      top += this.heights.get(this.rows.key(i)) ?? this.rowHeight;
    }
    tops[this.count] = top;
    this.list.style.height = `${top}px`; // CSSOM: the page's CSP refuses style attributes
  }

  endInView() {
    return this.view.scrollTop + this.view.clientHeight >= this.view.scrollHeight - END_SLACK;
  }

  /**
   * Scroll the view to `top` (px).
   * @param {number} top
   */
  scrollTo(top) {
    this.view.scrollTop = top;
    this.ownTop = this.view.scrollTop;
  }

  schedule() {
    if (this.pending) return;
    this.pending = requestAnimationFrame(() => {
      this.pending = 0;
      this.draw();
    });
  }

  /**
   * The index of the row at `y` px from the list's top (a binary search over the tops).
   * @param {number} y
   */
  indexAt(y) {
    let low = 0;
    let high = this.count - 1;
    while (low < high) {
      const middle = (low + high + 1) >> 1;
      if (this.tops[middle] <= y) low = middle;
      else high = middle - 1;
    }
    return Math.max(0, low);
  }

  /** Draw the rows in the window and its margins (and the one kept), drop the others, measure. */
  draw() {
    const view = this.view;
    if (!view.isConnected) return; // its page was left
    if (this.followEnd && this.atEnd) this.scrollTo(view.scrollHeight);
    const offset = this.list.offsetTop;
    const first = Math.max(0, this.indexAt(view.scrollTop - offset) - MARGIN);
    const last = Math.min(this.count, this.indexAt(view.scrollTop - offset + view.clientHeight) + 1 + MARGIN);
    const kept = this.rows.keep?.() ?? -1;
    /** @type {Set<string>} */
    const wanted = new Set();
    /** @param {number} i */
    const drawRow = (i) => {
      const key = this.rows.key(i);
      wanted.add(key);
      const signature = this.rows.signature(i);
      let entry = this.drawn.get(key);
      if (!entry || entry.signature !== signature) {
        const element = this.rows.render(i, entry?.element ?? null);
        if (!entry) this.list.append(element);
        else if (entry.element !== element) entry.element.replaceWith(element);
        entry = { element, signature, index: i };
        this.drawn.set(key, entry);
      }
      entry.index = i;
      entry.element.style.top = `${this.tops[i]}px`;
      this.rows.place?.(entry.element, i);
    };
    for (let i = first; i < last; i++) drawRow(i);
    if (kept >= 0 && kept < this.count && (kept < first || kept >= last)) drawRow(kept);
    for (const [key, entry] of this.drawn) {
      if (!wanted.has(key)) {
        entry.element.remove();
        this.drawn.delete(key);
      }
    }
    this.rows.afterDraw?.();
    this.measure();
  }

  /** Keep the heights of drawn rows that differ from the estimate; lay out again if any moved. */
  measure() {
    let from = Infinity;
    for (const [key, { element, index }] of this.drawn) {
      const height = element.offsetHeight;
      if (!height) continue; // not rendered (a hidden view)
      if (!this.measuredLine || height < this.rowHeight) {
        // The smallest row measured is the estimate of the rows not drawn yet.
        if (height !== this.rowHeight) from = 0;
        this.rowHeight = height;
        this.measuredLine = true;
      }
      const known = this.heights.get(key) ?? this.rowHeight;
      if (Math.abs(known - height) > 1) {
        if (height === this.rowHeight) this.heights.delete(key);
        else this.heights.set(key, height);
        from = Math.min(from, index);
      }
    }
    if (from !== Infinity) {
      this.layout(from);
      this.schedule();
    }
  }

  /**
   * Scroll the least that shows row `index` whole, then draw (so its element exists).
   * @param {number} index
   */
  reveal(index) {
    const view = this.view;
    // A row not drawn yet has an estimated height: drawing the rows around it measures them
    // and may move it, so it is brought into view again (a few rounds at most).
    for (let round = 0; round < 3; round++) {
      const top = this.tops[index] + this.list.offsetTop;
      const bottom = this.tops[index + 1] + this.list.offsetTop;
      if (top < view.scrollTop) this.scrollTo(top);
      else if (bottom > view.scrollTop + view.clientHeight) this.scrollTo(bottom - view.clientHeight);
      this.atEnd = this.endInView();
      this.draw();
      if (this.tops[index] + this.list.offsetTop === top) break;
    }
  }

  /**
   * The element drawn for the row of `key`, if drawn.
   * @param {string} key
   */
  element(key) {
    return this.drawn.get(key)?.element ?? null;
  }

  /** No rows any more, and nothing known of those before (their keys may be used again). */
  reset() {
    for (const { element } of this.drawn.values()) element.remove();
    this.drawn.clear();
    this.heights.clear();
    this.resize(0);
  }

  /** Every row is drawn again at the next frame (what they are drawn from changed as a whole). */
  redraw() {
    for (const entry of this.drawn.values()) entry.signature = "";
    this.schedule();
  }
}
