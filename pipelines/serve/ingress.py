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
import hashlib
import hmac
import logging
import os
import time

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from ray import serve

from .api import ApiError, Limits, ModelInfo, parse_body, to_job
from .metrics import metrics

log = logging.getLogger("ray.serve")
HEALTH_TIMEOUT_S = 2.0  # /healthz answers 503 "loading" when a model deployment takes longer
app = FastAPI(title="vgt image generation", version="1")


@app.exception_handler(ApiError)
async def _api_error(request: Request, err: ApiError) -> JSONResponse:
    return JSONResponse(err.body(), status_code=err.status, headers=err.headers)


@serve.deployment(name="Ingress")
@serve.ingress(app)
class Ingress:
    def __init__(self, sampler, decoder, model_name: str, limits: dict | None = None, retry_after_s: int = 1):
        self.sampler, self.decoder = sampler, decoder
        self.model_name, self.limits = model_name, Limits.from_dict(limits)
        self.retry_after_s = retry_after_s
        key = os.environ.get("VGT_API_KEY") or None
        self._key_digest = hashlib.sha256(key.encode()).digest() if key else None
        self._info: ModelInfo | None = None
        self._metrics = metrics()
        log.info("ingress: model %r, auth %s", model_name, "on" if key else "off")

    @app.post("/v1/images/generations")
    async def generate(self, request: Request) -> JSONResponse:
        start, rid = time.perf_counter(), request.headers.get("x-request-id", "")
        status, job, retries = 500, None, []
        try:
            self._authorize(request)
            body = parse_body(await request.body())
            job = to_job(body, self.limits, await self._model_info(), rid)
            sampled = await self._call("sampler", retries, self.sampler.sample, job)
            images = await self._call("decoder", retries, self.decoder.decode,
                                      {"latents": sampled["latents"], "output_format": job.output_format})
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
            self._record(rid, status, start, job)
        return JSONResponse(
            {"created": int(time.time()), "data": [{"b64_json": base64.b64encode(b).decode()} for b in images],
             "output_format": job.output_format, "size": f"{job.width}x{job.height}", "seed": job.seed},
            headers={"x-vgt-seed": str(job.seed), "x-vgt-sampler-batch": str(sampled["batch_images"]),
                     "x-vgt-retries": str(len(retries))})

    @app.get("/v1/models")
    async def models(self, request: Request) -> dict:
        self._authorize(request)
        return {"object": "list", "data": [{"id": self.model_name, "object": "model", "created": 0,
                                            "owned_by": "vgt"}]}

    @app.get("/healthz")
    async def healthz(self) -> JSONResponse:
        """200 once both model deployments have loaded their weights; 503 before."""
        try:
            info = await asyncio.wait_for(self._model_info(), HEALTH_TIMEOUT_S)
            decoder = await asyncio.wait_for(self.decoder.ready.remote(), HEALTH_TIMEOUT_S)
        except (asyncio.TimeoutError, ApiError):
            return JSONResponse({"status": "loading"}, status_code=503,
                                headers={"Retry-After": str(self.retry_after_s)})
        return JSONResponse({"status": "ok", "model": info.id,
                             "fingerprints": {**info.fingerprints, "ae": decoder}})

    # -- helpers ---------------------------------------------------------------------------------
    def _authorize(self, request: Request) -> None:
        """Bearer token check when VGT_API_KEY is set; digests make the compare constant-time."""
        if self._key_digest is None:
            return
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        given = hashlib.sha256(token.strip().encode()).digest()
        if scheme.lower() != "bearer" or not hmac.compare_digest(given, self._key_digest):
            raise ApiError(401, "incorrect or missing API key: send 'Authorization: Bearer <VGT_API_KEY>'",
                           code="invalid_api_key", headers={"WWW-Authenticate": "Bearer"})

    async def _model_info(self) -> ModelInfo:
        if self._info is None:
            info = await self._call("sampler", [], self.sampler.info)
            for size in info.allowed_sizes(self.limits):
                info.check_size(size)
            self._info = info
        return self._info

    async def _call(self, stage: str, retries: list, method, *args):
        """One handle call, retried once if its replica died (generation is idempotent given the seed);
        a retry is appended to `retries`."""
        from ray.exceptions import RayActorError
        from ray.serve.exceptions import BackPressureError, ReplicaUnavailableError

        for attempt in (1, 2):
            try:
                return await method.remote(*args)
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
