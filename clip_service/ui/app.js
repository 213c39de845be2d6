/**
 * The demo page: wires the forms of index.html to the API client in api.js.
 *
 * One image is chosen (file picker or drag and drop); each form sends it to one route and
 * draws the answer. The search section is separate: several images are chosen there, and
 * one `/rank` call orders them by how well they match a sentence. Failures are shown in the
 * form's own alert line. When the service has
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

/** The images to search, in the order chosen: `{name, item, url}` (url: the thumbnail's). */
let searchImages = [];
/** Counts choices of search images, so that a slow read of an older choice is dropped. */
let searchChoice = 0;
/** The served model's scoring rule (GET /model): "softmax" (CLIP) or "sigmoid" (SigLIP). */
let scoring = "softmax";

showModel();
setUpDropZone($("#drop-zone"), $("#image-file"), (files) => useFile(files[0]));
setUpDropZone($("#search-drop"), $("#search-files"), useSearchFiles);
$("#describe-form").addEventListener("submit", (event) => onSubmit(event, describe));
$("#classify-form").addEventListener("submit", (event) => onSubmit(event, classify));
$("#classify-form").addEventListener("change", enableLabelInputs);
enableLabelInputs();
$("#rank-form").addEventListener("submit", (event) => onSubmit(event, rankTexts));
$("#search-form").addEventListener("submit", (event) => onSubmit(event, search));

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
    scoring = info.scoring;
    const rule = scoring === "sigmoid" ? ", sigmoid scores (SigLIP)" : "";
    $("#model-info").textContent =
      `Model ${info.spec} (${info.backend}, ${info.embedding_size}-d, ` +
      `${info.device} ${info.dtype}${rule})` +
      (interrogation ? `, captions by ${interrogation.caption_model}` : ", CLIP only");
    // A CLIP-only server (CAPTION_MODEL=none) has no captions or prompts: hide that part.
    $("#describe-section").hidden = !interrogation;
    if (interrogation) showCaptioner(interrogation.captioner);
  } catch (error) {
    $("#model-info").textContent = error.message;
  }
}

/** The captioner's family in the caption's title, and its detail levels, if it has any. */
function showCaptioner({ family, caption_details: details }) {
  $("#caption-title").textContent = `Caption (${family})`;
  const select = $("#caption-detail");
  select.replaceChildren(
    ...details.map((detail) => new Option(detail.replaceAll("_", " "), detail)),
  );
  $("#detail-choice").hidden = details.length === 0;
}

