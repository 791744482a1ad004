"""N `streamlit run` replicas of the app behind nginx on one machine: the topology of compose.yaml without Docker.

    python deploy/local.py --replicas 2 --host 0.0.0.0 --port 8080   # until Ctrl-C; students open http://HOST:8080/

Each replica is an ordinary `streamlit run app/main.py` on 127.0.0.1 (its own process group, ports from 8501 up
unless taken), started with OMP_NUM_THREADS=1 (one core per replica: see README, "Serving a class"). nginx runs
as the current user with `deploy/nginx/maps.conf` and `locations.conf` (the files compose.yaml mounts) and an upstream block
that lists the replicas; it keeps every student on one replica (the `mgnet_route` cookie) and moves them to a
healthy one when theirs stops answering. Needs nginx on PATH (`apt-get install nginx-light`).

`LocalCluster` is what benchmarks/load_test.py and tests/test_serving.py start.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
NGINX = ROOT / "deploy" / "nginx"  # maps.conf (http context) and locations.conf (server context)
# The http-level wrapper nginx needs when it runs as an ordinary user: everything in the temporary folder.
MAIN_CONF = """\
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/error.log warn;
events {{ worker_connections 1024; }}
http {{
    access_log off;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {maps};
    map "" $mgnet_upstream_header {{ default $upstream_addr; }}  # which replica answered (local set-up only)
    upstream mgnet_app {{
        hash $mgnet_route consistent;
{servers}
    }}
    server {{
        listen {host}:{port};
        include {locations};
    }}
}}
"""


def free_port(start: int = 0) -> int:
    """``start`` if it is free (else the next free one above it); any free port when ``start`` is 0."""
    port = start
    while True:
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
                return s.getsockname()[1]
            except OSError:
                port += 1


def _group_stat(pgid: int) -> tuple[int, int]:
    """(CPU clock ticks, user + system, and resident pages) of the live processes of a process group, from /proc."""
    ticks = pages = 0
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            if int(fields[2]) == pgid:
                ticks += int(fields[11]) + int(fields[12])
                pages += int(fields[21])
        except (OSError, ValueError, IndexError):
            continue
    return ticks, pages


def group_cpu_s(pgid: int) -> float:
    """CPU seconds used so far by the live processes of a process group."""
    return _group_stat(pgid)[0] / os.sysconf("SC_CLK_TCK")


def group_rss_mb(pgid: int) -> float:
    return _group_stat(pgid)[1] * os.sysconf("SC_PAGE_SIZE") / 2**20


def wait_healthy(url: str, timeout: float, proc: subprocess.Popen | None = None, log: Path | None = None) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            tail = log.read_text()[-3000:] if log else ""
            raise RuntimeError(f"{url}: the process exited ({proc.returncode}):\n{tail}")
        try:
            if urllib.request.urlopen(f"{url}/_stcore/health", timeout=2).read() == b"ok":
                return
        except OSError:
            pass
        time.sleep(0.3)
    raise RuntimeError(f"{url} did not become healthy within {timeout:.0f} s")


def replica_by_upstream(replicas: list, upstream: str | None):
    """The replica whose ``address`` nginx reported in X-Upstream (the last one tried, when it tried several)."""
    if not upstream:
        return replicas[0] if len(replicas) == 1 else None
    last = upstream.replace(" : ", ",").split(",")[-1].strip()
    return next((r for r in replicas if r.address == last), None)


class Replica:
    """One `streamlit run app/main.py` in its own process group."""

    def __init__(self, port: int, work: Path, env: dict):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.address = f"127.0.0.1:{port}"  # as nginx names it in X-Upstream
        self.log_path = work / f"replica-{port}.log"
        cmd = [str(Path(sys.executable).with_name("streamlit")), "run", "app/main.py", "--server.port", str(port)]
        cmd += ["--server.address", "127.0.0.1", "--server.headless", "true"]
        with open(self.log_path, "w") as log:
            self.proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
            )

    @property
    def pgid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self, sig=signal.SIGKILL) -> None:
        try:
            os.killpg(self.proc.pid, sig)
        except ProcessLookupError:
            return
        try:
            self.proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(5)


class LocalCluster:
    """``replicas`` app processes, behind nginx when ``proxy`` (else the one replica is used directly)."""

    def __init__(
        self,
        replicas: int = 1,
        proxy: bool = True,
        port: int = 0,
        checkpoints: Path | None = None,
        threads: int | None = 1,
        device: str = "cpu",
        host: str = "127.0.0.1",
    ):
        self.host = host
        self.work = Path(tempfile.mkdtemp(prefix="mgnet-serve-"))
        # This checkout's library and app, whatever mgnet is installed in the environment.
        env = dict(
            os.environ,
            MGNET_DEVICE=device,
            PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
        )
        if checkpoints:
            env["MGNET_CHECKPOINTS"] = str(checkpoints)
        if threads:
            env["OMP_NUM_THREADS"] = env["MKL_NUM_THREADS"] = str(threads)
        self.replicas: list[Replica] = []
        self.nginx: subprocess.Popen | None = None
        try:
            base = 8501
            for _ in range(replicas):
                port_i = free_port(base)
                self.replicas.append(Replica(port_i, self.work, env))
                base = port_i + 1
            self.port = free_port(port) if proxy else self.replicas[0].port
            self.url = f"http://127.0.0.1:{self.port}"
            if proxy:
                self._start_nginx()
        except BaseException:
            self.stop()
            raise

    def _start_nginx(self) -> None:
        nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if os.path.exists("/usr/sbin/nginx") else None)
        if nginx is None:
            raise RuntimeError("nginx is not installed (apt-get install nginx-light); it is needed for replicas")
        # Started as root, nginx's workers run as "nobody": let them reach their temporary folders.
        self.work.chmod(0o755)
        for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
            (self.work / sub).mkdir(mode=0o777)
            (self.work / sub).chmod(0o777)
        servers = "\n".join(f"        server {r.url[7:]} max_fails=1 fail_timeout=10s;" for r in self.replicas)
        conf = self.work / "nginx.conf"
        conf.write_text(
            MAIN_CONF.format(
                work=self.work,
                servers=servers,
                host=self.host,
                port=self.port,
                maps=NGINX / "maps.conf",
                locations=NGINX / "locations.conf",
            )
        )
        check = subprocess.run(
            [nginx, "-t", "-q", "-c", str(conf), "-p", str(self.work)], capture_output=True, text=True
        )
        if check.returncode:
            raise RuntimeError(f"nginx -t refused the configuration:\n{check.stderr}")
        self.nginx = subprocess.Popen(
            [nginx, "-c", str(conf), "-p", str(self.work), "-g", "daemon off;"],
            stdout=subprocess.DEVNULL,
            stderr=open(self.work / "nginx.stderr", "w"),
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 240) -> None:
        for r in self.replicas:
            wait_healthy(r.url, timeout, r.proc, r.log_path)
        if self.nginx is not None:
            wait_healthy(self.url, 30, self.nginx, self.work / "error.log")

    def by_upstream(self, upstream: str | None) -> Replica | None:
        return replica_by_upstream(self.replicas, upstream)

    def cpu_s(self) -> dict[str, float]:
        out = {f"replica {r.port}": group_cpu_s(r.pgid) for r in self.replicas}
        if self.nginx is not None:
            out["nginx"] = group_cpu_s(self.nginx.pid)
        return out

    def rss_mb(self) -> float:
        return sum(group_rss_mb(r.pgid) for r in self.replicas if r.alive())

    def stop(self) -> None:
        if self.nginx is not None and self.nginx.poll() is None:
            self.nginx.terminate()
            try:
                self.nginx.wait(10)
            except subprocess.TimeoutExpired:
                self.nginx.kill()
        for r in self.replicas:
            r.kill(signal.SIGTERM)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--replicas", type=int, default=2, help="app processes (default 2; about one per core)")
    ap.add_argument("--port", type=int, default=8080, help="nginx's port (default 8080)")
    ap.add_argument("--host", default="127.0.0.1", help="nginx's address (default 127.0.0.1; 0.0.0.0 for a class)")
    ap.add_argument("--threads", type=int, default=1, help="torch threads per replica (default 1)")
    args = ap.parse_args(argv)
    with LocalCluster(args.replicas, port=args.port, threads=args.threads, host=args.host) as cluster:
        cluster.wait_ready()
        print(f"{len(cluster.replicas)} replicas ready behind {cluster.url} (Ctrl-C stops them)", flush=True)
        try:
            while all(r.alive() for r in cluster.replicas) and cluster.nginx.poll() is None:
                time.sleep(2)
        except KeyboardInterrupt:
            return 0
    print("a replica or nginx stopped; shutting down", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
