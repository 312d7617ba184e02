"""Ray Serve image service: `ARSampler` -> `AEDecoder` behind an OpenAI-compatible `Ingress`.

`build_app` is the application builder named in cluster/serve.yaml
(`import_path: pipelines.serve.app:build_app`); its `args` are documented there and below. The
deployments live in serve_workers.py (model replicas) and serve_ingress.py (HTTP), the request
contract in serve_api.py, metrics in serve_metrics.py, model loading in serve_model.py and the
deploy helpers (used by `vgt serve`, tests, benchmark) in serve_config.py.
"""
from __future__ import annotations

from .api import Limits
from .ingress import Ingress
from .workers import AEDecoder, ARSampler

ARGS = {
    "model": "pipeline folder, local path or s3:// (required)",
    "model_name": "id reported by /v1/models and accepted as `model` (default: the folder's name)",
    "limits": "per-request limits, see serve_api.Limits",
    "retry_after_s": "Retry-After seconds sent with 503 responses",
    "models": "{NAME: folder} of pipeline or adapter folders served together (multiplexed; replaces model and "
              "model_name, the first NAME is the default)",
    "multiplexed": "{max_models_per_replica: N}: models one sampler replica holds at once (LRU; default 3)",
}


def build_app(args: dict):
    """Application builder: args (see ARGS) -> the bound Ingress(ARSampler, AEDecoder) graph."""
    args = dict(args or {})
    unknown = set(args) - set(ARGS)
    if unknown:
        raise ValueError(f"unknown vgt serve args {sorted(unknown)}; known: {sorted(ARGS)}")
    if args.get("models"):
        return _multiplexed_app(args)
    model = args.get("model")
    if not model:
        raise ValueError("vgt serve needs args.model: a pipeline folder (local path or s3://), or args.models")
    name = args.get("model_name") or str(model).rstrip("/").rsplit("/", 1)[-1]
    Limits.from_dict(args.get("limits"))  # fail at deploy time, not on the first request
    sampler = ARSampler.bind(model, name)  # placement (ray_actor_options) comes from the config
    decoder = AEDecoder.bind(model)
    return Ingress.bind(sampler, decoder, name, args.get("limits"), int(args.get("retry_after_s", 1)))



def _multiplexed_app(args: dict):
    """Ingress(MultiplexedSampler, MultiplexedDecoder) over args.models (pipelines/serve/multiplex.py)."""
    from .multiplex import DEFAULT_MAX_MODELS, MultiplexedDecoder, MultiplexedSampler, model_table

    options = dict(args.get("multiplexed") or {})
    unknown = set(options) - {"max_models_per_replica"}
    if unknown:
        raise ValueError(f"unknown args.multiplexed keys {sorted(unknown)}; known: ['max_models_per_replica']")
    table = model_table(dict(args["models"]))
    Limits.from_dict(args.get("limits"))
    sampler = MultiplexedSampler.bind(table, int(options.get("max_models_per_replica", DEFAULT_MAX_MODELS)))
    decoder = MultiplexedDecoder.bind({entry["ae"]: entry["ae_uri"] for entry in table.values()})
    return Ingress.bind(sampler, decoder, next(iter(table)), args.get("limits"), int(args.get("retry_after_s", 1)),
                        models={name: entry["ae"] for name, entry in table.items()})
