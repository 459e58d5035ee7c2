"""`dalle serve`'s API through FastAPI's TestClient, with the tiny random pipeline."""

import io
import re
import threading
import time

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from dalle.errors import DalleError
from dalle.pipeline import DallePipeline
from dalle.serve import create_app, jobs
from dalle.serve.jobs import PREVIEW_GREY, Job, Previewer, partial_images
from dalle.utils import to_pil
from test_pipeline import tiny_pipeline


class Gated:
    """A pipeline whose calls wait until `release` is set (then sleep `delay` s) before sampling."""

    def __init__(self, pipeline, delay: float = 0.0) -> None:
        self.pipeline, self.delay = pipeline, delay
        self.started, self.release = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, prompt, **options):
        self.started.set()
        assert self.release.wait(10)
        time.sleep(self.delay)
        return self.pipeline(prompt, **options)


class PausesHalfway:
    """A pipeline that stops sampling when its first batch has half its rows, until `resume`."""

    def __init__(self, pipeline) -> None:
        self.pipeline = pipeline
        self.halfway, self.resume = threading.Event(), threading.Event()

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, prompt, *, preview, **options):
        def held(first, rows):
            preview(first, rows)
            if first == 0 and rows.shape[1] == rows.shape[2] // 2:
                self.halfway.set()
                assert self.resume.wait(60)

        return self.pipeline(prompt, preview=held, **options)


@pytest.fixture(scope="module")
def pipeline():
    return tiny_pipeline()


@pytest.fixture
def client(pipeline):
    with TestClient(create_app(pipeline)) as client:
        yield client


def wait_for(client, job_id: str, timeout: float = 10.0) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        job = client.get(f"/api/jobs/{job_id}").json()
        if job["status"] not in ("queued", "running"):
            return job
        time.sleep(0.02)
    raise AssertionError(f"job {job_id} still {job['status']} after {timeout} s")


def test_generation_returns_pngs_best_first(client):
    r = client.post("/api/generate", json={"prompt": "a large red circle", "images": 2, "candidates": 4, "seed": 1})
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["id"])
    assert job["status"] == "done" and job["progress"] == 1 and job["error"] is None
    assert len(job["images"]) == 2 and job["scores"][0] >= job["scores"][1]
    for url in job["images"]:
        png = client.get(url)
        assert png.headers["content-type"] == "image/png"
        assert Image.open(io.BytesIO(png.content)).size == (64, 64)


def png_array(content: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(content)).convert("RGB"))


def test_a_running_job_shows_its_candidates_as_they_are_sampled(pipeline, monkeypatch):
    monkeypatch.setattr(jobs, "PREVIEW_INTERVAL_S", 0.0)  # every row, so the halfway one is shown
    monkeypatch.setattr(jobs, "PREVIEW_COST_RATIO", 0.0)
    paused = PausesHalfway(pipeline)
    with TestClient(create_app(paused)) as client:
        job_id = client.post("/api/generate", json={"prompt": "a red circle", "images": 2, "candidates": 3}).json()["id"]
        assert paused.halfway.wait(10)
        job = client.get(f"/api/jobs/{job_id}").json()
        assert job["status"] == "running" and job["images"] == [] and len(job["previews"]) == 3
        for url in job["previews"]:
            assert url.startswith(f"/api/jobs/{job_id}/previews/") and "?v=" in url
            picture = png_array(client.get(url).content)
            assert picture.shape == (64, 64, 3)
            grey = round(PREVIEW_GREY * 255)
            assert (picture[32:] == grey).all() and not (picture[:32] == grey).all()  # 2 rows of 4
        paused.resume.set()
        job = wait_for(client, job_id)
        assert job["status"] == "done" and job["previews"] == [] and len(job["images"]) == 2
        r = client.get(f"/api/jobs/{job_id}/previews/0.png")
        assert r.status_code == 409 and r.json()["error"].startswith(f"job {job_id} has no previews (status: done)")


def test_a_complete_preview_is_the_decoded_image_and_a_partial_one_is_grey_below(pipeline):
    codes = torch.randint(0, 32, (3, 4, 4), generator=torch.Generator().manual_seed(0))
    assert torch.equal(partial_images(pipeline.vae, codes), pipeline.vae.decode(codes))
    top = partial_images(pipeline.vae, codes[:, :1])
    assert (top[:, :, 16:] == PREVIEW_GREY).all() and not (top[:, :, :16] == PREVIEW_GREY).all()


