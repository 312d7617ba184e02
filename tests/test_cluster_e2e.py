"""End to end, the way README "Run on a cluster" submits work: a head started with `ray start --head`
on 127.0.0.1 (explicit free ports, its own temp dir; not the session fixture's cluster), then
`ray job submit --working-dir . -- python -m ray_jobs.prep_data ...` on a small generated dataset
and a tiny `ray_jobs.train_ae` run on its output. Only the head started here is stopped."""
from __future__ import annotations

import io
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.ray  # starts its own Ray head

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What the upload leaves out (as the README's command does): the virtualenv, git history,
# bytecode and test/run outputs. Ray also honours .gitignore on top of these.
EXCLUDES = [".venv", ".git", "**/__pycache__", ".pytest_cache", "runs", "*.egg-info"]
CAPTIONS = [f"a {c} square on a {b} background" for c, b in
            [("red", "white"), ("blue", "black"), ("green", "grey"), ("yellow", "blue"), ("white", "red"), ("black", "green")]]


def free_ports(n: int) -> list[int]:
    """n distinct free TCP ports on loopback (all bound at once, so no duplicates)."""
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def ephemeral_low() -> int:
    """Lowest port the kernel hands out for bind(0) (free_ports draws from there)."""
    try:
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return 32768


def free_range(size: int) -> int:
    """Start of `size` consecutive free ports between Ray's default worker range (10002-19999),
    so other Ray instances on this machine do not collide with this head's workers, and the
    kernel's ephemeral range, so the component ports from `free_ports` cannot fall inside it."""
    rng = random.Random()
    for _ in range(50):
        start = rng.randrange(20000, ephemeral_low() - size)
        try:
            socks = []
            for port in range(start, start + size):
                s = socket.socket()
                socks.append(s)
                s.bind(("127.0.0.1", port))
            return start
        except OSError:
            continue
        finally:
            for s in socks:
                s.close()
    raise RuntimeError("no free port range")


def get_json(url: str):
    with urllib.request.urlopen(url, timeout=10) as r:
        return json.load(r)


class Head:
    """A Ray head of its own: `ray start --head --block` in a new process group."""

    def __init__(self, root: Path):
        gcs, dash, client, nm, om, metrics, agent_http, agent_grpc, rtenv = free_ports(9)
        workers = free_range(200)
        self.temp_dir, self.dashboard = root / "ray", f"http://127.0.0.1:{dash}"
        self.gcs = f"127.0.0.1:{gcs}"
        self.env = {**os.environ, "PATH": f"{BIN}:{os.environ['PATH']}",
                    "RAY_AUTH_MODE": "disabled",  # loopback only; the CLI needs no token then
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",  # every listener on 127.0.0.1
                    "RAY_USAGE_STATS_ENABLED": "0",
                    "RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S": "0"}  # nothing to drain at stop
        self.env.pop("RAY_ADDRESS", None)
        cmd = [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
               f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}",
               f"--ray-client-server-port={client}", f"--node-manager-port={nm}",
               f"--object-manager-port={om}", f"--metrics-export-port={metrics}",
               f"--dashboard-agent-listen-port={agent_http}", f"--dashboard-agent-grpc-port={agent_grpc}",
               f"--runtime-env-agent-port={rtenv}", f"--min-worker-port={workers}",
               f"--max-worker-port={workers + 199}", "--num-cpus=2", "--num-gpus=0",
               f"--object-store-memory={512 * 1024**2}", f"--temp-dir={self.temp_dir}",
               "--disable-usage-stats"]
        self.log = open(root / "ray-start.log", "w")
        self.proc = subprocess.Popen(cmd, env=self.env, stdout=self.log, stderr=subprocess.STDOUT,
                                     start_new_session=True)

    def wait_ready(self, timeout_s: float = 120) -> None:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            assert self.proc.poll() is None, self.diagnostics()
            try:
                get_json(f"{self.dashboard}/api/jobs/")  # the job API answers once the head is up
                return
            except OSError:
                time.sleep(1)
        raise TimeoutError(self.diagnostics())

    def stop(self) -> None:
        """SIGTERM to our `ray start --block` (it stops the processes it started), then SIGKILL
        whatever of its own process group is left. No `ray stop`: that would stop every Ray here."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait(timeout=30)
        self.log.close()

    def submit(self, *entrypoint: str, timeout_s: float = 240) -> dict:
        """`ray job submit --working-dir . -- ENTRYPOINT`, from the repository root; returns the
        job's details from this head's job API (status, driver node, runtime env, logs)."""
        job_id = f"vgt-e2e-{uuid.uuid4().hex[:8]}"
        cmd = [str(BIN / "ray"), "job", "submit", "--address", self.dashboard, "--submission-id", job_id,
               "--working-dir", ".", "--runtime-env-json", json.dumps({"excludes": EXCLUDES}),
               "--", *entrypoint]
        done = subprocess.run(cmd, cwd=REPO, env=self.env, capture_output=True, text=True, timeout=timeout_s)
        try:
            job = get_json(f"{self.dashboard}/api/jobs/{job_id}")
            job["logs"] = get_json(f"{self.dashboard}/api/jobs/{job_id}/logs")["logs"]
        except OSError as e:
            raise AssertionError(f"job API unreachable after submit: {e}\n{done.stdout}{done.stderr}\n"
                                 f"{self.diagnostics()}") from e
        job["returncode"], job["cli_output"] = done.returncode, done.stdout + done.stderr
        return job

    def diagnostics(self) -> str:
        """Tails of this head's own logs, for failure messages."""
        logs = self.temp_dir / "session_latest" / "logs"
        files = [Path(self.log.name), logs / "dashboard.log", logs / "dashboard.err", logs / "gcs_server.err"]
        return "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in files if p.is_file())

    def node_ids(self) -> list[str]:
        return [n["node_id"] for n in get_json(f"{self.dashboard}/api/v0/nodes")["data"]["result"]["result"]]


