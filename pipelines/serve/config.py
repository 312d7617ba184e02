"""Deploy the image service from `cluster/serve.yaml`, the single source of truth for its knobs.

`vgt serve`, the tests and the benchmark all load that file, override a few fields (model, host,
port, deployment options) and deploy it declaratively, exactly as `serve run cluster/serve.yaml`
and KubeRay's RayService do, so every path exercises the same configuration.
"""
from __future__ import annotations

import copy
import os
import time
from vgt.errors import VGTError

APP_NAME = "vgt"
MODEL_DEPLOYMENTS = ("ARSampler", "AEDecoder")
_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # the checkout (pipelines/serve/..)
DEFAULT_CONFIG = os.path.join(_ROOT, "cluster", "serve.yaml")


class DeployError(VGTError):
    """The application failed to deploy (message from Serve), or did not come up in time."""


def load_config(path: str = DEFAULT_CONFIG) -> dict:
    import yaml

    with open(path) as f:
        config = yaml.safe_load(f)
    app_of(config)  # fail early when the file holds no vgt application
    return config


def app_of(config: dict) -> dict:
    apps = [a for a in config.get("applications", []) if a.get("name") == APP_NAME]
    if len(apps) != 1:
        raise DeployError(f"the Serve config must hold exactly one application named {APP_NAME!r}")
    return apps[0]


def with_overrides(config: dict, model: str | None = None, host: str | None = None, port: int | None = None,
                   args: dict | None = None, deployments: dict[str, dict] | None = None) -> dict:
    """A copy of `config` with the model, HTTP address, app args and per-deployment options replaced
    (deployment options merge one level deep, so `{"ARSampler": {"autoscaling_config": {...}}}`
    replaces only that option of that deployment)."""
    config = copy.deepcopy(config)
    app = app_of(config)
    http = config.setdefault("http_options", {})
    if host is not None:
        http["host"] = host
    if port is not None:
        http["port"] = int(port)
    app["args"] = {**app.get("args", {}), **(args or {}), **({"model": model} if model else {})}
    by_name = {d["name"]: d for d in app.setdefault("deployments", [])}
    for name, options in (deployments or {}).items():
        if name not in by_name:
            by_name[name] = {"name": name}
            app["deployments"].append(by_name[name])
        by_name[name].update(copy.deepcopy(options))
    return config


def deploy(config: dict, timeout_s: float = 300.0) -> str:
    """Start Serve (HTTP options apply only when Serve is not running yet), deploy, wait until the
    application runs; returns the base URL it answers on."""
    from ray.serve._private.api import serve_start
    from ray.serve.schema import ServeDeploySchema

    schema = ServeDeploySchema.model_validate(config)
    client = serve_start(http_options=schema.http_options.model_dump(), proxy_location=schema.proxy_location)
    before = _deployed_time()
    client.deploy_apps(schema)  # same call as `serve run CONFIG` makes
    wait_running(timeout_s, after=before)
    http = client.http_config  # the proxies' real address: a running Serve keeps its first options
    return url_of({**config, "http_options": {"host": http.host, "port": http.port}})


def wait_running(timeout_s: float, after: float = 0.0) -> None:
    """Wait until the application deployed later than `after` (a redeploy) is RUNNING."""
    from ray import serve

    deadline = time.monotonic() + timeout_s
    while True:
        app = serve.status().applications.get(APP_NAME)
        status = app.status if app else "NOT_STARTED"  # a str Enum
        if status == "RUNNING" and app.last_deployed_time_s > after:
            return
        if status == "DEPLOY_FAILED":
            causes = [f"{name}: {d.message.strip().splitlines()[-1]}" for name, d in app.deployments.items()
                      if d.message.strip()]
            raise DeployError(f"the vgt application failed to deploy: {app.message} {'; '.join(causes)}")
        if time.monotonic() > deadline:
            raise DeployError(f"the vgt application is still {status} after {timeout_s:.0f}s")
        time.sleep(0.2)


def _deployed_time() -> float:
    from ray import serve

    app = serve.status().applications.get(APP_NAME)
    return app.last_deployed_time_s if app else 0.0


def serve_running() -> bool:
    """Whether Serve already runs on the connected Ray cluster (then its HTTP options are fixed)."""
    import ray

    try:
        ray.get_actor("SERVE_CONTROLLER_ACTOR", namespace="serve")
        return True
    except ValueError:
        return False


def free_port() -> int:
    """A free TCP port on 127.0.0.1 (for local runs next to other services)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def url_of(config: dict) -> str:
    http = config.get("http_options", {})
    host = http.get("host", "127.0.0.1")
    host = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    prefix = (app_of(config).get("route_prefix") or "/").rstrip("/")
    return f"http://{host}:{http.get('port', 8000)}{prefix}"


def placement_overrides(gpus: str | float = "auto", cpus: float = 0.25) -> dict[str, dict]:
    """Deployment overrides placing the model replicas (call after `ray.init`). "auto" keeps the
    config's placement (one GPU per replica) when the cluster has GPUs and otherwise gives each
    replica a fraction of a CPU, so two deployments x two replicas fit a 2-core machine next to
    other work; a number asks for that many GPUs per replica."""
    import ray

    if gpus == "auto":
        if ray.cluster_resources().get("GPU", 0) > 0:
            return {}
        gpus = 0
    gpus = float(gpus)
    options = {"num_gpus": gpus, "num_cpus": 1.0} if gpus > 0 else {"num_cpus": cpus}
    return {name: {"ray_actor_options": options} for name in MODEL_DEPLOYMENTS}
