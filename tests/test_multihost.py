"""A real multi-host Ray cluster on one machine (tests/multihost.py): three network namespaces on a
private bridge, a Ray head in one and a worker node in each other, each with its own address and
its own /tmp. Tasks run on every host and their objects cross hosts; `ray job submit` from the root
namespace reaches the head's job server (one job drives the task test too: a second driver would
cost ~20 s); teardown leaves no namespace, interface or process."""
from __future__ import annotations

import hashlib
import json
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

import multihost

pytestmark = pytest.mark.ray  # starts its own Ray nodes (inside namespaces, not on 127.0.0.1)

N_HOSTS = 3
ARRAY_BYTES = 4 * 1024**2  # above Ray's inline limit (100 KiB): goes through the object store


@pytest.fixture(scope="module")
def hosts():
    """A head and two worker hosts, all nodes alive; removed in the end whatever happened."""
    if (why := multihost.unavailable()) is not None:
        pytest.skip(why)
    with multihost.lock():
        try:
            cluster = multihost.up(N_HOSTS)
            print(f"\n{N_HOSTS} test hosts up in {cluster.up_s} s ({cluster.attempts} attempt(s))")
            yield cluster
        finally:
            multihost.down()


def expected_sha(seed: int) -> str:
    return hashlib.sha256(np.random.default_rng(seed).standard_normal(ARRAY_BYTES // 8).tobytes()).hexdigest()


# The job's driver, which Ray runs on the head host: one task pinned to each alive node (its
# `node:IP` resource) makes an array from its seed, records its node IP and leaves a marker in its
# /tmp; the driver gets the arrays across hosts and hashes them again.
DRIVER = """
import hashlib, json, sys, ray, numpy as np
n_bytes = int(sys.argv[1])
ray.init(log_to_driver=False)

@ray.remote
def make(seed):
    ip = ray.util.get_node_ip_address()
    open("/tmp/vgt-marker", "w").write(ip)
    a = np.random.default_rng(seed).standard_normal(n_bytes // 8)
    return ip, hashlib.sha256(a.tobytes()).hexdigest(), a

alive = sorted(n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"])
refs = [make.options(resources={f"node:{ip}": 0.01}).remote(seed) for seed, ip in enumerate(alive)]
tasks = [dict(seed=seed, ip=ip, sha_there=sha, sha_here=hashlib.sha256(a.tobytes()).hexdigest())
         for seed, (ip, sha, a) in enumerate(ray.get(refs))]
print("RESULT " + json.dumps(dict(driver_ip=ray.util.get_node_ip_address(), alive=alive, tasks=tasks)))
"""


@pytest.fixture(scope="module")
def job(hosts) -> dict:
    """DRIVER submitted as a user would: `ray job submit` from the root namespace to the head's
    job server on its bridge address. Returns the driver's RESULT."""
    done = subprocess.run([str(multihost.BIN / "ray"), "job", "submit", "--address", hosts.dashboard,
                           "--", "python", "-c", DRIVER, str(ARRAY_BYTES)],
                          env=hosts.client_env(), capture_output=True, text=True, timeout=240)
    assert done.returncode == 0, (done.stdout + done.stderr)[-3000:]
    return json.loads(next(x for x in done.stdout.splitlines() if x.startswith("RESULT "))[7:])


@pytest.mark.timeout(560)  # includes the module's cluster start (~35 s idle; up to 300 s) and the job
def test_job_submit_from_the_root_namespace_reaches_the_head(job, hosts):
    assert job["driver_ip"] == hosts.head.ip  # the job's driver runs on the head host
    assert job["alive"] == [multihost.host_ip(i) for i in range(N_HOSTS)]  # and sees every host


@pytest.mark.timeout(60)
def test_tasks_run_on_every_host_and_objects_cross_hosts(job):
    ips = [multihost.host_ip(i) for i in range(N_HOSTS)]
    # one task per host, each on the host it was pinned to, reporting that host's own address
    assert [t["ip"] for t in job["tasks"]] == ips
    for t in job["tasks"]:
        # the bytes computed on the host arrived intact on the head: and they are the seed's array
        assert t["sha_there"] == t["sha_here"] == expected_sha(t["seed"]), t
    # each host wrote /tmp/vgt-marker into its own private /tmp (no shared local disk)
    for i, ip in enumerate(ips):
        assert (multihost.STATE / f"h{i}" / "tmp" / "vgt-marker").read_text() == ip
    assert not Path("/tmp/vgt-marker").exists()


@pytest.mark.timeout(120)
def test_teardown_leaves_nothing(hosts):
    started = multihost.processes()  # every process inside the hosts' namespaces
    # the head runs at least GCS, raylet and dashboard; each worker host at least its raylet
    assert len(started) >= 3 + (N_HOSTS - 1), started
    t0 = time.monotonic()
    multihost.down()
    print(f"\ntest hosts down in {time.monotonic() - t0:.1f} s ({len(started)} processes)")
    assert multihost.namespaces() == []
    assert multihost.links() == []
    assert multihost.still_running(started) == []
    assert not multihost.STATE.exists()
    # nothing anywhere still speaks for one of the hosts' addresses (found by reading /proc only)
    stray = [p.name for p in Path("/proc").iterdir() if p.name.isdigit() and _cmdline_has(p, "10.77.0.")]
    assert stray == []


def _cmdline_has(proc: Path, text: str) -> bool:
    try:
        return text in (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return False
