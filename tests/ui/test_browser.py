"""The chat page in a real headless browser (Debian's chromium through Playwright), through nginx.

The tests use only `target` (base URL + a way to stop and start main-backend), so the same code runs
against the local stack (default) or a deployed cluster (AUTOBOT_UI_BASE_URL). Screenshots are saved to
the artifacts folder (AUTOBOT_UI_ARTIFACTS, default tests/ui/artifacts/).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from ui_stack import UiTarget, require

require(browser=True, nginx=True)

from playwright.sync_api import Route, expect  # noqa: E402
from ui_page import TIMEOUT_MS, Browsing, ChatPage  # noqa: E402

PHONE = {"width": 360, "height": 740}


@pytest.fixture
def browsing(browser: Any, target: UiTarget) -> Iterator[Browsing]:
    session = Browsing(browser, target.base_url)
    yield session
    problems = session.close()
    assert not problems, problems


def open_chat(browsing: Browsing, **viewport: Any) -> ChatPage:
    return browsing.new_page(**viewport).open(browsing.base_url)


def test_reply_streams_in_steps_with_model_and_context_usage(browsing: Browsing, artifacts: Path) -> None:
    chat = open_chat(browsing)
    expect(chat.page).to_have_title("AutoBot")
    expect(chat.page.locator("#model option")).not_to_have_count(0)
    chat.record_stream()
    # Shift+Enter is a new line; Enter sends.
    chat.composer.fill("First line")
    chat.composer.press("Shift+Enter")
    chat.composer.type("second line")
    assert chat.composer.input_value() == "First line\nsecond line"
    chat.composer.press("Enter")

    reply = chat.replies.first
    expect(reply).to_have_attribute("aria-busy", "false", timeout=TIMEOUT_MS)
    final = str(reply.locator(".message-text").text_content())
    partial = [s for s in chat.stream_snapshots() if s and s != final]
    # The DOM held at least two different partial texts while streaming, each a growing prefix of the reply.
    assert len(set(partial)) >= 2, partial
    assert all(final.startswith(s) for s in partial)
    assert sorted(partial, key=len) == partial

    user = chat.messages.first
    expect(user).to_have_class(re.compile("message-user"))
    expect(user.locator(".message-text")).to_have_text("First line\nsecond line")
    expect(chat.composer).to_be_focused()
    expect(chat.composer).to_have_value("")
    model = chat.page.locator("#model").input_value()
    expect(reply.locator(".meta-model")).to_have_text(re.compile(rf"^Answered by {re.escape(model)}"))
    expect(reply.locator(".meta-usage")).to_contain_text(re.compile(r"history: \d+ messages? used"))
    expect(chat.page.locator("#context-text")).to_contain_text("history:")
    # The conversation is listed under the server's title (the first message) and marked as the open one.
    current = chat.session_items().filter(has=chat.page.locator('[aria-current="true"]'))
    expect(current).to_have_count(1)
    expect(current).to_contain_text("First line")
    expect(chat.page.locator("#release")).to_contain_text("Release")
    chat.screenshot(artifacts / "desktop-chat.png")


def test_reload_shows_the_history_and_older_pages_load_on_scroll_up(
    browsing: Browsing, artifacts: Path
) -> None:
    chat = open_chat(browsing)
    chat.send_and_wait("turn 0: the oldest message")
    session_id = chat.current_session()
    assert session_id
    # More history than one page (20 messages), written through the API as this browser (same cookies).
    for turn in range(1, 12):
        response = chat.page.request.post(
            "/api/chat", data={"message": f"turn {turn}", "session_id": session_id}, timeout=TIMEOUT_MS
        )
        assert response.status == 200, response.text()

    chat.page.reload()
    chat.wait_ready()
    assert chat.current_session() == session_id
    expect(chat.messages).to_have_count(20)
    expect(chat.messages.last).to_contain_text("turn 11")
    expect(chat.page.locator("#load-older")).to_be_visible()
    chat.screenshot(artifacts / "desktop-history.png")

    chat.page.locator("#messages-scroller").evaluate("(el) => { el.scrollTop = 0; }")
    expect(chat.messages).to_have_count(24)
    expect(chat.messages.first).to_contain_text("turn 0: the oldest message")
    expect(chat.page.locator("#history-status")).to_have_text("Start of the conversation.")
    expect(chat.page.locator("#load-older")).to_be_hidden()


def test_upload_list_download_and_delete_a_file(browsing: Browsing, artifacts: Path) -> None:
    chat = open_chat(browsing)
    chat.send_and_wait("a conversation with a file")
    session_id = chat.current_session()
    content = "notes for the test\n" * 10
    chat.page.get_by_label("Upload a file").set_input_files(
        {"name": "notes.txt", "mimeType": "text/plain", "buffer": content.encode()}
    )
    chat.page.get_by_role("button", name="Upload", exact=True).click()
    files = chat.page.locator("#file-list > li")
    expect(files).to_have_count(1)
    expect(files.first.locator(".file-name")).to_have_text("notes.txt")
    expect(files.first.locator(".file-details")).to_contain_text("190 B")
    expect(chat.page.locator("#files-status")).to_contain_text("Uploaded notes.txt")
    href = files.first.locator("a").get_attribute("href")
    assert href is not None
    assert chat.page.request.get(href).text() == content
    chat.screenshot(artifacts / "desktop-files.png")

    chat.page.get_by_role("button", name="Delete file notes.txt").click()
    expect(files).to_have_count(0)
    expect(chat.page.locator("#files-status")).to_contain_text("Deleted notes.txt")
    listed = chat.page.request.get(f"/api/sessions/{session_id}/files").json()
    assert listed["files"] == []


def test_backend_outage_shows_the_error_and_the_page_recovers(
    browsing: Browsing, target: UiTarget, artifacts: Path
) -> None:
    if target.backend is None:
        pytest.skip("this target offers no way to stop main-backend")
    chat = open_chat(browsing)
    chat.send_and_wait("before the outage")
    target.backend.stop()
    try:
        chat.type_and_send("during the outage")
        expect(chat.banner).to_be_visible()
        expect(chat.banner).to_contain_text("Connection to AutoBot lost")
        expect(chat.notice).to_contain_text("not reachable")
        # Nothing was kept by the server, so the text is back in the composer and no bubble is left.
        expect(chat.composer).to_have_value("during the outage")
        expect(chat.messages).to_have_count(2)
        chat.screenshot(artifacts / "desktop-outage.png")
    finally:
        target.backend.start()
    expect(chat.banner).to_contain_text("Reconnected", timeout=TIMEOUT_MS)
    expect(chat.banner).to_be_hidden(timeout=TIMEOUT_MS)
    chat.composer.press("Enter")
    expect(chat.replies).to_have_count(2)
    expect(chat.replies.last).to_have_attribute("aria-busy", "false")
    expect(chat.notice).to_be_hidden()
    chat.screenshot(artifacts / "desktop-recovered.png")


def test_server_errors_show_the_servers_detail(browsing: Browsing) -> None:
    chat = open_chat(browsing)
    # A message far larger than the 4,096-token window of the default model: 413 context_too_large.
    chat.type_and_send("word " * 6000)
    expect(chat.notice).to_contain_text("tokens")
    expect(chat.notice).to_have_attribute("data-kind", "error")
    expect(chat.messages).to_have_count(0)
    assert chat.composer.input_value().startswith("word word")
    # Over main-backend's message size limit (262,144 characters): 422 with its own detail.
    chat.composer.fill("x" * 262_145)
    chat.composer.press("Enter")
    expect(chat.notice).to_contain_text("262144")
    expect(chat.messages).to_have_count(0)


def test_store_unavailable_says_the_message_was_saved_and_honours_retry_after(browsing: Browsing) -> None:
    chat = open_chat(browsing)

    # A 503 exactly as the API contract describes it (Redis down after the message reached the transcript);
    # served by the browser's request interception, since taking the shared Redis down would hit other tests.
    def store_down(route: Route) -> None:
        body = {
            "error": "history_unavailable",
            "detail": "the chat history store (Redis) is unavailable; try again shortly.",
            "saved_message_ids": ["m-1"],
        }
        route.fulfill(
            status=503, headers={"Retry-After": "3"}, content_type="application/json", body=json.dumps(body)
        )

    chat.page.route("**/api/chat/stream", store_down)
    chat.type_and_send("saved while the store is down")
    expect(chat.notice).to_contain_text("Your message was saved")
    expect(chat.page.locator("#send")).to_be_disabled()
    expect(chat.page.locator("#send")).to_have_text(re.compile(r"Send \(\d s\)"))
    expect(chat.messages.first).to_contain_text("Saved; no reply yet.")
    expect(chat.composer).to_have_value("")  # not restored: sending it again would duplicate it
    expect(chat.page.locator("#send")).to_be_enabled(timeout=6_000)
    expect(chat.page.locator("#send")).to_have_text("Send")


def test_a_reply_that_fails_or_breaks_off_keeps_the_saved_message(browsing: Browsing) -> None:
    chat = open_chat(browsing)
    # Streams as main-backend sends them when the model fails half way (an `error` event after chunks), and
    # one that just stops (connection cut, proxy timeout), served by request interception.
    bodies = [
        'event: chunk\ndata: {"text":"Half a"}\n\n'
        'event: error\ndata: {"error":"llm_unavailable","detail":"the language model is unavailable"}\n\n',
        'event: chunk\ndata: {"text":"Cut"}\n\n: ping\n\nevent: chunk\ndata: {"text":" off"}\n\n',
    ]

    def stream(route: Route) -> None:
        route.fulfill(status=200, content_type="text/event-stream", body=bodies.pop(0))

    chat.page.route("**/api/chat/stream", stream)
    chat.type_and_send("the model fails")
    expect(chat.notice).to_contain_text("The reply failed: the language model is unavailable")
    expect(chat.replies.first.locator(".message-text")).to_have_text("Half a")
    expect(chat.replies.first).to_have_attribute("aria-busy", "false")
    expect(chat.composer).to_have_value("")  # the message was saved before the stream began

    chat.type_and_send("the stream breaks")
    expect(chat.notice).to_contain_text("cut off")
    expect(chat.replies.nth(1).locator(".message-text")).to_have_text("Cut off")
    expect(chat.messages).to_have_count(4)
    expect(chat.composer).to_have_value("")


def test_phone_width(browsing: Browsing, artifacts: Path) -> None:
    chat = open_chat(browsing, width=PHONE["width"], height=PHONE["height"], scale=2)
    chat.send_and_wait("Hello from a phone-sized screen")
    overflow = chat.page.evaluate("() => document.documentElement.scrollWidth")
    assert overflow <= PHONE["width"]
    expect(chat.page.locator("#sidebar")).to_be_hidden()
    chat.screenshot(artifacts / "phone-chat.png")

    toggle = chat.page.get_by_role("button", name="Conversations")
    toggle.click()
    expect(toggle).to_have_attribute("aria-expanded", "true")
    expect(chat.page.locator("#sidebar")).to_be_visible()
    expect(chat.page.locator("#sessions-heading")).to_be_focused()
    chat.screenshot(artifacts / "phone-sidebar.png")
    chat.page.keyboard.press("Escape")
    expect(chat.page.locator("#sidebar")).to_be_hidden()
    expect(toggle).to_be_focused()


def test_a_second_browser_sees_none_of_the_first_ones_sessions(browsing: Browsing) -> None:
    first = open_chat(browsing)
    first.send_and_wait("only the first browser may read this")
    session_id = first.current_session()
    assert session_id
    expect(first.session_items()).not_to_have_count(0)

    second = open_chat(browsing)
    expect(second.session_items()).to_have_count(0)
    expect(second.page.locator("#sessions-empty")).to_be_visible()
    listed = second.page.request.get("/api/chat/sessions").json()["sessions"]
    assert session_id not in {s["session_id"] for s in listed}
    stolen = second.page.request.get(f"/api/chat/sessions/{session_id}/messages")
    assert stolen.status == 404
    assert stolen.json()["error"] == "session_not_found"
    files = second.page.request.get(f"/api/sessions/{session_id}/files")
    assert files.status == 404


def test_deleting_a_conversation(browsing: Browsing) -> None:
    chat = open_chat(browsing)
    chat.send_and_wait("a conversation to delete")
    session_id = chat.current_session()
    expect(chat.session_items()).to_have_count(1)
    chat.page.get_by_role("button", name=re.compile("^Delete conversation")).click()
    expect(chat.session_items()).to_have_count(0)
    expect(chat.page.locator("#chat-title")).to_have_text("New conversation")
    expect(chat.page.get_by_role("button", name="New chat")).to_be_focused()
    assert chat.current_session() is None
    chat.page.reload()
    chat.wait_ready()
    expect(chat.session_items()).to_have_count(0)
    assert session_id


def test_pure_modules_in_the_browser(browsing: Browsing) -> None:
    """The page's SSE parser and error mapping, run by the browser itself on awkward input."""
    chat = open_chat(browsing)
    result = chat.page.evaluate(
        """async () => {
          const { SseParser } = await import("/js/sse.js");
          const { describeError } = await import("/js/errors.js");
          const { ApiError, NetworkError, parseRetryAfter } = await import("/js/api.js");
          const parser = new SseParser();
          const events = [];
          // Split inside a field name and inside \\r\\n; a heartbeat comment, multi-line data,
          // CRLF and CR line ends.
          const pieces = [
            "ev", "ent: chunk\\r", "\\ndata: {\\"text\\":\\"a\\"}\\r\\n\\r\\n", ": ping\\n\\n",
            "event: chunk\\rdata: {\\"text\\":\\"b\\"}\\r\\r", "data: x\\ndata: y\\n\\n",
            "event: done\\ndata: {}\\n",
          ];
          for (const piece of pieces) {
            events.push(...parser.push(piece));
          }
          const unfinished = events.length;
          events.push(...parser.push("\\n"));
          const saved = describeError(new ApiError(503, {error: "history_unavailable", detail: "d",
                                                          saved_message_ids: ["1"]}, 7));
          const gone = describeError(
            new ApiError(502, {error: "backend_unavailable", detail: "down"}, null));
          const tooBig = describeError(
            new ApiError(413, {error: "context_too_large", detail: "too big"}, null));
          const offline = describeError(new NetworkError(new TypeError("failed")));
          return { events, comments: parser.comments, unfinished, saved, gone, tooBig, offline,
                   retry: [parseRetryAfter("5"), parseRetryAfter(null), parseRetryAfter("soon")] };
        }"""
    )
    assert result["events"] == [
        {"event": "chunk", "data": '{"text":"a"}'},
        {"event": "chunk", "data": '{"text":"b"}'},
        {"event": "message", "data": "x\ny"},
        {"event": "done", "data": "{}"},
    ]
    assert result["unfinished"] == 3  # the last event waits for its blank line
    assert result["comments"] == 1
    assert result["saved"]["saved"] is True
    assert result["saved"]["restoreText"] is False
    assert result["saved"]["retryAfterS"] == 7
    assert "Your message was saved" in result["saved"]["message"]
    assert result["gone"]["connectionLost"] is True
    assert result["tooBig"] == {**result["tooBig"], "message": "too big", "restoreText": True, "saved": False}
    assert result["offline"]["connectionLost"] is True
    assert result["retry"] == [5, None, None]
