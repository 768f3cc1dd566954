// @ts-check
/**
 * One execution, live: the follow route's frames (each the whole execution) redraw the
 * header and the buttons, and update the task-run tree (`run_tree.js`) and the Gantt timeline
 * (`gantt.js`); the logs route's stream adds lines to the log view (`log_view.js`) as the
 * worker writes them, from the chosen level up. The three are virtualised (only the rows in
 * view exist) and take a frame at the next animation frame. Both streams end by themselves
 * once the execution has ended, and are aborted when the page is left.
 * A PAUSED execution has a Resume
 * button with a form generated from its Pause task's `onResume` inputs (read from the flow's
 * revision the execution runs), sent to the resume route. An ended one has a Replay button:
 * the replay route makes a new execution, from its start or from a chosen task run (the runs
 * before it are kept), with the execution's inputs or with inputs changed in a form of the
 * flow's inputs (the replay-with-inputs route), and the page opens it.
 *
 * The log lines received are kept, so the search box narrows the ones shown as it is typed
 * without asking the API again (the follow route has no text filter). Stored files named by
 * outputs and inputs are download links (`files.js`).
 *
 * User Timing marks say when the execution was first drawn ended and when the log stream of
 * an ended execution was read to its end (bench/ui_page.py reads them).
 */
import { ApiError, call, flowPath, follow, getJson } from "./api.js";
import { duration, errorBox, failure, fill, h, isTerminal, jsonBlock, stateBadge, when } from "./dom.js";
import { fileLinks } from "./files.js";
import { Gantt } from "./gantt.js";
import { inputsForm } from "./inputs_form.js";
import { LEVELS, LogView } from "./log_view.js";
import { RunTree } from "./run_tree.js";

/** The states the restart route accepts. */
const RESTARTABLE = new Set(["FAILED", "KILLED", "WARNING"]);
const REOPEN_MS = 500;
/** A User Timing mark set once a frame of the ended execution is drawn (bench/ui_page.py). */
const ENDED_MARK = "kestream:execution:ended";
/** A User Timing mark set once the log stream of the ended execution was read to its end. */
const LOGS_ENDED_MARK = "kestream:logs:ended";

/**
 * The task of `flow` (searched through every flowable's branches) whose id is `taskId`.
 * @param {any} flow
 * @param {string} taskId
 * @returns {any}
 */
export function findTask(flow, taskId) {
  /** @type {any[]} */
  const stack = [flow];
  while (stack.length) {
    const node = stack.pop();
    if (Array.isArray(node)) stack.push(...node);
    else if (node && typeof node === "object") {
      if (node !== flow && node.id === taskId && typeof node.type === "string") return node;
      stack.push(...Object.values(node));
    }
  }
  return null;
}

/**
 * The flow at the revision `execution` runs.
 * @param {any} execution
 */
function flowOf(execution) {
  const revision = execution.flowRevision ? `?revision=${execution.flowRevision}` : "";
  return getJson(`${flowPath(execution.namespace, execution.flowId)}${revision}`);
}

