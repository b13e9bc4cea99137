// The user's conversations. main-backend issues session ids and lists the ones of this browser's identity
// (an HttpOnly cookie the page never touches); the page only remembers which one is open, in localStorage,
// so a reload reopens it.
//
// LEGACY (remove once every backend has the sessions API of issue 15): a main-backend without
// POST /api/chat/sessions answers 404/405 there. The page then makes a random id itself and keeps the list
// in localStorage, as the pre-issue-15 API allowed.
import { ApiError } from "./api.js";

const CURRENT_KEY = "autobot.currentSession";
const LEGACY_KEY = "autobot.legacySessions";

function routeMissing(err) {
  return err instanceof ApiError && (err.status === 404 || err.status === 405) && err.code !== "session_not_found";
}

function randomId() {
  const bytes = crypto.getRandomValues(new Uint8Array(16));
  return "s" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

export class SessionStore {
  constructor(api, storage = window.localStorage) {
    this.api = api;
    this.storage = storage;
    this.legacy = false;
  }

  get currentId() {
    return this.storage.getItem(CURRENT_KEY);
  }

  set currentId(id) {
    if (id) this.storage.setItem(CURRENT_KEY, id);
    else this.storage.removeItem(CURRENT_KEY);
  }

  async list() {
    if (!this.legacy) {
      try {
        return (await this.api.listSessions()).sessions;
      } catch (err) {
        if (!routeMissing(err)) throw err;
        this.legacy = true;
      }
    }
    return this.legacyList();
  }

  async create() {
    if (!this.legacy) {
      try {
        return await this.api.createSession();
      } catch (err) {
        if (!routeMissing(err)) throw err;
        this.legacy = true;
      }
    }
    const session = { session_id: randomId(), created_at: new Date().toISOString(), title: null };
    this.saveLegacy([session, ...this.legacyList()]);
    return session;
  }

  async remove(id) {
    if (this.legacy) {
      this.saveLegacy(this.legacyList().filter((s) => s.session_id !== id));
    } else {
      await this.api.deleteSession(id);
    }
    if (this.currentId === id) this.currentId = null;
  }

  // Legacy mode only: the server keeps no titles there, so the page does (the first message, shortened).
  noteMessage(id, text) {
    if (!this.legacy) return;
    const sessions = this.legacyList();
    for (const session of sessions) {
      if (session.session_id === id) {
        session.title ??= text.trim().replace(/\s+/g, " ").slice(0, 60) || null;
        session.updated_at = new Date().toISOString();
        session.message_count = (session.message_count ?? 0) + 2;
      }
    }
    this.saveLegacy(sessions);
  }

  legacyList() {
    try {
      const parsed = JSON.parse(this.storage.getItem(LEGACY_KEY) ?? "[]");
      return Array.isArray(parsed) ? parsed.filter((s) => typeof s?.session_id === "string") : [];
    } catch {
      return [];
    }
  }

  saveLegacy(sessions) {
    this.storage.setItem(LEGACY_KEY, JSON.stringify(sessions));
  }
}
