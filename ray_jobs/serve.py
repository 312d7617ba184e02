"""Serve a pipeline folder over HTTP with Ray Serve (OpenAI Images API).

Deploys cluster/serve.yaml (or --config) with the model, address and placement given here,
prints the URL when every deployment is up, and blocks until Ctrl-C (or SIGTERM), then shuts
Serve down. Endpoints: POST /v1/images/generations, GET /v1/models, GET /healthz.
Set VGT_API_KEY to require `Authorization: Bearer <key>` on /v1/*.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model", required=True, help="pipeline folder to serve: local path or s3://")
    parser.add_argument("--host", default="127.0.0.1",
                        help="HTTP bind address (default 127.0.0.1; 0.0.0.0 for every interface)")
    parser.add_argument("--port", type=int, default=None, help="HTTP port (default: the config's, 8000)")
    parser.add_argument("--config", default=None, help="Serve config file (default: cluster/serve.yaml)")
    parser.add_argument("--gpus", default="auto",
                        help="GPUs per sampler/decoder replica: 'auto' (the config's placement if the "
                             "cluster has GPUs, else 0.25 CPU per replica), or a number")
    parser.add_argument("--name", default=None, help="model id for /v1/models (default: the folder name)")
    parser.add_argument("--address", default=None,
                        help="Ray cluster to join ('auto' = the running one); default: start a local Ray")
    parser.add_argument("--timeout", type=float, default=600.0,
                        help="seconds to wait for the deployments to come up (default 600)")


def run(args: argparse.Namespace) -> int:
    import signal
    import time

    import ray
    from ray import serve

    from pipelines.serve.config import (APP_NAME, DEFAULT_CONFIG, DeployError, deploy, load_config,
                                        placement_overrides, with_overrides)
    from ray_jobs._entry import UserError
    from vgt.pipeline import read_index

    read_index(args.model)  # a missing or foreign folder fails here, before Ray starts
    config = load_config(args.config or DEFAULT_CONFIG)
    joined = args.address is not None
    ray.init(address=args.address)
    config = with_overrides(config, model=args.model, host=args.host, port=args.port,
                            args={"model_name": args.name} if args.name else None,
                            deployments=placement_overrides(args.gpus))
    for sig in (signal.SIGINT, signal.SIGTERM):  # also when started in the background (SIGINT ignored)
        signal.signal(sig, _interrupt)
    try:
        url = deploy(config, timeout_s=args.timeout)
        print(f"vgt serve: ready at {url}  (POST {url}/v1/images/generations; Ctrl-C to stop)", flush=True)
        while True:
            time.sleep(3600)
    except DeployError as e:
        raise UserError(str(e)) from e
    finally:
        # On a shared cluster remove only our application; a local Ray instance is ours entirely.
        if joined:
            serve.delete(APP_NAME)
        else:
            serve.shutdown()
        print("vgt serve: stopped", flush=True)


def _interrupt(signum, frame):
    raise KeyboardInterrupt


if __name__ == "__main__":
    import sys

    from ray_jobs._entry import main_for

    raise SystemExit(main_for(sys.modules[__name__]))
