"""The FastAPI app: the page at `/` and the JSON API under `/api` (schema at /openapi.json,
browsable at /docs from the Swagger UI files that `fastapi-offline` packages, so nothing is
loaded from a CDN).

    POST /api/generate                   queue a job -> 202 JobStatus (429 when the queue is full)
    GET  /api/jobs/{id}                  its status, progress, previews and, once done, image URLs
    GET  /api/jobs/{id}/previews/{i}.png candidate i as sampled so far, while the job runs
    GET  /api/jobs/{id}/images/{i}.png   an image, best first
    GET  /api/health                     the pipeline, its example prompts, the queue and the limits

With an API key (`dalle serve --api-key`), every route answers 401 to a request without it.
"""

from __future__ import annotations

import warnings
from contextlib import asynccontextmanager
from pathlib import Path
from typing import cast

from fastapi import FastAPI, HTTPException, Query
from fastapi import Path as PathParam
from fastapi.responses import FileResponse, Response
from fastapi.staticfiles import StaticFiles
from fastapi_offline import FastAPIOffline

from dalle import __version__
from dalle.card import example_prompts
from dalle.errors import DalleError
from dalle.pipeline import DallePipeline
from dalle.serve.auth import RequireKey
from dalle.serve.errors import BodySizeLimit, install_error_handlers
from dalle.serve.jobs import Job, JobQueue, QueueFull
from dalle.serve.schemas import (
    MAX_PROMPT_CHARS,
    ErrorResponse,
    GenerateRequest,
    Health,
    JobState,
    JobStatus,
    Limits,
    QueueInfo,
    SamplingDefaults,
)

STATIC = Path(__file__).parent / "static"
MAX_EXAMPLES = 8  # example prompts offered on the page


def errors(*codes: int) -> dict:
    """OpenAPI entries for the error answers an endpoint can give."""
    return {code: {"model": ErrorResponse} for code in codes}


def check_against_pipeline(pipeline: DallePipeline, request: GenerateRequest) -> list[str]:
    """Refuse with 422 what the schema cannot know: a prompt this tokenizer cannot use, or
    reranking without CLIP. Returns the warnings the prompt raised (e.g. truncation)."""
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            pipeline.encode_prompt(request.prompt)
    except DalleError as e:
        raise HTTPException(422, f"prompt: {e}") from None
    if (request.candidates or request.images) > request.images and pipeline.clip is None:
        raise HTTPException(422, "candidates: this pipeline has no CLIP model to rerank with; ask "
                                 "for as many candidates as images")
    return [f"prompt: {w.message}" for w in caught]


