"""Serving a class: the light load-test client, sticky sessions behind nginx, failover, and the deployment files.

The nginx tests need nginx on PATH (`apt-get install nginx-light`; .ci/run installs it). Without it they fail
with that message: they are never skipped.
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT / "deploy")]

from common import tiny_checkpoints  # noqa: E402  (benchmarks/common.py)
from compose_cluster import upstream_reporting_conf  # noqa: E402
from load_test import cycle, failover_run, photos  # noqa: E402
from local import LocalCluster  # noqa: E402

NGINX_DIR = ROOT / "deploy" / "nginx"


def nginx() -> str:
    path = shutil.which("nginx") or shutil.which("nginx", path="/usr/sbin")
    if path is None:
        pytest.fail("nginx is not installed: apt-get install nginx-light (the serving tests need it; .ci/run does it)")
    return path


@pytest.fixture(scope="module")
def ckpts(tmp_path_factory):
    return tiny_checkpoints(tmp_path_factory.mktemp("serving"))


def test_compose_runs_replicas_behind_nginx_with_health_checks():
    compose = yaml.safe_load((ROOT / "compose.yaml").read_text())
    app, proxy = compose["services"]["app"], compose["services"]["nginx"]
    assert "/_stcore/health" in " ".join(app["healthcheck"]["test"])
    assert proxy["depends_on"]["app"]["condition"] == "service_healthy"
    assert app["environment"]["OMP_NUM_THREADS"] == "1"
    for volume in proxy["volumes"]:  # every mounted nginx file exists in the repository
        assert (ROOT / volume.split(":")[0]).is_file(), volume
    gpu = yaml.safe_load((ROOT / "deploy" / "compose.gpu.yaml").read_text())
    assert gpu["services"]["app"]["deploy"]["resources"]["reservations"]["devices"][0]["capabilities"] == ["gpu"]
    docker = (ROOT / "Dockerfile").read_text()
    assert "ARG TORCH_INDEX=cpu" in docker and "/_stcore/health" in docker
    ignored = [line for line in (ROOT / ".dockerignore").read_text().splitlines() if line and line[0] != "#"]
    assert ignored[0] == "*" and "!checkpoints/*.pt" in ignored  # only what the image needs goes to the build
    for needed in ("ood.json", "ood-features.npz"):  # the app's unlike-photo warning reads them
        assert f"!checkpoints/{needed}" in ignored and f"checkpoints/{needed}" in docker


def test_compose_upstream_does_not_hash_replicas_by_a_shared_name():
    """In compose one server name (app:8501) stands for every replica. nginx's consistent hashing places
    servers by name, so the replicas would share their points and one browser's requests would be split
    between them; the compose load test saw uploads refused that way. Plain `hash` keeps them apart."""
    conf = (NGINX_DIR / "compose.conf").read_text()
    block = conf[conf.index("upstream mgnet_app {") :].split("}", 1)[0]
    lines = [line.split("#")[0].strip() for line in block.splitlines()]
    servers = [line for line in lines if line.startswith("server ")]
    assert servers == ["server app:8501 max_fails=1 fail_timeout=10s;"]
    assert "hash $mgnet_route;" in lines and not any("consistent" in line for line in lines)


@pytest.mark.parametrize("reporting", [False, True])
def test_nginx_accepts_the_compose_configuration(tmp_path, reporting):
    """compose.conf as nginx in the compose set-up reads it, with the replicas' name replaced by an address;
    also the variant the compose load test mounts, which names the answering replica in X-Upstream."""
    conf = (NGINX_DIR / "compose.conf").read_text()
    if reporting:
        conf = upstream_reporting_conf(conf)
        assert "default $upstream_addr;" in conf
    conf = (
        conf.replace("/etc/nginx/mgnet/", f"{NGINX_DIR}/")
        .replace("app:8501", "127.0.0.1:9")
        .replace("listen 80;", "listen 127.0.0.1:9;")
    )
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi"):
        (tmp_path / sub).mkdir()
    temp = " ".join(f"{sub}_temp_path {tmp_path / sub};" for sub in ("fastcgi", "uwsgi", "scgi"))
    main = tmp_path / "nginx.conf"
    main.write_text(
        f"pid {tmp_path}/nginx.pid; error_log {tmp_path}/error.log; events {{}}\n"
        f"http {{ client_body_temp_path {tmp_path}/body; proxy_temp_path {tmp_path}/proxy; {temp}\n{conf}\n}}\n"
    )
    check = subprocess.run([nginx(), "-t", "-c", str(main), "-p", str(tmp_path)], capture_output=True, text=True)
    assert check.returncode == 0, check.stderr
    locations = (NGINX_DIR / "locations.conf").read_text()
    for needed in ("proxy_set_header Upgrade $http_upgrade", "proxy_set_header Connection $connection_upgrade"):
        assert needed in locations  # Streamlit's WebSocket
    assert "hash $mgnet_route;" in conf  # not consistent: see the test above


@pytest.mark.slow
def test_light_client_runs_a_students_cycle(ckpts):
    """The load test's client does what a browser does: open, upload, Compare maps, attack, without an error."""
    with LocalCluster(1, proxy=False, checkpoints=ckpts) as cluster:
        cluster.wait_ready()
        before = sum(cluster.cpu_s().values())
        result = asyncio.run(cycle(cluster.url, photos(1)[0], "mine.jpg", timeout_s=120))
        used = sum(cluster.cpu_s().values()) - before
    assert result["error"] is None, result
    assert set(result["latency"]) == {"open", "upload", "compare", "attack"}
    assert used > 0  # the server did the work, and its CPU time is what the load test reports


