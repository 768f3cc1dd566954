// @ts-check
/**
 * One flow's YAML source, checked as it is typed: a pause in typing sends the text to the
 * validate route, and each problem it answers is marked on its line in the gutter (its
 * message there and in the list below). Saving deploys through the create or update route.
 * The editor is a textarea with a line gutter over a highlighted copy of its text
 * (`yaml_highlight.js`).
 *
 * A saved flow has an "Execute" form generated from its typed inputs (`inputs_form.js`): it
 * starts an execution through the create route and opens its page; the API's validation
 * problems are shown beside the inputs they name. While it is filled in, a pause sends it to
 * the inputs' validate route, whose answer hides the inputs `dependsOn` disables and fills the
 * choices a SELECT's `expression` renders.
 *
 * Below it, for a saved flow: a diagram of its tasks (`flow_diagram.js`), its triggers with
 * their next fire time (the triggers route), and a diff between two of its revisions (each read
 * from the flow route's `?revision=`; the API has no route listing them, and revisions are
 * numbered from 1 to the current one).
 */
import { flowPath, getJson } from "./api.js";
import { failure, fill, h, listTable, messageOf, when } from "./dom.js";
import { flowDiagram } from "./flow_diagram.js";
import { inputsForm } from "./inputs_form.js";
import { latestAnswer } from "./latest_answer.js";
import { lineDiff } from "./line_diff.js";
import { highlighted } from "./yaml_highlight.js";

const VALIDATE_DELAY_MS = 300;
const YAML = "application/x-yaml";
const NEW_FLOW = "id: hello\nnamespace: company.team\ntasks:\n  - id: hello\n    type: io.kestra.plugin.core.log.Log\n    message: Hello\n";

/**
 * The problems of the validate route's `constraints`, one per line, with the source line each
 * names (`line 5`), if any.
 * @param {string | undefined} constraints
 * @returns {{line: number | null, message: string}[]}
 */
export function problems(constraints) {
  if (!constraints) return [];
  return constraints
    .split("\n")
    .filter((text) => text.trim())
    .map((message) => {
      const found = /\bline (\d+)\b/.exec(message);
      return { line: found ? Number(found[1]) : null, message };
    });
}