def test_previews_wait_their_turn_but_a_finished_batch_is_always_shown(pipeline, monkeypatch):
    """Within the interval after a preview, rows are skipped, except the batch's last."""
    monkeypatch.setattr(jobs, "PREVIEW_INTERVAL_S", 60.0)
    job = Job("a red circle", {})
    preview = Previewer(pipeline.vae, job)
    codes = torch.randint(0, 32, (4, 4, 4), generator=torch.Generator().manual_seed(1))
    decoded = []
    for first in (0, 2):  # two batches of two candidates
        for r in range(1, 5):
            preview(first, codes[first : first + 2, :r])
            decoded.append(preview.version)
    assert decoded == [1, 1, 1, 2, 2, 2, 2, 3]
    assert [version for version, _ in job.previews] == [2, 2, 3, 3]
    final = [png_array(png) for _, png in job.previews]
    assert all((a == b).all() for a, b in zip(final, to_arrays(pipeline.vae.decode(codes))))


def to_arrays(images: torch.Tensor) -> list[np.ndarray]:
    return [np.asarray(p) for p in to_pil(images)]


def test_truncated_prompt_is_reported_in_the_job(client):
    r = client.post("/api/generate", json={"prompt": "a small blue square above a large red circle and more"})
    assert r.status_code == 202 and "truncated" in r.json()["warnings"][0]
    job = wait_for(client, r.json()["id"])
    assert job["status"] == "done" and job["warnings"] == r.json()["warnings"]
    short = client.post("/api/generate", json={"prompt": "a large red circle"}).json()
    assert short["warnings"] == []


def test_health_describes_the_model(client):
    health = client.get("/api/health").json()
    assert health["pipeline"] == "unsaved pipeline" and health["examples"] == []
    assert health["image_size"] == 64 and health["grid_size"] == 4 and health["clip"] is True
    assert health["limits"]["max_images"] == 16 and health["queue"]["max_queue"] == 4
    assert health["sampling"] == {"temperature": 1.0, "top_k": None, "top_p": None,
                                  "guidance_scale": 1.0}


@pytest.mark.parametrize("name, shown, not_shown", [
    ("emoji", "red apple, twitter style", "a small green triangle above a large red circle"),
    ("shapes", "a small green triangle above a large red circle", "red apple, twitter style"),
])
def test_a_bundled_pipeline_is_named_with_its_own_example_prompts(name, shown, not_shown):
    with TestClient(create_app(DallePipeline.from_pretrained(name))) as client:
        health = client.get("/api/health").json()
    assert health["pipeline"] == name and health["image_size"] == 64
    assert shown in health["examples"] and not_shown not in health["examples"]


def test_the_name_and_examples_can_be_given(pipeline):
    with TestClient(create_app(pipeline, name="user/pipe", examples=["a red circle", "x" * 501])) as client:
        health = client.get("/api/health").json()
    assert health["pipeline"] == "user/pipe" and health["examples"] == ["a red circle"]


def test_the_api_docs_load_nothing_from_elsewhere(client):
    page = client.get("/docs")
    assert page.status_code == 200 and page.headers["content-type"].startswith("text/html")
    assets = re.findall(r'(?:src|href)="([^"]+)"', page.text)
    assert len(assets) >= 3  # Swagger UI's script, its stylesheet and the favicon
    for url in assets:
        assert url.startswith("/") and not url.startswith("//"), url
        r = client.get(url)
        assert r.status_code == 200 and len(r.content) > 1000, url
    assert "url: '/openapi.json'" in page.text


def test_page_and_its_assets_are_served(client):
    page = client.get("/")
    assert page.status_code == 200 and 'id="prompt"' in page.text
    assert "function submit" in client.get("/static/app.js").text
    assert client.get("/static/style.css").status_code == 200


