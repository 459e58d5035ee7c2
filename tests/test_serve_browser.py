"""The `dalle serve` page in headless Chromium: type a prompt, generate, see the images form.

Needs Debian's `chromium` at /usr/bin/chromium and the `playwright` Python package (its own
browser downloads are not used). Saves a screenshot to test-artifacts/serve-page.png, and those of
the bundled emoji pipeline half-sampled and with its example prompts to the test's tmp_path (the
ones in docs/ come from such a run). Without them it skips, unless DALLE_REQUIRE_BROWSER=1 (as in
CI), where it fails.
"""

import os
from pathlib import Path

import pytest

from dalle.pipeline import DallePipeline
from dalle.serve import create_app, jobs
from helpers import serving
from test_pipeline import tiny_pipeline
from test_serve import PausesHalfway

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
    with serving(create_app(tiny_pipeline())) as url:
        yield url


@pytest.fixture(scope="module")
def emoji():
    """The bundled emoji pipeline, pausing halfway through its first batch until resumed, with a
    preview after every row (so that the pause shows half of each image; tests/test_serve.py
    tests how previews are spaced out)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jobs, "PREVIEW_INTERVAL_S", 0.0)
        patch.setattr(jobs, "PREVIEW_COST_RATIO", 0.0)
        yield PausesHalfway(DallePipeline.from_pretrained("emoji"))


@pytest.fixture(scope="module")
def emoji_url(emoji):
    with serving(create_app(emoji, name="emoji")) as url:
        yield url


@pytest.fixture
def browser_page():
    """A page of headless Chromium, and the URLs it requested and the errors it raised."""
    with playwright.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM))
        page = browser.new_page(viewport={"width": 1100, "height": 640})
        problems, requested = [], []
        page.on("pageerror", lambda error: problems.append(str(error)))
        page.on("request", lambda request: requested.append(request.url))
        yield page, requested
        browser.close()
    assert not problems, problems


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
        images = page.locator("#gallery a img")  # the final images (previews are not links)
        playwright.expect(images).to_have_count(3, timeout=15_000)
        page.wait_for_function("[...document.querySelectorAll('#gallery a img')].every(i => i.naturalWidth === 64)")
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


def test_images_form_on_the_page_while_they_are_sampled(emoji, emoji_url, browser_page, tmp_path):
    page, requested = browser_page
    page.goto(emoji_url)
    page.get_by_role("button", name="red apple, twitter style").click()
    playwright.expect(page.locator("#prompt")).to_have_value("red apple, twitter style")
    page.click("#generate")
    # Paused halfway through its rows, the job is running and each candidate is on the page as
    # sampled so far: once the page has polled again, every tile shows the latest preview.
    assert emoji.halfway.wait(60)
    page.wait_for_timeout(1000)
    previews = page.locator("#gallery .tile img")
    playwright.expect(previews).to_have_count(4)
    page.wait_for_function("[...document.querySelectorAll('#gallery .tile')].every(t => "
                           "t.querySelector('img')?.src.endsWith(t.dataset.src) && t.firstChild.naturalWidth === 64)")
    playwright.expect(page.locator(".card .state")).to_contain_text("Sampling… ")
    playwright.expect(page.locator("#gallery a img")).to_have_count(0)
    page.screenshot(path=str(tmp_path / "page-streaming.png"))

    emoji.resume.set()  # then the reranked images replace the previews
    playwright.expect(page.locator("#gallery a img")).to_have_count(4, timeout=60_000)
    playwright.expect(previews).to_have_count(0)
    playwright.expect(page.locator(".card .state")).to_contain_text("best first by CLIP score")
    assert all(url.startswith(emoji_url) for url in requested), "the page fetched something elsewhere"
    assert any("/previews/" in url for url in requested)


def test_the_page_names_the_pipeline_and_offers_its_example_prompts(emoji_url, browser_page, tmp_path):
    page, _ = browser_page
    page.goto(emoji_url)
    playwright.expect(page.locator("header")).to_contain_text("emoji · 64×64 px · 8×8 codes")
    examples = page.locator("#examples button")
    playwright.expect(examples.first).to_have_text("red apple, twitter style")
    assert "grinning face, google style" in examples.all_inner_texts()
    assert page.locator("#prompt").get_attribute("placeholder") == "red apple, twitter style"
    assert "triangle" not in page.content()  # the shapes pipeline's prompts are not offered
    page.screenshot(path=str(tmp_path / "page-emoji.png"))


def test_the_api_docs_render_offline(server_url, browser_page):
    page, requested = browser_page
    page.goto(f"{server_url}/docs")
    playwright.expect(page.locator(".swagger-ui .info .title")).to_contain_text("DALL-E")
    playwright.expect(page.locator(".opblock-summary-path").first).to_be_visible()
    assert page.locator(".opblock-summary-path", has_text="/api/jobs/{job_id}/previews/{index}.png").count() == 1
    assert all(url.startswith(server_url) for url in requested), [u for u in requested if not u.startswith(server_url)]
