// The user API of main-backend, reached through nginx on the same origin (docs: the API contract).
// Every error becomes an ApiError (the server's JSON error: status, code, detail, extras, Retry-After)
// or a NetworkError (no HTTP answer at all), so the UI decides what to show in one place (errors.js).

export class ApiError extends Error {
  constructor(status, body, retryAfterS) {
    const detail = typeof body?.detail === "string" ? body.detail : `HTTP ${status}`;
    super(detail);
    this.name = "ApiError";
    this.status = status;
    this.body = body ?? {};
    this.code = typeof body?.error === "string" ? body.error : "http_" + status;
    this.detail = detail;
    this.retryAfterS = retryAfterS;
  }
}

export class NetworkError extends Error {
  constructor(cause) {
    super("no answer from the server");
    this.name = "NetworkError";
    this.cause = cause;
  }
}

// Retry-After is delta-seconds or an HTTP date; null when absent or unreadable.
export function parseRetryAfter(value, now = Date.now()) {
  if (value === null || value === undefined || value.trim() === "") return null;
  if (/^\d+$/.test(value.trim())) return Number.parseInt(value.trim(), 10);
  const when = Date.parse(value);
  if (Number.isNaN(when)) return null;
  return Math.max(0, Math.ceil((when - now) / 1000));
}

async function errorBody(response) {
  const type = response.headers.get("content-type") || "";
  try {
    if (type.includes("json")) return await response.json();
    const text = (await response.text()).trim();
    return { error: "http_" + response.status, detail: text.slice(0, 300) || response.statusText };
  } catch {
    return { error: "http_" + response.status, detail: response.statusText };
  }
}

async function send(method, path, { json, form, signal } = {}) {
  const init = { method, credentials: "same-origin", cache: "no-store", signal, headers: {} };
  if (json !== undefined) {
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(json);
  } else if (form !== undefined) {
    init.body = form;
  }
  init.headers.Accept = "application/json, text/event-stream";
  let response;
  try {
    response = await fetch(path, init);
  } catch (err) {
    if (err?.name === "AbortError") throw err;
    throw new NetworkError(err);
  }
  if (!response.ok) {
    throw new ApiError(
      response.status,
      await errorBody(response),
      parseRetryAfter(response.headers.get("retry-after")),
    );
  }
  return response;
}

async function json(method, path, options) {
  const response = await send(method, path, options);
  return response.status === 204 ? {} : response.json();
}

const enc = encodeURIComponent;

export const api = {
  health: () => json("GET", "/api/health"),
  models: () => json("GET", "/api/models"),
  listSessions: () => json("GET", "/api/chat/sessions"),
  createSession: () => json("POST", "/api/chat/sessions", { json: {} }),
  deleteSession: (id) => json("DELETE", `/api/chat/sessions/${enc(id)}`),
  messages(id, { limit, before } = {}) {
    const query = new URLSearchParams();
    if (limit) query.set("limit", String(limit));
    if (before !== null && before !== undefined) query.set("before", String(before));
    const text = query.toString();
    const suffix = text ? `?${text}` : "";
    return json("GET", `/api/chat/sessions/${enc(id)}/messages${suffix}`);
  },
  // Resolves once the headers arrived (status 200); read the events with sse.readEvents(response).
  chatStream: (body, signal) => send("POST", "/api/chat/stream", { json: body, signal }),
  files: (id) => json("GET", `/api/sessions/${enc(id)}/files`),
  upload(id, file) {
    const form = new FormData();
    form.append("file", file, file.name);
    return json("POST", `/api/sessions/${enc(id)}/files`, { form });
  },
  fileUrl: (id, fileId) => `/api/sessions/${enc(id)}/files/${enc(fileId)}`,
  deleteFile: (id, fileId) => json("DELETE", `/api/sessions/${enc(id)}/files/${enc(fileId)}`),
};
