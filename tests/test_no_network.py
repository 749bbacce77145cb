"""Patient data never leaves the machine: the cheap stages (raw inputs, the dbt warehouse, one
cohort) materialize with every non-loopback connection refused at the socket level, in this
process and in the Python subprocesses it starts (dbt), and nothing even tries to connect out."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

# The guard, as source: exec'd here, and installed as `sitecustomize` in every Python subprocess
# (dbt) through PYTHONPATH. Attempts are appended to the file named by EAGRL_NETGUARD_LOG.
GUARD_SOURCE = r'''
import ipaddress
import json
import os
import socket


class NetworkBlocked(ConnectionRefusedError):
    """A non-loopback connection attempt under the no-network guard."""


def _loopback(host):
    if host is None or host in ("", "localhost", b"localhost"):
        return True
    if isinstance(host, bytes):
        host = host.decode()
    try:
        return ipaddress.ip_address(str(host).split("%")[0]).is_loopback
    except ValueError:
        return False


def _allowed(family, address):
    if family == getattr(socket, "AF_UNIX", None) or not isinstance(address, tuple):
        return True  # a socket file (or a path), not a network address
    return _loopback(address[0])


def _refuse(what, address):
    log = os.environ.get("EAGRL_NETGUARD_LOG")
    if log:
        with open(log, "a") as handle:
            handle.write(json.dumps({"pid": os.getpid(), "call": what, "to": repr(address)}) + "\n")
    raise NetworkBlocked(f"no-network guard: {what} to {address!r} refused")


def install(set_attribute=setattr):
    connect, connect_ex = socket.socket.connect, socket.socket.connect_ex
    create_connection, getaddrinfo = socket.create_connection, socket.getaddrinfo

    def guarded_connect(self, address):
        if not _allowed(self.family, address):
            _refuse("connect", address)
        return connect(self, address)

    def guarded_connect_ex(self, address):
        if not _allowed(self.family, address):
            _refuse("connect_ex", address)
        return connect_ex(self, address)

    def guarded_create_connection(address, *args, **kwargs):
        if not _loopback(address[0]):
            _refuse("create_connection", address)
        return create_connection(address, *args, **kwargs)

    def guarded_getaddrinfo(host, *args, **kwargs):
        if not _loopback(host):
            _refuse("getaddrinfo", (host, *args[:1]))
        return getaddrinfo(host, *args, **kwargs)

    set_attribute(socket.socket, "connect", guarded_connect)
    set_attribute(socket.socket, "connect_ex", guarded_connect_ex)
    set_attribute(socket, "create_connection", guarded_create_connection)
    set_attribute(socket, "getaddrinfo", guarded_getaddrinfo)
'''


# Known and refused: dagster-dbt's DbtCliResource runs `dbt --version` once per resource, and
@pytest.fixture
def no_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """The guard in this process (undone after the test) and in Python subprocesses."""
    site = tmp_path / "netguard_site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(GUARD_SOURCE + "\ninstall()\n")
    log = tmp_path / "netguard.jsonl"
    log.touch()
    monkeypatch.setenv("EAGRL_NETGUARD_LOG", str(log))
    monkeypatch.setenv("PYTHONPATH", f"{site}:{Path.cwd()}")
    namespace: dict[str, object] = {}
    exec(GUARD_SOURCE, namespace)
    namespace["install"](monkeypatch.setattr)
    yield namespace["NetworkBlocked"], log


def _attempts(log: Path) -> list[dict]:
    return [json.loads(line) for line in log.read_text().splitlines() if line]


def test_guard_refuses_the_network_and_allows_loopback(no_network):
    blocked, log = no_network
    with pytest.raises(blocked), socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.connect(("1.1.1.1", 443))
    with pytest.raises(blocked):
        socket.create_connection(("1.1.1.1", 443), timeout=1)
    with pytest.raises(blocked):
        socket.create_connection(("huggingface.co", 443), timeout=1)
    with pytest.raises(blocked), socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as s:
        s.connect(("2606:4700:4700::1111", 443, 0, 0))
    # Loopback still works (the Dagster webserver, MLflow UI and daemons talk over it).
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as server:
        server.bind(("127.0.0.1", 0))
        server.listen(1)
        with socket.create_connection(server.getsockname(), timeout=5):
            pass
    assert [a["call"] for a in _attempts(log)] == [
        "connect",
        "create_connection",
        "create_connection",
        "connect",
    ]
    # A Python subprocess (how dbt runs) gets the same guard through sitecustomize.
    probe = subprocess.run(
        [sys.executable, "-c", "import socket; socket.create_connection(('1.1.1.1', 443), 1)"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert probe.returncode != 0 and "no-network guard" in probe.stderr
    assert len(_attempts(log)) == 5


def test_cheap_stages_materialize_without_network(no_network, tmp_path: Path):
    from dagster import AssetSelection, DagsterInstance, materialize

    from definitions import all_assets, build_resources
    from resources import EhrSources

    blocked, log = no_network
    home = tmp_path / "eagrl_home"
    resources = build_resources(str(home))
    resources["sources"] = EhrSources(synthetic_mimic_iv_stays=300)
    with DagsterInstance.ephemeral() as instance:
        shared = materialize(
            all_assets,
            selection=AssetSelection.groups("raw", "warehouse"),
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert shared.success
        cohort = materialize(
            all_assets,
            selection=AssetSelection.assets("cohort_dataset"),
            partition_key="tjh-mortality",
            resources=resources,
            instance=instance,
            raise_on_error=False,
        )
        assert cohort.success
        assert all(c.passed for c in cohort.get_asset_check_evaluations())
    materialized = {e.asset_key.to_user_string() for e in shared.get_asset_materialization_events()}
    assert {"raw_tjh", "raw_mimic_iv", "cohort_tjh_mortality"} <= materialized
    assert (home / "warehouse.duckdb").exists()
    # Nothing tried to reach out (telemetry, hub, version checks), here or in dbt.
    assert _attempts(log) == []
    # And the guard was live the whole time.
    with pytest.raises(blocked):
        socket.create_connection(("1.1.1.1", 443), timeout=1)
