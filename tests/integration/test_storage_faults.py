"""A full or unwritable data directory, with real node processes.

The data directory of one node is a small tmpfs, mounted in a private mount
namespace (``unshare --user --map-root-user --mount``, no root needed) or,
where user namespaces are off but the tests run as root, on the host. The
tests fill it from outside (through ``/proc/PID/root``) and check what the
README promises: the node stays up and says what is wrong, refuses keys with
503 rather than losing them, never hands a key out twice, the two ends of the
link keep identical ledgers and pools, and everything resumes once there is
space again. A node started on a data directory it cannot write exits at once
with one line naming the directory and the reason.
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import errno
import json
import os
import shlex
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from qcinode.cluster.admin import admin_channel
from qcinode.cluster.launcher import Cluster, cluster_status
from qcinode.kme.client import EtsiClient

TOPOLOGY = """
name: small-disk
defaults:
  postprocessing: {block_bits: 50000}
emulation: {speed: max}
nodes:
  - {name: alpha, saes: [app-a, app-a2]}
  - {name: beta, saes: [app-b, app-b2]}
links:
  - {between: [alpha, beta], length_km: 10}
"""

KME_HEALTH_SERVICE = "qcinode.etsi014"  # qcinode.node.node.KME_HEALTH_SERVICE
STORAGE_REASONS = ("database or disk is full", "No space left on device")
T = TypeVar("T")


# -- a small disk ---------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class MountForm:
    """How this machine lets the tests mount a tmpfs: in a private namespace, or as root on the host."""

    private: bool

    def wrap(self, argv: list[str], mount_point: Path, options: str, before_exec: str = "") -> list[str]:
        """``argv`` run with a fresh tmpfs on ``mount_point`` (private form); else ``argv`` itself."""
        if not self.private:
            return argv
        script = f'mkdir -p "$0" && mount -t tmpfs -o {options} tmpfs "$0" && {before_exec} exec "$@"'
        return ["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", script, str(mount_point), *argv]

    @contextlib.contextmanager
    def host_mount(self, mount_point: Path, options: str) -> Iterator[None]:
        """The root form: mount ``mount_point`` on the host for the block's duration."""
        if self.private:
            yield
            return
        mount_point.mkdir(parents=True, exist_ok=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(mount_point)], check=True)
        try:
            yield
        finally:
            subprocess.run(["umount", "-l", str(mount_point)], check=False)

    def seen_from_outside(self, pid: int, path: Path) -> Path:
        """Where ``path`` inside the node's mount namespace is, for this test process."""
        return Path(f"/proc/{pid}/root") / path.relative_to("/") if self.private else path


def _audit_clean(ends: dict[str, dict[str, Any]]) -> None:
    """The cross-end ledger audit of the link finds nothing."""
    from qcinode.cluster.audit import audit_link

    by_role = {end["role"]: end["ledger"] for end in ends.values()}
    audit = audit_link("link", by_role)
    assert audit.violations == [], audit.violations


def _try(argv: list[str]) -> str:
    """'' if ``argv`` succeeds, else why not (its stderr, or the error starting it)."""
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return str(exc)
    return "" if done.returncode == 0 else (done.stderr.strip() or f"exit code {done.returncode}")


@pytest.fixture
def mount_form(tmp_path: Path) -> MountForm:
    """The mount form that works here; skips (naming what is missing) if neither does."""
    point = tmp_path / "probe-mount"
    point.mkdir()
    private = _try(["unshare", "--user", "--map-root-user", "--mount", "sh", "-c", 'mount -t tmpfs -o size=1m tmpfs "$0"', str(point)])
    if not private:
        return MountForm(private=True)
    if os.geteuid() != 0:
        pytest.skip(f"cannot mount a tmpfs: unprivileged user namespaces are unavailable ({private}) and not root")
    on_host = _try(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)])
    if on_host:
        pytest.skip(f"cannot mount a tmpfs: unshare failed ({private}) and mount as root failed ({on_host})")
    subprocess.run(["umount", "-l", str(point)], check=False)
    return MountForm(private=False)


def fill(directory: Path) -> Path:
    """Writes ``directory/filler`` until the file system is full; returns it."""
    fs = os.statvfs(directory)
    assert fs.f_blocks * fs.f_frsize <= 64 << 20, f"{directory} is not the small tmpfs: refusing to fill it"
    filler = directory / "filler"
    with open(filler, "wb", buffering=0) as f:  # unbuffered: nothing left to flush into a full disk
        for chunk in (bytes(1 << 20), bytes(4096), bytes(512)):
            try:
                while True:
                    f.write(chunk)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    return filler


