"""`Ingress`: the FastAPI front of the image service (OpenAI Images API).

It validates, authenticates, then composes the two model deployments through `DeploymentHandle`s
(prompt -> ARSampler -> latents -> AEDecoder -> images), so latents move between replicas and never
through the client. Request ids: Serve's proxy takes a client's `X-Request-ID` or makes one and
returns it on every response; the ingress logs it with each request. A client that disconnects
cancels its request: Serve cancels this handler, which cancels the in-flight handle calls, and the
sampler stops a running group once all of its requests are gone.
"""
# No `from __future__ import annotations` here: FastAPI must see real types on the routes
# (Serve's class-based ingress re-wraps them, and string annotations then stop resolving).
import asyncio
import base64
import copy
import hashlib
import hmac
import json
import logging
import os
import time

from functools import lru_cache

from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from ray import serve
from starlette.exceptions import HTTPException

from .api import (ApiError, ImageRequest, ImagesResponse, Limits, ModelInfo, openapi_limits, to_job, usage,
                  validation_error)
from .metrics import metrics

log = logging.getLogger("ray.serve")
HEALTH_TIMEOUT_S = 2.0  # /healthz answers 503 "loading" when a model deployment takes longer
with open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "playground.html"), encoding="utf-8") as _f:
    PLAYGROUND = _f.read()
# /openapi.json and /docs are the ingress's own routes: the schema carries the served model's limits.
app = FastAPI(title="vgt image generation", version="1", openapi_url=None, docs_url=None, redoc_url=None)
_ERROR = {"description": "OpenAI's error object", "content": {"application/json": {"schema": {
    "type": "object", "required": ["error"], "properties": {"error": {
        "type": "object", "required": ["message", "type", "param", "code"],
        "properties": {"message": {"type": "string"}, "type": {"type": "string"},
                       "param": {"type": ["string", "null"]}, "code": {"type": ["string", "null"]}}}}}}}}
_EVENTS = ["image_generation.partial_image", "image_generation.completed", "error"]
_SSE = {"description": "one server-sent event: its name and its JSON data", "type": "object",
        "required": ["event", "data"], "properties": {
            "event": {"type": "string", "enum": _EVENTS},
            "data": {"type": "string", "contentMediaType": "application/json", "contentSchema": {
                "type": "object", "required": ["type"], "properties": {
                    "type": {"type": "string", "enum": _EVENTS}, "b64_json": {"type": "string"},
                    "partial_image_index": {"type": "integer", "minimum": 0}, "size": {"type": "string"},
                    "output_format": {"type": "string", "enum": ["png", "jpeg", "webp"]},
                    "created_at": {"type": "integer"}, "usage": {"type": "object"}}}}}}
RESPONSES = {200: {"model": ImagesResponse, "description": "The images; with `stream`: server-sent events",
                   "content": {"text/event-stream": {"schema": _SSE}}},
             **{status: _ERROR for status in (400, 401, 404, 500, 503)}}


@lru_cache(maxsize=1)
def _key_digest() -> bytes | None:
    """SHA-256 of VGT_API_KEY (this replica's environment), None when auth is off."""
    key = os.environ.get("VGT_API_KEY") or None
    return hashlib.sha256(key.encode()).digest() if key else None


async def authorize(request: Request) -> None:
    """The routes' dependency: `check_key` on the event loop (FastAPI would run a plain function in
    its thread pool, a thread hop per request)."""
    check_key(request)


def check_key(request: Request) -> None:
    """Bearer token check when VGT_API_KEY is set; digests make the compare constant-time."""
    if _key_digest() is None:
        return
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    given = hashlib.sha256(token.strip().encode()).digest()
    if scheme.lower() != "bearer" or not hmac.compare_digest(given, _key_digest()):
        raise ApiError(401, "incorrect or missing API key: send 'Authorization: Bearer <VGT_API_KEY>'",
                       code="invalid_api_key", kind="invalid_request_error", headers={"WWW-Authenticate": "Bearer"})


@app.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@app.exception_handler(RequestValidationError)
async def _invalid_request(request: Request, err: RequestValidationError) -> JSONResponse:
    """FastAPI's 422 as OpenAI's 400."""
    return await _refused(request, validation_error(err.errors()))


@app.exception_handler(HTTPException)
async def _http_error(request: Request, err: HTTPException) -> JSONResponse:
    """FastAPI's own refusals in OpenAI's shape too: a body it cannot read (not UTF-8: its 400 "error
    parsing the body"), an unknown route (404) or method (405)."""
    code = {400: "invalid_json", 404: "not_found", 405: "method_not_allowed"}.get(err.status_code)
    message = "request body is not valid JSON (not UTF-8 text)" if code == "invalid_json" else str(err.detail)
    return await _refused(request, ApiError(err.status_code, message, code=code, headers=dict(err.headers or {})))


async def _refused(request: Request, err: ApiError) -> JSONResponse:
    """A refusal before the route ran, counted; a caller without the key learns only that (401), as OpenAI."""
    try:
        check_key(request)
    except ApiError as denied:
        err = denied
    metrics()["requests"].inc(tags={"status": str(err.status)})
    return await _api_error(request, err)


