/**
 * The demo page: wires the forms of index.html to the API client in api.js.
 *
 * One image is chosen (file picker or drag and drop); each form sends it to one route and
 * draws the answer. Failures are shown in the form's own alert line. When the service has
 * API keys, its first 401 opens a dialog that asks for one; the key is kept for this
 * browser tab's session (sessionStorage) and sent with every call.
 */
import { ClipClient, imageItemFromFile } from "./api.js";

const KEY_STORAGE = "clip-service-api-key";
const $ = (selector) => document.querySelector(selector);

// The page lives at <service>/ui/, so the service's root is one level up; this keeps
// working behind a proxy that serves the whole service under a path prefix.
const api = new ClipClient(new URL("../", document.baseURI), {
  apiKey: sessionStorage.getItem(KEY_STORAGE),
  askForKey,
});

/** The open key dialog's answer, shared by every call that got a 401 meanwhile. */
let keyAnswer = null;

/** The chosen image as an API item, `{img_blob}`; null until one is chosen. */
let image = null;

showModel();
setUpImagePicker();
$("#describe-form").addEventListener("submit", (event) => onSubmit(event, describe));
$("#classify-form").addEventListener("submit", (event) => onSubmit(event, classify));
$("#classify-form").addEventListener("change", enableLabelInputs);
enableLabelInputs();
$("#rank-form").addEventListener("submit", (event) => onSubmit(event, rankTexts));

/** Ask for an API key (one dialog at a time); resolves to the key, or null if cancelled. */
function askForKey(refused) {
  keyAnswer ??= showKeyDialog(refused).finally(() => (keyAnswer = null));
  return keyAnswer;
}

function showKeyDialog(refused) {
  const dialog = $("#key-dialog");
  const form = $("#key-form");
  $("#key-message").textContent = refused
    ? "The service refused that API key. Enter another one."
    : "This service needs an API key.";
  form.key.value = "";
  dialog.returnValue = ""; // Escape closes it without setting one: that is a cancel
  return new Promise((resolve) => {
    const submit = (event) => {
      event.preventDefault(); // the key stays in the page; nothing is submitted anywhere
      dialog.close(event.submitter?.value === "cancel" ? "" : "ok");
    };
    form.addEventListener("submit", submit);
    dialog.addEventListener(
      "close",
      () => {
        form.removeEventListener("submit", submit);
        const key = dialog.returnValue === "ok" ? form.key.value.trim() : "";
        if (key) sessionStorage.setItem(KEY_STORAGE, key);
        resolve(key || null);
      },
      { once: true },
    );
    dialog.showModal();
  });
}

async function showModel() {
  try {
    const info = await api.model();
    const interrogation = info.interrogation;
    $("#model-info").textContent =
      `Model ${info.spec} (${info.backend}, ${info.embedding_size}-d, ` +
      `${info.device} ${info.dtype})` +
      (interrogation ? `, captions by ${interrogation.caption_model}` : ", CLIP only");
    // A CLIP-only server (CAPTION_MODEL=none) has no captions or prompts: hide that part.
    $("#describe-section").hidden = !interrogation;
  } catch (error) {
    $("#model-info").textContent = error.message;
  }
}

function setUpImagePicker() {
  const input = $("#image-file");
  const zone = $("#drop-zone");
  input.addEventListener("change", () => input.files[0] && useFile(input.files[0]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault(); // allows the drop
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault(); // the browser would open the file otherwise
    zone.classList.remove("dragging");
    const file = event.dataTransfer.files[0];
    if (file) useFile(file);
  });
}

/** Keep a file as the current image and preview it. Any file is sent as it is: the
 * service decides whether it is an image, and its answer says why not. */
async function useFile(file) {
  try {
    image = await imageItemFromFile(file);
  } catch (error) {
    $("#image-name").textContent = error.message;
    return;
  }
  const preview = $("#preview");
  preview.onload = () => {
    preview.hidden = false;
    $("#drop-hint").hidden = true;
  };
  preview.onerror = () => {
    // Not something the browser can show; the service's answer will say what is wrong.
    preview.hidden = true;
    $("#drop-hint").hidden = false;
  };
  URL.revokeObjectURL(preview.src); // the previous preview's, if any
  preview.src = URL.createObjectURL(file);
  preview.alt = `Preview of ${file.name}`;
  $("#image-name").textContent = `${file.name}, ${formatBytes(file.size)}. Drop or choose another to replace it.`;
  for (const button of document.querySelectorAll("[data-needs-image]")) button.disabled = false;
}

/**
 * Run one form's action: busy state, buttons disabled while it runs, and any failure shown
 * as a readable message in the form's alert line (the section's `.error`).
 */
