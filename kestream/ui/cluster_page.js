// @ts-check
/**
 * The cluster: every role process the API hears from (the cluster route, read again every
 * two seconds while the page is open), with its health, the partitions it owns, its consumer
 * lag (records behind, summed over its partitions), a worker's slots in use and the dead
 * letters it wrote; which process owns each partition of the executor's and the worker's
 * topics, with that partition's lag (as of its owner's last fetch); and the embedded broker's
 * warning when it keeps
 * everything in memory only. Each process's consumer lag and jobs running are drawn as
 * sparklines of the samples read since the page opened (the last minute).
 */
import { getJson } from "./api.js";
import { errorBox, fill, h } from "./dom.js";

const REFRESH_MS = 2000;
/** Samples kept per process for its sparklines: a minute at one read every two seconds. */
const SAMPLES = 30;
const SVG = "http://www.w3.org/2000/svg";

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
 * A sparkline of `values` (an SVG polyline scaled to its largest value), with its last value
 * as text for screen readers and for the eye.
 * @param {number[]} values
 * @param {string} what
 */
function sparkline(values, what) {
  const width = 80;
  const height = 18;
  const top = Math.max(1, ...values);
  const step = values.length > 1 ? width / (SAMPLES - 1) : 0;
  const points = values.map((v, i) => `${(i * step).toFixed(1)},${(height - 1 - (v / top) * (height - 2)).toFixed(1)}`).join(" ");
  const svg = document.createElementNS(SVG, "svg");
  svg.setAttribute("viewBox", `0 0 ${width} ${height}`);
  svg.setAttribute("class", "spark");
  svg.setAttribute("aria-hidden", "true");
  const line = document.createElementNS(SVG, "polyline");
  line.setAttribute("points", points);
  svg.append(line);
  const last = values.length ? values[values.length - 1] : 0;
  return h("span", { class: "spark-cell", title: `${what}: last ${values.length} samples, max ${top}` }, svg, ` ${last}`);
}

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
 * One table per role that owns partitions: partition, its owner, its lag (0 where the owner's
 * last fetches did not reach it: it held nothing new; empty from a process too old to say).
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
      h(
        "table",
        { class: "list", id: `partitions-${role}` },
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Partition"), h("th", { scope: "col" }, "Process"), h("th", { scope: "col" }, "Lag"))),
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
              h("td", { "data-lag": "" }, owner?.partitionLag ? String(Number(owner.partitionLag[String(p)] ?? 0)) : ""),
            );
          }),
        ),
      ),
    );
  });
}

/** @type {import("./app.js").Page} */
export function clusterPage(root) {
  const status = h("div", { "aria-live": "polite" });
  const broker = h("div", { id: "broker" });
  const members = h("div", { class: "table-wrap" });
  const partitions = h("div", { id: "partitions" });
  fill(
    root,
    h("div", { class: "row" }, h("h1", {}, "Cluster"), h("span", { id: "cluster-status" })),
    broker,
    status,
    h("section", { "aria-labelledby": "members-title" }, h("h2", { id: "members-title" }, "Role processes"), members),
    h("section", { "aria-labelledby": "partitions-title" }, h("h2", { id: "partitions-title" }, "Partitions"), partitions),
  );
  const headline = /** @type {HTMLElement} */ (root.querySelector("#cluster-status"));
  let stopped = false;
  /** @type {Map<string, {lag: number[], jobs: number[]}>} samples by process key */
  const history = new Map();
  /** @param {number[]} list @param {number} value */
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
        const samples = history.get(m.key) ?? { lag: [], jobs: [] };
        push(samples.lag, sum(m.consumerLag));
        push(samples.jobs, Number(m.jobsRunning ?? 0));
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
        h(
          "table",
          { class: "list", id: "members" },
          h(
            "thead",
            {},
            h("tr", {}, ["Role", "Host", "PID", "Port", "Health", "Partitions", "Consumer lag", "Lag, last minute", "Worker slots in use", "Jobs, last minute", "Dead letters", "Up for"].map((name) => h("th", { scope: "col" }, name))),
          ),
          h(
            "tbody",
            {},
            cluster.members.map((/** @type {any} */ m) =>
              h(
                "tr",
                { "data-role": m.role, "data-key": m.key },
                h("td", {}, m.group ? `${m.role} (${m.group})` : m.role),
                h("td", { class: "mono" }, m.host),
                h("td", { class: "mono" }, String(m.pid)),
                h("td", { class: "mono" }, m.port == null ? "" : String(m.port)),
                h("td", {}, health(m), m.notReady?.length ? h("span", { class: "muted" }, ` ${m.notReady.join(", ")}`) : null),
                h("td", { class: "mono", "data-partitions": "" }, ranges(partitionsOf(m))),
                h("td", { "data-lag": "" }, Object.keys(m.consumerLag ?? {}).length ? Object.entries(m.consumerLag).map(([k, v]) => `${k} ${v}`).join(", ") : ""),
                h("td", {}, Object.keys(m.consumerLag ?? {}).length ? sparkline(history.get(m.key)?.lag ?? [], "consumer lag") : ""),
                h("td", { "data-slots": "" }, m.slots == null ? "" : `${m.jobsRunning ?? 0} / ${m.slots}`),
                h("td", {}, m.slots == null ? "" : sparkline(history.get(m.key)?.jobs ?? [], "jobs running")),
                h("td", { "data-dead-letters": "" }, String(sum(m.deadLetters))),
                h("td", {}, `${Math.round(m.startedS)} s`),
              ),
            ),
          ),
        ),
      );
      fill(partitions, assignments(cluster.members, cluster.partitions));
    } catch (error) {
      if (!stopped) fill(status, errorBox(/** @type {Error} */ (error).message));
    }
  };
  load();
  const timer = setInterval(load, REFRESH_MS);
  return () => {
    stopped = true;
    clearInterval(timer);
  };
}
