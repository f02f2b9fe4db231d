"""The page in a real headless browser (Debian's Chromium, driven by Playwright): type, upload, hear."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_FLAGS = [
    "--no-sandbox",
    "--disable-background-networking",
    "--disable-component-update",
    "--no-first-run",
    "--autoplay-policy=no-user-gesture-required",
]


@pytest.fixture(scope="module")
def browser():
    if not CHROMIUM.exists():
        if os.environ.get("CI"):
            pytest.fail("CI must install Debian's chromium (.ci/run does)")
        pytest.skip("Debian's chromium is not installed (apt-get install chromium)")
    playwright_api = pytest.importorskip("playwright.sync_api")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_FLAGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, server):
    context = browser.new_context(viewport={"width": 1100, "height": 1200})
    page = context.new_page()
    page.goto(server)
    page.wait_for_selector("#message textarea", timeout=60_000)
    page.click("text=Settings")  # short answers keep the CPU test quick
    page.fill("input[aria-label='number input for Maximum answer length (tokens)']", "24")
    page.keyboard.press("Tab")
    yield page
    context.close()


WAV_HEADER_JS = """async () => {
    const link = document.querySelector('#speech a[download]');
    if (!link) return null;
    const bytes = await (await fetch(link.href)).arrayBuffer();
    const view = new DataView(bytes);
    return {rate: view.getUint32(24, true), channels: view.getUint16(22, true), bytes: bytes.byteLength};
}"""


def spoken_answer(page) -> dict:
    """The WAV the page offers for the spoken answer, read by the page itself: rate, channels, size."""
    page.wait_for_selector("#speech a[download]", state="attached", timeout=180_000)
    return page.evaluate(WAV_HEADER_JS)


def send(page, text: str, files: list[Path] = ()) -> None:
    if files:
        page.set_input_files("#message input[type=file]", [str(f) for f in files])
        page.wait_for_timeout(500)
    page.fill("#message textarea", text)
    page.keyboard.press("Enter")


def test_typed_question_gets_text_and_playable_speech(page):
    assert "tiny random-weight" in page.inner_text("#model-notice")
    send(page, "Hello, who are you?")
    wav = spoken_answer(page)
    assert wav["rate"] == 24_000 and wav["channels"] == 1 and wav["bytes"] > 44 + 2 * 480
    chat = page.inner_text("#chat")
    assert "Hello, who are you?" in chat
    assert chat.split("Hello, who are you?")[-1].strip(), "no assistant text after the question"


def test_corrupt_upload_shows_an_error_and_the_next_question_works(page, assets):
    send(page, "what is this?", [assets / "corrupt.mp4"])
    page.wait_for_selector("#chat :text('Could not answer')", timeout=60_000)
    assert "corrupt.mp4" in page.inner_text("#chat")
    assert page.locator("#speech a[download]").count() == 0
    for remove in page.locator("#message button[aria-label*='emove']").all():
        remove.click()  # the failed message stays in the box for editing; drop its file
    page.fill("#message textarea", "")
    send(page, "Then just say hello.")
    wav = spoken_answer(page)
    assert wav["rate"] == 24_000
    assert "Then just say hello." in page.inner_text("#chat")
