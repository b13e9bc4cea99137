import { NetworkError } from "./api.js";

// Server-sent events read from a fetch() response body (EventSource cannot POST a JSON body).
// The parser follows the WHATWG event-stream rules: lines end in \n, \r\n or \r (possibly split across
// network chunks), "field: value" lines accumulate, a blank line dispatches, lines starting with ":" are
// comments (the server's `: ping` heartbeat) and are only counted.

export class SseParser {
  constructor() {
    this.buffer = "";
    this.eventType = "";
    this.data = [];
    this.comments = 0;
  }

  // Feed decoded text; returns the events completed by it, as {event, data} (data is the raw string).
  push(text) {
    this.buffer += text;
    const events = [];
    for (;;) {
      const match = /\r\n|\r|\n/.exec(this.buffer);
      if (match === null) break;
      // A lone "\r" at the very end may be the first half of "\r\n": wait for the next chunk.
      if (match[0] === "\r" && match.index === this.buffer.length - 1) break;
      const line = this.buffer.slice(0, match.index);
      this.buffer = this.buffer.slice(match.index + match[0].length);
      const event = this.line(line);
      if (event !== null) events.push(event);
    }
    return events;
  }

  // The stream ended: a final event without its blank line is discarded, as the standard says.
  end() {
    this.buffer = "";
    this.eventType = "";
    this.data = [];
  }

  line(line) {
    if (line === "") {
      if (this.data.length === 0) {
        this.eventType = "";
        return null;
      }
      const event = { event: this.eventType || "message", data: this.data.join("\n") };
      this.eventType = "";
      this.data = [];
      return event;
    }
    if (line.startsWith(":")) {
      this.comments += 1;
      return null;
    }
    const colon = line.indexOf(":");
    const field = colon === -1 ? line : line.slice(0, colon);
    let value = colon === -1 ? "" : line.slice(colon + 1);
    if (value.startsWith(" ")) value = value.slice(1);
    if (field === "event") this.eventType = value;
    else if (field === "data") this.data.push(value);
    // "id" and "retry" do not apply to a one-shot POST stream; unknown fields are ignored.
    return null;
  }
}

// Yield {event, data} for each event of `response`'s body as it arrives; JSON data is parsed.
// A connection that breaks mid-stream raises NetworkError (an abort stays an AbortError).
export async function* readEvents(response) {
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  const parser = new SseParser();
  try {
    for (;;) {
      let chunk;
      try {
        chunk = await reader.read();
      } catch (err) {
        if (err?.name === "AbortError") throw err;
        throw new NetworkError(err);
      }
      const { value, done } = chunk;
      if (done) break;
      for (const event of parser.push(value)) {
        yield { event: event.event, data: parseData(event.data) };
      }
    }
  } finally {
    parser.end();
    reader.releaseLock();
  }
}

function parseData(raw) {
  try {
    return JSON.parse(raw);
  } catch {
    return { text: raw };
  }
}