/** @type {import("./app.js").Page} */
export function executionPage(root, [id]) {
  const path = `/executions/${encodeURIComponent(id)}`;
  const aborter = new AbortController();
  const header = h("div", { class: "exec-header" });
  const actions = h("div", { class: "actions" });
  const status = h("div", { "aria-live": "polite" });
  const facts = h("div", { class: "facts" });
  const logs = new LogView();
  const gantt = new Gantt();
  /** @type {any} the execution as last received */
  let latest = null;
  const tree = new RunTree((value) => (latest ? fileLinks(latest.id, value, status) : null));
  const resumeBox = h("div", { id: "resume-box" });
  const search = h("input", { id: "log-search", type: "search", placeholder: "text in the lines", autocomplete: "off" });
  const shownCount = h("span", { class: "muted", id: "log-count", "aria-live": "polite" });
  const level = h(
    "select",
    { id: "log-level" },
    LEVELS.map((name) => h("option", { value: name, selected: name === "INFO" }, name)),
  );
  fill(
    root,
    h("p", {}, h("a", { href: "#/executions" }, "← Executions")),
    header,
    actions,
    resumeBox,
    status,
    h("section", { "aria-labelledby": "gantt-title" }, h("h2", { id: "gantt-title" }, "Timeline"), gantt.axis, gantt.element),
    h("section", { "aria-labelledby": "runs-title" }, h("h2", { id: "runs-title" }, "Task runs"), tree.element),
    h("section", { "aria-labelledby": "facts-title" }, h("h2", { id: "facts-title" }, "Inputs, labels, trigger"), facts),
    h(
      "section",
      { "aria-labelledby": "logs-title" },
      h(
        "div",
        { class: "row" },
        h("h2", { id: "logs-title" }, "Logs"),
        h("label", { for: "log-level" }, "From level"), level,
        h("label", { for: "log-search" }, "Search"), search,
        shownCount,
      ),
      logs.element,
    ),
  );

  const elapsed = h("dd", { id: "execution-duration" });
  let actionsFor = "";
  // A running execution's duration grows between frames.
  const ticker = setInterval(() => {
    if (!latest) return;
    fill(elapsed, duration(latest.state.startDate, latest.state.endDate));
    if (!isTerminal(latest.state.current)) gantt.update(latest);
  }, 1000);

  /** @param {any} execution */
  const render = (execution) => {
    latest = execution;
    const state = execution.state.current;
    fill(elapsed, duration(execution.state.startDate, execution.state.endDate));
    fill(
      header,
      h("h1", {}, `${execution.namespace}.${execution.flowId}`),
      h(
        "dl",
        { class: "inline" },
        h("dt", {}, "Execution"), h("dd", { class: "mono", id: "execution-id" }, execution.id),
        h("dt", {}, "State"), h("dd", { id: "execution-state" }, stateBadge(state)),
        h("dt", {}, "Started"), h("dd", {}, when(execution.state.startDate)),
        h("dt", {}, "Duration"), elapsed,
        h("dt", {}, "Flow"), h("dd", {}, h("a", { href: `#${flowPath(execution.namespace, execution.flowId)}` }, `revision ${execution.flowRevision ?? ""}`)),
      ),
    );
    // Redrawn only when the state changes, so a focused button keeps the focus between frames.
    if (actionsFor !== state) {
      actionsFor = state;
      fill(
        actions,
        isTerminal(state) ? null : h("button", { type: "button", id: "kill", class: "danger", onclick: () => act("DELETE", "/kill", "Kill requested") }, "Kill"),
        RESTARTABLE.has(state)
          ? h("button", { type: "button", id: "restart", onclick: () => act("POST", "/restart", "Restarted") }, "Restart")
          : null,
        state === "PAUSED"
          ? h("button", { type: "button", id: "resume", class: "primary", "aria-controls": "resume-box", onclick: () => openResume(execution) }, "Resume")
          : null,
        isTerminal(state)
          ? h("button", { type: "button", id: "replay", "aria-controls": "resume-box", onclick: () => openReplay() }, "Replay")
          : null,
      );
      if (state !== "PAUSED") fill(resumeBox);
    }
    gantt.update(execution);
    tree.update(execution.taskRunList ?? []);
    if (isTerminal(state) && !performance.getEntriesByName(ENDED_MARK).length) performance.mark(ENDED_MARK);
    const labels = execution.labels ?? [];
    const hasOutputs = execution.outputs && Object.keys(execution.outputs).length;
    fill(
      facts,
      h("h3", {}, "Inputs"), execution.inputs && Object.keys(execution.inputs).length ? [jsonBlock(execution.inputs), fileLinks(execution.id, execution.inputs, status)] : h("p", { class: "muted" }, "None"),
      hasOutputs ? [h("h3", {}, "Outputs"), jsonBlock(execution.outputs), fileLinks(execution.id, execution.outputs, status)] : null,
      h("h3", {}, "Labels"),
      labels.length ? h("ul", { class: "labels" }, labels.map((/** @type {any} */ l) => h("li", {}, `${l.key}: ${l.value}`))) : h("p", { class: "muted" }, "None"),
      h("h3", {}, "Trigger"), execution.trigger ? jsonBlock(execution.trigger) : h("p", { class: "muted" }, "Started by hand (API)"),
    );
  };

  /**
   * The Resume form: the paused task's `onResume` inputs (none: a plain confirmation).
   * @param {any} execution
   */
  const openResume = async (execution) => {
    const paused = (execution.taskRunList ?? []).filter((/** @type {any} */ run) => run.state.current === "PAUSED");
    /** @type {import("./inputs_form.js").InputDef[]} */
    let inputs = [];
    try {
      const flow = await flowOf(execution);
      inputs = paused.flatMap((/** @type {any} */ run) => findTask(flow, run.taskId)?.onResume ?? []);
    } catch (error) {
      fill(resumeBox, failure(error));
      return;
    }
    const form = inputsForm(inputs, "resume");
    /** @param {FormData} data */
    const send = async (data) => {
      await call("POST", `${path}/resume`, data);
      fill(resumeBox, h("p", { class: "notice" }, "Resumed"));
    };
    fill(
      resumeBox,
      form.element(
        {
          id: "resume-form",
          submitId: "resume-submit",
          submit: "Resume the execution",
          none: "The Pause asks for no inputs.",
          send,
          attrs: { class: "inputs-form card", "aria-label": "Resume" },
        },
        h("h2", {}, "Resume"),
      ),
    );
    /** @type {HTMLElement | null} */ (resumeBox.querySelector("input, select, textarea, button"))?.focus();
  };

  /**
   * The Replay form: from the start, or from one of the task runs (by task, loop value and
   * state), on the revision the execution ran. "Change the inputs" adds a form of the flow's
   * inputs at that revision (`inputs_form.js`), filled with the execution's own values, sent
   * to the replay-with-inputs route instead. A FILE keeps its file unless another is chosen:
   * the page downloads it and uploads it again, since an execution may read only the files
   * of its own folder (and of the one that started it), not those of the one it replays.
   */
  const openReplay = () => {
    const execution = latest;
    const runs = execution?.taskRunList ?? [];
    const from = h(
      "select",
      { id: "replay-from" },
      h("option", { value: "" }, "From the start"),
      runs.map((/** @type {any} */ run) =>
        h("option", { value: run.id }, `${run.taskId}${run.value != null ? ` [${run.value}]` : ""} (${run.state.current})`),
      ),
    );
    const outcome = h("div", { "aria-live": "polite" });
    const inputsBox = h("div", { id: "replay-inputs" });
    const change = h("input", { type: "checkbox", role: "switch", id: "replay-change-inputs", "aria-controls": "replay-inputs" });
    /** @type {{inputs: import("./inputs_form.js").InputDef[], form: ReturnType<typeof inputsForm>} | null} */
    let changed = null;
    change.addEventListener("change", async () => {
      changed = null;
      fill(inputsBox);
      if (!change.checked || !execution) return;
      try {
        const flow = await flowOf(execution);
        const given = execution.inputs ?? {};
        /** @type {import("./inputs_form.js").InputDef[]} */
        const inputs = (flow.inputs ?? []).map((/** @type {any} */ input) => (input.id in given ? { ...input, defaults: given[input.id] } : input));
        if (!change.checked) return;
        changed = { inputs, form: inputsForm(inputs, "replay-input") };
        fill(inputsBox, changed.form.fields.length ? changed.form.fields : h("p", { class: "muted" }, "The flow has no inputs."));
      } catch (error) {
        fill(inputsBox, failure(error));
      }
    });
    /** @param {SubmitEvent} event */
    const submit = async (event) => {
      event.preventDefault();
      const query = from.value ? `?taskRunId=${encodeURIComponent(from.value)}` : "";
      fill(outcome);
      try {
        let replayed;
        if (changed) {
          changed.form.showErrors([]);
          const body = changed.form.formData();
          // A file kept is uploaded again: the new execution may read only its own files.
          for (const input of changed.inputs) {
            const uri = input.defaults;
            if (input.type.toUpperCase() !== "FILE" || typeof uri !== "string" || body.has(input.id)) continue;
            const kept = await call("GET", `${path}/file?path=${encodeURIComponent(uri)}`);
            body.append(input.id, await kept.blob(), uri.split("/").pop() || input.id);
          }
          replayed = await (await call("POST", `${path}/replay-with-inputs${query}`, body)).json();
        } else {
          replayed = await getJson(`${path}/replay${query}`, { method: "POST" });
        }
        location.hash = `#/executions/${encodeURIComponent(replayed.id)}`;
      } catch (error) {
        if (changed) changed.form.showFailure(outcome, error);
        else fill(outcome, failure(error));
      }
    };
    const cancel = () => {
      fill(resumeBox);
      /** @type {HTMLElement | null} */ (actions.querySelector("#replay"))?.focus();
    };
    fill(
      resumeBox,
      h(
        "form",
        { class: "inputs-form card", id: "replay-form", novalidate: true, onsubmit: submit, "aria-label": "Replay" },
        h("h2", {}, "Replay as a new execution"),
        h("label", { for: "replay-from" }, "Run again"),
        from,
        h("p", { class: "muted hint" }, "The task runs before the one chosen keep their outputs; it and everything after run again."),
        h("label", {}, change, " Change the inputs"),
        inputsBox,
        h(
          "div",
          { class: "row" },
          h("button", { type: "submit", class: "primary", id: "replay-submit" }, "Replay"),
          h("button", { type: "button", onclick: cancel }, "Cancel"),
        ),
        outcome,
      ),
    );
    from.focus();
  };

  /** @param {string} method @param {string} suffix @param {string} done */
  const act = async (method, suffix, done) => {
    try {
      const response = await call(method, path + suffix);
      fill(status, h("p", { class: "notice" }, done));
      if (suffix === "/restart") {
        const restarted = await response.json();
        since = ageOf(restarted) + 1;
        render(restarted);
        watch();
        watchLogs();
      }
    } catch (error) {
      fill(status, failure(error));
    }
  };

  /**
   * After a restart, frames from before it are stale: the API's view of the execution may not
   * have the restart yet, and then its follow ends at once with the old end. The restart's
   * answer is the execution as it was, in state RESTARTED; every later frame has one more
   * entry in its state's history (RESTARTED), and a history only grows.
   */
  let since = 0;
  /** @param {any} execution */
  const ageOf = (execution) => Number(execution?.state?.histories?.length ?? 0);
  /**
   * A stream that ended while the execution is still shown as not ended (the API had not seen
   * a restart yet) is opened again shortly.
   * @param {() => void} again
   * @param {AbortSignal} signal
   */
  const reopenIfRunning = (again, signal) => {
    if (!signal.aborted && latest && !isTerminal(latest.state.current)) {
      setTimeout(() => signal.aborted || again(), REOPEN_MS);
    }
  };

  /**
   * What a stream that is opened again is read under: each call aborts the stream the previous
   * call's signal read, and gives the next one's, aborted with the page too.
   */
  const reopened = () => {
    /** @type {AbortController | null} */
    let current = null;
    return () => {
      current?.abort();
      const controller = new AbortController();
      aborter.signal.addEventListener("abort", () => controller.abort());
      current = controller;
      return controller.signal;
    };
  };

  const executionStream = reopened();
  const watch = () => {
    const signal = executionStream();
    follow(`${path}/follow`, (_id, data) => {
      if (data && data.state && ageOf(data) >= since) render(data);
    }, signal)
      .then(() => reopenIfRunning(watch, signal))
      .catch((error) => fill(status, failure(error)));
  };

  const logStream = reopened();
  const watchLogs = () => {
    const signal = logStream();
    logs.clear();
    countShown();
    follow(`/logs/${encodeURIComponent(id)}/follow?minLevel=${level.value}`, (frameId, line) => {
      if (frameId === "start" || !line || !line.message) return;
      logs.add(line);
      if (logs.needle) countShown();
    }, signal)
      .then(() => {
        if (signal.aborted) return;
        if (latest && isTerminal(latest.state.current)) performance.mark(LOGS_ENDED_MARK);
        reopenIfRunning(watchLogs, signal);
      })
      .catch((error) => fill(status, failure(error)));
  };
  level.addEventListener("change", watchLogs);

  const countShown = () => {
    shownCount.textContent = logs.needle ? `${logs.shown.length} of ${logs.lines.length} lines` : "";
  };
  search.addEventListener("input", () => {
    logs.search(search.value);
    countShown();
  });

  getJson(path)
    .then((execution) => {
      render(execution);
      watch();
      watchLogs();
    })
    .catch((error) => {
      const message = error instanceof ApiError && error.status === 404 ? `Execution ${id} not found` : error.message;
      fill(root, h("p", {}, h("a", { href: "#/executions" }, "← Executions")), errorBox(message));
    });
  return () => {
    aborter.abort();
    clearInterval(ticker);
  };
}
