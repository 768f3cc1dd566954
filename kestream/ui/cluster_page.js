// @ts-check
/**
 * The cluster: every role process the API hears from (the cluster route, read again every
 * two seconds while the page is open), with its health, the partitions it owns, its consumer
 * lag (records behind, summed over its partitions), an executor's stream threads, a worker's
 * slots in use and the dead letters it wrote; which process owns each partition of the
 * executor's and the worker's topics, with that partition's lag (as of its owner's last
 * fetch); and the embedded broker's warning when it keeps everything in memory only. Each process's consumer lag, jobs running, throughput (an
 * executor's executions and task runs ended per second, a worker's task runs done) and latency
 * (p50 and p99 of an executor's step and of a worker's task runs) are drawn as sparklines of
 * the records read since the page opened (the last minute). Throughput and latency are what
 * each process measured over the interval between two of its records, from its own metrics.
 */
import { getJson } from "./api.js";
import { failure, fill, h, listTable } from "./dom.js";

const REFRESH_MS = 2000;
/** Samples kept per process for its sparklines: a minute at one read every two seconds. */
const SAMPLES = 30;
const SVG = "http://www.w3.org/2000/svg";
/** The throughput and latency sparklines' size: their own table has the room. */
const WIDE = 160;
const TALL = 28;

/**
 * Sorted partitions as ranges: `0–7, 9, 12–15`.
 * @param {number[]} partitions
 */
export function ranges(partitions) {
  /** @type {string[]} */
  const out = [];
  for (let i = 0; i < partitions.length; ) {
    let j = i;
    while (j + 1 < partitions.length && partitions[j + 1] === partitions[j] + 1) j++;
    out.push(i === j ? String(partitions[i]) : `${partitions[i]}–${partitions[j]}`);
    i = j + 1;
  }
  return out.join(", ");
}

/**
 * A sparkline of one or more series (SVG polylines scaled together to their largest value; a
 * `null` sample, a latency with nothing observed, breaks its line), with `label` as text for
 * screen readers and for the eye.
 * @param {{values: (number | null)[], kind?: string}[]} series
 * @param {string} what
 * @param {string} label
 * @param {number} [width]
 * @param {number} [height]
 */
function sparkline(series, what, label, width = 80, height = 18) {
  const numbers = series.flatMap((s) => s.values.filter((v) => v != null));
  const top = Math.max(1e-9, ...numbers.map(Number));
  const step = width / (SAMPLES - 1);
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("width", String(width));
  svg.setAttribute("height", String(height));
  svg.setAttribute("aria-hidden", "true");
  for (const { values, kind } of series) {
    /** @type {string[][]} */
    const runs = [[]];
    // The newest sample at the right edge: the line grows leftwards as samples come.
    const first = width - (values.length - 1) * step;
    values.forEach((v, i) => {
      if (v == null) runs.push([]);
      else runs[runs.length - 1].push(`${(first + i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 2)).toFixed(1)}`);
    });
    for (const points of runs.filter((run) => run.length)) {
      const line = document.createElementNS(SVG, "polyline");
      line.setAttribute("points", points.length > 1 ? points.join(" ") : `${points[0]} ${points[0]}`);
      if (kind) line.setAttribute("class", kind);
      svg.append(line);
    }
  }
  const samples = Math.max(0, ...series.map((s) => s.values.length));
  return h("span", { class: "spark-cell", title: `${what}: last ${samples} samples, max ${round(top)}` }, svg, ` ${label}`);
}

/** @param {number} value */
function round(value) {
  return Number(value.toPrecision(3)).toString();
}

/**
 * Seconds as a person reads a latency: `850 µs`, `2.5 ms`, `1.2 s`; `–` for none.
 * @param {number | null | undefined} seconds
 */
export function latencyText(seconds) {
  if (seconds == null) return "–";
  if (seconds < 0.001) return `${round(seconds * 1e6)} µs`;
  if (seconds < 1) return `${round(seconds * 1000)} ms`;
  return `${round(seconds)} s`;
}

/** What a role's throughput names mean on the page. */
const THROUGHPUT = { executions: "executions ended", taskRuns: "task runs done" };
/** What a role's latency names mean on the page. */
const LATENCY = { step: "executor step", taskRun: "task run" };

/**
 * The partitions a process owns, from its health checks (a check that reports `partitions`).
 * @param {any} member
 * @returns {number[]}
 */
export function partitionsOf(member) {
  const owned = new Set();
  for (const check of Object.values(member.checks ?? {})) {
    for (const p of /** @type {any} */ (check)?.partitions ?? []) owned.add(Number(p));
  }
  return [...owned].sort((a, b) => a - b);
}

/** @param {Record<string, number>} values */
function sum(values) {
  return Object.values(values ?? {}).reduce((a, b) => a + Number(b), 0);
}

