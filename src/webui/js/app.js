// AutoBot's chat page: conversations, the streamed reply, history paging, files, and the error states.
import { api } from "./api.js";
import { ConnectionMonitor } from "./connection.js";
import { byId, el, clear } from "./dom.js";
import { describeError } from "./errors.js";
import { FilesPanel } from "./files.js";
import { answeredBy, contextUsage, formatNumber, formatTime, sessionLabel } from "./format.js";
import { MessageList } from "./messages.js";
import { SessionStore } from "./sessions.js";
import { readEvents } from "./sse.js";

const PAGE_SIZE = 20;
const MODEL_KEY = "autobot.model";
const NARROW = window.matchMedia("(max-width: 760px)");

class App {
  constructor() {
    this.sessions = new SessionStore(api);
    this.models = new Map();
    this.defaultModel = null;
    this.nextBefore = null;
    this.loadingOlder = false;
    this.busy = false;
    this.abort = null;
    this.cooldownTimer = null;
    this.stale = { models: true, sessions: true, messages: false };

    this.form = byId("composer");
    this.input = byId("message");
    this.sendButton = byId("send");
    this.stopButton = byId("stop");
    this.modelSelect = byId("model");
    this.notice = byId("chat-notice");
    this.title = byId("chat-title");
    this.sessionList = byId("session-list");
    this.sessionsEmpty = byId("sessions-empty");
    this.olderButton = byId("load-older");
    this.historyStatus = byId("history-status");
    this.meter = byId("context-usage");
    this.meterText = byId("context-text");
    this.sidebar = byId("sidebar");
    this.sidebarToggle = byId("sidebar-toggle");
    this.messages = new MessageList(byId("message-list"), byId("messages-scroller"));
    this.connection = new ConnectionMonitor(() => this.recover());
    this.files = new FilesPanel({
      ensureSession: () => this.ensureSession(),
      currentId: () => this.sessions.currentId,
      onError: (err, info) => this.backgroundError(err, info),
    });
  }

  async start() {
    this.wire();
    this.showRelease();
    await this.loadModels();
    await this.refreshSessions();
    await this.open(this.sessions.currentId, { keepIfMissing: this.stale.sessions });
    document.body.dataset.ready = "true";
  }

