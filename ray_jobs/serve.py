"""Serve a pipeline folder over HTTP with Ray Serve (OpenAI Images API).

Deploys cluster/serve.yaml (or --config) with the model, address and placement given here,
prints the URL when every deployment is up, and blocks until Ctrl-C (or SIGTERM), then shuts
Serve down. Endpoints: POST /v1/images/generations, GET /v1/models, GET /healthz.
Set VGT_API_KEY to require `Authorization: Bearer <key>` on /v1/*.
"""
from __future__ import annotations

import argparse


def gpus_per_replica(text: str) -> str | float:
    """`--num-gpus`: "auto" or a number >= 0."""
    if text == "auto":
        return text
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected 'auto' or a number, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0, got {text}")
    return value


def tcp_port(text: str) -> int:
    """`--port`: 1..65535."""
    if not text.isdigit() or not 1 <= int(text) <= 65535:
        raise argparse.ArgumentTypeError(f"expected a TCP port 1-65535, got {text!r}")
    return int(text)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from ray_jobs._entry import add_address, hidden_alias

    parser.add_argument("--model", required=True, action="append", metavar="[NAME=]DIR",
                        help="repeatable: several NAME=DIR are served together (multiplexed: a request's `model` "
                             "picks one; adapter folders load on their base); the folder to serve: local path, s3:// "
                             "or Hugging Face Hub repo id owner/name[@revision] (downloaded here, into the Hub "
                             "cache; the replicas load the local copy)")
    parser.add_argument("--host", default="127.0.0.1",
                        help="HTTP bind address (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=tcp_port, default=None,
                        help="HTTP port (default: the Serve config's, 8000 in cluster/serve.yaml)")
    parser.add_argument("--config", default=None, help="Serve config file (default: cluster/serve.yaml)")
    parser.add_argument("--num-gpus", type=gpus_per_replica, default="auto", metavar="auto|G",
                        help="GPUs per sampler/decoder replica: 'auto' (default: the config's placement if the "
                             "cluster has GPUs, else 0.25 CPU per replica), or a number")
    hidden_alias(parser, "--gpus", "--num-gpus", type=gpus_per_replica)
    parser.add_argument("--name", default=None, help="model id for /v1/models (default: the folder name)")
    parser.add_argument("--max-models-per-replica", type=int, default=None, metavar="N",
                        help="multiplexed: models one sampler replica holds at once, least recently used unloaded "
                             "first (default 3)")
    add_address(parser)
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the deployments to come up (default 600)")


def run(args: argparse.Namespace) -> int:
    import os
    import signal
    import time

    from ray import serve

    from pipelines.serve.config import APP_NAME, DEFAULT_CONFIG, deploy, placement_overrides, with_overrides
    from ray_jobs._entry import connect_ray
    from vgt.hub import resolve
    from vgt.pipeline import read_index

    # Hub repo ids (owner/name[@revision]) -> their local snapshots, downloaded here, before Ray starts
    args.model = [name + sep + resolve(folder) if sep else resolve(item)
                  for item in args.model for name, sep, folder in [item.partition("=")]]
    served = served_models(args.model)  # {NAME: DIR}: multiplexed (checked here, before Ray starts), else None
    args.model = next(iter(served.values())) if served else args.model[0]
    app = app_args(args, served)
    read_index(args.model)  # a missing or foreign folder fails here, before Ray starts
    config = read_config(args.config or DEFAULT_CONFIG)
    joined = bool(args.address or os.environ.get("RAY_ADDRESS"))  # a cluster that is not ours alone
    connect_ray(args.address)
    config = with_overrides(config, model=None if served else args.model, host=args.host, port=args.port,
                            args=app,
                            deployments=placement_overrides(args.num_gpus))
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(sig, _interrupt)
    try:  # a DeployError (Serve's message, or not up in time) ends as one line, exit 1
        url = deploy(config, timeout_s=args.timeout)
        print(f"vgt serve: ready at {url}  (POST {url}/v1/images/generations; Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    finally:
        # On a shared cluster remove only our application; a local Ray instance is ours entirely.
        if joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        print("vgt serve: stopped", flush=True)


def served_models(items: list[str]) -> dict[str, str] | None:
    """`--model` values -> {NAME: DIR} when any is NAME=DIR or there are several (every folder's index and
    every adapter's base checked: `pipelines.serve.multiplex.model_table`), else None (one folder)."""
    from vgt.errors import UsageError

    if len(items) == 1 and "=" not in items[0]:
        return None
    served = {}
    for item in items:
        name, sep, folder = item.partition("=")
        if not sep or not name or not folder:
            raise UsageError(f"--model {item!r}: several models are given as NAME=DIR")
        if name in served:
            raise UsageError(f"--model {item!r}: the name {name!r} is given twice")
        served[name] = folder
    from pipelines.serve.multiplex import model_table

    model_table(served)
    return served


def app_args(args: argparse.Namespace, served: dict[str, str] | None) -> dict | None:
    """The application args `vgt serve` sets (pipelines/serve/app.py ARGS)."""
    from vgt.errors import UsageError

    if served:
        if args.name:
            raise UsageError("--name names the one model; with NAME=DIR models the names are given")
        multiplexed = {} if args.max_models_per_replica is None else {
            "max_models_per_replica": args.max_models_per_replica}
        return {"models": served, "multiplexed": multiplexed}
    return {"model_name": args.name} if args.name else None


def read_config(path: str) -> dict:
    """The Serve config file; a missing or unreadable one is refused in one line (exit 1)."""
    import yaml

    from pipelines.serve.config import load_config
    from vgt.errors import VGTError

    try:
        return load_config(path)
    except FileNotFoundError as e:
        raise VGTError(f"Serve config {path!r} does not exist") from e
    except (OSError, yaml.YAMLError, AttributeError) as e:  # AttributeError: YAML that is not a mapping
        raise VGTError(f"cannot read Serve config {path!r}: {str(e).splitlines()[0]}") from e


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