/** @param {any} member */
function health(member) {
  const state = member.status === "UP" ? "SUCCESS" : "FAILED";
  return h("span", { class: `state state-${state.toLowerCase()}`, "data-health": member.status }, member.status);
}

/**
 * One table per role that owns partitions: partition, its owner, its lag as its owner last
 * measured it (from the records it read there: "—" until it has read one since it was
 * assigned, and from a process too old to say), never a 0 it did not report.
 * @param {any[]} members
 * @param {number} count the topics' partition count
 */
function assignments(members, count) {
  return ["executor", "worker"].map((role) => {
    const owners = new Map();
    for (const member of members.filter((m) => m.role === role)) {
      for (const p of partitionsOf(member)) owners.set(p, member);
    }
    return h(
      "div",
      { class: "table-wrap" },
      h("h3", {}, role === "executor" ? "Executor partitions" : "Worker partitions"),
      listTable(
        `partitions-${role}`,
        ["Partition", "Process", "Lag"],
        h(
          "tbody",
          {},
          Array.from({ length: count }, (_, p) => {
            const owner = owners.get(p);
            return h(
              "tr",
              { "data-partition": p },
              h("td", {}, String(p)),
              h("td", { class: "mono" }, owner ? `${owner.host}/${owner.pid}` : h("span", { class: "error" }, "unassigned")),
              lagCell(owner?.partitionLag?.[String(p)]),
            );
          }),
        ),
      ),
    );
  });
}

/**
 * A partition's lag, or "—" when its owner reported none.
 * @param {number | undefined} lag
 */
function lagCell(lag) {
  return lag == null
    ? h("td", { "data-lag": "", title: "not measured yet: no record read from it since it was assigned" }, h("span", { class: "muted" }, "—"))
    : h("td", { "data-lag": String(Number(lag)) }, String(Number(lag)));
}

/**
 * A process's throughput: its figures per second over its last record's interval, and their
 * sparklines (empty for a role that publishes none).
 * @param {any} member
 * @param {Record<string, number[]>} samples
 */
function throughputCell(member, samples) {
  const names = Object.keys(member.throughput ?? {});
  if (!names.length) return "";
  const label = names.map((name) => `${round(Number(member.throughput[name]))}/s ${THROUGHPUT[/** @type {keyof typeof THROUGHPUT} */ (name)] ?? name}`).join(", ");
  return sparkline(names.map((name, i) => ({ values: samples[name] ?? [], kind: i ? "second" : "" })), "per second", label, WIDE, TALL);
}

/**
 * A process's latency: p50 and p99 over its last record's interval, and their sparklines (the
 * p99 line over the p50's).
 * @param {any} member
 * @param {Record<string, {p50: (number | null)[], p99: (number | null)[]}>} samples
 */
function latencyCell(member, samples) {
  return Object.entries(member.latency ?? {}).map(([name, { p50, p99 }]) => {
    const series = samples[name] ?? { p50: [], p99: [] };
    const what = LATENCY[/** @type {keyof typeof LATENCY} */ (name)] ?? name;
    return h(
      "div",
      { "data-latency-of": name },
      sparkline([{ values: series.p50, kind: "second" }, { values: series.p99 }], `${what} latency, p50 and p99`, `${what} ${latencyText(p50)} / ${latencyText(p99)}`, WIDE, TALL),
    );
  });
}

