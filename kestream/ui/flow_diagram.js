// @ts-check
/**
 * A diagram of a flow's tasks, drawn in the DOM: each task a box, in the order it runs; a
 * flowable (If, Switch, ForEach, Parallel, ...) a group holding its branches side by side,
 * each branch named by its property (`then`, `else`, `cases.A`, `tasks`); the flow's `errors`,
 * `finally` and `afterExecution` tasks apart from the main line, as their own lanes.
 *
 * Branches are found by shape, not by task type: a property that holds a list of tasks (objects
 * with an `id` and a `type`), or a map of such lists. So a flowable the diagram was not told
 * about is still drawn with its branches. A Dag's list holds `{task, dependsOn}` entries: its
 * tasks are drawn with what each depends on.
 */
import { h } from "./dom.js";

/** The flow-level lists drawn as lanes of their own, in this order. */
const LANES = [
  ["tasks", "Tasks"],
  ["errors", "Errors"],
  ["finally", "Finally"],
  ["afterExecution", "After the execution"],
];

/**
 * The tasks of a list: itself, or the `task` of each entry of a Dag's `{task, dependsOn}`.
 * @param {unknown} value
 * @returns {any[] | null}
 */
function tasksOf(value) {
  if (isTaskList(value)) return value;
  if (Array.isArray(value) && value.length && value.every((entry) => entry && typeof entry === "object" && isTaskList([entry.task]))) {
    return value.map((entry) => ({ ...entry.task, dependsOn: entry.dependsOn }));
  }
  return null;
}

/** @param {unknown} value @returns {value is any[]} */
function isTaskList(value) {
  // A task's type is a plugin's qualified name; an input's (a Pause's onResume) is `STRING`.
  return Array.isArray(value) && value.length > 0 && value.every((t) => t && typeof t === "object" && typeof t.id === "string" && typeof t.type === "string" && t.type.includes("."));
}

/**
 * A task's branches: `[name, tasks]` for each property that holds tasks.
 * @param {any} task
 * @returns {[string, any[]][]}
 */
export function branches(task) {
  /** @type {[string, any[]][]} */
  const out = [];
  for (const [key, value] of Object.entries(task)) {
    const tasks = tasksOf(value);
    if (tasks) out.push([key, tasks]);
    else if (value && typeof value === "object" && !Array.isArray(value)) {
      const named = Object.entries(value);
      if (named.length && named.every(([, list]) => isTaskList(list))) {
        for (const [name, list] of named) out.push([`${key}.${name}`, /** @type {any[]} */ (list)]);
      }
    }
  }
  return out;
}

/** @param {string} type the plugin type's last segment: `Log`, `ForEach` */
function shortType(type) {
  return type.slice(type.lastIndexOf(".") + 1);
}

/**
 * @param {any[]} tasks
 * @returns {HTMLOListElement}
 */
function sequence(tasks) {
  return h(
    "ol",
    { class: "seq" },
    tasks.map((task) => {
      const inner = branches(task);
      return h(
        "li",
        { class: inner.length ? "node flowable" : "node", "data-task": task.id, "data-type": task.type },
        h(
          "div",
          { class: "box", title: task.type },
          h("strong", {}, task.id),
          h("span", { class: "muted" }, shortType(task.type)),
          Array.isArray(task.dependsOn) && task.dependsOn.length ? h("span", { class: "muted" }, `after ${task.dependsOn.join(", ")}`) : null,
        ),
        inner.length
          ? h(
              "div",
              { class: "branches" },
              inner.map(([name, list]) => h("div", { class: "branch", "data-branch": name }, h("span", { class: "branch-name muted" }, name), sequence(list))),
            )
          : null,
      );
    }),
  );
}

/**
 * The flow's diagram (its JSON as the flow route answers it).
 * @param {any} flow
 */
export function flowDiagram(flow) {
  const lanes = LANES.filter(([key]) => isTaskList(flow[key]));
  return h(
    "div",
    { class: "diagram", id: "diagram", role: "figure", "aria-label": `Diagram of ${flow.id}: ${lanes.map(([, label]) => label).join(", ")}` },
    lanes.map(([key, label]) =>
      h("section", { class: `lane lane-${key}`, "data-lane": key }, h("h3", {}, label), sequence(flow[key])),
    ),
  );
}
