"""Test hosts: Linux network namespaces on a private bridge, each running one Ray node.

One code path for tests/test_multihost.py (its `hosts` fixture) and for a contributor's
`cluster/local/hosts.sh up|down [N]` (which runs this file). Needs root and iproute2.

Layout, in the root namespace: a bridge `vgtbr0` at 10.77.0.1/24 (where a server every host can
reach listens, e.g. S3) and a veth `vgt-hI` per host enslaved to it. Host I (0 is the head) is the
network namespace `vgt-hI` with `eth0` at 10.77.0.(11+I), so its node IP, its GCS (6379) and the
head's dashboard / job server (http://10.77.0.11:8265) are its own: ports live per namespace and
collide with nothing on 127.0.0.1 (the suite's own cluster). Each host also runs in a private
mount namespace whose /tmp is a bind mount of STATE/hI/tmp: hosts share no local disk by accident
and Ray's default temp dir (/tmp/ray) is per host. Processes are found by namespace, not by name,
so `down` removes exactly what `up` made, even after a crash, and never touches other Ray clusters.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import asdict, dataclass
from pathlib import Path

PREFIX = "vgt-h"  # namespace and root-side veth names: vgt-h0, vgt-h1, ...
BRIDGE = "vgtbr0"
BRIDGE_IP = "10.77.0.1"
NET_BITS = 24
GCS_PORT = 6379
DASHBOARD_PORT = 8265
STATE = Path("/tmp/vgt-hosts")  # per-host /tmp, logs, cluster.json; removed by down()
LOCK = Path("/tmp/vgt-hosts.lock")  # held by the fixture while its cluster lives
BIN = Path(sys.executable).parent  # the venv's bin: ray, python (also on the hosts' PATH)
OBJECT_STORE_BYTES = 100 * 1024**2  # small: several hosts share the machine's RAM
START_TIMEOUT_S = 300.0  # all attempts together; a loaded 2-core machine needs ~1 min for 3 nodes
START_ATTEMPTS = 3
# The GCS's health checks of every raylet (Ray's defaults: every 3 s, 10 s timeout, 5 misses: ~15 s
# for a crashed host, ~65 s for a silent one). Tuned so that a crashed host (connection refused) is
# declared dead in ~5 s and a cut-off one (every check times out) in ~30 s, while a nice-19 raylet
# on a machine at load 50+ still has 5 chances of 5 s each to answer (2 s timeouts lost live hosts),
# and a node that just joined is left alone for its first 30 s (Ray: 5 s), while it starts up.
HEALTH_CHECKS = {"RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "5000",
                 "RAY_health_check_failure_threshold": "5", "RAY_health_check_initial_delay_ms": "30000"}


def host_ip(i: int) -> str:
    return f"10.77.0.{11 + i}"


@dataclass
class Host:
    name: str  # namespace name, vgt-hI
    ip: str
    pid: int  # the host's `ray start --block` process: its namespaces are the host's


@dataclass
class Cluster:
    hosts: list[Host]
    token: str  # Ray's auth token (Ray 2.5x enables token auth by default on new clusters)
    up_s: float  # seconds from nothing to all nodes alive
    attempts: int  # starts it took (see up())

    @property
    def head(self) -> Host:
        return self.hosts[0]

    @property
    def gcs(self) -> str:
        return f"{self.head.ip}:{GCS_PORT}"

    @property
    def dashboard(self) -> str:
        return f"http://{self.head.ip}:{DASHBOARD_PORT}"

    def client_env(self) -> dict[str, str]:
        """Environment for a Ray client anywhere (e.g. `ray job submit` from the root namespace)."""
        return {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token}

    def host_env(self) -> dict[str, str]:
        """What a host's processes see: the venv first on PATH (job entrypoints call `python`),
        gloo on the bridge interface (the hostname resolves to 127.0.0.1), one BLAS thread."""
        # none of the caller's Ray settings: a host has its own (the suite's conftest sets some,
        # e.g. RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which makes `ray start --address` refuse)
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
        return env | HEALTH_CHECKS | {
            "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token, "PATH": f"{BIN}:{env.get('PATH', '/usr/bin:/bin')}",
            "GLOO_SOCKET_IFNAME": "eth0", "OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0"}

    def alive_nodes(self) -> list[str]:
        """Node IPs the head's dashboard reports ALIVE ([] while it is not answering yet)."""
        req = urllib.request.Request(f"{self.dashboard}/api/v0/nodes?limit=100",
                                     headers={"Authorization": f"Bearer {self.token}"})
        try:
            with urllib.request.urlopen(req, timeout=5) as r:
                nodes = json.load(r)["data"]["result"]["result"]
        except (OSError, ValueError, KeyError):
            return []
        return sorted(n["node_ip"] for n in nodes if n["state"] == "ALIVE")


