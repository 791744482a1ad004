"""The compose.yaml set-up (N app containers behind the nginx container) as a load-test cluster.

Used by ``benchmarks/load_test.py --compose``. It brings the project up with ``docker compose`` (or the older
``docker-compose``) from the image already built (``docker build -t mgnet-explorer:cpu .``), and offers what
``deploy.local.LocalCluster`` offers: the address, the replicas (each can be crashed), their CPU time and memory
from the containers' cgroups. One change to compose.yaml, for measuring only: nginx reports which replica
answered (the X-Upstream header), so that a crash can be aimed at a student's replica.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "deploy"))
from local import replica_by_upstream, wait_healthy  # noqa: E402

CGROUP = Path("/sys/fs/cgroup")


def compose_command() -> list[str]:
    """``docker compose`` (v2) if it answers, else ``docker-compose`` (v1); RuntimeError if neither."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, text=True)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    raise RuntimeError("neither `docker compose` nor `docker-compose` is installed")


def inspect(container: str) -> dict:
    out = subprocess.run(["docker", "inspect", container], capture_output=True, text=True)
    return json.loads(out.stdout)[0] if out.returncode == 0 else {}


def _cgroup_value(container_id: str, controller: str, name: str, key: str | None = None) -> float:
    """A number from the container's cgroup (v1 layout, as Docker sets it up on this kind of machine)."""
    path = CGROUP / controller / "docker" / container_id / name
    try:
        text = path.read_text()
    except OSError:
        return 0.0
    if key is None:
        return float(text.split()[0])
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        if k == key:
            return float(v)
    return 0.0


def upstream_reporting_conf(conf: str) -> str:
    """compose.conf with nginx's X-Upstream header switched on (the answering replica's address)."""
    off = 'map "" $mgnet_upstream_header {\n    default "";'
    if off not in conf:
        raise RuntimeError("deploy/nginx/compose.conf changed: cannot switch on the X-Upstream header")
    return conf.replace(off, 'map "" $mgnet_upstream_header {\n    default $upstream_addr;')


class ComposeReplica:
    """One app container: its address on the compose network, and a crash on demand."""

    def __init__(self, container_id: str):
        self.id = container_id
        info = inspect(container_id)
        self.name = info["Name"].lstrip("/")
        self.ip = next(iter(info["NetworkSettings"]["Networks"].values()))["IPAddress"]
        self.port = 8501
        self.url = f"http://{self.ip}:{self.port}"
        self.address = f"{self.ip}:{self.port}"  # as nginx names it in X-Upstream

    def alive(self) -> bool:
        return bool(inspect(self.id).get("State", {}).get("Running"))

    def restarts(self) -> int:
        return int(inspect(self.id).get("RestartCount", 0))

    def kill(self, sig=signal.SIGKILL) -> None:
        """SIGKILL the container's main process from outside, as a crash would: Docker sees it die (and its
        restart policy applies), unlike ``docker kill``, which counts as a manual stop."""
        pid = inspect(self.id).get("State", {}).get("Pid", 0)
        if pid:
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                return
        deadline = time.time() + 15
        while time.time() < deadline and inspect(self.id).get("State", {}).get("Pid", 0) == pid:
            time.sleep(0.1)

    def cpu_s(self) -> float:
        return _cgroup_value(self.id, "cpuacct", "cpuacct.usage") / 1e9

    def rss_mb(self) -> float:
        return _cgroup_value(self.id, "memory", "memory.stat", "total_rss") / 2**20


class ComposeCluster:
    """``docker compose up --scale app=N`` on ``port``, taken down again on exit."""

    def __init__(self, replicas: int = 2, port: int = 8090, project: str = "mgnetload", image_tag: str = "cpu"):
        self.compose = compose_command()
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.work = Path(tempfile.mkdtemp(prefix="mgnet-compose-"))
        marked = upstream_reporting_conf((ROOT / "deploy" / "nginx" / "compose.conf").read_text())
        (self.work / "compose.conf").write_text(marked)
        (self.work / "override.yaml").write_text(
            "services:\n  nginx:\n    volumes:\n"
            f"      - {self.work / 'compose.conf'}:/etc/nginx/conf.d/default.conf:ro\n"
        )
        # v1 applies deploy.resources (the CPU and memory limits) only in its compatibility mode; v2 always does
        v1 = ["--compatibility"] if self.compose == ["docker-compose"] else []
        self.base = [
            *self.compose,
            *v1,
            "-p",
            project,
            "-f",
            str(ROOT / "compose.yaml"),
            "-f",
            str(self.work / "override.yaml"),
        ]
        self.env = dict(os.environ, MGNET_PORT=str(port), MGNET_TORCH_INDEX=image_tag)
        self.replicas: list[ComposeReplica] = []
        self.nginx_id = ""
        try:
            self._run("up", "-d", "--no-build", "--scale", f"app={replicas}")
            ids = self._run("ps", "-q", "app").split()
            self.replicas = [ComposeReplica(i) for i in ids]
            self.nginx_id = self._run("ps", "-q", "nginx").strip()
        except BaseException:
            self.stop()
            raise

    def _run(self, *args: str) -> str:
        out = subprocess.run([*self.base, *args], cwd=ROOT, env=self.env, capture_output=True, text=True)
        if out.returncode:
            raise RuntimeError(f"{' '.join(self.compose)} {' '.join(args)} failed:\n{out.stderr[-2000:]}")
        return out.stdout

    def wait_ready(self, timeout: float = 300) -> None:
        """Every app container healthy by its own health check, then nginx answering."""
        deadline = time.time() + timeout
        while any(inspect(r.id).get("State", {}).get("Health", {}).get("Status") != "healthy" for r in self.replicas):
            if time.time() > deadline:
                raise RuntimeError(f"the app containers did not become healthy within {timeout:.0f} s")
            time.sleep(1)
        wait_healthy(self.url, max(5.0, deadline - time.time()))

    def by_upstream(self, upstream: str | None) -> ComposeReplica | None:
        return replica_by_upstream(self.replicas, upstream)

    def cpu_s(self) -> dict[str, float]:
        out = {f"replica {r.name}": r.cpu_s() for r in self.replicas}
        if self.nginx_id:
            out["nginx"] = _cgroup_value(self.nginx_id, "cpuacct", "cpuacct.usage") / 1e9
        return out

    def rss_mb(self) -> float:
        return sum(r.rss_mb() for r in self.replicas if r.alive())

    def stop(self) -> None:
        try:
            self._run("down", "--remove-orphans", "--timeout", "5")
        except RuntimeError:
            pass
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()