/** A file input inside its drop zone (the zone is the input's label): either gives files. */
function setUpDropZone(zone, input, useFiles) {
  input.addEventListener("change", () => input.files.length && useFiles([...input.files]));
  zone.addEventListener("dragover", (event) => {
    event.preventDefault(); // allows the drop
    zone.classList.add("dragging");
  });
  zone.addEventListener("dragleave", () => zone.classList.remove("dragging"));
  zone.addEventListener("drop", (event) => {
    event.preventDefault(); // the browser would open the file otherwise
    zone.classList.remove("dragging");
    const files = [...event.dataTransfer.files];
    if (files.length) useFiles(files);
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
  const detail = $("#detail-choice").hidden ? null : form.caption_detail.value;
  if (submitter.value === "caption") {
    setText($("#caption-output"), (await api.caption(image, detail)).caption);
    return;
  }
  const answer = await api.interrogate(image, form.mode.value, detail);
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
 * Keep files as the images to search (replacing the previous ones) and show them small.
 * As for the single image, every file is sent as it is and the service says what it refuses.
 */
async function useSearchFiles(files) {
  const choice = ++searchChoice;
  $("#search-error").textContent = "";
  clearSearchResults();
  let items;
  try {
    items = await Promise.all(files.map(imageItemFromFile));
  } catch (error) {
    if (choice === searchChoice) $("#search-error").textContent = error.message;
    return;
  }
  if (choice !== searchChoice) return; // another choice came meanwhile
  for (const { url } of searchImages) URL.revokeObjectURL(url);
  searchImages = files.map((file, i) => ({
    name: file.name,
    item: items[i],
    url: URL.createObjectURL(file),
  }));
  const thumbs = $("#search-thumbs");
  thumbs.replaceChildren(...searchImages.map(thumbnail));
  thumbs.hidden = false;
  const names = files.slice(0, 4).map((file) => file.name).join(", ");
  const more = files.length > 4 ? ` and ${files.length - 4} more` : "";
  const size = formatBytes(files.reduce((sum, file) => sum + file.size, 0));
  $("#search-chosen").textContent =
    `${plural(files.length, "image")} chosen (${size}): ${names}${more}. ` +
    "Drop or choose others to replace them.";
}

/** Rank the chosen images against the sentence: one query, the images as candidates. */
async function search(form) {
  clearSearchResults();
  const text = form.text.value.trim();
  if (!searchImages.length) throw new Error("Choose one or more images to search first.");
  if (!text) throw new Error("Type a sentence to search the images for.");
  const images = searchImages; // the ones sent, even if others are chosen meanwhile
  let answer;
  try {
    answer = await api.rank([{ text }], images.map((chosen) => chosen.item));
  } catch (failure) {
    throw new Error(explainSearchFailure(failure, images));
  }
  // One query (the sentence), so row 0 holds every image's score.
  const results = images.map((chosen, i) => ({
    ...chosen,
    probability: answer.probabilities[0][i],
    cosine: answer.cosine_similarities[0][i],
  }));
  results.sort((a, b) => b.probability - a.probability);
  const scale = Math.max(...results.map((result) => Math.abs(result.cosine)), 1e-9);
  $("#search-output").replaceChildren(
    ...results.map((result, i) => resultCard(result, i + 1, scale)),
  );
  const best = results[0];
  $("#search-status").textContent =
    `${plural(results.length, "image")} ranked for “${text}”. ` +
    `Best match: ${best.name}, ${percent(best.probability)}.`;
}

function clearSearchResults() {
  $("#search-output").replaceChildren();
  $("#search-status").textContent = "";
}

/**
 * The service names a refused image by its place, `candidates[2].img_blob: ...`: say which
 * file that is. More images than the server's MAX_ITEMS, or a body over its MAX_BODY_BYTES,
 * are explained in words (the page does not know those limits before it asks).
 */
function explainSearchFailure(failure, images) {
  const places = failure.message.matchAll(/candidates\[(\d+)\]/g);
  const names = [...new Set([...places].map((match) => images[Number(match[1])]?.name))];
  const named = names.filter(Boolean);
  if (named.length) return `${named.join(", ")}: ${failure.message}`;
  const most = failure.message.match(/^candidates: List should have at most (\d+) item/);
  if (most) {
    return `Too many images: this service ranks at most ${most[1]} at once ` +
      `(${failure.message}). Choose fewer.`;
  }
  if (failure.status === 413 && failure.message.startsWith("body:")) {
    return `The images are too large to send together (${failure.message}). ` +
      "Choose fewer or smaller ones.";
  }
  return failure.message;
}

/** One ranked image: thumbnail, rank, name, probability and cosine (each with its bar). */
function resultCard(result, rank, scale) {
  const card = document.createElement("li");
  card.className = "result";
  const title = document.createElement("p");
  title.className = "result-title";
  const place = document.createElement("span");
  place.className = "rank";
  place.textContent = `#${rank}`;
  const name = document.createElement("span");
  name.className = "name";
  name.textContent = result.name;
  title.append(place, " ", name);
  const start = 0.5 + Math.min(0, result.cosine / scale) / 2;
  const width = Math.abs(result.cosine / scale) / 2;
  card.append(
    thumbnail(result),
    title,
    barCell(percent(result.probability), 0, result.probability, "probability", false, "div"),
    barCell(result.cosine.toFixed(4), start, width, "cosine", result.cosine < 0, "div"),
  );
  return card;
}

/**
 * A chosen image as an <img>, or a note where the browser cannot show it. Decorative: its
 * file name is written next to it.
 */
function thumbnail(chosen) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.alt = "";
  img.onerror = () => {
    const note = document.createElement("span");
    note.className = "thumb no-preview";
    note.textContent = "no preview";
    img.replaceWith(note);
  };
  img.src = chosen.url;
  return img;
}

/**
 * A table of labels with their probability (bar from 0 to 100 %) and cosine similarity.
 * With SigLIP the model scores each label on its own (sigmoid of scale x cosine + bias):
 * the column says so, and its scores need not sum to 100 %.
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
    "<th scope='col' class='score'></th><th scope='col'>cosine</th></tr></thead><tbody></tbody>";
  table.caption.textContent = caption;
  table.querySelector("th.score").textContent =
    scoring === "sigmoid" ? "sigmoid score (each label alone)" : "probability";
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

/**
 * A cell (or another element, `tag`) with its number as text and a decorative bar from
 * `start` for `width` (0..1); its class is `kind`, which also names it for screen readers
 * outside a table.
 */
function barCell(text, start, width, kind, negative = false, tag = "td") {
  const cell = document.createElement(tag);
  cell.className = kind;
  if (tag !== "td") {
    const label = document.createElement("span");
    label.className = "label";
    label.textContent = `${kind} `;
    cell.append(label);
  }
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

function percent(probability) {
  return `${(probability * 100).toFixed(2)} %`;
}

function plural(count, noun) {
  return `${count} ${noun}${count === 1 ? "" : "s"}`;
}

function formatBytes(size) {
  if (size < 1024) return `${size} bytes`;
  return size < 1048576 ? `${(size / 1024).toFixed(1)} KiB` : `${(size / 1048576).toFixed(1)} MiB`;
}
