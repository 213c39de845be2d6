/**
 * A small browser client for the clip-service HTTP API: one method per route.
 *
 * Copy it as an example: plain `fetch`, JSON in and out, no dependencies.
 *
 *   import { ClipClient, imageItemFromFile } from "./api.js";
 *   const api = new ClipClient("http://localhost:3000/");
 *   const image = await imageItemFromFile(file);          // from <input type="file">
 *   const { caption } = await api.caption(image);
 *   const { scores } = await api.classify(image, { labels: ["cat", "dog"] });
 *
 * Every method resolves to the service's JSON answer, or rejects with an `ApiError`
 * whose `message` can be shown to a person as it is: the service's own
 * `{"error": "<field>: <problem>"}` for a bad request, or a short explanation for an
 * overloaded service (503), a timeout (504) or a network failure.
 *
 * Calling a service on another origin needs CORS enabled there (`CORS_ALLOW_ORIGINS`).
 *
 * A service with API keys (`API_KEYS`) answers 401 without one: give the key as
 * `new ClipClient(url, { apiKey })`, and/or an `askForKey` function that the client calls
 * on a 401 to get one (e.g. from the user) before it sends the request again.
 */

/** A failed call; `status` is the HTTP status, or 0 when the service was not reached. */
export class ApiError extends Error {
  constructor(message, status) {
    super(message);
    this.name = "ApiError";
    this.status = status;
  }
}

export class ClipClient {
  /**
   * @param {string | URL} baseUrl the service's root, e.g. "http://localhost:3000/"
   * @param {object} [options]
   * @param {string | null} [options.apiKey] sent as `Authorization: Bearer <key>` on every call
   * @param {(refused: boolean) => Promise<string | null>} [options.askForKey] called when the
   *   service answers 401 (`refused`: a key was sent and refused); resolves to the key to
   *   retry with, or null to give up (the call then fails with the 401)
   */
  constructor(baseUrl, { apiKey = null, askForKey = null } = {}) {
    this.baseUrl = new URL(baseUrl);
    this.apiKey = apiKey;
    this.askForKey = askForKey;
  }

  /**
   * GET /model: the served model, its backend, device, embedding size, scoring rule
   * ("softmax" for CLIP, "sigmoid" for SigLIP), batching, and its captioner's detail levels.
   */
  model() {
    return this.#call("GET", "model");
  }

  /**
   * POST /caption: `{caption}`, the caption of an image item.
   * @param {string | null} detail a `caption_detail` of GET /model's
   *   `interrogation.captioner.caption_details` (Florence-2), or null for the default
   */
  caption(image, detail = null) {
    return this.#call("POST", "caption", { image, ...(detail && { caption_detail: detail }) });
  }

  /**
   * POST /interrogate: `{prompt, caption, mode}`, a clip-interrogator prompt.
   * @param {object} image an image item, `{img_blob}` or `{img_uri}`
   * @param {"best" | "classic" | "fast" | "negative"} mode
   * @param {string | null} detail the caption's `caption_detail`, as for `caption`
   */
  interrogate(image, mode = "best", detail = null) {
    const body = { image, mode, ...(detail && { caption_detail: detail }) };
    return this.#call("POST", "interrogate", body);
  }

  /**
   * POST /classify: `{scores: [{label, probability, cosine, group}]}`, the top k of each
   * group, most probable first. Give either `labels` (your own, each put into `template`
   * before it is encoded) or `labelSet` ("pets", "wearables": stored, with their own
   * template).
   */
  classify(image, { labels, labelSet, template = "a photo of a {}", topK = 5 } = {}) {
    const body = labelSet
      ? { image, label_set: labelSet, top_k: topK }
      : { image, labels, template, top_k: topK };
    return this.#call("POST", "classify", body);
  }

  /**
   * POST /rank: `{probabilities, cosine_similarities}`, one row per query and one column
   * per candidate. Queries and candidates are items: `{text}`, `{img_blob}` or `{img_uri}`.
   */
  rank(queries, candidates) {
    return this.#call("POST", "rank", { queries, candidates });
  }

  /**
   * One request; resolves to the parsed JSON answer or rejects with an ApiError. A 401 asks
   * `askForKey` for a key and sends the request again with it, until the service accepts
   * it or no key is given.
   */
  async #call(method, route, body) {
    const url = new URL(route, this.baseUrl);
    for (;;) {
      const sentKey = this.apiKey;
      const response = await this.#send(url, method, body, sentKey);
      if (response.status === 401 && this.askForKey) {
        // Another call may have got a new key meanwhile: try that one before asking.
        if (this.apiKey !== sentKey) continue;
        const key = await this.askForKey(Boolean(sentKey));
        if (key) {
          this.apiKey = key;
          continue;
        }
      }
      const answer = await readAnswer(response);
      if (response.ok) return answer;
      throw new ApiError(describeFailure(response, answer), response.status);
    }
  }

  async #send(url, method, body, key) {
    const init = { method, headers: { accept: "application/json" } };
    if (key) init.headers.authorization = `Bearer ${key}`;
    if (body !== undefined) {
      init.headers["content-type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    try {
      return await fetch(url, init);
    } catch (cause) {
      // fetch rejects only when no answer came at all: offline, refused, DNS, CORS.
      throw new ApiError(`Could not reach the service at ${url.origin} (${cause.message}).`, 0);
    }
  }
}

/** An image item for the API from a File or Blob: `{img_blob: "<base64>"}`. */
export function imageItemFromFile(file) {
  return new Promise((resolve, reject) => {
    const reader = new FileReader();
    // A data: URL, "data:<type>;base64,<data>"; the service takes the plain base64 part
    // (it accepts "data:image/...;base64," URLs too, but a file's type may be anything).
    reader.onload = () => resolve({ img_blob: reader.result.slice(reader.result.indexOf(",") + 1) });
    reader.onerror = () => reject(new ApiError(`Could not read ${file.name}.`, 0));
    reader.readAsDataURL(file);
  });
}

/** The body as JSON when it is JSON, else as text (proxies answer errors in HTML). */
async function readAnswer(response) {
  const text = await response.text();
  if (!(response.headers.get("content-type") || "").includes("json")) return text;
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

/** A sentence for a failed answer: the service's own message where it sent one. */
function describeFailure(response, answer) {
  const { status } = response;
  if (status === 503) {
    // Busy, restarting, or label tables still being made: the service says which, and
    // Retry-After says when to try again.
    const why = answer && typeof answer.error === "string" ? `: ${answer.error}` : "";
    const wait = Number(response.headers.get("retry-after"));
    const when = wait > 0 ? `in ${wait} s` : "in a moment";
    return `The service is overloaded or still starting (503${why}). Try again ${when}.`;
  }
  if (status === 504) {
    return "The service took too long to answer (504). Try a faster mode or a smaller image.";
  }
  if (status === 401) return "This service needs an API key (401).";
  if (answer && typeof answer.error === "string") return answer.error; // {"error": "field: problem"}
  if (status === 429) return "Too many requests at once (429). Try again in a moment.";
  return `The service answered ${status} ${response.statusText}`.trim() + ".";
}
