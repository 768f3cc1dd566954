// @ts-check
/**
 * The cluster: every role process the API hears from (the cluster route, read again every
 * two seconds while the page is open), with its health, the partitions it owns, its consumer
 * lag (records behind, summed over its partitions: the processes measure it per consumer),
 * a worker's slots in use and the dead letters it wrote; which process owns each partition of
 * the executor's and the worker's topics; and the embedded broker's warning when it keeps
 * everything in memory only.
 */
import { getJson } from "./api.js";
import { errorBox, fill, h } from "./dom.js";

const REFRESH_MS = 2000;

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
 * One table per role that owns partitions: partition, its owner, that owner's lag.
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
        h("thead", {}, h("tr", {}, h("th", { scope: "col" }, "Partition"), h("th", { scope: "col" }, "Process"), h("th", { scope: "col" }, "Process lag"))),
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
              h("td", {}, owner ? String(sum(owner.consumerLag)) : ""),
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

  const load = async () => {
    try {
      const cluster = await getJson("/cluster");
      if (stopped) return;
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
            h("tr", {}, ["Role", "Host", "PID", "Port", "Health", "Partitions", "Consumer lag", "Worker slots in use", "Dead letters", "Up for"].map((name) => h("th", { scope: "col" }, name))),
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
                h("td", { class: "mono", "data-partitions": "" }, partitionsOf(m).join(", ")),
                h("td", { "data-lag": "" }, Object.keys(m.consumerLag ?? {}).length ? Object.entries(m.consumerLag).map(([k, v]) => `${k} ${v}`).join(", ") : ""),
                h("td", { "data-slots": "" }, m.slots == null ? "" : `${m.jobsRunning ?? 0} / ${m.slots}`),
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