# -- a node that cannot start ---------------------------------------------------


def _prepare(tmp_path: Path) -> Cluster:
    topology = tmp_path / "topology.yaml"
    topology.write_text(TOPOLOGY)
    cluster = Cluster(topology, tmp_path / "state")
    cluster.prepare()
    return cluster


def _node_argv(cluster: Cluster, data_dir: Path) -> list[str]:
    return [
        sys.executable, "-m", "qcinode", "node",
        "--topology", str(cluster.state_dir / "topology.yaml"), "--name", "alpha",
        "--certs", str(cluster.certs_dir), "--data-dir", str(data_dir),
        "--listen", "127.0.0.1:0", "--kme-listen", "127.0.0.1:0", "--metrics-listen", "127.0.0.1:0",
        "--peer", f"beta=127.0.0.1:{cluster.ports['beta']}",
    ]  # fmt: skip


def _refused_start(argv: list[str]) -> tuple[int, str, str]:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=60, stdin=subprocess.DEVNULL)
    return done.returncode, done.stderr, done.stdout


def _assert_one_clear_line(code: int, stderr: str, stdout: str, expected: str) -> None:
    assert code == 1, (code, stderr, stdout)
    assert stderr.strip().splitlines() == [expected], stderr
    assert "Traceback" not in stderr + stdout
    assert "node.started" not in stdout and "kme.server_started" not in stdout, "it bound ports first"


def test_start_on_a_path_that_cannot_be_a_directory_exits_with_one_line(tmp_path: Path) -> None:
    cluster = _prepare(tmp_path)
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the data directory should be")
    data_dir = blocker / "alpha"
    code, stderr, stdout = _refused_start(_node_argv(cluster, data_dir))
    _assert_one_clear_line(code, stderr, stdout, f"qcinode: node alpha: cannot create data directory {data_dir}: Not a directory")


@pytest.mark.parametrize(
    ("case", "options", "reason"),
    [("read-only", "ro,size=1m", "Read-only file system"), ("full", "size=256k", "No space left on device")],
)
def test_start_on_a_read_only_or_full_data_dir_exits_with_one_line(
    tmp_path: Path, mount_form: MountForm, case: str, options: str, reason: str
) -> None:
    cluster = _prepare(tmp_path)
    data_dir = tmp_path / "disk"
    fill_it = '(cat /dev/zero > "$0/filler" 2>/dev/null; true) &&' if case == "full" else ""
    with mount_form.host_mount(data_dir, options):
        if case == "full" and not mount_form.private:
            fill(data_dir)
        argv = mount_form.wrap(_node_argv(cluster, data_dir), data_dir, options, before_exec=fill_it)
        code, stderr, stdout = _refused_start(argv)
    _assert_one_clear_line(code, stderr, stdout, f"qcinode: node alpha: data directory {data_dir} is not writable: {reason}")


def test_start_on_a_data_dir_without_write_permission_exits_with_one_line(tmp_path: Path) -> None:
    cluster = _prepare(tmp_path)
    data_dir = tmp_path / "locked"
    data_dir.mkdir(mode=0o500)
    argv = _node_argv(cluster, data_dir)
    if os.geteuid() == 0:
        # Root ignores permission bits; in a user namespace where root is not
        # mapped, the owner's bits apply to it like to anyone.
        why = _try(["unshare", "--user", "true"])
        if why:
            pytest.skip(f"root ignores directory permissions, and unshare --user is unavailable ({why})")
        argv = ["unshare", "--user", *argv]
    try:
        code, stderr, stdout = _refused_start(argv)
    finally:
        data_dir.chmod(0o700)
    _assert_one_clear_line(code, stderr, stdout, f"qcinode: node alpha: data directory {data_dir} is not writable: Permission denied")


# -- a disk that fills up while the node runs ------------------------------------


