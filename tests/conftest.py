"""Shared fixtures: one local Ray cluster per session, one loopback S3 server, tiny presets.

Environment variables are set at import time, before any Ray process starts, so that Ray workers
(separate processes) inherit the S3 endpoint and the offline/hub settings.
"""
from __future__ import annotations

import os
import socket
import uuid

import pytest


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


S3_PORT = free_port()
os.environ.update(
    HF_HUB_OFFLINE="1",
    TRANSFORMERS_OFFLINE="1",
    RAY_USAGE_STATS_ENABLED="0",
    RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
    RAY_TRAIN_HEALTH_CHECK_INTERVAL_S="0.2",
    RAY_TRAIN_ENABLE_PREEMPTION_WATCHER="0",
    AWS_ACCESS_KEY_ID="test",
    AWS_SECRET_ACCESS_KEY="test",
    AWS_DEFAULT_REGION="us-east-1",
    AWS_ENDPOINT_URL=f"http://127.0.0.1:{S3_PORT}",
    TOKENIZERS_PARALLELISM="false",
)


# Tests that request one of these (directly or through another fixture, e.g. test_serve's
# `service`) use a Ray cluster: they get the `ray` marker, so `-m "not ray"` (`make test-fast`)
# leaves them out. Modules that start Ray themselves set `pytestmark = pytest.mark.ray`.
RAY_FIXTURES = {"ray_cluster"}


@pytest.hookimpl(tryfirst=True)  # before -m deselects
def pytest_collection_modifyitems(config, items):
    for item in items:
        if RAY_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.ray)


@pytest.fixture(scope="session")
def ray_cluster():
    """A local Ray cluster on loopback (2 CPUs, small object store), shared by the session."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=512 * 1024**2,
             log_to_driver=False, _node_ip_address="127.0.0.1")
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def s3():
    """A moto S3 server on 127.0.0.1 (server mode: Ray workers are other processes). Returns its URL."""
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=S3_PORT, verbose=False)
    server.start()
    yield os.environ["AWS_ENDPOINT_URL"]
    server.stop()


@pytest.fixture
def s3_bucket(s3) -> str:
    """A fresh bucket; returns its name (use as s3://NAME/...)."""
    import boto3

    name = f"vgt-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3).create_bucket(Bucket=name)
    return name


@pytest.fixture
def tiny_cfg():
    from vgt.presets import get_preset

    return get_preset("tiny")


@pytest.fixture
def tiny_qwen_cfg():
    from vgt.presets import get_preset

    return get_preset("tiny-qwen")
