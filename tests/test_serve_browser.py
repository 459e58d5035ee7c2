"""The `dalle serve` page in headless Chromium: type a prompt, generate, see the images.

Needs Debian's `chromium` at /usr/bin/chromium and the `playwright` Python package (its own
browser downloads are not used). Saves a screenshot to test-artifacts/serve-page.png. Without
them it skips, unless DALLE_REQUIRE_BROWSER=1 (as in CI), where it fails.
"""

import os
import socket
import threading
from pathlib import Path

import pytest
import uvicorn

from dalle.serve import create_app
from test_pipeline import tiny_pipeline

CHROMIUM = Path("/usr/bin/chromium")
ARTIFACTS = Path(__file__).resolve().parents[1] / "test-artifacts"

if os.environ.get("DALLE_REQUIRE_BROWSER") == "1":
    import playwright.sync_api as playwright

    assert CHROMIUM.exists(), f"no Chromium at {CHROMIUM} (apt-get install chromium)"
else:
    playwright = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    pytestmark = pytest.mark.skipif(not CHROMIUM.exists(), reason=f"no Chromium at {CHROMIUM} (apt-get install chromium)")


@pytest.fixture(scope="module")
def server_url():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(tiny_pipeline()), log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    while not server.started and thread.is_alive():
        thread.join(0.05)
    assert server.started, "the server did not start"
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    server.should_exit = True
    thread.join(10)
    sock.close()


def test_page_generates_images(server_url):
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1100, "height": 760})
        problems, requested = [], []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requested.append(request.url))
        page.goto(server_url)
        playwright.expect(page.locator("#model")).to_contain_text("64×64 px · 4×4 codes · CLIP reranking")

        page.fill("#prompt", "∑∂")  # the server's one-line error shows under the prompt
        page.click("#generate")
        playwright.expect(page.locator("#form-error")).to_contain_text("prompt: the prompt has no character")

        page.fill("#prompt", "a small blue square")
        page.fill("#images", "3")
        page.fill("#candidates", "6")
        page.click("#generate")
        images = page.locator("#gallery img")
        playwright.expect(images).to_have_count(3, timeout=15_000)
        page.wait_for_function("[...document.querySelectorAll('#gallery img')].every(i => i.naturalWidth === 64)")
        playwright.expect(page.locator(".card .state")).to_contain_text("best first by CLIP score")
        playwright.expect(page.locator("#form-error")).to_be_hidden()

        page.fill("#prompt", "a large red circle")
        page.press("#prompt", "Enter")  # a second run goes on top of the gallery
        playwright.expect(page.locator(".card")).to_have_count(2)
        playwright.expect(images).to_have_count(6, timeout=15_000)

        ARTIFACTS.mkdir(exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "serve-page.png"), full_page=True)
        browser.close()
    assert not problems, problems
    assert all(url.startswith(server_url) for url in requested), "the page fetched something elsewhere"
