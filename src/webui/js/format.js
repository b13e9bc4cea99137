// Pure formatting helpers: no DOM, no network (the browser tests call them directly too).

const numbers = new Intl.NumberFormat("en");

export function formatNumber(value) {
  return numbers.format(value);
}

export function formatBytes(bytes) {
  if (!Number.isFinite(bytes) || bytes < 0) return "?";
  if (bytes < 1024) return `${bytes} B`;
  const units = ["KiB", "MiB", "GiB"];
  let value = bytes / 1024;
  let unit = 0;
  while (value >= 1024 && unit < units.length - 1) {
    value /= 1024;
    unit += 1;
  }
  return `${value.toFixed(value < 10 ? 1 : 0)} ${units[unit]}`;
}

export function formatTime(iso) {
  const date = new Date(iso);
  if (Number.isNaN(date.getTime())) return "";
  return date.toLocaleString(undefined, { dateStyle: "medium", timeStyle: "short" });
}

export function sessionLabel(session) {
  const title = typeof session.title === "string" ? session.title.trim() : "";
  return title || "New conversation";
}

// How much of the model's context window a finished turn used, from the ChatResult (`done` event) and the
// model's entry of /api/models. ratio is null when the prompt size or the window is unknown.
export function contextUsage(result, model) {
  const window = model?.context_window_tokens ?? null;
  const prompt = Number.isFinite(result.prompt_tokens) ? result.prompt_tokens : null;
  const ratio = prompt !== null && window ? Math.min(1, prompt / window) : null;
  const parts = [];
  if (prompt !== null && window) {
    parts.push(
      `prompt ${formatNumber(prompt)} of ${formatNumber(window)} tokens (${Math.round(ratio * 100)}%)`,
    );
  } else if (prompt !== null) {
    parts.push(`prompt ${formatNumber(prompt)} tokens`);
  } else {
    parts.push("prompt size not reported");
  }
  const used = result.history_used ?? 0;
  const dropped = result.history_dropped ?? 0;
  let history = `history: ${used} message${used === 1 ? "" : "s"} used`;
  if (dropped > 0) history += `, ${dropped} older dropped to fit the window`;
  parts.push(history);
  return { ratio, text: parts.join(" · "), dropped };
}

export function answeredBy(result) {
  const provider = result.provider ? ` via ${result.provider}` : "";
  return `Answered by ${result.model}${provider}`;
}
