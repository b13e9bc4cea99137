// The user's conversations. main-backend issues session ids and lists the ones of this browser's identity
// (an HttpOnly cookie the page never touches); the page only remembers which one is open, in localStorage,
// so a reload reopens it.
const CURRENT_KEY = "autobot.currentSession";

export class SessionStore {
  constructor(api, storage = window.localStorage) {
    this.api = api;
    this.storage = storage;
  }

  get currentId() {
    return this.storage.getItem(CURRENT_KEY);
  }

  set currentId(id) {
    if (id) this.storage.setItem(CURRENT_KEY, id);
    else this.storage.removeItem(CURRENT_KEY);
  }

  async list() {
    return (await this.api.listSessions()).sessions;
  }

  async create() {
    return await this.api.createSession();
  }

  async remove(id) {
    await this.api.deleteSession(id);
    if (this.currentId === id) this.currentId = null;
  }
}
