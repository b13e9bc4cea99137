// The message list: history pages (oldest first, older pages prepended) and the reply being streamed.
import { el, clear } from "./dom.js";
import { formatTime } from "./format.js";

const ROLE_NAMES = { user: "You", assistant: "AutoBot", system: "System" };

function messageItem(role, text, { ts, id } = {}) {
  const body = el("div", { class: "message-text" }, text);
  const head = el(
    "div",
    { class: "message-head" },
    el("span", { class: "message-role", text: ROLE_NAMES[role] ?? role }),
    ts ? el("time", { class: "message-time", text: formatTime(ts), attrs: { datetime: ts } }) : null,
  );
  const item = el("li", { class: `message message-${role}`, attrs: { "data-message-id": id } }, head, body);
  return { item, body };
}

// One assistant reply as it streams: a single text node grows (appendData), so a screen reader in the
// role="log" list hears additions and the page never re-parses anything.
class StreamingReply {
  constructor(list, item, body) {
    this.list = list;
    this.item = item;
    this.text = document.createTextNode("");
    body.append(this.text);
    this.meta = el("div", { class: "message-meta" });
    item.append(this.meta);
  }

  append(text) {
    const follow = this.list.nearBottom();
    this.text.appendData(text);
    if (follow) this.list.scrollToBottom();
  }

  get received() {
    return this.text.data.length;
  }

  finish(result, usage) {
    this.item.setAttribute("aria-busy", "false");
    this.item.dataset.messageId = result.reply_id ?? "";
    this.item.classList.remove("is-streaming");
    this.meta.replaceChildren(
      el("span", { class: "meta-model", text: usage.answeredBy }),
      el("span", { class: "meta-usage", text: usage.text }),
    );
    if (usage.dropped > 0) this.item.classList.add("has-dropped-history");
  }

  fail(message, { keepText = true } = {}) {
    this.item.setAttribute("aria-busy", "false");
    this.item.classList.remove("is-streaming");
    this.item.classList.add("is-failed");
    if (!keepText || this.received === 0) this.item.remove();
    else this.meta.replaceChildren(el("span", { class: "meta-error", text: message }));
  }
}

export class MessageList {
  constructor(list, scroller) {
    this.list = list;
    this.scroller = scroller;
  }

  clear() {
    clear(this.list);
  }

  get count() {
    return this.list.children.length;
  }

  // A page from the messages route; older pages go on top, keeping what the reader looks at in place.
  showPage(messages, { older = false } = {}) {
    const items = messages.map((m) => messageItem(m.role, m.content, { ts: m.ts, id: m.id }).item);
    if (!older) {
      this.list.append(...items);
      return;
    }
    const fromBottom = this.scroller.scrollHeight - this.scroller.scrollTop;
    this.list.prepend(...items);
    this.scroller.scrollTop = this.scroller.scrollHeight - fromBottom;
  }

  addUser(text) {
    const { item } = messageItem("user", text, { ts: new Date().toISOString() });
    item.classList.add("is-pending");
    this.list.append(item);
    this.scrollToBottom();
    return item;
  }

  addReply() {
    const { item, body } = messageItem("assistant", "");
    item.classList.add("is-streaming");
    item.setAttribute("aria-busy", "true");
    this.list.append(item);
    this.scrollToBottom();
    return new StreamingReply(this, item, body);
  }

  nearBottom() {
    const s = this.scroller;
    return s.scrollHeight - s.scrollTop - s.clientHeight < 48;
  }

  scrollToBottom() {
    this.scroller.scrollTop = this.scroller.scrollHeight;
  }
}
