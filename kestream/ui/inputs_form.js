// @ts-check
/**
 * A form generated from typed inputs (a flow's `inputs`, a Pause's `onResume`), as the flow
 * JSON declares them: each type gets the control a person expects (a switch for a BOOLEAN, a
 * select of its `values` for an ENUM or SELECT, a file picker for a FILE, a password field for
 * a SECRET), `defaults` are filled in and required inputs are marked.
 *
 * The values are sent as a multipart form, the API's own way to take inputs: every value is
 * text the server parses by the input's type (a MULTISELECT as a JSON array, a DATETIME as
 * ISO-8601 in UTC), and a FILE is uploaded. Nothing is checked here beyond what the browser's
 * controls do: the API validates, and each problem it names (`inputs.<id>`) is shown beside
 * its field.
 *
 * `dependsOn` and computed choices are the API's: the caller sends the form to the validate
 * route as it changes and hands its answer to `refresh`, which hides the inputs it disables
 * and replaces a SELECT's choices with the ones its `expression` rendered.
 */
import { ApiError } from "./api.js";
import { failure, fill, h } from "./dom.js";

/**
 * @typedef {{id: string, type: string, required?: boolean, defaults?: any, description?: string,
 *   displayName?: string, values?: string[], options?: string[], allowCustomValue?: boolean}} InputDef
 */

/**
 * A `datetime-local` control's value from an ISO instant (the browser's own time zone).
 * @param {string} iso
 */
function localDateTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  const offset = date.getTimezoneOffset() * 60_000;
  return new Date(date.getTime() - offset).toISOString().slice(0, 19);
}

/** @param {unknown} value */
function text(value) {
  if (value === null || value === undefined) return "";
  return typeof value === "string" ? value : JSON.stringify(value, null, 2);
}

/**
 * The control of one input (its `name` is the input's id).
 * @param {InputDef} input
 * @param {string} id the control's element id
 * @param {string} describedBy ids of its description and error
 * @returns {HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement}
 */
function control(input, id, describedBy) {
  const type = input.type.toUpperCase();
  const required = input.required !== false;
  const common = { id, name: input.id, "aria-describedby": describedBy, "data-type": type };
  const value = input.defaults;
  const choices = input.values ?? input.options ?? [];
  switch (type) {
    case "BOOLEAN":
    case "BOOL":
      return h("input", { ...common, type: "checkbox", role: "switch", checked: value === true || value === "true" });
    case "INT":
    case "FLOAT":
      return h("input", { ...common, type: "number", step: type === "INT" ? "1" : "any", required, value: text(value) });
    case "ENUM":
    case "SELECT":
      return h(
        "select",
        { ...common, required },
        required && value != null ? null : h("option", { value: "" }, "—"),
        choices.map((choice) => h("option", { value: choice, selected: choice === value }, choice)),
      );
    case "MULTISELECT": {
      const chosen = new Set(Array.isArray(value) ? value.map(String) : []);
      return h(
        "select",
        { ...common, multiple: true, required, size: Math.min(6, Math.max(2, choices.length)) },
        choices.map((choice) => h("option", { value: choice, selected: chosen.has(choice) }, choice)),
      );
    }
    case "DATETIME":
      return h("input", { ...common, type: "datetime-local", step: "1", required, value: value ? localDateTime(String(value)) : "" });
    case "DATE":
      return h("input", { ...common, type: "date", required, value: text(value) });
    case "TIME":
      return h("input", { ...common, type: "time", step: "1", required, value: text(value) });
    case "JSON":
    case "YAML":
    case "ARRAY":
      return h("textarea", { ...common, rows: 4, spellcheck: "false", required, class: "mono" }, text(value));
    case "FILE":
      return h("input", { ...common, type: "file", required: required && value == null });
    case "SECRET":
      return h("input", { ...common, type: "password", autocomplete: "off", required, value: text(value) });
    case "EMAIL":
      return h("input", { ...common, type: "email", required, value: text(value) });
    case "URI":
      return h("input", { ...common, type: "url", required, value: text(value) });
    default: // STRING, DURATION and any type to come: text the server parses
      return h("input", { ...common, type: "text", required, value: text(value) });
  }
}

/**
 * A form of `inputs`; `prefix` keeps its element ids apart from another form's on the page.
 * @param {InputDef[]} inputs
 * @param {string} prefix
 */