@pytest.mark.parametrize("body, message", [
    ({"prompt": ""}, "prompt: string should have at least 1 character"),
    ({"prompt": "x" * 501}, "prompt: string should have at most 500 characters"),
    ({"prompt": "   "}, "prompt: the prompt is empty"),
    ({"prompt": "∑∑ ∂"}, "prompt: the prompt has no character this model's captions ever used"),
    ({"prompt": "a circle", "images": 17}, "images: input should be less than or equal to 16"),
    ({"prompt": "a circle", "images": 4, "candidates": 2}, "candidates: must be at least the number of images (4), got 2"),
    ({"prompt": "a circle", "candidates": 65}, "candidates: input should be less than or equal to 64"),
    ({"prompt": "a circle", "temperature": 0}, "temperature: input should be greater than 0"),
    ({"prompt": "a circle", "top_k": 0}, "top_k: input should be greater than or equal to 1"),
    ({"prompt": "a circle", "top_p": 1.5}, "top_p: input should be less than or equal to 1"),
    ({"prompt": "a circle", "guidance_scale": 30}, "guidance_scale: input should be less than or equal to 20"),
    ({"prompt": "a circle", "seed": -1}, "seed: input should be greater than or equal to 0"),
    ({"prompt": "a circle", "guidance": 3}, "guidance: extra inputs are not permitted"),
    ({}, "prompt: field required"),
])
def test_bad_requests_are_one_line_naming_the_field(client, body, message):
    r = client.post("/api/generate", json=body)
    assert r.status_code == 422 and r.json() == {"error": r.json()["error"]}
    assert r.json()["error"].startswith(message), r.json()


def test_reranking_without_clip_is_refused():
    with TestClient(create_app(tiny_pipeline(with_clip=False))) as client:
        r = client.post("/api/generate", json={"prompt": "a red circle", "images": 1, "candidates": 4})
    assert r.status_code == 422 and r.json()["error"].startswith("candidates: this pipeline has no CLIP")


def test_a_body_that_is_not_a_json_object_is_named(client):
    r = client.post("/api/generate", content=b"{not json", headers={"Content-Type": "application/json"})
    assert r.status_code == 422 and r.json()["error"].startswith("the body is not valid JSON")
    for body in ([1], None):
        r = client.post("/api/generate", json=body)
        assert r.json() == {"error": 'the body must be a JSON object like {"prompt": "a red circle"}'}


def test_oversized_body_is_refused(client):
    r = client.post("/api/generate", json={"prompt": "a" * 20_000})
    assert r.status_code == 413 and r.json() == {"error": "the request body is over the 16384-byte limit"}

    def chunks():  # no Content-Length: the limit still holds
        yield b'{"prompt": "'
        yield b"a" * 20_000
        yield b'"}'

    r = client.post("/api/generate", content=chunks(), headers={"Content-Type": "application/json"})
    assert r.status_code == 413 and "16384-byte limit" in r.json()["error"]


def test_full_queue_answers_429(pipeline):
    gated = Gated(pipeline)
    with TestClient(create_app(gated, max_queue=1)) as client:
        request = {"prompt": "a red circle", "images": 1}
        first = client.post("/api/generate", json=request).json()
        assert gated.started.wait(10)  # the first job runs, blocked
        second = client.post("/api/generate", json=request).json()
        assert second["status"] == "queued" and second["queue_position"] == 1
        r = client.post("/api/generate", json=request)
        assert r.status_code == 429 and r.json()["error"].startswith("busy: the queue is full")
        assert r.headers["retry-after"] == "5"
        gated.release.set()
        assert wait_for(client, first["id"])["status"] == wait_for(client, second["id"])["status"] == "done"
        assert client.post("/api/generate", json=request).status_code == 202


def test_job_past_the_time_limit_is_stopped(pipeline):
    gated = Gated(pipeline, delay=0.05)
    gated.release.set()
    with TestClient(create_app(gated, time_limit_s=0.01)) as client:
        job_id = client.post("/api/generate", json={"prompt": "a red circle", "images": 1}).json()["id"]
        job = wait_for(client, job_id)
        assert job["status"] == "timed_out" and job["images"] == []
        assert job["error"] == ("stopped at the 0.01 s time limit with 6% sampled; ask for fewer "
                                "candidates or images")  # stopped after the first of 16 codes
        r = client.get(f"/api/jobs/{job_id}/images/0.png")
        assert r.status_code == 409 and r.json()["error"] == f"job {job_id} has no images (status: timed_out)"


class Failing:
    """A pipeline whose calls raise `error`."""

    def __init__(self, pipeline, error: Exception) -> None:
        self.pipeline, self.error = pipeline, error

    def __getattr__(self, name):
        return getattr(self.pipeline, name)

    def __call__(self, prompt, **options):
        raise self.error