/** @type {import("./app.js").Page} */
export function flowPage(root, params) {
  const [namespace, id] = params;
  const existing = Boolean(namespace && id);
  const status = h("div", { "aria-live": "polite" });
  const gutter = h("div", { class: "gutter", "aria-hidden": "true" });
  const source = h("textarea", {
    id: "source",
    spellcheck: "false",
    autocapitalize: "off",
    "aria-label": "Flow source (YAML)",
    "aria-describedby": "problems",
  });
  const list = h("ul", { id: "problems", class: "problems", "aria-live": "polite" });
  const save = h("button", { type: "button", class: "primary", id: "save" }, existing ? "Save" : "Create");
  const execute = h("section", { id: "execute", "aria-labelledby": "execute-title" });
  const overlay = h("pre", { class: "highlight", "aria-hidden": "true" });
  const diagram = h("section", { "aria-labelledby": "diagram-title" });
  const triggers = h("section", { "aria-labelledby": "triggers-title" });
  const revisions = h("section", { "aria-labelledby": "revisions-title" });
  fill(
    root,
    h("p", {}, h("a", { href: "#/flows" }, "← Flows")),
    h("div", { class: "row" }, h("h1", {}, existing ? `${namespace}.${id}` : "New flow"), save,
      existing ? h("a", { class: "button", href: `#/executions?${new URLSearchParams({ namespace, flow: id })}` }, "Executions") : null),
    status,
    h("div", { class: "editor" }, gutter, h("div", { class: "code" }, overlay, source)),
    list,
    execute,
    diagram,
    triggers,
    revisions,
  );

  /** @param {any} flow the flow as last saved */
  const drawSaved = (flow) => {
    drawExecute(flow);
    fill(diagram, h("h2", { id: "diagram-title" }, "Diagram"), flowDiagram(flow));
    drawTriggers(flow);
    drawRevisions(flow);
  };

  /**
   * The flow's declared triggers, with what the scheduler recorded for each.
   * @param {any} flow
   */
  const drawTriggers = async (flow) => {
    const declared = flow.triggers ?? [];
    fill(triggers, h("h2", { id: "triggers-title" }, "Triggers"));
    if (!declared.length) {
      triggers.append(h("p", { class: "muted" }, "This flow has no triggers."));
      return;
    }
    /** @type {Map<string, any>} */
    const recorded = new Map();
    try {
      const answer = await getJson(`/triggers/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}`);
      for (const row of answer.results ?? []) recorded.set(row.triggerId, row);
    } catch (error) {
      triggers.append(...failure(error));
    }
    triggers.append(
      h(
        "div",
        { class: "table-wrap" },
        listTable(
          "triggers",
          ["Trigger", "Type", "Next fire", "Last fire", "Enabled"],
          h(
            "tbody",
            {},
            declared.map((/** @type {any} */ trigger) => {
              const state = recorded.get(trigger.id);
              const disabled = Boolean(trigger.disabled || state?.disabled);
              return h(
                "tr",
                { "data-trigger": trigger.id },
                h("td", { class: "mono" }, trigger.id),
                h("td", {}, String(trigger.type).slice(String(trigger.type).lastIndexOf(".") + 1)),
                h("td", { "data-next": state?.nextExecutionDate ?? "" }, state?.nextExecutionDate ? when(state.nextExecutionDate) : h("span", { class: "muted" }, "—")),
                h("td", {}, state?.date ? when(state.date) : h("span", { class: "muted" }, "—")),
                h("td", {}, disabled ? "no" : "yes"),
              );
            }),
          ),
        ),
      ),
    );
  };

  /**
   * Two revisions side by side as a line diff: the one before the current and the current, or
   * any two chosen.
   * @param {any} flow
   */
  const drawRevisions = (flow) => {
    const current = Number(flow.revision) || 1;
    const numbers = Array.from({ length: current }, (_, i) => current - i);
    const pick = (/** @type {string} */ which, /** @type {number} */ chosen) =>
      h("select", { id: `revision-${which}` }, numbers.map((n) => h("option", { value: n, selected: n === chosen }, `revision ${n}`)));
    const from = pick("from", Math.max(1, current - 1));
    const to = pick("to", current);
    const shown = h("div", { id: "revision-diff" });
    const compare = async () => {
      const read = (/** @type {string} */ n) =>
        getJson(`${flowPath(flow.namespace, flow.id)}?revision=${n}&source=true`);
      try {
        const [before, after] = await Promise.all([read(from.value), read(to.value)]);
        const lines = lineDiff(before.source ?? "", after.source ?? "");
        const changed = lines.filter((l) => l.op !== " ").length;
        fill(
          shown,
          h("p", { class: "muted", id: "diff-summary" }, changed ? `${changed} line${changed === 1 ? "" : "s"} changed` : "The same source"),
          h(
            "pre",
            { class: "diff", "aria-label": `Changes from revision ${from.value} to ${to.value}` },
            lines.map((l) =>
              h("div", { class: l.op === "+" ? "add" : l.op === "-" ? "del" : null, "data-op": l.op },
                h("span", { class: "ln", "aria-hidden": "true" }, String(l.old ?? "")),
                h("span", { class: "ln", "aria-hidden": "true" }, String(l.new ?? "")),
                `${l.op} ${l.text}`),
            ),
          ),
        );
      } catch (error) {
        fill(shown, failure(error));
      }
    };
    from.addEventListener("change", compare);
    to.addEventListener("change", compare);
    fill(
      revisions,
      h("h2", { id: "revisions-title" }, "Revisions"),
      h("div", { class: "row" }, h("label", { for: "revision-from" }, "From"), from, h("label", { for: "revision-to" }, "to"), to),
      shown,
    );
    if (current > 1) compare();
    else fill(shown, h("p", { class: "muted" }, "Only one revision so far."));
  };

  /** Stops the Execute form's questions (when the page is left or the form drawn again). */
  let stopResolving = () => {};
  /**
   * The Execute form of the flow as last saved (its inputs as the API declares them).
   * @param {any} flow
   */
  const drawExecute = (flow) => {
    stopResolving();
    const form = inputsForm(flow.inputs ?? [], "input");
    const base = `/executions/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}`;
    const resolver = latestAnswer(
      () => getJson(`${base}/validate`, { method: "POST", body: form.formData({ files: false }) }),
      (answer) => form.refresh(answer.inputs ?? []),
      () => {}, // the form stays as declared; the create route says what is wrong
      VALIDATE_DELAY_MS,
    );
    stopResolving = resolver.stop;
    /** @param {FormData} data */
    const send = async (data) => {
      const started = await getJson(base, { method: "POST", body: data });
      location.hash = `#/executions/${encodeURIComponent(started.id)}`;
    };
    fill(
      execute,
      h("h2", { id: "execute-title" }, "Execute"),
      form.element({
        id: "execute-form",
        submitId: "execute-submit",
        submit: "Execute",
        none: "This flow declares no inputs.",
        send,
        attrs: { oninput: resolver.later, onchange: resolver.later },
      }),
    );
    if (form.fields.length) resolver.now();
  };

  /** @type {{line: number | null, message: string}[]} */
  let found = [];
  const drawGutter = () => {
    const lines = source.value.split("\n").length;
    const marked = new Map();
    for (const problem of found) if (problem.line) marked.set(problem.line, problem.message);
    fill(
      gutter,
      Array.from({ length: lines }, (_, i) => {
        const message = marked.get(i + 1);
        return h("div", { class: message ? "marked" : null, title: message ?? null, "data-line": i + 1 }, String(i + 1));
      }),
    );
    fill(overlay, highlighted(source.value));
    follow();
  };
  /** The gutter and the highlighted copy scroll with the text. */
  const follow = () => {
    gutter.scrollTop = source.scrollTop;
    overlay.scrollTop = source.scrollTop;
    overlay.scrollLeft = source.scrollLeft;
  };
  const drawProblems = () => {
    fill(
      list,
      found.map((problem) =>
        h("li", { class: "error" }, problem.line ? h("strong", {}, `Line ${problem.line}: `) : null, problem.message),
      ),
    );
  };

  /** @param {{line: number | null, message: string}[]} now */
  const show = (now) => {
    found = now;
    drawGutter();
    drawProblems();
  };
  const validation = latestAnswer(
    () => getJson("/flows/validate", { method: "POST", body: source.value, headers: { "Content-Type": YAML } }),
    (answer) => show((answer ?? []).flatMap((/** @type {any} */ result) => problems(result.constraints))),
    (error) => show([{ line: null, message: messageOf(error) }]),
    VALIDATE_DELAY_MS,
  );
  source.addEventListener("input", () => {
    drawGutter();
    validation.later();
  });
  source.addEventListener("scroll", follow);

  save.addEventListener("click", async () => {
    try {
      const flow = existing
        ? await getJson(flowPath(namespace, id), { method: "PUT", body: source.value, headers: { "Content-Type": YAML } })
        : await getJson("/flows", { method: "POST", body: source.value, headers: { "Content-Type": YAML } });
      fill(status, h("p", { class: "notice" }, `Saved revision ${flow.revision}`));
      if (existing) drawSaved(flow);
      if (!existing) location.hash = `#${flowPath(flow.namespace, flow.id)}`;
    } catch (error) {
      fill(status, failure(error));
    }
  });

  if (existing) {
    getJson(`${flowPath(namespace, id)}?source=true`)
      .then((flow) => {
        source.value = flow.source ?? "";
        drawSaved(flow);
        drawGutter();
        validation.now();
      })
      .catch((error) => fill(status, failure(error)));
  } else {
    source.value = NEW_FLOW;
    drawGutter();
    validation.now();
  }
  return () => {
    validation.stop();
    stopResolving();
  };
}
