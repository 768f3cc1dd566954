// @ts-check
/**
 * One flow's YAML source, checked as it is typed: a pause in typing sends the text to the
 * validate route, and each problem it answers is marked on its line in the gutter (its
 * message there and in the list below). Saving deploys through the create or update route.
 * The editor is a plain textarea with a line gutter; syntax highlighting is not done yet.
 *
 * A saved flow has an "Execute" form generated from its typed inputs (`inputs_form.js`): it
 * starts an execution through the create route and opens its page; the API's validation
 * problems are shown beside the inputs they name. While it is filled in, a pause sends it to
 * the inputs' validate route, whose answer hides the inputs `dependsOn` disables and fills the
 * choices a SELECT's `expression` renders.
 */
import { ApiError, getJson } from "./api.js";
import { errorBox, fill, h } from "./dom.js";
import { inputsForm } from "./inputs_form.js";

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
  fill(
    root,
    h("p", {}, h("a", { href: "#/flows" }, "← Flows")),
    h("div", { class: "row" }, h("h1", {}, existing ? `${namespace}.${id}` : "New flow"), save,
      existing ? h("a", { class: "button", href: `#/executions?namespace=${encodeURIComponent(namespace)}&flow=${encodeURIComponent(id)}` }, "Executions") : null),
    status,
    h("div", { class: "editor" }, gutter, source),
    list,
    execute,
  );

  /** Stops the Execute form's pending validation (when the page is left or redrawn). */
  let stopResolving = () => {};
  /**
   * The Execute form of the flow as last saved (its inputs as the API declares them).
   * @param {any} flow
   */
  const drawExecute = (flow) => {
    const form = inputsForm(flow.inputs ?? [], "input");
    const outcome = h("div", { "aria-live": "polite" });
    const base = `/executions/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}`;
    let asked = 0;
    const resolve = async () => {
      const mine = ++asked;
      try {
        const answer = await getJson(`${base}/validate`, { method: "POST", body: form.formData({ files: false }) });
        if (mine === asked) form.refresh(answer.inputs ?? []);
      } catch {
        // the form stays as declared; the create route says what is wrong
      }
    };
    /** @type {ReturnType<typeof setTimeout> | undefined} */
    let pending;
    const later = () => {
      clearTimeout(pending);
      pending = setTimeout(resolve, VALIDATE_DELAY_MS);
    };
    stopResolving = () => clearTimeout(pending);
    /** @param {SubmitEvent} event */
    const submit = async (event) => {
      event.preventDefault();
      fill(outcome);
      form.showErrors([]);
      try {
        const started = await getJson(base, { method: "POST", body: form.formData() });
        location.hash = `#/executions/${encodeURIComponent(started.id)}`;
      } catch (error) {
        const rest = error instanceof ApiError ? form.showErrors(error.problems) : [];
        fill(outcome, errorBox(/** @type {Error} */ (error).message), rest.map((m) => errorBox(m)));
      }
    };
    fill(
      execute,
      h("h2", { id: "execute-title" }, "Execute"),
      h(
        "form",
        { class: "inputs-form", id: "execute-form", novalidate: true, onsubmit: submit, oninput: later, onchange: later },
        form.fields.length ? form.fields : h("p", { class: "muted" }, "This flow declares no inputs."),
        h("div", { class: "row" }, h("button", { type: "submit", class: "primary", id: "execute-submit" }, "Execute")),
        outcome,
      ),
    );
    if (form.fields.length) resolve();
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
    gutter.scrollTop = source.scrollTop;
  };
  const drawProblems = () => {
    fill(
      list,
      found.map((problem) =>
        h("li", { class: "error" }, problem.line ? h("strong", {}, `Line ${problem.line}: `) : null, problem.message),
      ),
    );
  };

  let sequence = 0;
  const validate = async () => {
    const mine = ++sequence;
    try {
      const answer = await getJson("/flows/validate", { method: "POST", body: source.value, headers: { "Content-Type": YAML } });
      if (mine !== sequence) return; // a newer text is being checked
      found = (answer ?? []).flatMap((/** @type {any} */ result) => problems(result.constraints));
    } catch (error) {
      if (mine !== sequence) return;
      found = [{ line: null, message: /** @type {Error} */ (error).message }];
    }
    drawGutter();
    drawProblems();
  };

  /** @type {ReturnType<typeof setTimeout> | undefined} */
  let timer;
  source.addEventListener("input", () => {
    drawGutter();
    clearTimeout(timer);
    timer = setTimeout(validate, VALIDATE_DELAY_MS);
  });
  source.addEventListener("scroll", () => {
    gutter.scrollTop = source.scrollTop;
  });

  save.addEventListener("click", async () => {
    try {
      const flow = existing
        ? await getJson(`/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(id)}`, { method: "PUT", body: source.value, headers: { "Content-Type": YAML } })
        : await getJson("/flows", { method: "POST", body: source.value, headers: { "Content-Type": YAML } });
      fill(status, h("p", { class: "notice" }, `Saved revision ${flow.revision}`));
      if (existing) drawExecute(flow);
      if (!existing) location.hash = `#/flows/${encodeURIComponent(flow.namespace)}/${encodeURIComponent(flow.id)}`;
    } catch (error) {
      const problemsOf = error instanceof ApiError ? error.problems.map((p) => p.message ?? "") : [];
      fill(status, errorBox(/** @type {Error} */ (error).message), problemsOf.map((m) => errorBox(m)));
    }
  });

  if (existing) {
    getJson(`/flows/${encodeURIComponent(namespace)}/${encodeURIComponent(id)}?source=true`)
      .then((flow) => {
        source.value = flow.source ?? "";
        drawExecute(flow);
        drawGutter();
        validate();
      })
      .catch((error) => fill(status, errorBox(error.message)));
  } else {
    source.value = NEW_FLOW;
    drawGutter();
    validate();
  }
  return () => {
    clearTimeout(timer);
    stopResolving();
  };
}