export function inputsForm(inputs, prefix) {
  /** @type {Map<string, HTMLElement>} error slot by input id */
  const errors = new Map();
  /** @type {(HTMLInputElement | HTMLSelectElement | HTMLTextAreaElement)[]} */
  const controls = [];
  /** @type {Map<string, HTMLElement>} field wrapper by input id */
  const wrappers = new Map();
  const fields = inputs.map((input) => {
    const id = `${prefix}-${input.id}`;
    const error = h("p", { class: "error field-error", id: `${id}-error`, "aria-live": "polite" });
    errors.set(input.id, error);
    const about = input.description ? h("p", { class: "muted hint", id: `${id}-about` }, input.description) : null;
    const field = control(input, id, about ? `${id}-about ${id}-error` : `${id}-error`);
    controls.push(field);
    const required = input.required !== false;
    const wrapper = h(
      "div",
      { class: "field input-field", "data-input": input.id },
      h(
        "label",
        { for: id },
        input.displayName || input.id,
        " ",
        h("span", { class: "muted mono" }, input.type),
        required ? h("span", { class: "required", "aria-hidden": "true" }, " *") : null,
        required ? h("span", { class: "sr-only" }, " (required)") : null,
      ),
      field,
      about,
      error,
    );
    wrappers.set(input.id, wrapper);
    return wrapper;
  });

  /**
   * The values as the API takes them; an empty optional field and a disabled input are left
   * out (and the files, for a validation).
   * @param {{files?: boolean}} [options]
   */
  const formData = ({ files = true } = {}) => {
    const data = new FormData();
    for (const field of controls) {
      if (field.disabled) continue;
      const type = field.dataset.type ?? "STRING";
      if (field instanceof HTMLInputElement && field.type === "checkbox") {
        data.append(field.name, field.checked ? "true" : "false");
      } else if (field instanceof HTMLInputElement && field.type === "file") {
        const file = files ? field.files?.[0] : undefined;
        if (file) data.append(field.name, file, file.name);
      } else if (field instanceof HTMLSelectElement && field.multiple) {
        const chosen = Array.from(field.selectedOptions, (option) => option.value);
        if (chosen.length) data.append(field.name, JSON.stringify(chosen));
      } else if (field.value !== "") {
        const value = type === "DATETIME" ? new Date(field.value).toISOString() : field.value;
        data.append(field.name, value);
      }
    }
    return data;
  };

  /**
   * Show the API's problems beside the fields they name (`inputs.<id>`); the others are
   * returned for the caller to show.
   * @param {{message?: string, path?: string}[]} problems
   * @returns {string[]} messages that name no field of this form
   */
  const showErrors = (problems) => {
    for (const slot of errors.values()) slot.replaceChildren();
    for (const field of controls) field.removeAttribute("aria-invalid");
    /** @type {string[]} */
    const rest = [];
    for (const problem of problems) {
      const name = problem.path?.startsWith("inputs.") ? problem.path.slice("inputs.".length) : "";
      const slot = errors.get(name);
      if (slot) {
        slot.append(problem.message ?? "invalid");
        controls.find((field) => field.name === name)?.setAttribute("aria-invalid", "true");
      } else {
        rest.push(problem.message ?? "");
      }
    }
    return rest;
  };

  /**
   * Apply the validate route's answer: an input its `dependsOn` disables is hidden (and not
   * sent); a SELECT's or MULTISELECT's choices become the ones the API lists, the chosen ones
   * kept where they still are choices.
   * @param {{input: InputDef, enabled?: boolean, value?: any}[]} resolved
   */
  const refresh = (resolved) => {
    for (const { input, enabled, value } of resolved) {
      const wrapper = wrappers.get(input.id);
      const field = controls.find((c) => c.name === input.id);
      if (!wrapper || !field) continue;
      wrapper.hidden = enabled === false;
      field.disabled = enabled === false;
      const choices = input.values ?? input.options;
      if (!(field instanceof HTMLSelectElement) || !choices) continue;
      const shown = Array.from(field.options, (o) => o.value).filter((v) => v !== "");
      if (shown.join("\n") === choices.join("\n")) continue;
      const chosen = new Set(Array.from(field.selectedOptions, (o) => o.value).filter((v) => v !== ""));
      // Nothing chosen yet: the API's value (a default, or the first with `autoSelectFirst`).
      if (!chosen.size && value != null) for (const v of [value].flat()) chosen.add(String(v));
      fill(
        field,
        field.multiple ? null : h("option", { value: "" }, "—"),
        choices.map((choice) => h("option", { value: choice, selected: chosen.has(choice) }, choice)),
      );
    }
  };

  /**
   * Say why the API refused the form: each problem that names an input beside it, and the
   * error's message with the problems that name none in `outcome`.
   * @param {HTMLElement} outcome
   * @param {unknown} error
   */
  const showFailure = (outcome, error) => {
    fill(outcome, failure(error, error instanceof ApiError ? showErrors(error.problems) : []));
  };

  /**
   * The form itself: its fields (or the line `none` when it has no inputs), its submit button
   * and, under it, the outcome. Sent, its values go to `send`; a refusal is shown beside the
   * fields it names and the rest under the button.
   * @param {{id: string, submitId: string, submit: string, none: string,
   *   send: (data: FormData) => Promise<unknown>, attrs?: import("./dom.js").Attrs}} options
   * @param {...import("./dom.js").Child} before what the form shows above its fields
   */
  const element = ({ id, submitId, submit, none, send, attrs = {} }, ...before) => {
    const outcome = h("div", { "aria-live": "polite" });
    /** @param {SubmitEvent} event */
    const onsubmit = async (event) => {
      event.preventDefault();
      fill(outcome);
      showErrors([]);
      try {
        await send(formData());
      } catch (error) {
        showFailure(outcome, error);
      }
    };
    return h(
      "form",
      { class: "inputs-form", id, novalidate: true, onsubmit, ...attrs },
      before,
      fields.length ? fields : h("p", { class: "muted" }, none),
      h("div", { class: "row" }, h("button", { type: "submit", class: "primary", id: submitId }, submit)),
      outcome,
    );
  };

  return { fields, formData, showErrors, showFailure, refresh, element };
}