/** @type {import("./app.js").Page} */
export function clusterPage(root) {
  const status = h("div", { "aria-live": "polite" });
  const broker = h("div", { id: "broker" });
  const members = h("div", { class: "table-wrap" });
  const partitions = h("div", { id: "partitions" });
  const activity = h("div", { class: "table-wrap" });
  fill(
    root,
    h("div", { class: "row" }, h("h1", {}, "Cluster"), h("span", { id: "cluster-status" })),
    broker,
    status,
    h("section", { "aria-labelledby": "members-title" }, h("h2", { id: "members-title" }, "Role processes"), members),
    h("section", { "aria-labelledby": "activity-title" }, h("h2", { id: "activity-title" }, "Throughput and latency"), activity),
    h("section", { "aria-labelledby": "partitions-title" }, h("h2", { id: "partitions-title" }, "Partitions"), partitions),
  );
  const headline = /** @type {HTMLElement} */ (root.querySelector("#cluster-status"));
  let stopped = false;
  /**
   * Samples by process key; `record` tells a new heartbeat record from one read again (its
   * time since the process started), so each record is one sample of its interval's figures.
   * @type {Map<string, {record: number, lag: number[], jobs: number[], throughput: Record<string, number[]>, latency: Record<string, {p50: (number | null)[], p99: (number | null)[]}>}>}
   */
  const history = new Map();
  /** @template T @param {T[]} list @param {T} value */
  const push = (list, value) => {
    list.push(value);
    if (list.length > SAMPLES) list.shift();
  };

  const load = async () => {
    try {
      const cluster = await getJson("/cluster");
      if (stopped) return;
      const present = new Set();
      for (const m of cluster.members) {
        present.add(m.key);
        const samples = history.get(m.key) ?? { record: NaN, lag: [], jobs: [], throughput: {}, latency: {} };
        const record = Math.round((m.startedS - m.heardS) * 1000);
        if (record !== samples.record) {
          samples.record = record;
          push(samples.lag, sum(m.consumerLag));
          push(samples.jobs, Number(m.jobsRunning ?? 0));
          for (const [name, rate] of Object.entries(m.throughput ?? {})) push((samples.throughput[name] ??= []), Number(rate));
          for (const [name, { p50, p99 }] of Object.entries(m.latency ?? {})) {
            const series = (samples.latency[name] ??= { p50: [], p99: [] });
            push(series.p50, p50);
            push(series.p99, p99);
          }
        }
        history.set(m.key, samples);
      }
      for (const key of history.keys()) if (!present.has(key)) history.delete(key);
      fill(status);
      fill(headline, health(cluster), cluster.missingRoles?.length ? h("span", { class: "error" }, ` missing: ${cluster.missingRoles.join(", ")}`) : null);
      fill(
        broker,
        h("p", { class: "muted" }, `Broker: ${cluster.broker.kind}${cluster.broker.standalone ? " (kestream standalone)" : ""}, ${cluster.partitions} partitions per topic`),
        cluster.broker.memoryOnly
          ? h("p", { class: "warning", id: "memory-only", role: "alert" }, "The embedded broker is memory-only (KESTREAM_STANDALONE_DURABLE=false): every execution, flow and offset is lost when it stops.")
          : null,
      );
      fill(
        members,
        listTable(
          "members",
          ["Role", "Process", "Health", "Partitions", "Consumer lag", "Stream threads", "Slots in use", "Dead letters", "Up for"],
          h(
            "tbody",
            {},
            cluster.members.map((/** @type {any} */ m) =>
              h(
                "tr",
                { "data-role": m.role, "data-key": m.key },
                h("td", {}, m.group ? `${m.role} (${m.group})` : m.role),
                h("td", { class: "mono", title: "host/pid, ops port" }, `${m.host}/${m.pid}`, m.port == null ? null : h("span", { class: "muted" }, ` :${m.port}`)),
                h("td", {}, health(m), m.notReady?.length ? h("span", { class: "muted" }, ` ${m.notReady.join(", ")}`) : null),
                h("td", { class: "mono", "data-partitions": "" }, ranges(partitionsOf(m))),
                h("td", { "data-lag": "" }, Object.keys(m.consumerLag ?? {}).length ? sparkline([{ values: history.get(m.key)?.lag ?? [] }], "consumer lag", Object.entries(m.consumerLag).map(([k, v]) => `${k} ${v}`).join(", ")) : ""),
                h("td", { "data-stream-threads": "" }, m.streamThreads == null ? "" : String(m.streamThreads)),
                h("td", { "data-slots": "" }, m.slots == null ? "" : sparkline([{ values: history.get(m.key)?.jobs ?? [] }], "jobs running", `${m.jobsRunning ?? 0} / ${m.slots}`)),
                h("td", { "data-dead-letters": "" }, String(sum(m.deadLetters))),
                h("td", {}, `${Math.round(m.startedS)} s`),
              ),
            ),
          ),
        ),
      );
      const busy = cluster.members.filter((/** @type {any} */ m) => Object.keys(m.throughput ?? {}).length || Object.keys(m.latency ?? {}).length);
      fill(
        activity,
        busy.length
          ? listTable(
              "activity",
              ["Role", "Process", "Throughput, last minute", "Latency p50 / p99, last minute"],
              h(
                "tbody",
                {},
                busy.map((/** @type {any} */ m) =>
                  h(
                    "tr",
                    { "data-role": m.role, "data-key": m.key },
                    h("td", {}, m.group ? `${m.role} (${m.group})` : m.role),
                    h("td", { class: "mono" }, `${m.host}/${m.pid}`),
                    h("td", { "data-throughput": "" }, throughputCell(m, history.get(m.key)?.throughput ?? {})),
                    h("td", { "data-latency": "" }, latencyCell(m, history.get(m.key)?.latency ?? {})),
                  ),
                ),
              ),
            )
          : h("p", { class: "muted" }, "No process has published its throughput yet (each does with its heartbeat after the first)."),
      );
      fill(partitions, assignments(cluster.members, cluster.partitions));
    } catch (error) {
      if (!stopped) fill(status, failure(error));
    }
  };
  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