@dataclasses.dataclass
class SmallDiskNetwork:
    cluster: Cluster
    full_node: str  # the node whose data directory is a 32 MiB tmpfs
    data_dir: Path
    form: MountForm
    info: dict[str, Any]

    @property
    def state(self) -> Path:
        return self.cluster.state_dir

    def client(self, sae: str) -> EtsiClient:
        s = self.info["saes"][sae]
        return EtsiClient(self.state / self.info["ca"], self.state / s["cert"], self.state / s["key"])

    def url(self, sae: str) -> str:
        return str(self.info["nodes"][self.info["saes"][sae]["node"]]["etsi014"])

    def enc(self, master: str, slave: str) -> tuple[int, Any]:
        return self.client(master).enc_keys(self.url(master), slave, number=1)

    def dec(self, slave: str, master: str, key_ids: list[str]) -> tuple[int, Any]:
        return self.client(slave).dec_keys(self.url(slave), master, key_ids)

    def links(self, **kwargs: Any) -> dict[str, dict[str, Any]]:
        """node -> its end's link status."""
        status = cluster_status(self.state, **kwargs)
        return {name: node["links"][0] for name, node in status["nodes"].items() if node["links"]}

    def storage(self) -> dict[str, Any]:
        return dict(cluster_status(self.state)["nodes"][self.full_node]["network"].get("storage") or {})

    def kme_health(self, service: str = KME_HEALTH_SERVICE) -> str:
        node = self.full_node
        with admin_channel(self.info["nodes"][node]["grpc"], node, self.state / "certs") as channel:
            reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=service), timeout=5)
        return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))

    def data_dir_from_outside(self) -> Path:
        return self.form.seen_from_outside(self.cluster.processes[self.full_node].pid, self.data_dir)


@pytest.fixture(params=["alpha", "beta"], ids=["transmitter-full", "receiver-full"])
def small_disk(request: pytest.FixtureRequest, tmp_path: Path, mount_form: MountForm) -> Iterator[SmallDiskNetwork]:
    full_node = str(request.param)
    cluster = _prepare(tmp_path)
    data_dir = cluster.state_dir / "data" / full_node
    options = "size=32m,mode=0700"

    def on_small_disk(name: str, argv: list[str]) -> list[str]:
        # The launcher's own command line for the node, run on its small disk.
        return mount_form.wrap(list(argv), data_dir, options) if name == full_node else argv

    cluster.command_wrapper = on_small_disk
    with mount_form.host_mount(data_dir, options):
        try:
            cluster.start()
            cluster.wait_healthy(timeout_s=60)
            info = json.loads((cluster.state_dir / "cluster.json").read_text())
            yield SmallDiskNetwork(cluster, full_node, data_dir, mount_form, info)
        finally:
            cluster.stop()


def until(what: str, probe: Callable[[], T | None], timeout_s: float = 60.0, every_s: float = 0.3) -> T:
    deadline = time.monotonic() + timeout_s
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every_s)


def _names_storage(message: str) -> bool:
    return any(reason in message for reason in STORAGE_REASONS)