def create_app(pipeline: DallePipeline, *, name: str | None = None, examples: list[str] | None = None,
               max_queue: int = 4, time_limit_s: float = 120.0, max_body_bytes: int = 16 * 1024,
               keep_finished: int = 64, api_key: str | None = None) -> FastAPI:
    """An app serving `pipeline`: jobs run one at a time; `max_queue` more may wait, each is
    stopped after `time_limit_s` seconds running, and request bodies over `max_body_bytes` get 413.
    With `api_key`, every request without it gets 401 (`dalle.serve.auth`), /docs included.

    `name` (what the page's header calls the pipeline) defaults to the name of the directory it
    was loaded from, and `examples` (the prompts the page offers) to its model card's.
    """
    name = name or (pipeline.source.name if pipeline.source is not None else "unsaved pipeline")
    if examples is None:
        examples = example_prompts(pipeline.source)
    examples = [e for e in examples if len(e) <= MAX_PROMPT_CHARS][:MAX_EXAMPLES]
    jobs = JobQueue(pipeline, max_queue=max_queue, time_limit_s=time_limit_s, keep_finished=keep_finished)

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        yield
        jobs.close()

    # FastAPI's own /docs would load Swagger UI from a CDN; fastapi-offline serves the copy in
    # its package instead (under /static-offline-docs), so the docs work offline.
    app = FastAPIOffline(title="DALL-E", version=__version__, lifespan=lifespan, docs_url="/docs",
                         redoc_url=None,
                         description="Generate images from text with a DALL-E pipeline. Submit a "
                                     "job, poll it (its previews show the candidates as they are "
                                     "sampled), then fetch its PNGs. Every error body is "
                                     "`{\"error\": \"...\"}`.")
    app.add_middleware(BodySizeLimit, max_bytes=max_body_bytes)
    if api_key:  # added last, so it runs first: a request without the key is not even read
        app.add_middleware(RequireKey, key=api_key)
    install_error_handlers(app)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")

    def status_of(job: Job) -> JobStatus:
        return JobStatus(id=job.id, status=cast(JobState, job.status), queue_position=jobs.position(job),
                         progress=job.progress, elapsed_s=job.elapsed_s, error=job.error,
                         images=[f"/api/jobs/{job.id}/images/{i}.png" for i in range(len(job.pngs))],
                         previews=[f"/api/jobs/{job.id}/previews/{i}.png?v={version}"
                                   for i, (version, _) in enumerate(job.previews)],
                         scores=job.scores, warnings=job.warnings)

    def find(job_id: str) -> Job:
        job = jobs.get(job_id)
        if job is None:
            raise HTTPException(404, f"no job {job_id!r} (unknown, or finished long ago and forgotten)")
        return job

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")

    @app.get("/api/health", summary="The pipeline, its example prompts, the queue and the limits")
    def health() -> Health:
        waiting, running = jobs.counts()
        return Health(pipeline=name, examples=examples, image_size=pipeline.vae.config.image_size,
                      grid_size=pipeline.prior.config.grid_size, clip=pipeline.clip is not None, device=str(pipeline.device),
                      sampling=SamplingDefaults(**pipeline.sampling.to_dict()),
                      queue=QueueInfo(waiting=waiting, running=running, max_queue=max_queue),
                      limits=Limits(time_limit_s=time_limit_s))

    @app.post("/api/generate", status_code=202, responses=errors(413, 422, 429),
              summary="Queue a generation job")
    def generate(request: GenerateRequest) -> JobStatus:
        """Check the request, queue it and return its status; poll GET /api/jobs/{id} for the images."""
        notes = check_against_pipeline(pipeline, request)
        try:
            job = jobs.submit(request.prompt, request.sampling_options(), notes)
        except QueueFull as e:
            raise HTTPException(429, str(e), headers={"Retry-After": "5"}) from None
        return status_of(job)

    @app.get("/api/jobs/{job_id}", responses=errors(404), summary="A job's status, progress and image URLs")
    def job_status(job_id: str) -> JobStatus:
        return status_of(find(job_id))

    @app.get("/api/jobs/{job_id}/images/{index}.png", response_class=Response, summary="One image as PNG",
             responses={200: {"content": {"image/png": {}}}, **errors(404, 409, 422)})
    def job_image(job_id: str, index: int = PathParam(ge=0, description="0 is the best image.")) -> Response:
        job = find(job_id)
        if job.status != "done":
            raise HTTPException(409, f"job {job_id} has no images (status: {job.status})")
        if index >= len(job.pngs):
            raise HTTPException(404, f"job {job_id} has {len(job.pngs)} images; no image {index}")
        return Response(job.pngs[index], media_type="image/png",
                        headers={"Cache-Control": "private, max-age=86400"})

    @app.get("/api/jobs/{job_id}/previews/{index}.png", response_class=Response,
             summary="A candidate as sampled so far, as PNG",
             responses={200: {"content": {"image/png": {}}}, **errors(404, 409, 422)})
    def job_preview(job_id: str,
                    index: int = PathParam(ge=0, description="The candidate, in sampling order."),
                    v: int | None = Query(None, ge=0, description="The picture's version, as in the "
                                                                  "URLs `previews` lists: a new one "
                                                                  "makes a browser fetch it anew. "
                                                                  "Any version gets the latest.")) -> Response:
        job = find(job_id)
        previews = job.previews
        if job.status != "running":
            raise HTTPException(409, f"job {job_id} has no previews (status: {job.status}); they "
                                     f"exist only while it runs")
        if index >= len(previews):
            raise HTTPException(404, f"job {job_id} has {len(previews)} previews so far; no preview {index}")
        return Response(previews[index][1], media_type="image/png", headers={"Cache-Control": "no-store"})

    return app
