// What the UI tells the user about a failed request: one pure function from the error to a decision.
import { ApiError, NetworkError } from "./api.js";

// Returns {message, saved, restoreText, connectionLost, retryAfterS, sessionGone}.
//   saved         the server kept the user's message (503 with saved_message_ids): do not send it again.
//   restoreText   put the text back in the composer, nothing was kept.
//   connectionLost the server could not be reached (network, or nginx could not reach main-backend).
export function describeError(err) {
  const base = {
    saved: false,
    restoreText: true,
    connectionLost: false,
    retryAfterS: null,
    sessionGone: false,
  };
  if (err instanceof NetworkError) {
    return {
      ...base,
      connectionLost: true,
      message: "No connection to AutoBot. Check your network; the page retries on its own.",
    };
  }
  if (!(err instanceof ApiError)) {
    return { ...base, message: `Something went wrong in this page: ${err?.message ?? err}` };
  }
  const retryAfterS = err.retryAfterS;
  const wait = retryAfterS ? ` Try again in ${retryAfterS} s.` : " Try again shortly.";
  const savedIds = err.body.saved_message_ids;
  if (err.status === 503 && Array.isArray(savedIds) && savedIds.length > 0) {
    return {
      ...base,
      saved: true,
      restoreText: false,
      retryAfterS,
      message: `The chat store is unavailable. Your message was saved, but no reply was generated.${wait}`,
    };
  }
  if (err.code === "backend_unavailable" || err.code === "backend_timeout") {
    return {
      ...base,
      connectionLost: true,
      retryAfterS,
      message: `AutoBot's server is not reachable right now (${err.detail}).`,
    };
  }
  if (err.status === 503) {
    return { ...base, retryAfterS, message: `Service unavailable: ${err.detail}.${wait}` };
  }
  if (err.status === 429) {
    return { ...base, retryAfterS, message: `Too many requests: ${err.detail}.${wait}` };
  }
  if (err.status === 404 && err.code === "session_not_found") {
    return {
      ...base,
      sessionGone: true,
      message: "This conversation no longer exists. Start a new one.",
    };
  }
  if (err.status === 413 || err.status === 422 || err.status === 400) {
    return { ...base, message: err.detail };
  }
  return { ...base, retryAfterS, message: `Error ${err.status}: ${err.detail}` };
}
