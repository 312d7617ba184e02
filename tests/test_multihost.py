"""A real multi-host Ray cluster on one machine (tests/multihost.py): three network namespaces on a
private bridge, a Ray head in one and a worker node in each other, each with its own address and
its own /tmp, and an S3 server on the bridge (tests/s3_server.py) that every host reaches. Jobs go
through `ray job submit` to the head's job server, as a user's would: tasks and objects across
hosts; `vgt prep` and `vgt train-ar` (DDP on gloo, one worker per host,
checkpoints on S3) with their work spread over the hosts; `vgt serve` with its replicas spread over
the hosts. Faults: a worker host killed (every process at once, as a crash) in the middle of prep,
of training and under serving load; a worker host's cable pulled mid-training; the S3 server
stalling mid-checkpoint. Nothing is lost and the result equals the undisturbed one. Faults happen
at points made by construction: the S3 server holds the requests that mark the point (a part
upload, a checkpoint upload) until the fault is in place. Teardown leaves no namespace, interface
or process."""
from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path

import numpy as np
import pytest

import multihost
from s3_server import S3Server
from vgt import io as vio

pytestmark = pytest.mark.ray  # starts its own Ray nodes (inside namespaces, not on 127.0.0.1)

N_HOSTS = 3
ARRAY_BYTES = 4 * 1024**2  # above Ray's inline limit (100 KiB): goes through the object store
S3_PORT = 9000  # on the bridge address, which only these tests use
BUCKET = "vgt-multihost"
N_SHARDS, PER_SHARD = 9, 4  # raw inputs: 9 parquet shards of 4 small PNGs -> 9 prep parts
JOB_TIMEOUT_S = 900  # one `ray job submit` of a vgt command: 32-100 s at load 3-15, 340 s at load 115
TRAIN = ["--preset", "tiny", "--stage", "pretrain", "--steps", "4", "--num-workers", "2", "--set",
         "train.log_every=1", "train.checkpoint_every=2", "train.sample_every=0", "train.strategy=ddp",
         "train.ar_pretrain.batch_size=2"]


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


@pytest.fixture(scope="module")
def s3(hosts):
    """The S3 server on the bridge address (every host reaches 10.77.0.1), a bucket with the raw
    inputs, and a frozen tiny AE; this process reads it too (AWS_ENDPOINT_URL set for the module)."""
    import boto3
    import pyarrow as pa
    import pyarrow.parquet as pq
    import torch
    from prep_samples import image_bytes

    from vgt.ae import VGTAutoencoder
    from vgt.presets import get_preset

    server = S3Server(multihost.BRIDGE_IP, S3_PORT)
    server.start()
    try:
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv("AWS_ENDPOINT_URL", server.url)
            client = boto3.client("s3", endpoint_url=server.url)
            client.create_bucket(Bucket=BUCKET)
            for k in range(N_SHARDS):
                images = [image_bytes((112 + 8 * i, 150), fmt="PNG", seed=10 * k + i) for i in range(PER_SHARD)]
                buf = io.BytesIO()
                pq.write_table(pa.table({"image": pa.array(images, pa.binary()),
                                         "caption": [f"shape {k} {i}" for i in range(PER_SHARD)]}), buf)
                client.put_object(Bucket=BUCKET, Key=f"raw/shard-{k:02d}.parquet", Body=buf.getvalue())
            torch.manual_seed(0)
            VGTAutoencoder.from_config(get_preset("tiny").ae).save_pretrained(f"s3://{BUCKET}/ae")
            yield server
    finally:
        server.stop()


