"""The bundled fleet on its testbed: six container hosts, two of them aarch64 under qemu-user
emulation, converge over SSH on the first apply and report no change on the second."""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from conftest import BUNDLED, orchestrate

pytestmark = pytest.mark.containers
VPN_HOSTS = ("cortex-alpha", "data-storage", "terminal-zero")
CONTAINERS_CONF = str(Path(__file__).parent.parent / "orchestrator/testbed/containers.conf")


@pytest.fixture(scope="module")
def bundled(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    root = tmp_path_factory.mktemp("bundled") / "fleet"
    shutil.copytree(BUNDLED, root, ignore=shutil.ignore_patterns(".orchestrate"))
    # the example's demo host keys, installed by the first apply like any new host key
    for host in VPN_HOSTS:
        key = root / "demo-keys" / "hosts" / f"{host}.agekey"
        r = orchestrate(root, "secrets", "host-key", host, "--import", str(key), "--force")
        assert r.returncode == 0, r.stderr
    assert (root / "secrets/recipients.yaml").read_text() == (
        BUNDLED / "secrets/recipients.yaml"
    ).read_text()
    # the hosts' packages are in the image already: installing them from scratch, under
    # emulation for the boards, is what the roles' molecule scenarios and the image builder do
    up = orchestrate(root, "testbed", "up", "--preload")
    assert up.returncode == 0, up.stderr
    yield root
    orchestrate(root, "testbed", "down")


@pytest.fixture(scope="module")
def converged(bundled: Path) -> subprocess.CompletedProcess[str]:
    """The first apply of the bundled fleet onto its fresh testbed, made once for the tests
    that read what it did (whichever of them runs first)."""
    return orchestrate(bundled, "apply", "--yes")


def test_testbed_has_both_architectures(bundled: Path) -> None:
    r = orchestrate(bundled, "testbed", "status")
    assert r.returncode == 0, r.stdout + r.stderr
    rows = {line.split("\t")[0]: line.split("\t") for line in r.stdout.splitlines()}
    assert rows["pi-1"][2] == "aarch64" and rows["LINDA"][2] == "x86_64"
    assert all(row[-1] == "answering" for row in rows.values())
    uname = subprocess.run(
        ["podman", "exec", rows["pi-2"][1], "uname", "-m"],
        text=True,
        capture_output=True,
        check=False,
        env={
            "CONTAINERS_CONF": str(
                Path(__file__).parent.parent / "orchestrator/testbed/containers.conf"
            ),
            "PATH": "/usr/bin:/bin:/usr/sbin:/sbin",
        },
    )
    assert uname.stdout.strip() == "aarch64"
    image = subprocess.run(
        ["podman", "inspect", "--format", "{{.ImageName}}", rows["pi-2"][1]],
        text=True,
        capture_output=True,
        check=False,
        env={"CONTAINERS_CONF": CONTAINERS_CONF, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert "-pre-" in image.stdout, image.stdout + image.stderr  # started preloaded
    has = subprocess.run(
        ["podman", "exec", rows["pi-2"][1], "dpkg-query", "-W", "nftables", "wireguard-tools"],
        text=True,
        capture_output=True,
        check=False,
        env={"CONTAINERS_CONF": CONTAINERS_CONF, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )
    assert has.returncode == 0, has.stderr


def test_bundled_fleet_converges_then_changes_nothing(
    bundled: Path, converged: subprocess.CompletedProcess[str]
) -> None:
    """The first apply converges every host; a plan then finds nothing to change. The plan runs
    every role in check mode, reads included, on every host (the boards under emulation too);
    that a second real apply changes nothing is each role's molecule idempotence step, which
    runs the same role on the same image, so it is not paid for twice here."""
    assert converged.returncode == 0, converged.stdout + converged.stderr
    plan = orchestrate(bundled, "plan", "--detailed-exitcode")
    assert plan.returncode == 0, plan.stdout + plan.stderr
    runs = sorted((bundled / ".orchestrate/runs").glob("*-plan*"))
    hosts = json.loads((runs[-1] / "summary.json").read_text())["plan"]["hosts"]
    assert set(hosts) == {"terminal-zero", "data-storage", "LINDA", "cortex-alpha", "pi-1", "pi-2"}
    for name, h in hosts.items():
        assert h["check"]["changed"] == [] and h["check"]["failed"] == [], (name, h)
        assert h["check"]["ok"] > 20 and not h["check"]["unreachable"], (name, h)
        # only the WireGuard check, a command, is what check mode cannot preview
        assert {t["task"] for t in h["check"]["not_previewable"]} <= {"Check it with wg-quick"}


def test_bundled_vpn_hosts_hold_only_their_own_wireguard_key(
    bundled: Path, converged: subprocess.CompletedProcess[str]
) -> None:
    assert converged.returncode == 0, converged.stderr
    status = orchestrate(bundled, "testbed", "status")
    containers = {ln.split("\t")[0]: ln.split("\t")[1] for ln in status.stdout.splitlines()}
    env = {
        "SOPS_AGE_KEY_FILE": str(bundled / "demo-keys/admin.agekey"),
        "PATH": "/usr/bin:/bin",
    }
    from orchestrator.secrets.sops import controller_binary

    plain = subprocess.run(
        [controller_binary(), "decrypt", "--output-type", "json",
         str(bundled / "secrets/wireguard.yaml")],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    keys = json.loads(plain.stdout)["hosts"]
    for host, container in containers.items():
        listing = subprocess.run(
            ["podman", "exec", container, "sh", "-c",
             "cd /run/orchestrate/secrets 2>/dev/null && "
             "find . -type f -exec stat -c '%n %U %a' {} + && cat wireguard/hosts/*"],
            capture_output=True, text=True, check=False,
            env={"CONTAINERS_CONF": CONTAINERS_CONF, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
        )  # fmt: skip
        if host in VPN_HOSTS:
            assert listing.stdout.splitlines() == [
                f"./wireguard/hosts/{host} root 400",
                keys[host],
            ], listing
        else:
            assert listing.stdout == "", (host, listing.stdout)


def _containers(root: Path) -> dict[str, str]:
    status = orchestrate(root, "testbed", "status")
    return {ln.split("\t")[0]: ln.split("\t")[1] for ln in status.stdout.splitlines()}


def _inside(container: str, python: str) -> str:
    r = subprocess.run(
        ["podman", "exec", container, "python3", "-c", python],
        capture_output=True, text=True, check=False, timeout=120,
        env={"CONTAINERS_CONF": CONTAINERS_CONF, "PATH": "/usr/bin:/bin:/usr/sbin:/sbin"},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def _get(container: str, url: str, host: str = "") -> object:
    """JSON from `url`, fetched inside the container (the fleet's addresses live there)."""
    code = (
        "import urllib.request, sys\n"
        f"headers = {{'Host': {host!r}}} if {host!r} else {{}}\n"
        f"req = urllib.request.Request({url!r}, headers=headers)\n"
        "sys.stdout.write(urllib.request.urlopen(req, timeout=10).read().decode())\n"
    )
    return json.loads(_inside(container, code))


def _expected_targets(root: Path) -> dict[str, set[str]]:
    """Exporter kind -> address:port, read from the fleet's configuration (not from Prometheus)."""
    r = orchestrate(
        root, "query",
        "values(hosts)[].{name: name, at: deploy.host, ex: config.services.prometheus.exporters}",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out: dict[str, set[str]] = {}
    for h in json.loads(r.stdout):
        for kind, ex in h["ex"].items():
            if ex["enable"]:
                address = h["at"] if ex["listen_address"] == "0.0.0.0" else ex["listen_address"]
                out.setdefault(kind, set()).add(f"{address}:{ex['port']}")
    return out


def test_prometheus_discovers_exactly_the_exporter_hosts(
    bundled: Path, converged: subprocess.CompletedProcess[str]
) -> None:
    """On the converged fleet: the prometheus host's rendered config and its targets API
    list exactly the hosts that enable exporters, and the running exporters answer it."""
    assert converged.returncode == 0, converged.stderr
    expected = _expected_targets(bundled)
    assert {k: len(v) for k, v in expected.items()} == {"node": 5, "dnsmasq": 1, "nvidia_gpu": 1}
    containers = _containers(bundled)
    config = yaml.safe_load(
        _inside(containers["data-storage"], "print(open('/etc/prometheus/prometheus.yml').read())")
    )
    rendered = {
        j["job_name"]: {t for s in j["static_configs"] for t in s["targets"]}
        for j in config["scrape_configs"]
    }
    assert rendered == expected
    api = "http://10.88.127.3:8080/prometheus/api/v1/targets"
    deadline = time.monotonic() + 120
    while True:
        active = _get(containers["data-storage"], api)["data"]["activeTargets"]  # type: ignore[index]
        health = {(t["labels"]["job"], t["labels"]["instance"]): t["health"] for t in active}
        found: dict[str, set[str]] = {}
        for job, instance in health:
            found.setdefault(job, set()).add(instance)
        assert found == expected
        # every exporter that runs answers; the GPU one is configured but has no GPU to run on
        up = {k for k, v in health.items() if v == "up"}
        if up == {k for k in health if k[0] != "nvidia_gpu"} or time.monotonic() > deadline:
            break
        time.sleep(5)
    assert up == {k for k in health if k[0] != "nvidia_gpu"}, health
    # the edge host's reverse proxy reaches that API at the port it read from data-storage
    proxied = _get(
        containers["cortex-alpha"], "http://127.0.0.1/prometheus/api/v1/targets", "example.com"
    )
    assert {t["labels"]["instance"] for t in proxied["data"]["activeTargets"]} == set().union(  # type: ignore[index]
        *expected.values()
    )
