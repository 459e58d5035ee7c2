"""The JSON API's request and response bodies; their fields and limits make the OpenAPI schema."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from dalle.errors import DalleError

MAX_PROMPT_CHARS = 500
MAX_IMAGES = 16
MAX_CANDIDATES = 64

JobState = Literal["queued", "running", "done", "failed", "timed_out"]


class GenerateRequest(BaseModel):
    """What to draw and how to sample it."""

    # Strict: a field takes what its JSON schema says (no `true` for a number, no "4" or 4.0 for
    # an integer), as API fuzzing from the schema expects.
    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str = Field(min_length=1, max_length=MAX_PROMPT_CHARS,
                        description="What to draw, e.g. 'a small green triangle above a large red circle'.")
    images: int = Field(4, ge=1, le=MAX_IMAGES, description="Images to return.")
    candidates: int | None = Field(None, ge=1, le=MAX_CANDIDATES,
                                   description="Images to sample; CLIP keeps the best `images` "
                                               "(needs a pipeline with CLIP). Default: `images`.")
    temperature: float | None = Field(None, gt=0, le=5, description="Sampling temperature; null = "
                                                                    "the pipeline's default.")
    top_k: int | None = Field(None, ge=1, description="Sample among the k most likely codes; null = "
                                                      "the pipeline's default.")
    top_p: float | None = Field(None, gt=0, le=1,
                                description="Nucleus sampling: the smallest set of codes with this "
                                            "probability; null = the pipeline's default.")
    guidance_scale: float | None = Field(None, ge=1, le=20,
                                         description="Classifier-free guidance scale (1 = off); "
                                                     "null = the pipeline's default.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="The same seed and settings give the same images.")

    @field_validator("candidates")
    @classmethod
    def _at_least_images(cls, candidates: int | None, info: ValidationInfo) -> int | None:
        images = info.data.get("images")
        if candidates is not None and images is not None and candidates < images:
            raise DalleError(f"must be at least the number of images ({images}), got {candidates}")
        return candidates

    def sampling_options(self) -> dict:
        """Keyword arguments for `DallePipeline.__call__` besides the prompt."""
        return self.model_dump(exclude={"prompt"})


class JobStatus(BaseModel):
    """Where a generation job stands; `images` fills in when it is done."""

    id: str = Field(description="The job id, for GET /api/jobs/{id}.")
    status: JobState = Field(description="queued, running, done, failed or timed_out.")
    queue_position: int | None = Field(description="While queued: 1 when this job runs next.")
    progress: float = Field(ge=0, le=1, description="Fraction of image tokens sampled.")
    elapsed_s: float | None = Field(description="Seconds running so far, or in all once finished.")
    error: str | None = Field(description="Why the job failed or was stopped.")
    images: list[str] = Field(description="URLs of the PNGs, best first (empty until done).")
    previews: list[str] = Field(description="While running: URLs of PNGs of the candidates sampled "
                                            "so far, in sampling order, each showing its finished "
                                            "rows (the rest grey); a URL changes when its picture "
                                            "does. Empty once the job ends.")
    scores: list[float] | None = Field(description="CLIP scores of the images; null without CLIP.")
    warnings: list[str] = Field(description="What the request was changed to run, e.g. a prompt "
                                            "truncated to the model's text length.")


class QueueInfo(BaseModel):
    waiting: int = Field(description="Jobs waiting behind the running one.")
    running: bool = Field(description="Whether a job is running now.")
    max_queue: int = Field(description="Jobs that may wait; more are answered 429.")


class Limits(BaseModel):
    max_prompt_chars: int = MAX_PROMPT_CHARS
    max_images: int = MAX_IMAGES
    max_candidates: int = MAX_CANDIDATES
    time_limit_s: float = Field(description="Seconds a job may run before it is stopped.")


class SamplingDefaults(BaseModel):
    """The pipeline's sampling settings (its sampling.json), used for what a request leaves out."""

    temperature: float
    top_k: int | None = Field(description="null: all codes.")
    top_p: float | None = Field(description="null: no nucleus filtering.")
    guidance_scale: float = Field(description="1: no classifier-free guidance.")


class Health(BaseModel):
    """The loaded model, the queue and the request limits."""

    status: Literal["ok"] = "ok"
    pipeline: str = Field(description="The served pipeline: a bundled name or the directory it "
                                      "was loaded from.")
    examples: list[str] = Field(description="Prompts the pipeline draws well, from its model "
                                            "card's `## Example prompts`.")
    image_size: int = Field(description="Side of the generated images in pixels.")
    grid_size: int = Field(description="Side of the code grid the prior samples.")
    clip: bool = Field(description="Whether the pipeline has CLIP, so candidates > images works.")
    sampling: SamplingDefaults
    device: str
    queue: QueueInfo
    limits: Limits


class ErrorResponse(BaseModel):
    """Every error: 4xx and 5xx answers all have this body."""

    error: str = Field(description="One line saying what went wrong, naming the field at fault.")
