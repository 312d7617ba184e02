"""The HTTP contract of `vgt serve`: OpenAI Images API request schema, limits, errors.

Pure Python (no Ray, no torch), so every validation rule is unit-tested without a cluster.
Sampling settings a request leaves out come from the served folder's `config.sample`.

Status codes (never a 500 for a client mistake):
* 400 `invalid_request_error`: malformed JSON, a body that is not an object, an unknown
  parameter, or a value outside the limits (empty/over-long prompt, n, size, numbers out of range);
* 422 `invalid_request_error`: valid JSON whose fields have the wrong type or a missing `prompt`;
* 404 `model_not_found`: `model` names another model;
* 401 `invalid_api_key`, 503 `overloaded` (with Retry-After) come from the ingress.
"""
from __future__ import annotations

import dataclasses
import json
import math
import re
import secrets
from dataclasses import dataclass, field
from typing import Literal

from pydantic import BaseModel, ConfigDict, ValidationError

from vgt.config import SampleConfig

OUTPUT_FORMATS = ("png", "jpeg", "webp")
MAX_SEED = 2**63 - 1
SIZE_RE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")


class ApiError(Exception):
    """A request the service refuses; rendered as OpenAI's error JSON with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 kind: str = "invalid_request_error", headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.kind, self.headers = kind, headers or {}

    def body(self) -> dict:
        return {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}


class Cancelled(Exception):
    """Every request of a running sampler group lost its client: the model stops early."""


class ImageRequest(BaseModel):
    """`POST /v1/images/generations` body: OpenAI's fields plus VGT sampling extensions.

    Strict types (no "2" for 2, no true for 1); unknown fields are refused, as OpenAI does.
    """

    model_config = ConfigDict(extra="forbid", strict=True)

    prompt: str
    n: int = 1
    size: str | None = None  # "WxH"; None = the model's native size
    response_format: str = "b64_json"
    model: str | None = None
    user: str | None = None  # accepted for OpenAI compatibility, only logged
    # Extensions (the openai client sends them through `extra_body`).
    seed: int | None = None  # None: the ingress draws one and returns it
    guidance_scale: float | None = None
    num_steps: int | None = None
    parallel_tokens: int | None = None
    output_format: str = "png"


@dataclass
class Limits:
    """What one request may ask for (app arg `limits` in cluster/serve.yaml)."""

    max_prompt_chars: int = 2000
    max_n: int = 4  # images per request
    sizes: list[str] | None = None  # allowed "WxH"; None = only the model's native size
    max_num_steps: int = 100  # flow-head integration steps per token
    min_guidance_scale: float = 0.0  # 0 = the unconditional model alone (the prompt ignored), 1 = no guidance
    max_guidance_scale: float = 20.0

    @classmethod
    def from_dict(cls, data: dict | None) -> "Limits":
        names = {f.name for f in dataclasses.fields(cls)}
        unknown = set(data or {}) - names
        if unknown:
            raise ValueError(f"unknown limits {sorted(unknown)}; known: {sorted(names)}")
        return cls(**(data or {}))


@dataclass
class ModelInfo:
    """What the ingress needs to know about the served model (from the sampler's `info()`)."""

    id: str
    native_size: tuple[int, int]  # (width, height)
    stride: int  # pixels per latent token side
    max_grid: int  # largest latent grid side the position queries cover
    sample: SampleConfig  # the folder's config.sample: the defaults of every request
    fingerprints: dict[str, str] = field(default_factory=dict)

    @property
    def min_num_steps(self) -> int:
        """The SDE sampler needs 2 steps (its last one is noise-free), the ODE 1."""
        return 2 if self.sample.sampler == "sde" else 1

    def allowed_sizes(self, limits: Limits) -> list[str]:
        return list(limits.sizes) if limits.sizes else [f"{self.native_size[0]}x{self.native_size[1]}"]

    def check_size(self, size: str) -> tuple[int, int]:
        """(width, height) of a configured size; raises ValueError when the model cannot make it."""
        width, height = parse_size(size)
        for side in (width, height):
            if side % self.stride or not 1 <= side // self.stride <= self.max_grid:
                raise ValueError(f"size {size!r}: sides must be multiples of {self.stride} up to "
                                 f"{self.stride * self.max_grid}")
        return width, height


@dataclass
class SampleJob:
    """One validated request as the sampler sees it. `key()` groups jobs that can share a batch."""

    prompt: str
    n: int
    seed: int
    width: int
    height: int
    guidance_scale: float
    num_steps: int
    parallel_tokens: int
    grid: tuple[int, int] = (0, 0)  # latent tokens (rows, columns) = (height, width) / stride
    output_format: str = "png"
    request_id: str = ""
    cancelled: bool = False  # set inside the replica when the caller goes away

    def key(self) -> tuple:
        return (self.width, self.height, self.guidance_scale, self.num_steps, self.parallel_tokens)


def parse_size(size: str) -> tuple[int, int]:
    match = SIZE_RE.match(size)
    if not match:
        raise ValueError(f"size must look like '512x512', got {size!r}")
    return int(match.group(1)), int(match.group(2))


def parse_body(raw: bytes) -> ImageRequest:
    """Raw HTTP body -> ImageRequest; ApiError 400 (malformed/unknown field) or 422 (types)."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}")
    try:
        return ImageRequest.model_validate(data)
    except ValidationError as e:
        raise _schema_error(e) from None


def to_job(req: ImageRequest, limits: Limits, info: ModelInfo, request_id: str = "") -> SampleJob:
    """Check values against the limits and the model; fill the sampling settings not given from the
    model's config.sample (`SampleConfig.resolve`); draw a seed when none is given."""
    prompt = req.prompt.strip()
    if not prompt:
        raise ApiError(400, "prompt must not be empty", "prompt")
    if len(req.prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"prompt is {len(req.prompt)} characters; the limit is {limits.max_prompt_chars}",
                       "prompt")
    _in_range("n", req.n, 1, limits.max_n)
    if req.model is not None and req.model != info.id:
        raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {info.id!r}",
                       "model", "model_not_found")
    if req.response_format != "b64_json":
        raise ApiError(400, f"response_format {req.response_format!r} is not supported; use 'b64_json'",
                       "response_format")
    if req.output_format not in OUTPUT_FORMATS:
        raise ApiError(400, f"output_format must be one of {list(OUTPUT_FORMATS)}, got {req.output_format!r}",
                       "output_format")
    allowed = info.allowed_sizes(limits)
    size = req.size or allowed[0]
    if size not in allowed:
        raise ApiError(400, f"size {size!r} is not supported; supported sizes: {allowed}", "size")
    width, height = parse_size(size)
    grid = (height // info.stride, width // info.stride)
    tokens = grid[0] * grid[1]
    if req.parallel_tokens is not None:  # explicit values are checked; the default is capped
        _in_range("parallel_tokens", req.parallel_tokens, 1, tokens)
    settings = info.sample.resolve(num_tokens=tokens, guidance_scale=req.guidance_scale, num_steps=req.num_steps,
                                   parallel_tokens=req.parallel_tokens)
    job = SampleJob(
        prompt=prompt, n=req.n, width=width, height=height, grid=grid, output_format=req.output_format,
        seed=secrets.randbelow(2**31) if req.seed is None else req.seed,
        guidance_scale=settings.guidance_scale, num_steps=settings.num_steps,
        parallel_tokens=settings.parallel_tokens, request_id=request_id)
    _in_range("seed", job.seed, 0, MAX_SEED)
    _in_range("guidance_scale", job.guidance_scale, limits.min_guidance_scale, limits.max_guidance_scale)
    _in_range("num_steps", job.num_steps, info.min_num_steps, limits.max_num_steps)
    _in_range("parallel_tokens", job.parallel_tokens, 1, tokens)
    return job


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}", name)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def _schema_error(err: ValidationError) -> ApiError:
    first = err.errors()[0]
    param = ".".join(str(p) for p in first["loc"]) or None
    if first["type"] == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument supplied: {param}", param)
    if first["type"] == "missing":
        return ApiError(422, f"missing required parameter: {param}", param)
    return ApiError(422, f"invalid type for {param}: {first['msg'].lower()} (got {first['input']!r})", param)
