"""Driving the chat page in a real browser: what a user does, and what the tests read back (no tests here).

Every browser context is a separate browser profile (own cookies, own localStorage): a new user. Console
messages about the Content Security Policy and uncaught page errors are collected, and `Browsing.close()`
fails the test if there were any.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from playwright.sync_api import Browser, BrowserContext, Page, expect

TIMEOUT_MS = 20_000

# Installed in the page before a message is sent: records the text of the streaming reply at every DOM
# change while its item is aria-busy, so the test sees how the reply grew without racing the stream.
RECORD_STREAM = """
() => {
  window.__streamSnapshots = [];
  const list = document.getElementById("message-list");
  const observer = new MutationObserver(() => {
    const item = list.querySelector('li.message-assistant[aria-busy="true"]');
    if (item) window.__streamSnapshots.push(item.querySelector(".message-text").textContent);
  });
  observer.observe(list, { subtree: true, childList: true, characterData: true, attributes: true });
}
"""


@dataclass
class ChatPage:
    page: Page

    def open(self, base_url: str) -> ChatPage:
        self.page.goto(base_url + "/")
        self.wait_ready()
        return self

    def wait_ready(self) -> None:
        expect(self.page.locator("body")).to_have_attribute("data-ready", "true")

    @property
    def composer(self) -> Any:
        return self.page.get_by_label("Message", exact=True)

    @property
    def messages(self) -> Any:
        return self.page.locator("#message-list > li")

    @property
    def replies(self) -> Any:
        return self.page.locator("#message-list > li.message-assistant")

    @property
    def notice(self) -> Any:
        return self.page.locator("#chat-notice")

    @property
    def banner(self) -> Any:
        return self.page.locator("#connection-banner")

    def type_and_send(self, text: str) -> None:
        self.composer.fill(text)
        self.composer.press("Enter")

    def send_and_wait(self, text: str) -> str:
        """Send `text` with Enter; wait for the finished reply; return its text."""
        before = self.replies.count()
        self.type_and_send(text)
        reply = self.replies.nth(before)
        expect(reply).to_have_attribute("aria-busy", "false", timeout=TIMEOUT_MS)
        expect(reply.locator(".meta-model")).to_contain_text("Answered by")
        return str(reply.locator(".message-text").text_content())

    def record_stream(self) -> None:
        self.page.evaluate(RECORD_STREAM)

    def stream_snapshots(self) -> list[str]:
        snapshots: list[str] = self.page.evaluate("() => window.__streamSnapshots")
        return snapshots

    def current_session(self) -> str | None:
        value: str | None = self.page.evaluate("() => localStorage.getItem('autobot.currentSession')")
        return value

    def session_items(self) -> Any:
        return self.page.locator("#session-list > li")

    def screenshot(self, path: Path) -> Path:
        self.page.screenshot(path=str(path), full_page=False)
        return path


@dataclass
class Browsing:
    """Opens pages in fresh browser contexts and checks, at the end, that none broke the CSP or threw."""

    browser: Browser
    base_url: str
    contexts: list[BrowserContext] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def new_page(self, *, width: int = 1280, height: int = 800, scale: float = 1) -> ChatPage:
        context = self.browser.new_context(
            viewport={"width": width, "height": height}, device_scale_factor=scale, base_url=self.base_url
        )
        context.set_default_timeout(TIMEOUT_MS)
        self.contexts.append(context)
        page = context.new_page()
        page.on("console", self._console)
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        # Deleting asks for confirmation (window.confirm): the user says yes.
        page.on("dialog", lambda dialog: dialog.accept())
        return ChatPage(page)

    def _console(self, message: Any) -> None:
        if "Content Security Policy" in message.text or "Refused to" in message.text:
            self.problems.append(f"console: {message.text}")

    def close(self) -> list[str]:
        for context in self.contexts:
            context.close()
        return self.problems