async def _opened(events):
    """A streaming handle call whose first event ("queued") has arrived: admitted by the sampler."""
    await events.__anext__()
    return events


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps({'type': event, **data})}\n\n"


def _b64(image: bytes) -> str:
    return base64.b64encode(image).decode()


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, sampler, decoder, model_name: str, limits: dict | None = None, retry_after_s: int = 1,
                 models: dict[str, str] | None = None):
        """`models`: multiplexed serving (pipelines/serve/multiplex.py), {served name: its AE fingerprint}; the
        request's `model` (default `model_name`) picks the sampler's and the decoder's multiplexed model id."""
        self.sampler, self.decoder = sampler, decoder
        self.model_name, self.limits = model_name, Limits.from_dict(limits)
        self.retry_after_s, self.models = retry_after_s, models
        self._info: dict[str, ModelInfo] = {}
        self._metrics = metrics()
        self._schema: dict | None = None
        log.info("ingress: model %r, auth %s", model_name, "on" if _key_digest() else "off")

    @app.post("/v1/images/generations", responses=RESPONSES)
    async def generate(self, body: ImageRequest, request: Request, _auth: None = Depends(authorize)) -> Response:
        start, rid = time.perf_counter(), request.headers.get("x-request-id", "")
        status, job, retries = 500, None, []
        try:
            info = await self._model_info(body.model)
            job = to_job(body, self.limits, info, rid)
            job.model = info.id  # routes the sampler and decoder calls (multiplexed serving)
            headers = {"x-vgt-seed": str(job.seed)}
            if body.ignored():
                headers["x-vgt-ignored-params"] = ",".join(body.ignored())
            if body.stream:
                events = await self._call("sampler", retries, lambda: _opened(
                    self._sampler(job.model).options(stream=True).sample_stream.remote(job)))
                status = 200  # from here on the stream's own end is recorded
                return StreamingResponse(self._stream(events, job, start), media_type="text/event-stream",
                                         headers={**headers, "cache-control": "no-cache"})
            sampled = await self._call("sampler", retries, lambda: self._sampler(job.model).sample.remote(job))
            images = await self._decode(job, sampled["latents"], retries)
            status = 200
        except ApiError as err:
            status = err.status
            raise
        except asyncio.CancelledError:
            status = 499  # the client went away (nginx's code); the handle calls are cancelled too
            raise
        except Exception:  # a server fault: logged with its traceback, answered in OpenAI's shape
            log.exception("request %s failed", rid)
            raise ApiError(500, f"internal error while generating (request id {rid})",
                           code="internal_error", kind="server_error") from None
        finally:
            if not (status == 200 and body.stream):
                self._record(rid, status, start, job)
        headers.update({"x-vgt-sampler-batch": str(sampled["batch_images"]), "x-vgt-retries": str(len(retries))})
        return JSONResponse({"created": int(time.time()), "data": [{"b64_json": _b64(b)} for b in images],
                             **self._described(job), "usage": usage(job), "seed": job.seed}, headers=headers)

    async def _stream(self, events, job, start: float):
        """Server-sent events as OpenAI streams images: `image_generation.partial_image` per preview and
        image, `image_generation.completed` per image; token progress in SSE comment lines (which
        SDKs skip); an error as an `error` event. Leaving mid-stream cancels the sampler call."""
        status = 500
        try:
            async for event in events:
                if event["type"] == "progress":
                    yield f": progress {event['tokens']}/{event['of']} tokens\n\n"
                elif event["type"] == "partial":
                    for image in await self._decode(job, event["latents"], []):
                        yield _sse("image_generation.partial_image", {
                            "b64_json": _b64(image), "partial_image_index": event["index"], **self._described(job),
                            "created_at": int(time.time())})
                elif event["type"] == "done":
                    for image in await self._decode(job, event["latents"], []):
                        yield _sse("image_generation.completed", {
                            "b64_json": _b64(image), **self._described(job), "usage": usage(job),
                            "created_at": int(time.time())})
            status = 200
        except asyncio.CancelledError:
            status = 499
            raise
        except Exception as err:  # after the 200 header: the error goes in the stream, as OpenAI's
            api_err = err if isinstance(err, ApiError) else ApiError(
                500, f"internal error while generating (request id {job.request_id})", code="internal_error",
                kind="server_error")
            if not isinstance(err, ApiError):
                log.exception("request %s failed mid-stream", job.request_id)
            status = api_err.status
            yield _sse("error", api_err.body())
        finally:
            events.cancel()  # no-op once exhausted; else the client left: the sampler stops its group
            self._record(job.request_id, status, start, job)

    async def _decode(self, job, latents, retries: list) -> list[bytes]:
        return await self._call("decoder", retries, lambda: self._decoder(job.model).decode.remote(
            {"latents": latents, "output_format": job.output_format, "output_compression": job.output_compression}))

    @staticmethod
    def _described(job) -> dict:
        """The fields OpenAI's image responses and events describe an image with."""
        return {"background": "opaque", "output_format": job.output_format, "quality": job.quality,
                "size": f"{job.width}x{job.height}"}

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def playground(self) -> HTMLResponse:
        """The web playground (playground.html): it calls this service's API from the browser."""
        return HTMLResponse(PLAYGROUND)

    @app.get("/openapi.json", include_in_schema=False)
    async def openapi(self) -> JSONResponse:
        """The OpenAPI schema with this deployment's limits and, serving one model, that model's (sizes,
        steps, tokens): the request body a client may send is exactly the one it describes."""
        if self._schema is None:
            info = None if self.models is not None else await self._model_info()
            self._schema = openapi_limits(copy.deepcopy(app.openapi()), self.limits, info)
        return JSONResponse(self._schema)

    @app.get("/docs", include_in_schema=False)
    async def docs(self, request: Request) -> HTMLResponse:
        """Swagger UI over /openapi.json."""
        return get_swagger_ui_html(openapi_url=request.scope.get("root_path", "") + "/openapi.json",
                                   title=app.title)

    @app.get("/v1/models")
    async def models(self, _auth: None = Depends(authorize)) -> dict:
        return {"object": "list", "data": [{"id": name, "object": "model", "created": 0, "owned_by": "vgt"}
                                           for name in (self.models or [self.model_name])]}

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 once both model deployments have loaded their weights; 503 before. Multiplexed: 200 once both
        deployments answer, loading no model (each loads on its first request; `"loading": "on demand"`)."""
        if self.models is not None:
            try:
                await asyncio.wait_for(self.sampler.stats.remote(), HEALTH_TIMEOUT_S)
                decoder = await asyncio.wait_for(self.decoder.ready.remote(), HEALTH_TIMEOUT_S)
            except asyncio.TimeoutError:
                return JSONResponse({"status": "loading"}, status_code=503,
                                    headers={"Retry-After": str(self.retry_after_s)})
            return JSONResponse({"status": "ok", "models": list(self.models), "loading": "on demand",
                                 "fingerprints": {"ae": decoder}})
        try:
            info = await asyncio.wait_for(self._model_info(), HEALTH_TIMEOUT_S)
            decoder = await asyncio.wait_for(self.decoder.ready.remote(), HEALTH_TIMEOUT_S)
        except (asyncio.TimeoutError, ApiError):
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": str(self.retry_after_s)})
        return JSONResponse({"status": "ok", "model": info.id,
                             "fingerprints": {**info.fingerprints, "ae": decoder}})

    # -- helpers ---------------------------------------------------------------------------------
    async def _model_info(self, requested: str | None = None) -> ModelInfo:
        """The ModelInfo of the requested model (None: `model_name`); a name this server does not serve is a
        404 model_not_found when multiplexed (with one model `to_job` says so)."""
        name = requested if self.models is not None and requested is not None else self.model_name
        if self.models is not None and name not in self.models:
            raise ApiError(404, f"the model {name!r} does not exist; this server serves {sorted(self.models)}",
                           "model", "model_not_found")
        if name not in self._info:
            info = await self._call("sampler", [], lambda: self._sampler(name).info.remote())
            for size in info.allowed_sizes(self.limits):
                info.check_size(size)
            self._info[name] = info
        return self._info[name]

    def _sampler(self, name: str):
        return self.sampler if self.models is None else self.sampler.options(multiplexed_model_id=name)

    def _decoder(self, name: str):
        return self.decoder if self.models is None else self.decoder.options(multiplexed_model_id=self.models[name])

    async def _call(self, stage: str, retries: list, call):
        """`await call()` (one handle call), retried once if its replica died (generation is idempotent
        given the seed); a retry is appended to `retries`."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        for attempt in (1, 2):
            try:
                return await call()
            except BackPressureError as err:
                raise ApiError(503, f"the {stage} queue is full; retry in {self.retry_after_s}s ({err})",
                               code="overloaded", kind="server_error",
                               headers={"Retry-After": str(self.retry_after_s)}) from None
            except (RayActorError, ReplicaUnavailableError) as err:
                if attempt == 2:
                    raise ApiError(503, f"the {stage} replica died twice; retry later",
                                   code="replica_failed", kind="server_error",
                                   headers={"Retry-After": str(self.retry_after_s)}) from err
                retries.append(stage)
                self._metrics["retries"].inc(tags={"stage": stage})
                log.warning("%s replica died (%s); retrying once", stage, type(err).__name__)

    def _record(self, rid: str, status: int, start: float, job) -> None:
        seconds = time.perf_counter() - start
        self._metrics["requests"].inc(tags={"status": str(status)})
        self._metrics["stage_seconds"].observe(seconds, tags={"stage": "request"})
        detail = f"n={job.n} size={job.width}x{job.height} seed={job.seed} steps={job.num_steps}" if job else ""
        log.info("request %s -> %d in %.3fs %s", rid, status, seconds, detail)