@pytest.mark.slow
def test_killing_a_replica_moves_its_students_and_spares_the_others(ckpts):
    nginx()
    with LocalCluster(2, checkpoints=ckpts) as cluster:
        cluster.wait_ready()
        result = asyncio.run(failover_run(cluster, students=4, rounds=2, timeout_s=120))
        survivors = [r for r in cluster.replicas if r.alive()]
    assert len(result["students_per_replica"]) == 2, result  # sticky cookies spread the class over both
    assert len(survivors) == 1
    # Students on the other replica never noticed.
    assert result["errors_on_other_replicas"] == 0, result["records"]
    moved = [r for r in result["records"] if r["on_killed_replica"]]
    assert moved and result["killed_replica_students"] == len(moved)
    for r in moved:
        assert r["reconnected"] and r["replica_after"] != result["killed"], r
        assert r["restored_view"] and r["restored_source"], r  # Robustness > Attack and Upload, from the URL
        assert "view=Robustness" in r["url_after"] and "rob_view=Attack" in r["url_after"]
        assert not r["kept_upload"], r  # what they lose: the uploaded photo lived in the killed replica


def test_kubernetes_manifest_is_valid_and_keeps_a_browser_on_one_pod():
    """The manifest passes strict validation against the Kubernetes schema (kubernetes-validate), and carries
    what the compose set-up has: health probes, one torch thread, cookie affinity, the upload limit."""
    import kubernetes_validate

    docs = list(yaml.safe_load_all((ROOT / "deploy" / "kubernetes" / "mgnet-explorer.yaml").read_text()))
    assert [d["kind"] for d in docs] == ["Deployment", "Service", "Ingress"]
    for doc in docs:
        kubernetes_validate.validate(doc, "1.37.0", strict=True)  # raises on any schema error or unknown field
    deployment, _, ingress = docs
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert {e["name"]: e["value"] for e in container["env"]}["OMP_NUM_THREADS"] == "1"
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["httpGet"]["path"] == "/_stcore/health"
    notes = ingress["metadata"]["annotations"]
    assert notes["nginx.ingress.kubernetes.io/affinity"] == "cookie"
    limit = int(notes["nginx.ingress.kubernetes.io/proxy-body-size"].removesuffix("m"))
    config = (ROOT / ".streamlit" / "config.toml").read_text()
    assert f"maxUploadSize = {limit}" in config
    broken = dict(deployment, spec=dict(deployment["spec"], replica=2))  # a misspelt field must be caught
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, "1.37.0", strict=True)