  wire() {
    this.form.addEventListener("submit", (event) => {
      event.preventDefault();
      this.send();
    });
    this.input.addEventListener("keydown", (event) => {
      // Enter sends, Shift+Enter is a new line; never while an input method is composing a character.
      if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
        event.preventDefault();
        this.send();
      }
    });
    this.stopButton.addEventListener("click", () => this.abort?.abort());
    byId("new-session").addEventListener("click", () => this.startNew());
    this.olderButton.addEventListener("click", () => this.loadOlder());
    this.modelSelect.addEventListener("change", () => {
      localStorage.setItem(MODEL_KEY, this.modelSelect.value);
    });
    this.sidebarToggle.addEventListener("click", () => this.toggleSidebar());
    document.addEventListener("keydown", (event) => {
      if (event.key === "Escape" && document.body.classList.contains("sidebar-open")) {
        this.toggleSidebar(false);
      }
    });
    NARROW.addEventListener("change", () => this.toggleSidebar(false, { focus: false }));
    // Scrolling to the top of the history loads the previous page (the button does the same by keyboard).
    const observer = new IntersectionObserver(
      (entries) => {
        if (entries.some((e) => e.isIntersecting) && this.nextBefore !== null) this.loadOlder();
      },
      { root: byId("messages-scroller"), rootMargin: "40px 0px 0px 0px" },
    );
    observer.observe(byId("history-top"));
  }

  toggleSidebar(open = !document.body.classList.contains("sidebar-open"), { focus = true } = {}) {
    document.body.classList.toggle("sidebar-open", open);
    this.sidebarToggle.setAttribute("aria-expanded", String(open));
    if (!focus) return;
    if (open) byId("sessions-heading").focus();
    else this.sidebarToggle.focus();
  }

  async showRelease() {
    // The serving release's manifest (nginx serves it as /release.json); absent in development.
    try {
      const response = await fetch("release.json", { cache: "no-store" });
      if (!response.ok) return;
      // The id already ends with the short commit (UTC time + commit).
      const { id } = await response.json();
      if (id) byId("release").textContent = `Release ${id}`;
    } catch {
      // No release information is shown when the file is missing or unreadable.
    }
  }

  // --- models -----------------------------------------------------------------------------------------

  async loadModels() {
    try {
      const { default: fallback, models } = await api.models();
      this.models = new Map(models.map((m) => [m.name, m]));
      this.defaultModel = fallback;
      const wanted = localStorage.getItem(MODEL_KEY);
      clear(this.modelSelect);
      for (const model of models) {
        const label = `${model.name} (${formatNumber(model.context_window_tokens)} tokens)`;
        this.modelSelect.append(el("option", { text: label, attrs: { value: model.name } }));
      }
      this.modelSelect.value = this.models.has(wanted) ? wanted : fallback;
      this.modelSelect.disabled = false;
      this.stale.models = false;
    } catch (err) {
      this.backgroundError(err, describeError(err), "Could not load the list of models");
    }
  }

  // --- conversations ----------------------------------------------------------------------------------

  async refreshSessions() {
    let sessions;
    try {
      sessions = await this.sessions.list();
      this.stale.sessions = false;
    } catch (err) {
      this.backgroundError(err, describeError(err), "Could not load your conversations");
      return;
    }
    const current = this.sessions.currentId;
    clear(this.sessionList);
    for (const session of sessions) {
      const id = session.session_id;
      const label = sessionLabel(session);
      const when = formatTime(session.updated_at ?? session.created_at);
      const count = session.message_count ?? null;
      const details = [when, count !== null ? `${count} messages` : null].filter(Boolean).join(" · ");
      const open = el(
        "button",
        {
          class: "session-open",
          attrs: { type: "button", "aria-current": id === current ? "true" : null },
          on: { click: () => this.open(id, { focusInput: true }) },
        },
        el("span", { class: "session-title", text: label }),
        el("span", { class: "session-details", text: details }),
      );
      const remove = el("button", {
        class: "button-small button-danger",
        text: "Delete",
        attrs: { type: "button", "aria-label": `Delete conversation: ${label}` },
        on: { click: () => this.deleteSession(id, label) },
      });
      this.sessionList.append(el("li", { class: "session", attrs: { "data-session-id": id } }, open, remove));
    }
    this.sessionsEmpty.hidden = sessions.length > 0;
    if (current && !sessions.some((s) => s.session_id === current)) {
      // Deleted elsewhere, or not ours: forget it rather than show a conversation we cannot read.
      this.sessions.currentId = null;
      if (this.messages.count > 0) await this.open(null);
    }
  }

  // Open a conversation (null: a new, not yet created one). Loads the newest page of its history.
  async open(id, { focusInput = false, keepIfMissing = false } = {}) {
    this.abort?.abort();
    this.sessions.currentId = id;
    this.messages.clear();
    this.nextBefore = null;
    this.olderButton.hidden = true;
    this.historyStatus.textContent = "";
    this.setMeter(null);
    this.markCurrent(id);
    this.title.textContent = id ? this.titleOf(id) : "New conversation";
    if (NARROW.matches) this.toggleSidebar(false, { focus: false });
    if (id) {
      try {
        const page = await api.messages(id, { limit: PAGE_SIZE });
        this.messages.showPage(page.messages);
        this.setOlder(page.next_before);
        this.messages.scrollToBottom();
        this.stale.messages = false;
      } catch (err) {
        const info = describeError(err);
        if (info.sessionGone && !keepIfMissing) {
          this.sessions.currentId = null;
          this.title.textContent = "New conversation";
        } else {
          this.stale.messages = true;
        }
        this.backgroundError(err, info, "Could not load this conversation");
      }
    }
    await this.files.refresh();
    if (focusInput) this.input.focus();
  }

  titleOf(id) {
    const item = this.sessionList.querySelector(`li[data-session-id="${CSS.escape(id)}"] .session-title`);
    return item?.textContent || "Conversation";
  }

  markCurrent(id) {
    for (const item of this.sessionList.children) {
      const button = item.querySelector(".session-open");
      if (item.dataset.sessionId === id) button.setAttribute("aria-current", "true");
      else button.removeAttribute("aria-current");
    }
  }

  setOlder(nextBefore) {
    this.nextBefore = nextBefore ?? null;
    this.olderButton.hidden = this.nextBefore === null;
    if (this.nextBefore === null && this.messages.count > 0) {
      this.historyStatus.textContent = "Start of the conversation.";
    }
  }

  async loadOlder() {
    const id = this.sessions.currentId;
    if (this.loadingOlder || this.nextBefore === null || !id) return;
    this.loadingOlder = true;
    this.olderButton.disabled = true;
    this.historyStatus.textContent = "Loading older messages…";
    try {
      const page = await api.messages(id, { limit: PAGE_SIZE, before: this.nextBefore });
      if (this.sessions.currentId !== id) return;
      this.messages.showPage(page.messages, { older: true });
      this.historyStatus.textContent = `Loaded ${page.messages.length} older messages.`;
      this.setOlder(page.next_before);
    } catch (err) {
      this.historyStatus.textContent = "";
      this.backgroundError(err, describeError(err), "Could not load older messages");
    } finally {
      this.loadingOlder = false;
      this.olderButton.disabled = false;
    }
  }

  async startNew() {
    await this.open(null, { focusInput: true });
  }

  async ensureSession() {
    const current = this.sessions.currentId;
    if (current) return current;
    const session = await this.sessions.create();
    this.sessions.currentId = session.session_id;
    await this.refreshSessions();
    this.markCurrent(session.session_id);
    await this.files.refresh();
    return session.session_id;
  }

  async deleteSession(id, label) {
    if (!window.confirm(`Delete the conversation "${label}"? Its messages and files will be removed.`)) return;
    try {
      await this.sessions.remove(id);
    } catch (err) {
      this.backgroundError(err, describeError(err), "Could not delete the conversation");
      return;
    }
    this.say(`Deleted the conversation "${label}".`, "info");
    if (this.sessions.currentId === null) await this.open(null);
    await this.refreshSessions();
    byId("new-session").focus();
  }

  // --- sending and streaming --------------------------------------------------------------------------

  async send() {
    const text = this.input.value;
    if (this.busy || this.sendButton.disabled) return;
    if (!text.trim()) {
      this.say("Type a message first.", "info");
      this.input.focus();
      return;
    }
    this.hideNotice();
    this.setBusy(true);
    let sessionId;
    try {
      sessionId = await this.ensureSession();
    } catch (err) {
      this.turnFailed(err, text, null, null);
      this.setBusy(false);
      return;
    }
    this.input.value = "";
    const userItem = this.messages.addUser(text);
    const reply = this.messages.addReply();
    this.abort = new AbortController();
    const body = { message: text, session_id: sessionId, model: this.modelSelect.value || null };
    // Once the stream has started, main-backend has saved the message: a failure after that point must not
    // put the text back for a second send.
    let started = false;
    let finished = false;
    try {
      const response = await api.chatStream(body, this.abort.signal);
      started = true;
      userItem.classList.remove("is-pending");
      for await (const { event, data } of readEvents(response)) {
        if (event === "chunk") {
          reply.append(data.text ?? "");
        } else if (event === "done") {
          finished = true;
          userItem.dataset.messageId = data.message_id ?? "";
          const usage = contextUsage(data, this.models.get(data.model));
          reply.finish(data, { ...usage, answeredBy: answeredBy(data) });
          this.setMeter(usage);
        } else if (event === "error") {
          finished = true;
          this.streamError(data, reply);
        }
      }
      if (!finished) this.cutOff(reply, null);
      this.refreshSessions().then(() => {
        if (this.sessions.currentId === sessionId) this.title.textContent = this.titleOf(sessionId);
      });
    } catch (err) {
      if (err?.name === "AbortError") {
        reply.fail("Stopped. The server may still save the full reply; reopen the conversation to see it.");
        userItem.classList.remove("is-pending");
      } else if (started) {
        this.cutOff(reply, err);
      } else {
        this.turnFailed(err, text, userItem, reply);
      }
    } finally {
      this.abort = null;
      this.setBusy(false);
      this.input.focus();
    }
  }

  // The stream ended without `done` or `error` (connection broken, proxy timeout): the message was saved,
  // the reply may be partly saved.
  cutOff(reply, err) {
    reply.fail("The reply was cut off before it finished.");
    this.say("The reply was cut off before it finished. Reopen the conversation to see what was saved.", "error");
    const info = err ? describeError(err) : null;
    if (info?.connectionLost) this.connection.markDown(err.detail ?? err.message);
  }

  // An `error` event: the reply started and then failed; the message itself was saved before streaming.
  streamError(data, reply) {
    const detail = typeof data?.detail === "string" ? data.detail : "the reply failed";
    reply.fail(`The reply failed: ${detail}`);
    this.say(`The reply failed: ${detail}`, "error");
  }

  turnFailed(err, text, userItem, reply) {
    const info = describeError(err);
    if (userItem) {
      userItem.classList.remove("is-pending");
      if (info.saved) {
        userItem.classList.add("is-saved-unanswered");
        userItem.append(el("div", { class: "message-meta", text: "Saved; no reply yet." }));
      } else {
        userItem.remove();
      }
    }
    reply?.fail(info.message, { keepText: false });
    if (info.restoreText && !this.input.value) this.input.value = text;
    if (info.sessionGone) {
      this.sessions.currentId = null;
      this.refreshSessions();
    }
    this.say(info.message, "error");
    if (info.connectionLost) this.connection.markDown(err.detail ?? err.message);
    if (info.retryAfterS) this.cooldown(info.retryAfterS);
  }

  setBusy(busy) {
    this.busy = busy;
    this.form.setAttribute("aria-busy", String(busy));
    this.sendButton.hidden = busy;
    this.stopButton.hidden = !busy;
    if (!busy) this.sendButton.disabled = this.cooldownTimer !== null;
  }

  // Honour Retry-After: the send button waits, counting down.
  cooldown(seconds) {
    clearInterval(this.cooldownTimer);
    let left = Math.max(1, Math.ceil(seconds));
    this.sendButton.disabled = true;
    this.sendButton.textContent = `Send (${left} s)`;
    this.cooldownTimer = setInterval(() => {
      left -= 1;
      if (left > 0) {
        this.sendButton.textContent = `Send (${left} s)`;
        return;
      }
      clearInterval(this.cooldownTimer);
      this.cooldownTimer = null;
      this.sendButton.textContent = "Send";
      this.sendButton.disabled = false;
    }, 1000);
  }

  setMeter(usage) {
    if (!usage || usage.ratio === null) {
      this.meter.value = 0;
      this.meterText.textContent = usage ? usage.text : "No reply yet in this view.";
      return;
    }
    this.meter.value = usage.ratio;
    this.meterText.textContent = usage.text;
  }

  // --- notices and recovery ---------------------------------------------------------------------------

  say(message, kind) {
    this.notice.textContent = message;
    this.notice.dataset.kind = kind;
    this.notice.hidden = false;
  }

  hideNotice() {
    this.notice.hidden = true;
    this.notice.textContent = "";
  }

  backgroundError(err, info, what) {
    if (info.connectionLost) {
      this.connection.markDown(err.detail ?? err.message);
      return;
    }
    if (what) this.say(`${what}: ${info.message}`, "error");
  }

  async recover() {
    this.hideNotice();
    if (this.stale.models) await this.loadModels();
    await this.refreshSessions();
    if (this.stale.messages) await this.open(this.sessions.currentId);
    else await this.files.refresh();
  }
}

new App().start();
