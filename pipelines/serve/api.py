"""The HTTP contract of `vgt serve`: OpenAI Images API request schema, limits, errors.

Pure Python (no Ray, no torch), so every validation rule is unit-tested without a cluster.
Sampling settings a request leaves out come from the served folder's `config.sample`.

Every field of the `openai` SDK's `ImageGenerateParams` is in exactly one of three sets below
(tests/test_serve_api.py checks them against the installed SDK, so a new SDK field is noticed):
HONOURED (it changes what is made), IGNORED (accepted, no meaning for this model; named in the
`x-vgt-ignored-params` response header) or REFUSED (accepted by the schema, but any value other
than null gets a 400: silently ignoring it would deliver something else than asked). Values this
service cannot deliver get a 400 too: `background="transparent"`, `output_format` gif/svg,
`response_format="url"`.

`quality` picks the flow-head steps per token as a multiple of the folder's
`config.sample.num_steps` (QUALITY_STEPS: low 0.5x, medium/auto/standard 1x, high/hd 2x, xhigh 3x,
max 4x), rounded and clipped to [the sampler's minimum, limits.max_num_steps]; an explicit
`num_steps` wins over `quality`.

Status codes (never a 500 for a client mistake), all with OpenAI's error object
`{"error": {"message", "type", "param", "code"}}`:
* 400 `invalid_request_error`: malformed JSON, a body that is not an object, a missing prompt, a
  wrong type, an unknown parameter, a value outside the limits or one this service cannot deliver
  (`code`: invalid_json, missing_required_parameter, invalid_type, unknown_parameter, invalid_value,
  unsupported_value);
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
from typing import Any, Callable, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from vgt.config import SampleConfig

OUTPUT_FORMATS = ("png", "jpeg", "webp")
# What a prompt is stripped of, and must hold something else than: ASCII whitespace, which every regex
# dialect agrees on (/openapi.json's pattern PROMPT_PATTERN; Python's str.strip() also strips "\x1c").
BLANKS = " \t\n\r\f\v"
PROMPT_PATTERN = r"[^ \t\n\r\f\v]"
# The largest integer every JSON client holds exactly (JavaScript's Number.MAX_SAFE_INTEGER): above it a
# client's double rounds the seed it sends (2**63 - 1 went out as 2**63, refused as out of range).
MAX_SEED = 2**53 - 1
MAX_N = 10  # OpenAI's own limit; limits.max_n may lower it
SIZE_RE = re.compile(r"^([1-9][0-9]{0,4})x([1-9][0-9]{0,4})$")
QUALITY_STEPS = {"low": 0.5, "medium": 1.0, "auto": 1.0, "standard": 1.0, "high": 2.0, "hd": 2.0,
                 "xhigh": 3.0, "max": 4.0}
# What the response reports as `quality` (the SDK's event types know no "standard"/"hd").
QUALITY_NAMES = {"standard": "medium", "hd": "high"}
HONOURED = frozenset({"prompt", "n", "size", "model", "response_format", "output_format", "output_compression",
                      "quality", "background", "stream", "partial_images"})
IGNORED = frozenset({"style", "moderation", "user", "safety_identifier", "complexity"})
REFUSED = {"frame_count": "GIF output", "frame_duration_ms": "GIF output", "svg": "SVG output"}
# VGT's own parameters (the openai client sends them through `extra_body`).
EXTENSIONS = frozenset({"seed", "guidance_scale", "num_steps", "parallel_tokens"})


class ApiError(Exception):
    """A request the service refuses; rendered as OpenAI's error JSON with `status`."""

    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = "invalid_value",
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

    Strict types (no "2" for 2, no true for 1; 2.0 is 2, as in JSON Schema), finite numbers; unknown fields are refused, as OpenAI
    does. null means "the default" for every optional field, as in the SDK. The limits here are
    OpenAI's; the deployment's own (`Limits`) are checked in `to_job` and shown in /openapi.json.
    """

    model_config = ConfigDict(extra="forbid", strict=True, allow_inf_nan=False)

    prompt: str = Field(min_length=1, max_length=32000, description="What to draw.")
    n: Optional[int] = Field(None, ge=1, le=MAX_N, description="Images to generate (default 1).")
    size: Optional[str] = Field(None, pattern=r"^(auto|[1-9][0-9]{0,4}x[1-9][0-9]{0,4})$",
                                description="'WxH' or 'auto' (the model's native size).")
    quality: Optional[Literal["low", "medium", "high", "xhigh", "max", "auto", "standard", "hd"]] = Field(
        None, description="Flow-head steps per token: low 0.5x, medium/auto/standard 1x, high/hd 2x, xhigh 3x, "
                          "max 4x the model's default; an explicit num_steps wins.")
    output_format: Optional[Literal["png", "jpeg", "webp"]] = None
    output_compression: Optional[int] = Field(None, ge=0, le=100,
                                              description="JPEG/WebP quality (default 95); ignored for PNG.")
    background: Optional[Literal["opaque", "auto"]] = Field(
        None, description="Images are always opaque; 'transparent' is refused.")
    response_format: Optional[Literal["b64_json"]] = None
    model: Optional[str] = None
    stream: Optional[bool] = Field(None, description="Server-sent events image_generation.partial_image / "
                                                     "image_generation.completed.")
    partial_images: Optional[int] = Field(None, ge=0, le=3, description="Intermediate images when streaming.")
    # Accepted and ignored (named in the x-vgt-ignored-params response header).
    style: Optional[Literal["vivid", "natural"]] = None
    moderation: Optional[Literal["low", "auto"]] = None
    user: Optional[str] = None
    safety_identifier: Optional[str] = None
    complexity: Optional[Literal["low", "medium", "high"]] = None
    # Refused unless null: they describe GIF/SVG output, which this service does not produce.
    frame_count: Optional[int] = None
    frame_duration_ms: Optional[int] = None
    svg: Optional[dict[str, Any]] = None
    # Extensions.
    seed: Optional[int] = Field(None, ge=0, le=MAX_SEED, description="None: drawn and returned.")
    guidance_scale: Optional[float] = None
    num_steps: Optional[int] = Field(None, ge=1)
    parallel_tokens: Optional[int] = Field(None, ge=1)

    @field_validator("n", "output_compression", "partial_images", "frame_count", "frame_duration_ms", "seed",
                     "num_steps", "parallel_tokens", mode="before")
    @classmethod
    def _integral(cls, value):
        """2.0 -> 2: JSON Schema's `integer` includes numbers with a zero fraction (/openapi.json says
        `integer`), while strict pydantic takes only ints; strings and booleans stay refused."""
        return int(value) if isinstance(value, float) and value.is_integer() else value

    def ignored(self) -> list[str]:
        """The IGNORED parameters this request set (for the response header)."""
        return sorted(name for name in IGNORED if getattr(self, name) is not None)


class ImageData(BaseModel):
    b64_json: str


class ImagesResponse(BaseModel):
    """The answer to a request without `stream` (OpenAI's ImagesResponse plus the seed used)."""

    created: int
    data: list[ImageData]
    background: Literal["opaque"]
    output_format: Literal["png", "jpeg", "webp"]
    quality: Literal["low", "medium", "high", "xhigh", "max", "auto"]
    size: str
    usage: dict[str, Any]
    seed: int


@dataclass
class Limits:
    """What one request may ask for (app arg `limits` in cluster/serve.yaml)."""

    max_prompt_chars: int = 2000
    max_n: int = MAX_N  # images per request (at most OpenAI's 10)
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
        limits = cls(**(data or {}))
        if not 1 <= limits.max_n <= MAX_N:
            raise ValueError(f"limits.max_n must be between 1 and {MAX_N}, got {limits.max_n}")
        return limits


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
    output_compression: int | None = None  # JPEG/WebP quality; None = encode_image's default
    quality: str = "auto"  # as reported back (QUALITY_NAMES applied)
    partial_images: int = 0  # previews a streaming request wants (`partial_groups`)
    request_id: str = ""
    model: str = ""  # the served model it asks for (multiplexed serving routes by it)
    cancelled: bool = False  # set inside the replica when the caller goes away
    # Set inside the sampler replica for a streaming request: gets progress and preview events.
    listener: Optional[Callable[[dict], None]] = field(default=None, compare=False, repr=False)

    def key(self) -> tuple:
        return (self.width, self.height, self.guidance_scale, self.num_steps, self.parallel_tokens)


def partial_groups(groups: int, partial_images: int) -> list[int]:
    """After which of `groups` token groups (1-based) a request wanting `partial_images` previews gets
    them: evenly spread, never after the last (that is the final image), so a short generation gives
    fewer, as OpenAI's may."""
    return sorted({math.ceil(i * groups / (partial_images + 1)) for i in range(1, partial_images + 1)} - {groups})


def parse_size(size: str) -> tuple[int, int]:
    match = SIZE_RE.match(size)
    if not match:
        raise ValueError(f"size must look like '512x512', got {size!r}")
    return int(match.group(1)), int(match.group(2))


def parse_body(raw: bytes) -> ImageRequest:
    """Raw HTTP body -> ImageRequest; ApiError 400 with OpenAI's error object otherwise (the ingress
    gets the same errors from FastAPI's validation through `validation_error`)."""
    try:
        data = json.loads(raw, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError) as e:
        raise ApiError(400, f"request body is not valid JSON: {e}", code="invalid_json") from None
    if not isinstance(data, dict):
        raise ApiError(400, f"request body must be a JSON object, got {type(data).__name__}", code="invalid_type")
    try:
        return ImageRequest.model_validate(data)
    except ValidationError as e:
        raise validation_error(e.errors()) from None


def to_job(req: ImageRequest, limits: Limits, info: ModelInfo, request_id: str = "") -> SampleJob:
    """Check values against the limits and the model; fill the sampling settings not given from the
    model's config.sample (`SampleConfig.resolve`, `quality`); draw a seed when none is given."""
    prompt = req.prompt.strip(BLANKS)
    if not prompt:
        raise ApiError(400, "prompt must not be empty", "prompt")
    if len(req.prompt) > limits.max_prompt_chars:
        raise ApiError(400, f"prompt is {len(req.prompt)} characters; the limit is {limits.max_prompt_chars}",
                       "prompt")
    n = 1 if req.n is None else req.n
    _in_range("n", n, 1, limits.max_n)
    if req.model is not None and req.model != info.id:
        raise ApiError(404, f"the model {req.model!r} does not exist; this server serves {info.id!r}",
                       "model", "model_not_found")
    for name, output in REFUSED.items():
        if getattr(req, name) is not None:
            raise ApiError(400, f"{name} applies to {output}, which this service does not produce", name,
                           "unsupported_value")
    allowed = info.allowed_sizes(limits)
    size = allowed[0] if req.size in (None, "auto") else req.size
    if size not in allowed:
        raise ApiError(400, f"size {size!r} is not supported; supported sizes: {allowed + ['auto']}", "size")
    width, height = parse_size(size)
    grid = (height // info.stride, width // info.stride)
    tokens = grid[0] * grid[1]
    if req.parallel_tokens is not None:  # explicit values are checked; the default is capped
        _in_range("parallel_tokens", req.parallel_tokens, 1, tokens)
    quality = req.quality or "auto"
    num_steps = req.num_steps
    if num_steps is None and quality in QUALITY_STEPS:
        scaled = round(info.sample.num_steps * QUALITY_STEPS[quality])
        num_steps = min(max(scaled, info.min_num_steps), max(limits.max_num_steps, info.min_num_steps))
    settings = info.sample.resolve(num_tokens=tokens, guidance_scale=req.guidance_scale, num_steps=num_steps,
                                   parallel_tokens=req.parallel_tokens)
    job = SampleJob(
        prompt=prompt, n=n, width=width, height=height, grid=grid, output_format=req.output_format or "png",
        output_compression=req.output_compression, quality=QUALITY_NAMES.get(quality, quality),
        partial_images=(req.partial_images or 0) if req.stream else 0,
        seed=secrets.randbelow(2**31) if req.seed is None else req.seed,
        guidance_scale=settings.guidance_scale, num_steps=settings.num_steps,
        parallel_tokens=settings.parallel_tokens, request_id=request_id)
    _in_range("guidance_scale", job.guidance_scale, limits.min_guidance_scale, limits.max_guidance_scale)
    _in_range("num_steps", job.num_steps, info.min_num_steps, limits.max_num_steps)
    _in_range("parallel_tokens", job.parallel_tokens, 1, tokens)
    return job


def usage(job: SampleJob) -> dict:
    """OpenAI's `usage` object. Prompt characters stand in for text tokens (the tokenizer lives in the
    sampler replica); output tokens are the latent tokens made."""
    text, image = len(job.prompt), job.n * job.grid[0] * job.grid[1]
    return {"input_tokens": text, "input_tokens_details": {"text_tokens": text, "image_tokens": 0},
            "output_tokens": image, "total_tokens": text + image}


def openapi_limits(schema: dict, limits: Limits, info: ModelInfo | None = None) -> dict:
    """/openapi.json's ImageRequest with every limit this deployment checks (tighter than OpenAI's):
    the deployment's `limits`, a prompt with a non-space character, null-only REFUSED fields and,
    given the served model's `info`, its sizes, its sampler's minimum steps and its token count as
    the largest parallel_tokens; without FastAPI's 422 responses."""
    props = schema["components"]["schemas"]["ImageRequest"]["properties"]

    def narrow(name: str, **bounds) -> None:
        prop = props[name]
        for option in prop.get("anyOf", [prop]):  # Optional[x] is anyOf [x, null]
            if option.get("type") not in (None, "null"):
                option.update(bounds)

    for route in schema.get("paths", {}).values():  # FastAPI's 422 never happens: validation answers 400
        for operation in route.values():
            operation.get("responses", {}).pop("422", None)
    narrow("prompt", maxLength=limits.max_prompt_chars, pattern=PROMPT_PATTERN)  # `to_job` strips BLANKS
    narrow("n", maximum=limits.max_n)
    narrow("num_steps", maximum=limits.max_num_steps)
    narrow("guidance_scale", minimum=limits.min_guidance_scale, maximum=limits.max_guidance_scale)
    for name in REFUSED:  # anything but null is refused
        props[name] = {"type": "null", "title": props[name].get("title", name), "default": None,
                       "description": f"Only null: {REFUSED[name]} is not produced."}
    sizes = limits.sizes or ([f"{info.native_size[0]}x{info.native_size[1]}"] if info else None)
    if sizes:
        narrow("size", enum=[*sizes, "auto"])
    if info is not None:
        narrow("num_steps", minimum=info.min_num_steps)
        tokens = [(w // info.stride) * (h // info.stride) for w, h in map(parse_size, sizes)]
        narrow("parallel_tokens", maximum=max(tokens))
    return schema


def _in_range(name: str, value: float, low: float, high: float) -> None:
    if not (math.isfinite(value) and low <= value <= high):
        raise ApiError(400, f"{name} must be between {low} and {high}, got {value}", name)


def _reject_constant(name: str):
    raise ValueError(f"{name} is not a JSON number")


def validation_error(errors: list[dict]) -> ApiError:
    """pydantic's (or FastAPI's) first validation error -> OpenAI's 400 with the parameter named."""
    first = errors[0]
    loc = [str(p) for p in first["loc"] if p != "body"]  # FastAPI prefixes body fields with "body"
    param = ".".join(loc) or None
    kind = first["type"]
    if kind == "json_invalid":
        return ApiError(400, f"request body is not valid JSON: {first.get('ctx', {}).get('error', first['msg'])}",
                        code="invalid_json")
    if param is None:
        return ApiError(400, "request body must be a JSON object with a prompt", code="invalid_type")
    if kind == "extra_forbidden":
        return ApiError(400, f"unrecognized request argument supplied: {param}", param, "unknown_parameter")
    if kind == "missing":
        return ApiError(400, f"missing required parameter: {param}", param, "missing_required_parameter")
    if kind.endswith("_type") or kind.endswith("_parsing"):
        return ApiError(400, f"invalid type for {param}: {first['msg'].lower()} (got {_shown(first)})", param,
                        "invalid_type")
    return ApiError(400, f"invalid value for {param}: {first['msg'].lower()} (got {_shown(first)})", param)


def _shown(error: dict) -> str:
    text = repr(error.get("input"))
    return text if len(text) <= 80 else text[:77] + "..."