@pytest.fixture(scope="module")
def head():
    # A short root: Ray's unix socket paths under it must stay below 108 bytes.
    root = Path(tempfile.mkdtemp(prefix="vgt-e2e-", dir="/tmp"))
    node = Head(root)
    try:
        node.wait_ready()
        yield node
    finally:
        node.stop()
        shutil.rmtree(root, ignore_errors=True)


def assert_ran_here(head: Head, job: dict, entrypoint: list[str]) -> None:
    assert job["returncode"] == 0 and job["status"] == "SUCCEEDED", job["cli_output"] + job["logs"] + head.diagnostics()
    assert job["entrypoint"] == " ".join(entrypoint)
    # The driver ran on this head (the only node of this cluster), with only the working dir.
    assert head.node_ids() == [job["driver_node_id"]]
    assert set(job["runtime_env"]) == {"working_dir", "excludes"}
    assert job["runtime_env"]["working_dir"].startswith("gcs://_ray_pkg_")


def uploaded_package(head: Head, job: dict) -> Path:
    """Where this head unpacked the job's working dir (gcs://_ray_pkg_HASH.zip)."""
    name = job["runtime_env"]["working_dir"].removeprefix("gcs://").removesuffix(".zip")
    (package,) = head.temp_dir.glob(f"session_latest/runtime_resources/working_dir_files/{name}")
    return package


def write_shard(path: Path) -> None:
    """A WebDataset tar (img2dataset layout: KEY.jpg + KEY.txt) of 6 solid-colour JPEGs."""
    import webdataset as wds
    from PIL import Image

    with wds.TarWriter(str(path)) as sink:
        for i, caption in enumerate(CAPTIONS):
            buf = io.BytesIO()
            Image.new("RGB", (160 + 16 * i, 128), (40 * i, 255 - 40 * i, 90)).save(buf, format="JPEG")
            sink.write({"__key__": f"{i:06d}", "jpg": buf.getvalue(), "txt": caption})


@pytest.fixture(scope="module")
def prepared(head, tmp_path_factory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("e2e-prep")
    write_shard(root / "shard-000000.tar")
    entrypoint = ["python", "-m", "ray_jobs.prep_data", "--input", str(root / "shard-000000.tar"),
                  "--out", str(root / "prepared"), "--preset", "tiny"]
    return root / "prepared", {"job": head.submit(*entrypoint), "entrypoint": entrypoint}


def test_prep_job_submitted_to_own_head(head, prepared):
    import pyarrow.parquet as pq

    out, run = prepared
    assert_ran_here(head, run["job"], run["entrypoint"])
    package = uploaded_package(head, run["job"])
    assert (package / "ray_jobs" / "prep_data.py").is_file()
    assert not (package / ".venv").exists() and not (package / ".git").exists()
    table = pq.read_table(sorted(out.glob("part-*.parquet")))
    assert table.num_rows == len(CAPTIONS)
    assert sorted(table.column("caption").to_pylist()) == sorted(CAPTIONS)
    # Shorter side resized to the tiny preset's 112 px, aspect kept (160+16i x 128 sources).
    sizes = sorted(zip(table.column("width").to_pylist(), table.column("height").to_pylist()))
    assert sizes == [(round((160 + 16 * i) * 112 / 128), 112) for i in range(6)]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows_out"] == len(CAPTIONS)


def test_train_ae_job_submitted_to_own_head(head, prepared, tmp_path):
    import torch

    from vgt.ae import VGTAutoencoder

    out = tmp_path / "ae-run"
    entrypoint = ["python", "-m", "ray_jobs.train_ae", "--preset", "tiny", "--stage", "stage1",
                  "--data", str(prepared[0]), "--out", str(out), "--steps", "2", "--num-workers", "1"]
    assert_ran_here(head, head.submit(*entrypoint), entrypoint)
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert [m["step"] for m in metrics if "step" in m][-1] == 2
    ae = VGTAutoencoder.from_pretrained(str(out / "export")).eval()
    with torch.no_grad():
        latents = ae.encode(torch.zeros(1, 3, 112, 112))
    assert latents.shape == (1, 32, 4, 4)
