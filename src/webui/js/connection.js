// The connection banner: shown when the server cannot be reached (network down, or nginx cannot reach
// main-backend), it polls GET /api/health with a growing pause until main-backend answers, then calls
// onRecover so the page reloads what failed.
import { api } from "./api.js";
import { byId } from "./dom.js";

const FIRST_RETRY_S = 1;
const MAX_RETRY_S = 5;

export class ConnectionMonitor {
  constructor(onRecover) {
    this.onRecover = onRecover;
    this.down = false;
    this.delayS = FIRST_RETRY_S;
    this.timer = null;
    this.banner = byId("connection-banner");
    this.text = byId("connection-text");
    byId("connection-retry").addEventListener("click", () => this.probe());
    window.addEventListener("offline", () => this.markDown("this device is offline"));
    window.addEventListener("online", () => this.probe());
  }

  markDown(reason) {
    const first = !this.down;
    this.down = true;
    document.body.classList.add("is-offline");
    this.banner.hidden = false;
    this.banner.dataset.state = "down";
    this.reason = reason;
    if (first) this.delayS = FIRST_RETRY_S;
    this.schedule();
  }

  schedule() {
    clearTimeout(this.timer);
    this.text.textContent = `Connection to AutoBot lost (${this.reason}). Retrying in ${this.delayS} s…`;
    this.timer = setTimeout(() => this.probe(), this.delayS * 1000);
    this.delayS = Math.min(MAX_RETRY_S, this.delayS * 2);
  }

  async probe() {
    if (!this.down) return;
    clearTimeout(this.timer);
    this.text.textContent = "Connection to AutoBot lost. Checking…";
    try {
      await api.health();
    } catch {
      this.schedule();
      return;
    }
    this.down = false;
    document.body.classList.remove("is-offline");
    this.banner.dataset.state = "up";
    this.text.textContent = "Reconnected.";
    setTimeout(() => {
      if (!this.down) this.banner.hidden = true;
    }, 2500);
    await this.onRecover();
  }
}