def test_full_disk_refuses_keys_loses_none_and_resumes(small_disk: SmallDiskNetwork) -> None:
    net = small_disk
    full, other = net.full_node, ("beta" if net.full_node == "alpha" else "alpha")
    f1, f2 = net.cluster.topology.node(full).saes  # SAEs attached to the full node
    o1, _ = net.cluster.topology.node(other).saes
    process = net.cluster.processes[full]
    handed_out: dict[str, tuple[str, str, str]] = {}  # key_ID -> (master, slave, key)

    def enc(master: str, slave: str) -> tuple[int, Any]:
        status, body = net.enc(master, slave)
        if status == 200:
            for key in body["keys"]:
                assert key["key_ID"] not in handed_out, "a key ID was handed out twice"
                handed_out[key["key_ID"]] = (master, slave, key["key"])
        return status, body

    def refused_naming_the_disk(master: str, slave: str) -> bool:
        status, body = enc(master, slave)
        return status == 503 and _names_storage(body["message"])

    pairs = [(f1, f2), (f1, o1), (o1, f1)]
    for master, slave in pairs:  # keys flow every way before the fault
        until(f"a key {master} -> {slave}", lambda: enc(master, slave)[0] == 200)  # noqa: B023 - called at once
    waiting_here = [k for k, (_, slave, _) in handed_out.items() if slave in (f1, f2)]

    # -- the disk fills ----------------------------------------------------------
    filler = fill(net.data_dir_from_outside())
    # A key for an SAE of the full node cannot be stored there: 503, naming the fault.
    until(f"enc_keys {f1} -> {f2} refused naming the disk", lambda: refused_naming_the_disk(f1, f2), timeout_s=30)
    status, body = enc(f1, f2)
    assert status == 503 and body["message"].startswith("the key store of this KME cannot be written ("), body
    # The full node's end says why it stopped; the other end stops too (no
    # block goes on while one end cannot save it).
    until("the link to stop", lambda: (v := net.links())[full]["state"] == "storage_failed" and v[other]["state"] != "up")
    # The full node refuses keys for elsewhere too, saying why; the other node just cannot reach it.
    until(f"enc_keys {f1} -> {o1} refused naming the disk", lambda: refused_naming_the_disk(f1, o1), timeout_s=30)
    status, body = enc(o1, f1)
    assert status == 503 and body["message"], body

    # The node is up and says what is wrong.
    assert process.poll() is None, "the node died on a full disk"
    storage = until("status to show both stores failing", lambda: (s := net.storage()) and not any(v["healthy"] for v in s.values()) and s)
    assert _names_storage(storage["sae_keys.sqlite3"]["error"]) and storage["links.sqlite3"]["failures"] > 0
    until("the KME's health to be NOT_SERVING", lambda: net.kme_health() == "NOT_SERVING", timeout_s=10)
    assert net.kme_health(service="") == "SERVING", "the process itself is fine: a restart would not free the disk"

    def metrics() -> str:
        with urllib.request.urlopen(net.info["nodes"][full]["metrics"], timeout=5) as response:
            return str(response.read().decode())

    until("the storage metric to show the failure", lambda: 'qcinode_storage_healthy{file="sae_keys.sqlite3"} 0.0' in metrics())

    # A redemption that cannot be recorded hands nothing out; one that can, is final.
    key_id = waiting_here[0]
    master, slave, key = handed_out[key_id]
    status, body = net.dec(slave, master, [key_id])
    if status == 503:
        assert _names_storage(body["message"]) and "keys are kept" in body["message"], body
    else:
        assert status == 200 and body["keys"][0]["key"] == key
        del handed_out[key_id]
        assert net.dec(slave, master, [key_id])[0] == 400, "a key was handed out twice"

    # Full disk or not, no key bit was used by one end that its initiator did
    # not use (a pad whose save failed is never sent: spent by its initiator alone).
    ends = net.links(ledger=True)
    _audit_clean(ends)
    blocks_when_full = max(int(end["blocks_done"]) for end in ends.values())

    # -- space again -------------------------------------------------------------
    filler.unlink()
    until("the link to resume", lambda: all(end["state"] == "up" for end in net.links().values()))
    until("new blocks at both ends", lambda: min(int(end["blocks_done"]) for end in net.links().values()) > blocks_when_full + 2)
    until("the KME's health to be SERVING", lambda: net.kme_health() == "SERVING", timeout_s=10)
    for master, slave in pairs:
        until(f"keys {master} -> {slave} again", lambda: enc(master, slave)[0] == 200, timeout_s=30)  # noqa: B023 - called at once
    assert all(store["healthy"] for store in net.storage().values())

    # Every key handed out is redeemed once, by its slave, with the same bytes.
    for key_id, (master, slave, key) in handed_out.items():
        status, body = net.dec(slave, master, [key_id])
        assert status == 200, body
        assert body["keys"][0]["key"] == key, "the two copies of a key differ"
        assert net.dec(slave, master, [key_id])[0] == 400, "a key was redeemed twice"

    # The two ends of the link hold the same blocks and used the same bits.
    def agree() -> dict[str, dict[str, Any]] | None:
        ends = net.links(ledger=True, digests=True)
        pools = {node: {b["block_id"]: b["sha256"] for b in end.get("blocks", [])} for node, end in ends.items()}
        return ends if pools[full] == pools[other] else None

    ends = until("both ends of the link to hold the same blocks", agree, timeout_s=20, every_s=0.1)
    assert ends[full]["ledger"], "relays used the link, so its ledger is not empty"
    _audit_clean(ends)

    # The log says what happened, and never shows a key.
    log = (net.state / "logs" / f"{full}.log").read_text(errors="replace")
    failed = [json.loads(line) for line in log.splitlines() if '"storage.write_failed"' in line]
    assert any(_names_storage(e["reason"]) for e in failed), failed
    assert all(e["reason"] and e["path"].startswith(str(net.data_dir)) for e in failed), failed
    assert '"storage.recovered"' in log
    logs = log + (net.state / "logs" / f"{other}.log").read_text(errors="replace")
    for _, _, key in handed_out.values():
        assert key not in logs and base64.b64decode(key).hex() not in logs
    assert process.poll() is None


def test_mount_form_runs_commands_in_the_tmpfs(tmp_path: Path, mount_form: MountForm) -> None:
    """The harness itself: the node's view of its data directory is the small tmpfs."""
    point = tmp_path / "m"
    with mount_form.host_mount(point, "size=1m"):
        argv = mount_form.wrap(["sh", "-c", f"df -k {shlex.quote(str(point))} | tail -1"], point, "size=1m")
        out = subprocess.run(argv, capture_output=True, text=True, timeout=20, check=True).stdout.split()
    assert out[0] == "tmpfs" and int(out[1]) == 1024, out