async function onSubmit(event, action) {
  event.preventDefault();
  const form = event.currentTarget;
  const section = form.closest("section");
  const error = section.querySelector(".error");
  const buttons = form.querySelectorAll("button");
  error.textContent = "";
  section.setAttribute("aria-busy", "true");
  buttons.forEach((button) => (button.disabled = true));
  try {
    await action(form, event.submitter);
  } catch (failure) {
    error.textContent = failure.message;
  } finally {
    section.removeAttribute("aria-busy");
    buttons.forEach((button) => (button.disabled = false));
  }
}

/** Caption or interrogate, by the button that was pressed. */
async function describe(form, submitter) {
  if (submitter.value === "caption") {
    setText($("#caption-output"), (await api.caption(image)).caption);
    return;
  }
  const answer = await api.interrogate(image, form.mode.value);
  setText($("#caption-output"), answer.caption || "none (negative mode uses no caption)", !answer.caption);
  setText($("#prompt-output"), answer.prompt);
}

/** Typed labels and their template, or a stored set: only the chosen source is editable. */
function enableLabelInputs() {
  const form = $("#classify-form");
  const fromSet = form.source.value === "label_set";
  form.label_set.disabled = !fromSet;
  form.labels.disabled = fromSet;
  form.template.disabled = fromSet;
}

async function classify(form) {
  const fromSet = form.source.value === "label_set";
  const labels = form.labels.value.split(/[,\n]/).map((label) => label.trim()).filter(Boolean);
  const { scores } = await api.classify(image, {
    labels,
    labelSet: fromSet ? form.label_set.value : null,
    template: form.template.value,
    topK: Number(form.top_k.value),
  });
  // Group the rows: caller labels have group null, a stored set names its groups.
  const groups = Map.groupBy(scores, (score) => score.group ?? "labels");
  const output = $("#classify-output");
  output.replaceChildren();
  for (const [group, rows] of groups) {
    output.append(scoreTable(fromSet ? `${form.label_set.value}: ${group}` : "your labels", rows));
  }
}

async function rankTexts(form) {
  const texts = form.texts.value.split("\n").map((text) => text.trim()).filter(Boolean);
  const answer = await api.rank([image], texts.map((text) => ({ text })));
  // One query (the image), so row 0 holds every text's score.
  const rows = texts.map((label, i) => ({
    label,
    probability: answer.probabilities[0][i],
    cosine: answer.cosine_similarities[0][i],
  }));
  rows.sort((a, b) => b.probability - a.probability);
  $("#rank-output").replaceChildren(scoreTable("texts, most probable first", rows));
}

/**
 * A table of labels with their probability (bar from 0 to 100 %) and cosine similarity
 * (bar from the centre, scaled to the largest |cosine| in the table: real CLIP image-text
 * cosines are small, about 0.2 to 0.35, and their order is what matters).
 */
function scoreTable(caption, rows) {
  const table = document.createElement("table");
  table.className = "scores";
  const scale = Math.max(...rows.map((row) => Math.abs(row.cosine)), 1e-9);
  table.innerHTML =
    "<caption></caption><colgroup><col class='label'><col><col></colgroup>" +
    "<thead><tr><th scope='col'>label</th>" +
    "<th scope='col'>probability</th><th scope='col'>cosine</th></tr></thead><tbody></tbody>";
  table.caption.textContent = caption;
  for (const row of rows) {
    const tr = table.tBodies[0].insertRow();
    const label = document.createElement("th");
    label.scope = "row";
    label.textContent = row.label;
    tr.append(label);
    tr.append(barCell(`${(row.probability * 100).toFixed(1)} %`, 0, row.probability, "probability"));
    const start = 0.5 + Math.min(0, row.cosine / scale) / 2;
    const width = Math.abs(row.cosine / scale) / 2;
    tr.append(barCell(row.cosine.toFixed(4), start, width, "cosine", row.cosine < 0));
  }
  return table;
}

/** A cell with its number as text and a decorative bar from `start` for `width` (0..1). */
function barCell(text, start, width, kind, negative = false) {
  const cell = document.createElement("td");
  cell.className = kind;
  const track = document.createElement("span");
  track.className = "track";
  track.setAttribute("aria-hidden", "true");
  const bar = document.createElement("span");
  bar.className = negative ? "bar negative" : "bar";
  // Set through the CSSOM: the page's Content-Security-Policy forbids inline style attributes.
  bar.style.setProperty("--start", `${(start * 100).toFixed(2)}%`);
  bar.style.setProperty("--width", `${(width * 100).toFixed(2)}%`);
  track.append(bar);
  const value = document.createElement("span");
  value.className = "value";
  value.textContent = text;
  cell.append(value, track);
  return cell;
}

function setText(element, text, muted = false) {
  element.textContent = text;
  element.classList.toggle("muted", muted);
}

function formatBytes(size) {
  if (size < 1024) return `${size} bytes`;
  return size < 1048576 ? `${(size / 1024).toFixed(1)} KiB` : `${(size / 1048576).toFixed(1)} MiB`;
}