def unavailable() -> str | None:
    """Why test hosts cannot be made here, or None when they can (probes one namespace)."""
    if os.geteuid() != 0:
        return "multi-host tests need root (network namespaces)"
    missing = [t for t in ("ip", "nsenter", "unshare", "mount") if shutil.which(t) is None]
    if missing:
        return f"multi-host tests need {', '.join(missing)} (iproute2 / util-linux)"
    probe = f"{PREFIX}probe"
    made = subprocess.run(["ip", "netns", "add", probe], capture_output=True, text=True)
    subprocess.run(["ip", "netns", "del", probe], capture_output=True)
    if made.returncode != 0:
        return f"cannot make a network namespace here: {made.stderr.strip()}"
    return None


@contextlib.contextmanager
def lock(wait: bool = True):
    """One set of test hosts per machine: the names and addresses are fixed."""
    with open(LOCK, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except BlockingIOError:
            raise SystemExit("test hosts are in use by another process (a pytest run?); try later") from None
        yield


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    return subprocess.run(["ip", *args], check=check, capture_output=True, text=True)


def namespaces() -> list[str]:
    """Our namespaces that exist now."""
    names = (line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip())
    return [n for n in names if n.startswith(PREFIX)]


def links() -> list[str]:
    """Our interfaces in the root namespace (the bridge and root-side veths)."""
    names = (line.split(":")[1].strip().split("@")[0]
             for line in _ip("-o", "link", "show").stdout.splitlines())
    return [n for n in names if n == BRIDGE or n.startswith(PREFIX)]


def pids_in(ns: str) -> list[int]:
    return [int(p) for p in _ip("netns", "pids", ns, check=False).stdout.split()]


def processes() -> list[tuple[int, int]]:
    """(pid, start time) of every process inside our namespaces: what down() must end."""
    out = []
    for ns in namespaces():
        for pid in pids_in(ns):
            with contextlib.suppress(OSError):
                out.append((pid, _start_time(pid)))
    return out


def _start_time(pid: int) -> int:
    # field 22 of /proc/PID/stat (after the parenthesised command, which may contain spaces)
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def still_running(snapshot: list[tuple[int, int]]) -> list[int]:
    """Those of a processes() snapshot that still run (same pid and start time: no pid reuse)."""
    alive = []
    for pid, started in snapshot:
        with contextlib.suppress(OSError, IndexError):
            if _start_time(pid) == started and Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0:
                alive.append(pid)
    return alive


def down() -> None:
    """Remove every namespace, interface, process and file `up` made. Idempotent; needs no state
    (after a crash it finds everything by name), and kills only processes inside our namespaces."""
    _kill_all(lambda: [p for ns in namespaces() for p in pids_in(ns)], "test hosts", "; namespaces left in place")
    for ns in namespaces():
        _ip("netns", "del", ns)  # its eth0 goes with it, and so does the root-side veth peer
    for link in links():
        _ip("link", "del", link, check=False)
    shutil.rmtree(STATE, ignore_errors=True)


def kill_host(i: int) -> int:
    """Crash host I: SIGKILL every process in its namespace (its raylet and all its workers at
    once, as a kernel panic or a spot reclaim would). Returns how many processes it ended."""
    return _kill_all(lambda: pids_in(f"{PREFIX}{i}"), f"test host {i}")


def _kill_all(list_pids, who: str, consequence: str = "") -> int:
    """SIGKILL, as a crash would, what `list_pids()` lists until it lists nothing (a dying parent may
    still fork); returns how many processes ended."""
    killed: set[int] = set()
    for _ in range(100):
        pids = list_pids()
        if not pids:
            return len(killed)
        for pid in pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        killed.update(pids)
        time.sleep(0.1)
        _reap()  # a zombie child of ours would otherwise stay listed in its namespace
    raise RuntimeError(f"{who}: processes {pids} survive SIGKILL{consequence}")


def set_link(i: int, up: bool) -> None:
    """Pull (up=False) or plug back host I's cable: its veth on the bridge side goes down, so its
    processes live on but every packet to or from it is lost silently."""
    _ip("link", "set", f"{PREFIX}{i}", "up" if up else "down")


def restart_worker(cluster: Cluster, i: int, timeout_s: float = START_TIMEOUT_S) -> float:
    """Start worker host I again (after kill_host or a cut) and wait until it is alive; returns
    seconds. Its /tmp keeps what the old node left, as a rebooted machine's disk would. Like up(), it
    tries again (at most START_ATTEMPTS times) when the node misses Ray's 30 s registration window."""
    if i == 0:
        raise ValueError("the head cannot be restarted into a live cluster")
    t0 = time.monotonic()
    for attempt in range(1, START_ATTEMPTS + 1):
        kill_host(i)  # whatever is left (e.g. a cut-off raylet, or a failed start)
        cluster.hosts[i] = _start(i, ["--address", cluster.gcs], cluster.host_env())
        _save(cluster)
        try:
            _wait(f"host {i} alive again", lambda: host_ip(i) in cluster.alive_nodes(), t0 + timeout_s,
                  [cluster.hosts[i]])
            return time.monotonic() - t0
        except HostExited as e:
            if attempt == START_ATTEMPTS:
                raise
            print(f"test hosts: host {i} attempt {attempt} failed, starting it again: {str(e).splitlines()[0]}",
                  file=sys.stderr)
    raise AssertionError("unreachable")


def _reap() -> None:
    """Collect the `ray start` processes this process started (no zombies left in a fixture's
    process); only those recorded in cluster.json, never another child of ours."""
    with contextlib.suppress(OSError, ValueError):
        for h in json.loads((STATE / "cluster.json").read_text())["hosts"]:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(h["pid"], os.WNOHANG)


def _network(n: int) -> None:
    _ip("link", "add", BRIDGE, "type", "bridge")
    _ip("addr", "add", f"{BRIDGE_IP}/{NET_BITS}", "dev", BRIDGE)
    _ip("link", "set", BRIDGE, "up")
    for i in range(n):
        ns = f"{PREFIX}{i}"
        _ip("netns", "add", ns)
        _ip("link", "add", ns, "type", "veth", "peer", "name", "eth0", "netns", ns)
        _ip("link", "set", ns, "master", BRIDGE, "up")
        _ip("-n", ns, "addr", "add", f"{host_ip(i)}/{NET_BITS}", "dev", "eth0")
        _ip("-n", ns, "link", "set", "eth0", "up")
        _ip("-n", ns, "link", "set", "lo", "up")


def _start(i: int, ray_args: list[str], env: dict[str, str]) -> Host:
    ns, tmp = f"{PREFIX}{i}", STATE / f"h{i}" / "tmp"
    tmp.mkdir(parents=True, exist_ok=True)  # exists when a crashed host starts again
    argv = ["nice", "-n", "19", "ip", "netns", "exec", ns,
            "unshare", "--mount", "--propagation", "private",  # the host's own /tmp, below
            "sh", "-c", 'mount --bind "$0" /tmp && exec "$@"', str(tmp),
            str(BIN / "ray"), "start", "--node-ip-address", host_ip(i), "--num-cpus", "1",
            "--object-store-memory", str(OBJECT_STORE_BYTES), "--disable-usage-stats", "--block",
            *ray_args]
    log = open(STATE / f"h{i}.log", "w")
    proc = subprocess.Popen(argv, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    return Host(ns, host_ip(i), proc.pid)


class HostExited(RuntimeError):
    """A host's `ray start` gave up while the cluster came up."""


def _wait(what: str, ok, deadline: float, hosts: list[Host]) -> None:
    while not ok():
        exited = [h.name for h in hosts if os.waitpid(h.pid, os.WNOHANG)[0]]
        if exited or time.monotonic() > deadline:
            why = f"{', '.join(exited)} exited" if exited else f"not ready after {START_TIMEOUT_S:.0f} s"
            logs = "".join(f"\n--- {log.name} (last lines)\n" + "\n".join(log.read_text().splitlines()[-15:])
                           for log in sorted(STATE.glob("h*.log")))
            raise (HostExited if exited else TimeoutError)(f"test hosts: {what}: {why}{logs}")
        time.sleep(0.5)


def _listening(ip: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((ip, port), timeout=1):
        return True
    return False


def up(n: int = 3) -> Cluster:
    """Replace any test hosts with N fresh ones (a head and N-1 workers), all nodes alive.

    Ray gives a starting node 30 s (hard-coded) to register its raylet with the GCS; a nice-19
    host on a machine busy with other work can miss that and exit. Then the whole start is tried
    again from nothing (the head may be the one that exited), at most START_ATTEMPTS times."""
    if n < 1 or n > 8:
        raise SystemExit(f"test hosts: N must be 1..8, got {n}")
    t0 = time.monotonic()
    deadline = t0 + START_TIMEOUT_S
    for attempt in range(1, START_ATTEMPTS + 1):
        down()
        try:
            cluster = _up_once(n, deadline)
        except HostExited as e:
            if attempt == START_ATTEMPTS:
                down()
                raise
            print(f"test hosts: attempt {attempt} failed, starting again: {str(e).splitlines()[0]}", file=sys.stderr)
            continue
        except BaseException:
            down()
            raise
        cluster.up_s, cluster.attempts = round(time.monotonic() - t0, 1), attempt
        _save(cluster)
        return cluster
    raise AssertionError("unreachable")


def _up_once(n: int, deadline: float) -> Cluster:
    STATE.mkdir(parents=True)
    _network(n)
    cluster = Cluster([], secrets.token_hex(32), 0.0, 0)
    env = cluster.host_env()
    cluster.hosts.append(_start(0, ["--head", "--port", str(GCS_PORT), "--dashboard-host", host_ip(0),
                                    "--dashboard-port", str(DASHBOARD_PORT)], env))
    _save(cluster)
    # workers only once the head's GCS listens (started together with the head, one of 5 runs
    # on the loaded machine lost a worker host while the cluster came up)
    _wait("the head's GCS", lambda: _listening(host_ip(0), GCS_PORT), deadline, cluster.hosts)
    cluster.hosts += [_start(i, ["--address", cluster.gcs], env) for i in range(1, n)]
    _save(cluster)
    _wait(f"{n} alive nodes", lambda: len(cluster.alive_nodes()) == n, deadline, cluster.hosts)
    return cluster


def _save(cluster: Cluster) -> None:
    """cluster.json (what down() reaps; addresses for a contributor) and the token file."""
    (STATE / "cluster.json").write_text(json.dumps(asdict(cluster), indent=1))
    (STATE / "token").write_text(cluster.token)


def main() -> None:
    p = argparse.ArgumentParser(prog="cluster/local/hosts.sh",
                                description="Test hosts: N network namespaces on a bridge, one Ray node each.")
    sub = p.add_subparsers(dest="cmd", required=True)
    sub.add_parser("up", help="replace any test hosts with N fresh ones").add_argument("n", nargs="?", type=int, default=3)
    sub.add_parser("down", help="remove every namespace, interface, process and file `up` made")
    args = p.parse_args()
    if (why := unavailable()) is not None:
        raise SystemExit(why)
    with lock(wait=False):
        t0 = time.monotonic()
        if args.cmd == "down":
            down()
            print(f"test hosts down in {time.monotonic() - t0:.1f} s")
            return
        c = up(args.n)
    print(f"{len(c.hosts)} test hosts up in {c.up_s} s ({c.attempts} attempt(s)): " + ", ".join(f"{h.name} {h.ip}" for h in c.hosts))
    print(f"job server {c.dashboard}; GCS {c.gcs}; logs and per-host /tmp under {STATE}")
    print(f"submit: RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH={STATE}/token "
          f"ray job submit --address {c.dashboard} -- python -c 'import ray; ray.init(); print(ray.nodes())'")
    print(f"a shell on host 1: nsenter -t {c.hosts[min(1, len(c.hosts) - 1)].pid} -m -n bash")


if __name__ == "__main__":
    main()