@pytest.mark.parametrize("error, message", [
    (DalleError("the image to complete must be 3x64x64"), "the image to complete must be 3x64x64"),
    (ValueError("a bug"), "internal error: ValueError: a bug"),
])
def test_a_user_error_fails_the_job_and_a_bug_is_logged(pipeline, caplog, error, message):
    with TestClient(create_app(Failing(pipeline, error))) as client:
        job_id = client.post("/api/generate", json={"prompt": "a red circle", "images": 1}).json()["id"]
        job = wait_for(client, job_id)
    assert job["status"] == "failed" and job["error"] == message
    logged = [r for r in caplog.records if r.name == "dalle.serve.jobs"]
    assert bool(logged) == (type(error) is ValueError)


def test_unknown_things_are_404_json(client):
    r = client.get("/api/jobs/nope")
    assert r.status_code == 404 and r.json()["error"].startswith("no job 'nope'")
    r = client.get("/api/nothing")
    assert r.status_code == 404 and r.json() == {"error": "not found: GET /api/nothing"}
    assert client.get("/api/generate").json() == {"error": "method not allowed: GET /api/generate"}
    job_id = client.post("/api/generate", json={"prompt": "a red circle", "images": 1}).json()["id"]
    wait_for(client, job_id)
    r = client.get(f"/api/jobs/{job_id}/images/1.png")
    assert r.status_code == 404 and r.json()["error"] == f"job {job_id} has 1 images; no image 1"


def test_openapi_schema_lists_the_endpoints(client):
    schema = client.get("/openapi.json").json()
    assert {"/api/generate", "/api/jobs/{job_id}", "/api/jobs/{job_id}/images/{index}.png",
            "/api/health"} <= schema["paths"].keys()
    assert "/" not in schema["paths"]
    fields = schema["components"]["schemas"]["GenerateRequest"]["properties"]
    temperature = fields["temperature"]["anyOf"]  # a number, or null for the pipeline's default
    assert fields["images"]["maximum"] == 16 and {"type": "null"} in temperature
    assert any(t.get("exclusiveMinimum") == 0 for t in temperature)
    assert all(field.get("description") for field in fields.values())
    errors = schema["paths"]["/api/generate"]["post"]["responses"]
    assert {"202", "413", "422", "429"} <= errors.keys()
    assert "/api/jobs/{job_id}/previews/{index}.png" in schema["paths"]
    assert "previews" in schema["components"]["schemas"]["JobStatus"]["required"]


def test_with_an_api_key_every_route_needs_it(pipeline):
    import base64

    with TestClient(create_app(pipeline, api_key="s3cret")) as client:
        for path in ("/", "/api/health", "/openapi.json", "/api/jobs/x", "/docs",
                     "/static-offline-docs/swagger-ui.css"):
            r = client.get(path)
            assert r.status_code == 401, path
            assert r.json()["error"].startswith("this server needs its API key")
            assert r.headers["www-authenticate"].startswith("Basic")
        assert client.post("/api/generate", json={"prompt": "a red circle"}).status_code == 401
        for wrong in ("Bearer s3cre", "Bearer ", "Basic !!!", "Token s3cret",
                      "Basic " + base64.b64encode(b"user:nope").decode()):
            assert client.get("/api/health", headers={"Authorization": wrong}).status_code == 401, wrong
        assert client.get("/api/health", headers={"Authorization": "Bearer s3cret"}).status_code == 200
        # What a browser sends after its login prompt: any user name, the key as password.
        basic = "Basic " + base64.b64encode(b"anyone:s3cret").decode()
        assert client.get("/", headers={"Authorization": basic}).status_code == 200
        r = client.post("/api/generate", json={"prompt": "a red circle", "images": 1},
                        headers={"Authorization": "Bearer s3cret"})
        assert r.status_code == 202


def test_serving_beyond_loopback_without_a_key_warns():
    from test_cli import dalle

    r = dalle("serve", "--host", "0.0.0.0", "--pipeline", "no-such-pipeline")
    assert "warning: serving on 0.0.0.0 without an API key" in r.stderr
    assert r.returncode == 1  # then the unknown pipeline stops it
    r = dalle("serve", "--host", "0.0.0.0", "--pipeline", "no-such-pipeline", env={"DALLE_API_KEY": "k"})
    assert "without an API key" not in r.stderr