class Job:
    """`ray job submit -- vgt ARGV` from the root namespace to the head's job server, as a user
    submits it (the S3 endpoint and credentials in the job's runtime env), running in the background."""

    def __init__(self, hosts, s3: S3Server, *argv: str, working_dir: Path | None = None):
        env = {k: os.environ[k] for k in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION")}
        runtime_env = {"env_vars": {**env, "AWS_ENDPOINT_URL": s3.url, "OMP_NUM_THREADS": "1"}}
        if working_dir is not None:  # uploaded by Ray; the job starts in its copy on the head
            runtime_env["working_dir"] = str(working_dir)
        self.log = tempfile.TemporaryFile("w+")  # not a pipe: nobody reads it while the job runs
        self.t0, self.hosts = time.monotonic(), hosts
        self.id = f"vgt-test-{os.urandom(4).hex()}"
        self.proc = subprocess.Popen(
            [str(multihost.BIN / "ray"), "job", "submit", "--address", hosts.dashboard, "--submission-id", self.id,
             "--runtime-env-json", json.dumps(runtime_env), "--", "vgt", *argv],
            env=hosts.client_env(), stdout=self.log, stderr=subprocess.STDOUT, text=True)

    def wait(self) -> str:
        """The job's output once it ended (AssertionError unless it succeeded); sets .seconds."""
        try:
            self.proc.wait(timeout=JOB_TIMEOUT_S)
        finally:
            self.stop()
        self.seconds = round(time.monotonic() - self.t0, 1)
        out = self.output()
        assert self.proc.returncode == 0 and "succeeded" in out, out[-4000:]
        return out

    def output(self) -> str:
        """What `ray job submit` printed so far (the job's logs, followed)."""
        self.log.seek(0)
        return self.log.read()

    def cancel(self) -> None:
        """`ray job stop`, as a user stops a job: its driver and every actor it owns end; returns once
        the job server reports it stopped."""
        subprocess.run([str(multihost.BIN / "ray"), "job", "stop", "--address", self.hosts.dashboard, self.id],
                       env=self.hosts.client_env(), check=True, capture_output=True, timeout=120)
        self.stop()

    def stop(self) -> None:
        """End the local `ray job submit` if it still runs (the cluster's teardown ends the job)."""
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


def puts_under(prefix: str):
    """Match uploads of objects under s3://BUCKET/PREFIX."""
    return lambda r: r.method == "PUT" and r.path.startswith(f"/{BUCKET}/{prefix}")


def writers(s3: S3Server, prefix: str) -> dict[str, set[str]]:
    """Object path under PREFIX -> addresses of the hosts that uploaded it (all attempts)."""
    out: dict[str, set[str]] = {}
    for r in s3.writes(f"/{BUCKET}/{prefix}"):
        out.setdefault(r.path, set()).add(r.ip)
    return out


@pytest.fixture(scope="module")
def prep_run(hosts, s3, tmp_path_factory) -> dict:
    """`vgt prep` of 9 raw shards on s3:// across the hosts, with the last worker host killed while
    it uploads a part. Made by construction: part uploads are held until one is in flight on every
    host (each host has one CPU, so 3 at once are on 3 hosts), released, held again until the next
    3 are in flight, and then the victim is killed with its upload held; its part must be redone
    elsewhere. The undisturbed reference is the same prep built in this process."""
    from pipelines.prep.dataset import run_prep
    from vgt.presets import get_preset

    victim = N_HOSTS - 1
    parts = puts_under("prepared/part-")
    round1 = s3.start_hold(parts)
    job = Job(hosts, s3, "prep", "--input", f"s3://{BUCKET}/raw/", "--out", f"s3://{BUCKET}/prepared", "--preset", "tiny")
    round2 = None
    try:
        first = round1.wait(JOB_TIMEOUT_S, ips=N_HOSTS)
        round2 = s3.start_hold(parts)
        s3.release(round1)
        lost = next(r for r in round2.wait(JOB_TIMEOUT_S, ips=N_HOSTS) if r.ip == multihost.host_ip(victim))
        t_kill = time.monotonic()
        killed = multihost.kill_host(victim)
        s3.release(round2)
        out = job.wait()
    finally:
        s3.release(round1)
        if round2 is not None:
            s3.release(round2)
        job.stop()
    t_end = time.monotonic()
    redo = [r for r in s3.writes(lost.path, since=t_kill) if r.ip != lost.ip]
    restart_s = multihost.restart_worker(hosts, victim)  # training wants a spare host again
    reference_dir = tmp_path_factory.mktemp("prep-ref")
    reference = run_prep([f"s3://{BUCKET}/raw/"], str(reference_dir), get_preset("tiny"), in_process=True)
    figures = {"job_s": job.seconds, "killed_processes": killed, "lost_part_redone_after_s": round(redo[0].t - t_kill, 1),
               "kill_to_end_s": round(t_end - t_kill, 1), "restart_host_s": round(restart_s, 1)}
    print(f"\nprep with a host killed: {figures}")
    return {"output": out, "first": first, "lost": lost, "redo": redo, "reference": reference, "figures": figures,
            "writers": writers(s3, "prepared/part-"), "reference_dir": reference_dir}


@pytest.mark.timeout(1500)  # the cluster's start and the prep job on the loaded machine
def test_prep_on_s3_spreads_parts_over_every_host_and_survives_a_host_killed_mid_part(prep_run):
    import pyarrow.parquet as pq

    ips = [multihost.host_ip(i) for i in range(N_HOSTS)]
    # every host built a part (the first three uploads, held together, came from the three hosts)
    assert sorted(r.ip for r in prep_run["first"]) == ips
    manifest = vio.read_json(f"s3://{BUCKET}/prepared/manifest.json")
    ref = prep_run["reference"]
    names = sorted(ref["parts"])
    assert len(names) == N_SHARDS and sorted(manifest["parts"]) == names
    # each part complete exactly once: built once in this run, one file, counts as undisturbed
    assert sorted(manifest["runs"][-1]["parts_built"]) == names
    assert all(manifest["parts"][n]["complete"] for n in names)
    assert manifest["counts"] == ref["counts"] and manifest["counts"]["rows_out"] == N_SHARDS * PER_SHARD
    for n in names:
        assert manifest["parts"][n]["rows_out"] == ref["parts"][n]["rows_out"] == PER_SHARD
    stored = sorted(u.rsplit("/", 1)[-1] for u in vio.ls(f"s3://{BUCKET}/prepared") if "/part-" in u)
    assert stored == [f"{n}.parquet" for n in names]
    # only the part the killed host was uploading was built again, by a surviving host
    lost = prep_run["lost"]
    assert prep_run["redo"] and {r.ip for r in prep_run["redo"]} <= set(ips) - {lost.ip}
    assert [p for p, who in prep_run["writers"].items() if len(who) > 1] == [lost.path]
    # and every part holds exactly what the undisturbed run wrote (keys, captions, image bytes)
    for n in names:
        with vio.open(f"s3://{BUCKET}/prepared/{n}.parquet") as f:
            got = pq.read_table(f)
        assert got.equals(pq.read_table(prep_run["reference_dir"] / f"{n}.parquet")), n


def train_ar(hosts, s3, run: str) -> Job:
    """`vgt train-ar` on the prepared parts (latents encoded on the fly by the frozen AE), 2 DDP
    workers on gloo (one CPU each, so one per host), a checkpoint every 2 of 4 steps, all on S3."""
    return Job(hosts, s3, "train-ar", *TRAIN, "--data", f"s3://{BUCKET}/prepared", "--ae", f"s3://{BUCKET}/ae",
               "--out", f"s3://{BUCKET}/{run}")


def export_weights(run: str) -> dict:
    from safetensors.torch import load

    return load(vio.read_bytes(f"s3://{BUCKET}/{run}/export/ar/model.safetensors"))


def metrics(run: str) -> list[dict]:
    return [json.loads(x) for x in vio.read_bytes(f"s3://{BUCKET}/{run}/metrics.jsonl").decode().splitlines() if x]


@pytest.fixture(scope="module")
def train_ref(hosts, s3, prep_run) -> dict:
    """The undisturbed training run."""
    job = train_ar(hosts, s3, "ar-ref")
    out = job.wait()
    print(f"\ntrain-ar undisturbed: {job.seconds} s")
    return {"output": out, "seconds": job.seconds, "writers": writers(s3, "ar-ref/checkpoints/")}


@pytest.mark.timeout(1200)
def test_train_ar_ddp_one_worker_per_host_checkpoints_to_s3(train_ref):
    steps = [m["step"] for m in metrics("ar-ref") if "loss" in m]
    assert steps == [1, 2, 3, 4]
    # each rank uploads its own RNG state: the two ranks ran on two different hosts
    for step in (2, 4):
        ranks = {p.rsplit("/", 1)[-1]: ips for p, ips in train_ref["writers"].items()
                 if f"/step-{step:08d}/rng-rank" in p}
        assert sorted(ranks) == ["rng-rank0.safetensors", "rng-rank1.safetensors"], ranks
        assert len(set.union(*ranks.values())) == 2, ranks
    assert "step 4 of 4" in train_ref["output"] and export_weights("ar-ref")


def lose_a_worker_host(hosts, s3, train_ref: dict, run: str, cable: bool) -> dict:
    """The reference run again, with a worker host lost while both workers upload the step-4
    checkpoint: uploads under step-00000004/ are held until both ranks are in one, then the
    non-head host of a rank is killed (every process at once) or, with `cable`, cut off (its link
    down: processes alive, packets lost), and the hold released. Step 4's checkpoint is then never
    complete, so Ray Train (FailureConfig) restarts the group on the survivor and the spare host
    once the GCS declares the lost host dead, from step 2. The host is started again afterwards."""
    hold = s3.start_hold(puts_under(f"{run}/checkpoints/step-00000004/"))
    job = train_ar(hosts, s3, run)
    victim = None
    try:
        held = hold.wait(JOB_TIMEOUT_S, ips=2)
        victim_ip = sorted({r.ip for r in held} - {hosts.head.ip})[0]
        victim = [h.ip for h in hosts.hosts].index(victim_ip)
        t_lost = time.monotonic()
        if cable:
            multihost.set_link(victim, up=False)
        else:
            killed = multihost.kill_host(victim)
        s3.release(hold)
        while victim_ip in hosts.alive_nodes():  # the GCS's health checks (multihost.HEALTH_CHECKS)
            time.sleep(0.2)
        dead_s = time.monotonic() - t_lost
        out = job.wait()
    finally:
        s3.release(hold)
        job.stop()
        if cable and victim is not None:
            multihost.set_link(victim, up=True)
    done_s = time.monotonic() - t_lost
    figures = {"job_s": job.seconds, "undisturbed_job_s": train_ref["seconds"],
               "declared_dead_after_s": round(dead_s, 1), "loss_to_end_s": round(done_s, 1), "steps_redone": 2,
               } | ({} if cable else {"killed_processes": killed})
    print(f"\ntrain-ar with a host {'cut off' if cable else 'killed'}: {figures}")
    figures["restart_host_s"] = round(multihost.restart_worker(hosts, victim), 1)
    print(f"host {victim} alive again in {figures['restart_host_s']} s")
    return {"output": out, "run": run, "victim_ip": victim_ip, "figures": figures,
            "writers": writers(s3, f"{run}/checkpoints/step-00000004/")}


def assert_resumed_bitwise_equal(fault: dict) -> None:
    out = fault["output"]
    assert "resumed at step 2 on 2 worker(s)" in out, out[-4000:]
    assert "step 4 of 4" in out
    # the restarted group ran on the two other hosts (the survivor and the spare)
    rerun = {ip for p, ips in fault["writers"].items() if "rng-rank" in p for ip in ips}
    assert len(rerun - {fault["victim_ip"]}) == 2
    assert_same_as_undisturbed(fault["run"])


def assert_same_as_undisturbed(run: str) -> None:
    """One consistent history, the same losses as the undisturbed run, and bitwise the same weights."""
    ref, got = metrics("ar-ref"), metrics(run)
    assert [m["step"] for m in got if "loss" in m] == [1, 2, 3, 4]
    assert [m["loss"] for m in got if "loss" in m] == [m["loss"] for m in ref if "loss" in m]
    a, b = export_weights("ar-ref"), export_weights(run)
    assert sorted(a) == sorted(b) and all(a[k].equal(b[k]) for k in a)


@pytest.mark.timeout(1200)
def test_train_ar_resumes_from_the_last_checkpoint_after_a_host_is_killed_bitwise_equal(hosts, s3, train_ref):
    assert_resumed_bitwise_equal(lose_a_worker_host(hosts, s3, train_ref, "ar-kill", cable=False))


@pytest.mark.timeout(1200)
def test_train_ar_recovers_from_a_pulled_cable_as_from_a_crash(hosts, s3, train_ref):
    fault = lose_a_worker_host(hosts, s3, train_ref, "ar-cable", cable=True)
    assert_resumed_bitwise_equal(fault)
    # silent, not refused: declared dead only after 5 health checks timed out (5 s each)
    assert fault["figures"]["declared_dead_after_s"] >= 25


def checkpoint_files(run: str, step: int) -> list[str]:
    import boto3

    prefix = f"{run}/checkpoints/step-{step:08d}/"
    pages = boto3.client("s3").get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return sorted(o["Key"][len(prefix):] for page in pages for o in page.get("Contents", []))


STALL_S = 5.0  # how long the S3 server answers none of the checkpoint's uploads


@pytest.mark.timeout(1200)
def test_s3_stall_mid_checkpoint_leaves_it_complete_or_not_resumed_from(hosts, s3, train_ref):
    """The step-4 checkpoint's uploads stall on the S3 server (held, unanswered) once both ranks are
    inside one. First the job is stopped during the stall: whatever part of step 4 reached S3, Ray
    Train never registered it, and the run's resume point stays step 2. The same command again
    resumes from step 2; its step-4 upload stalls STALL_S seconds and then goes through: step 4 is
    complete (the undisturbed run's files), registered, and the run ends bitwise equal to it."""
    from pipelines.train.launch import latest_checkpoint_state

    run = "ar-stall"
    figures = {}
    with s3.hold(puts_under(f"{run}/checkpoints/step-00000004/")) as stall:
        job = train_ar(hosts, s3, run)
        try:
            stall.wait(JOB_TIMEOUT_S, ips=2)
            time.sleep(STALL_S)
            t0 = time.monotonic()
            job.cancel()
            figures["stop_s"] = round(time.monotonic() - t0, 1)
        finally:
            job.stop()
    figures["cut_files"] = len(checkpoint_files(run, 4))
    assert latest_checkpoint_state(f"s3://{BUCKET}/{run}")["step"] == 2
    with s3.hold(puts_under(f"{run}/checkpoints/step-00000004/")) as stall:
        job = train_ar(hosts, s3, run)
        try:
            stall.wait(JOB_TIMEOUT_S, ips=2)
            time.sleep(STALL_S)
        except BaseException:
            job.stop()
            raise
    t0 = time.monotonic()
    out = job.wait()
    figures |= {"stall_s": STALL_S, "release_to_end_s": round(time.monotonic() - t0, 1), "steps_redone": 2,
                "complete_files": len(checkpoint_files(run, 4))}
    print(f"\ntrain-ar with S3 stalls mid-checkpoint: {figures}")
    assert "resumed at step 2 on 2 worker(s)" in out, out[-4000:]
    assert checkpoint_files(run, 4) == checkpoint_files("ar-ref", 4)
    assert latest_checkpoint_state(f"s3://{BUCKET}/{run}")["step"] == 4
    assert_same_as_undisturbed(run)


SERVE_PORT = 8000
PROMPT = "a red square on a white background"


def replica_hosts(hosts) -> dict[str, list[str]]:
    """Deployment name -> host addresses of its live replicas (the head's state API)."""
    import urllib.request

    req = urllib.request.Request(f"{hosts.dashboard}/api/v0/actors?limit=1000&detail=1",
                                 headers={"Authorization": f"Bearer {hosts.token}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        actors = json.load(r)["data"]["result"]["result"]
    ips = {n["node_id"]: n["node_ip"] for n in _nodes(hosts)}
    out: dict[str, list[str]] = {}
    for a in actors:
        if a["state"] == "ALIVE" and a["class_name"].startswith("ServeReplica:vgt:"):
            out.setdefault(a["class_name"].rsplit(":", 1)[-1], []).append(ips[a["node_id"]])
    return {k: sorted(v) for k, v in out.items()}


def _nodes(hosts) -> list[dict]:
    import urllib.request

    req = urllib.request.Request(f"{hosts.dashboard}/api/v0/nodes?limit=100",
                                 headers={"Authorization": f"Bearer {hosts.token}"})
    with urllib.request.urlopen(req, timeout=20) as r:
        return json.load(r)["data"]["result"]["result"]


SERVE_MODEL = f"s3://{BUCKET}/ar-ref/export"


@pytest.fixture(scope="class")
def served(hosts, s3, train_ref, tmp_path_factory) -> dict:
    """`vgt serve` of the trained export on s3://, submitted as a job (it serves until stopped), with
    two sampler and two decoder replicas and at most one replica of each per host; healthy. Scoped
    to TestServe: its `ray job submit` ends before the teardown test looks for leftovers."""
    import httpx
    import yaml

    from pipelines.serve.config import load_config, with_overrides

    spread = {"num_replicas": 2, "autoscaling_config": None, "max_replicas_per_node": 1}
    config = with_overrides(load_config(), deployments={"ARSampler": spread, "AEDecoder": spread})
    # the head has its own /tmp, so the config travels as the job's working dir, as a user would send it
    folder = tmp_path_factory.mktemp("serve-job")
    (folder / "serve.yaml").write_text(yaml.safe_dump(config))
    job = Job(hosts, s3, "serve", "--model", SERVE_MODEL, "--name", "tiny", "--host", "0.0.0.0", "--config",
              "serve.yaml", working_dir=folder)
    url = f"http://{hosts.head.ip}:{SERVE_PORT}"
    try:
        deadline = time.monotonic() + JOB_TIMEOUT_S
        while True:
            assert job.proc.poll() is None, f"vgt serve ended:\n{job.output()[-4000:]}"
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{url}/healthz", timeout=5).status_code == 200:
                    break
            assert time.monotonic() < deadline, "vgt serve not healthy in time"
            time.sleep(1)
        yield {"url": url, "ready_s": round(time.monotonic() - job.t0, 1)}
    finally:
        job.stop()


LOAD_CLIENTS = 2  # each sends one request after another
CLIENT_RETRIES = 5  # the openai SDK's max_retries (its default is 2); it retries 5xx, honouring Retry-After


class TestServe:
    """`vgt serve` across the hosts: one deployment (the class-scoped `served`), two tests."""

    @pytest.mark.timeout(1200)
    def test_serve_answers_with_sampler_and_decoder_replicas_spread_over_hosts(self, hosts, served):
        """The replicas sit on several hosts, and a request to the head's proxy is answered with the
        image the pipeline gives in this process."""
        import base64

        import httpx
        from PIL import Image

        from vgt.pipeline import VGTPipeline

        t0 = time.monotonic()
        r = httpx.post(f"{served['url']}/v1/images/generations", timeout=120,
                       json={"prompt": PROMPT, "seed": 3, "n": 1, "size": "112x112", "response_format": "b64_json"})
        request_s = round(time.monotonic() - t0, 2)
        placed = replica_hosts(hosts)
        print(f"\nvgt serve across hosts: healthy {served['ready_s']} s after submit, one request {request_s} s, "
              f"replicas {placed}")
        assert r.status_code == 200, r.text[:2000]
        assert len(set(placed["ARSampler"])) == 2 and len(set(placed["AEDecoder"])) == 2, placed
        assert len(set(placed["ARSampler"]) | set(placed["AEDecoder"])) >= 2
        served_image = np.asarray(Image.open(io.BytesIO(base64.b64decode(r.json()["data"][0]["b64_json"]))).convert("RGB"))
        pipe = VGTPipeline.from_pretrained(SERVE_MODEL)
        sample = pipe.config.sample
        (local,) = pipe(PROMPT, seed=3, guidance_scale=sample.guidance_scale, num_steps=sample.num_steps,
                        parallel_tokens=sample.parallel_tokens)
        assert served_image.shape == (112, 112, 3)
        assert np.abs(served_image.astype(int) - np.asarray(local)).max() <= 1  # other thread counts: +-1 level

    @pytest.mark.timeout(1200)
    def test_serve_loses_a_host_under_load_without_failing_a_request(self, hosts, served):
        """Steady load from the official `openai` client, then a worker host holding a sampler replica is
        killed (every process at once). Every request is answered 200: the ingress retries a call whose
        replica died, the client retries what the service answers 5xx. Serve starts the lost replicas
        again on the surviving hosts. The host is started again afterwards."""
        import threading

        import httpx
        import openai

        placed = replica_hosts(hosts)
        victim_ip = sorted(set(placed["ARSampler"]) - {hosts.head.ip})[0]
        victim = [h.ip for h in hosts.hosts].index(victim_ip)
        answers: list[dict] = []  # per request: start, seconds, ok, 5xx answers the client retried, ingress retries
        stop, lock = threading.Event(), threading.Lock()

        def client_loop(k: int) -> None:
            seen = []
            http = httpx.Client(event_hooks={"response": [lambda r: seen.append(r.status_code)]})
            client = openai.OpenAI(base_url=f"{served['url']}/v1", api_key="unused", max_retries=CLIENT_RETRIES,
                                   http_client=http, timeout=120)
            seed = 1000 * k
            while not stop.is_set():
                seen.clear()
                t0 = time.monotonic()
                try:
                    raw = client.images.with_raw_response.generate(prompt=PROMPT, n=1, size="112x112",
                                                                   response_format="b64_json", extra_body={"seed": seed})
                    ok, ingress = len(raw.parse().data) == 1, int(raw.headers.get("x-vgt-retries", 0))
                except openai.OpenAIError as err:
                    ok, ingress = repr(err)[:300], 0
                with lock:
                    answers.append({"t": t0, "s": time.monotonic() - t0, "ok": ok, "ingress_retries": ingress,
                                    "client_retries": sum(code >= 500 for code in seen)})
                seed += 1

        threads = [threading.Thread(target=client_loop, args=(k,), daemon=True) for k in range(LOAD_CLIENTS)]
        for t in threads:
            t.start()
        try:
            time.sleep(5)  # steady load before the loss
            t_lost = time.monotonic()
            killed = multihost.kill_host(victim)
            deadline = t_lost + JOB_TIMEOUT_S
            while True:  # both deployments at full strength again, on the surviving hosts
                now = replica_hosts(hosts)
                if all(len(set(now.get(d, []))) == 2 and victim_ip not in now[d] for d in ("ARSampler", "AEDecoder")):
                    break
                assert time.monotonic() < deadline, f"replicas not back: {now}"
                time.sleep(0.5)
            back_s = time.monotonic() - t_lost
            time.sleep(5)  # steady load after the recovery
        finally:
            stop.set()
            for t in threads:
                t.join(timeout=150)
        restart_s = multihost.restart_worker(hosts, victim)

        def p(q: float, rows: list[dict]) -> float:
            return round(float(np.quantile([r["s"] for r in rows], q)), 2) if rows else float("nan")

        before = [r for r in answers if r["t"] < t_lost]
        during = [r for r in answers if r["t"] < t_lost + back_s and r["t"] + r["s"] > t_lost]  # overlapping it
        figures = {"requests": len(answers), "before": len(before), "during_loss": len(during),
                   "killed_processes": killed, "replicas_back_s": round(back_s, 1),
                   "p50_p95_before_s": (p(0.5, before), p(0.95, before)),
                   "p50_p95_during_loss_s": (p(0.5, during), p(0.95, during)),
                   "retried_by_ingress": sum(r["ingress_retries"] > 0 for r in answers),
                   "retried_by_client": sum(r["client_retries"] > 0 for r in answers),
                   "restart_host_s": round(restart_s, 1), "replicas_after": now}
        print(f"\nvgt serve with a host killed under load: {figures}")
        failed = [r for r in answers if r["ok"] is not True]
        assert not failed, failed
        assert before and during and max(r["t"] for r in answers) > t_lost + back_s  # load before, during, after


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
