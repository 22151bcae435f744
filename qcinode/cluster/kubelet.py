"""Play the kubelet for a rendered StatefulSet with plain processes in network namespaces.

The fallback of issue 4 item 4, for machines where no container runtime runs:
tests read the *rendered* objects (``kubectl kustomize`` output, or the same
objects assembled in Python) and :class:`NetnsKubelet` runs each pod as a
process in its own Linux network namespace.

What is emulated, and how:

* **Network.** One namespace per pod (``eth0`` = one end of a veth pair,
  address ``10.213.S.(10+N)/24``) and one *client* namespace holding the
  bridge ``br0`` (``10.213.S.1/24``) that the other veth ends join. The /24
  exists only inside these namespaces: nothing is added to the root
  namespace. Tests talk to pods through :class:`ClientAgent`, a Python
  process in the client namespace.
* **DNS.** ``/etc/netns/NS/hosts`` (bind-mounted over ``/etc/hosts`` by
  ``ip netns exec``) maps each pod's names (``POD``, ``POD.SERVICE.NS.svc``
  and ``...svc.DOMAIN``) and each headless Service selecting one pod by
  ``statefulset.kubernetes.io/pod-name`` (``SVC``, ``SVC.NS.svc``,
  ``SVC.NS.svc.DOMAIN``) to the pod address.
* **Container.** ``command`` + ``args`` and ``env`` from the manifest,
  ``$(VAR)`` expanded from earlier entries as Kubernetes does, ``fieldRef``
  ``metadata.name`` / ``metadata.namespace`` / ``status.podIP``. The command
  is looked up next to the running interpreter (the installed console
  script), then on ``PATH``; the image is not used.
* **Volumes.** Nothing is mounted. ConfigMap, Secret and projected volumes
  are written to a per-pod directory (``items``/``path`` and ``defaultMode``
  honoured), the ``data`` claim template is a per-pod directory that outlives
  the process (the PVC), ``emptyDir`` a fresh directory; every ``mountPath``
  prefix in ``args`` and ``env`` values is rewritten to the directory.
* **Security context.** ``setpriv --no-new-privs`` with every capability
  dropped (``allowPrivilegeEscalation: false``, ``drop: [ALL]``). The user:
  ``runAsUser``/``runAsGroup`` when that user can execute the interpreter,
  else uid 0 *without capabilities* (see :attr:`NetnsKubelet.run_as`).
  ``readOnlyRootFilesystem`` and seccomp are not applied.
* **Resources.** ``limits.memory`` becomes ``RLIMIT_AS`` via ``prlimit``
  (an address-space cap, coarser than a cgroup memory limit); CPU is not
  limited.
* **Probes.** gRPC probes (``grpc.health.v1`` Check, plaintext) from the
  client namespace to ``POD_IP:port``.

Needs root, ``ip`` (iproute2), ``setpriv`` and ``prlimit`` (util-linux).
"""

from __future__ import annotations

import base64
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["ClientAgent", "NetnsKubelet", "netns_unavailable_reason", "parse_quantity"]

RUNTIME = "network-namespace fallback"
_VAR_REF = re.compile(r"\$\$|\$\(([-._a-zA-Z][-._a-zA-Z0-9]*)\)")
_QUANTITY = re.compile(r"([0-9.]+)(Ki|Mi|Gi|Ti|k|M|G|T)?")
_UNITS = {None: 1, "k": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40}


def parse_quantity(text: str | int) -> int:
    """A Kubernetes memory quantity (``1Gi``, ``256Mi``, ``1000``) in bytes."""
    match = _QUANTITY.fullmatch(str(text))
    if match is None:
        raise ValueError(f"unsupported quantity {text!r}")
    return int(float(match[1]) * _UNITS[match[2]])


def _run(*argv: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(list(argv), capture_output=True, text=True, timeout=30)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def netns_unavailable_reason() -> str | None:
    """Why the fallback cannot run here, or None."""
    if os.geteuid() != 0:
        return "network-namespace fallback needs root (ip netns add)"
    for tool in ("ip", "setpriv", "prlimit"):
        if shutil.which(tool) is None:
            return f"network-namespace fallback needs {tool!r} on PATH"
    probe = f"qkprobe{secrets.token_hex(3)}"
    done = _run("ip", "netns", "add", probe, check=False)
    if done.returncode != 0:
        return f"`ip netns add` does not work here: {done.stderr.strip()}"
    _run("ip", "netns", "del", probe, check=False)
    return None


def expand_env(env: list[dict[str, Any]], fields: dict[str, str]) -> dict[str, str]:
    """A container's ``env`` as Kubernetes resolves it: fieldRefs, then ``$(VAR)`` from earlier entries."""
    out: dict[str, str] = {}
    for entry in env:
        if "valueFrom" in entry:
            ref = entry["valueFrom"].get("fieldRef")
            if ref is None or ref["fieldPath"] not in fields:
                raise ValueError(f"env {entry['name']}: unsupported valueFrom {entry['valueFrom']}")
            out[entry["name"]] = fields[ref["fieldPath"]]
        else:
            out[entry["name"]] = expand_refs(str(entry.get("value", "")), out)
    return out


def expand_refs(text: str, env: dict[str, str]) -> str:
    """``$(VAR)`` -> value if defined (else left as is), ``$$`` -> ``$``."""

    def one(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return env.get(match[1], match[0])

    return _VAR_REF.sub(one, text)


@dataclass
class Pod:
    name: str
    ordinal: int
    ip: str
    netns: str
    root: Path  # per-pod host directory standing in for mounts
    pvc: Path
    argv: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    process: subprocess.Popen[bytes] | None = None
    log: Path | None = None


class NetnsKubelet:
    """Runs the pods of one rendered StatefulSet; :meth:`close` undoes everything."""

    def __init__(self, docs: list[dict[str, Any]], workdir: Path, *, cluster_domain: str = "cluster.local") -> None:
        self.docs = docs
        self.workdir = Path(workdir)
        self.cluster_domain = cluster_domain
        sets = [d for d in docs if d["kind"] == "StatefulSet"]
        if len(sets) != 1:
            raise ValueError(f"expected one StatefulSet, got {len(sets)}")
        self.sts = sets[0]
        self.namespace = self.sts["metadata"]["namespace"]
        self.template = self.sts["spec"]["template"]
        self.container = self.template["spec"]["containers"][0]
        self.replicas = int(self.sts["spec"]["replicas"])
        tag = secrets.token_hex(3)
        self.subnet = f"10.213.{int(tag[:2], 16)}"
        self.client_ns = f"qk{tag}-client"
        self.pods = [
            Pod(
                name=f"{self.sts['metadata']['name']}-{i}",
                ordinal=i,
                ip=f"{self.subnet}.{10 + i}",
                netns=f"qk{tag}-p{i}",
                root=self.workdir / "pods" / f"p{i}",
                pvc=self.workdir / "pvc" / f"data-{self.sts['metadata']['name']}-{i}",
            )
            for i in range(self.replicas)
        ]
        self._namespaces: list[str] = []
        command = self.container.get("command", [])[0]
        local = Path(sys.executable).parent / command
        self.executable = str(local) if local.exists() else (shutil.which(command) or command)
        self.run_as = self._pick_user()
        self.memory_limit = self._memory_limit()

    # ------------------------------------------------------------------ objects

    def objects(self, kind: str) -> dict[str, dict[str, Any]]:
        return {d["metadata"]["name"]: d for d in self.docs if d["kind"] == kind}

    def service_port(self, service: str, port_name: str) -> int:
        svc = self.objects("Service")[service]
        return int(next(p["port"] for p in svc["spec"]["ports"] if p["name"] == port_name))

    def probe_port(self, kind: str = "readinessProbe") -> tuple[int, str]:
        grpc_probe = self.container[kind]["grpc"]
        return int(grpc_probe["port"]), str(grpc_probe.get("service", ""))

    def hosts(self) -> str:
        """The hosts file every namespace gets: pod and headless-Service names."""
        suffixes = (f"{self.namespace}.svc", f"{self.namespace}.svc.{self.cluster_domain}")
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        governing = self.sts["spec"]["serviceName"]
        by_pod = {p.name: p for p in self.pods}
        for pod in self.pods:
            names = [pod.name] + [f"{pod.name}.{governing}.{s}" for s in suffixes]
            lines.append(f"{pod.ip} " + " ".join(names))
        for name, svc in self.objects("Service").items():
            target = svc["spec"].get("selector", {}).get("statefulset.kubernetes.io/pod-name")
            if target in by_pod and svc["spec"].get("clusterIP") == "None":
                lines.append(f"{by_pod[target].ip} {name} " + " ".join(f"{name}.{s}" for s in suffixes))
        return "\n".join(lines) + "\n"

    # ------------------------------------------------------------------ setup

    def _pick_user(self) -> tuple[int, int] | None:
        """(uid, gid) from the securityContext if that user can run our interpreter, else None (root)."""
        ctx = {**self.template["spec"].get("securityContext", {}), **self.container.get("securityContext", {})}
        uid = ctx.get("runAsUser")
        if uid is None:
            return None
        gid = ctx.get("runAsGroup", uid)
        probe = "import sys, qcinode; open(sys.argv[1], 'rb').close()"  # the interpreter, the package and the script
        check = _run("setpriv", f"--reuid={uid}", f"--regid={gid}", "--clear-groups", sys.executable, "-c", probe, self.executable, check=False)
        return (int(uid), int(gid)) if check.returncode == 0 else None

    def _memory_limit(self) -> int | None:
        limit = self.container.get("resources", {}).get("limits", {}).get("memory")
        return parse_quantity(limit) if limit is not None else None

    def _netns_add(self, name: str) -> None:
        _run("ip", "netns", "add", name)
        self._namespaces.append(name)
        etc = Path("/etc/netns") / name
        etc.mkdir(parents=True, exist_ok=True)
        (etc / "hosts").write_text(self.hosts())
        _run("ip", "-n", name, "link", "set", "lo", "up")

    def setup_network(self) -> None:
        self._netns_add(self.client_ns)
        c = self.client_ns
        _run("ip", "-n", c, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", c, "addr", "add", f"{self.subnet}.1/24", "dev", "br0")
        _run("ip", "-n", c, "link", "set", "br0", "up")
        for pod in self.pods:
            self._netns_add(pod.netns)
            host_end = f"veth{pod.ordinal}"
            _run("ip", "-n", c, "link", "add", host_end, "type", "veth", "peer", "name", "eth0", "netns", pod.netns)
            _run("ip", "-n", c, "link", "set", host_end, "master", "br0", "up")
            _run("ip", "-n", pod.netns, "addr", "add", f"{pod.ip}/24", "dev", "eth0")
            _run("ip", "-n", pod.netns, "link", "set", "eth0", "up")

    def _write_volume(self, volume: dict[str, Any], target: Path, pod: Pod) -> None:
        configmaps, secrets_ = self.objects("ConfigMap"), self.objects("Secret")

        def source_files(kind: str, name: str) -> dict[str, bytes]:
            if kind == "configMap":
                return {k: v.encode() for k, v in configmaps[name].get("data", {}).items()}
            return {k: base64.b64decode(v) for k, v in secrets_[name].get("data", {}).items()}

        def place(files: dict[str, bytes], items: list[dict[str, Any]] | None, mode: int) -> None:
            for item in items if items is not None else [{"key": k, "path": k} for k in files]:
                path = target / item["path"]
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_bytes(files[item["key"]])
                path.chmod(int(item.get("mode", mode)))
                if self.run_as is not None:
                    os.chown(path, 0, self._fs_group())

        target.mkdir(parents=True, exist_ok=True)
        if "configMap" in volume:
            spec = volume["configMap"]
            place(source_files("configMap", spec["name"]), spec.get("items"), spec.get("defaultMode", 0o644))
        elif "secret" in volume:
            spec = volume["secret"]
            place(source_files("secret", spec["secretName"]), spec.get("items"), spec.get("defaultMode", 0o644))
        elif "projected" in volume:
            mode = volume["projected"].get("defaultMode", 0o644)
            for src in volume["projected"]["sources"]:
                kind = "configMap" if "configMap" in src else "secret"
                place(source_files(kind, src[kind]["name"]), src[kind].get("items"), mode)
        elif "emptyDir" in volume:
            pass
        else:
            raise ValueError(f"volume {volume['name']}: unsupported type")

    def _fs_group(self) -> int:
        return int(self.template["spec"].get("securityContext", {}).get("fsGroup", 0))

    def _prepare_pod(self, pod: Pod) -> None:
        if pod.root.exists():
            shutil.rmtree(pod.root)  # volumes other than the PVC are recreated with the pod
        pod.root.mkdir(parents=True)
        pod.pvc.mkdir(parents=True, exist_ok=True)
        volumes = {v["name"]: v for v in self.template["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in self.sts["spec"].get("volumeClaimTemplates", [])}
        mounts: dict[str, Path] = {}
        for mount in self.container.get("volumeMounts", []):
            if mount["name"] in claims:
                host = pod.pvc
            else:
                host = pod.root / mount["name"]
                self._write_volume(volumes[mount["name"]], host, pod)
            mounts[mount["mountPath"].rstrip("/")] = host
        for host in [pod.root, *mounts.values()]:
            host.chmod(0o2775 if self.run_as is not None else 0o755)
            if self.run_as is not None:
                os.chown(host, self.run_as[0] if host == pod.pvc else 0, self._fs_group())

        def rewrite(value: str) -> str:
            for path in sorted(mounts, key=len, reverse=True):
                if value == path or value.startswith(path + "/"):
                    return str(mounts[path]) + value[len(path):]
            return value

        fields = {"metadata.name": pod.name, "metadata.namespace": self.namespace, "status.podIP": pod.ip}
        env = expand_env(self.container.get("env", []), fields)
        pod.env = {k: rewrite(v) for k, v in env.items()}
        command = list(self.container.get("command", []))
        args = [rewrite(expand_refs(a, env)) for a in self.container.get("args", [])]
        command[0] = self.executable
        pod.argv = command + args

    # ------------------------------------------------------------------ pods

    def start_pod(self, ordinal: int) -> Pod:
        pod = self.pods[ordinal]
        self._prepare_pod(pod)
        wrapper = ["ip", "netns", "exec", pod.netns, "setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        if self.run_as is not None:
            uid, gid = self.run_as
            wrapper[5:5] = [f"--reuid={uid}", f"--regid={gid}", f"--groups={self._fs_group()}"]
        if self.memory_limit is not None:
            wrapper += ["prlimit", f"--as={self.memory_limit}", "--"]
        base_env = {k: v for k, v in os.environ.items() if not k.startswith("QCINODE_")}
        base_env.update(HOME=str(pod.root), HOSTNAME=pod.name)
        pod.log = self.workdir / f"{pod.name}.log"
        with pod.log.open("ab") as log:
            pod.process = subprocess.Popen(wrapper + pod.argv, env={**base_env, **pod.env}, stdout=log, stderr=subprocess.STDOUT,
                                           start_new_session=True, cwd=pod.root)
        return pod

    def kill_pod(self, ordinal: int, sig: int = signal.SIGKILL) -> None:
        pod = self.pods[ordinal]
        if pod.process is not None and pod.process.poll() is None:
            try:
                os.killpg(pod.process.pid, sig)
            except ProcessLookupError:
                pass
            pod.process.wait(timeout=10)

    def close(self) -> None:
        """Kill every pod process, delete every namespace (and so every veth and the bridge) and hosts file."""
        for pod in self.pods:
            try:
                self.kill_pod(pod.ordinal)
            except Exception:  # noqa: BLE001 - cleanup goes on
                pass
        for name in reversed(self._namespaces):
            _run("ip", "netns", "del", name, check=False)
            shutil.rmtree(Path("/etc/netns") / name, ignore_errors=True)
        self._namespaces.clear()

    def leftovers(self) -> list[str]:
        """Namespaces of ours still present (should be empty after :meth:`close`)."""
        listed = _run("ip", "netns", "list", check=False).stdout.split()
        mine = {self.client_ns, *(p.netns for p in self.pods)}
        return [n for n in listed if n in mine]

    def log_tail(self, ordinal: int, lines: int = 30) -> str:
        log = self.pods[ordinal].log
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:]) if log and log.exists() else ""


class ClientAgent:
    """A Python process in a namespace answering one JSON request per line (probes, admin status, ETSI 014)."""

    def __init__(self, netns: str) -> None:
        self.process = subprocess.Popen(
            ["ip", "netns", "exec", netns, sys.executable, "-m", "qcinode.cluster.kubelet", "agent"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True,
        )

    def call(self, **request: Any) -> Any:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError("client agent exited")
        reply = json.loads(line)
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return reply["result"]

    def close(self) -> None:
        if self.process.poll() is None:
            try:
                os.killpg(self.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            self.process.wait(timeout=10)
        for stream in (self.process.stdin, self.process.stdout):
            if stream is not None:
                stream.close()


def _agent_handle(request: dict[str, Any]) -> Any:
    op = request["op"]
    if op == "probe":
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        try:
            with grpc.insecure_channel(request["target"]) as channel:
                reply = health_pb2_grpc.HealthStub(channel).Check(
                    health_pb2.HealthCheckRequest(service=request.get("service", "")), timeout=request.get("timeout", 3.0)
                )
            return health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        except grpc.RpcError as err:
            return f"ERROR {err.code().name}"
    if op == "status":
        from .admin import node_status

        return node_status(request["target"], request["server_name"], Path(request["certs"]), timeout_s=5.0)
    if op == "etsi":
        from ..kme.client import EtsiClient

        client = EtsiClient(Path(request["ca"]), Path(request["cert"]), Path(request["key"]))
        return client.request(request["method"], request["url"], request.get("body"), timeout_s=request.get("timeout", 15.0))
    raise ValueError(f"unknown op {op!r}")


def _agent() -> int:
    for line in sys.stdin:
        try:
            reply: dict[str, Any] = {"result": _agent_handle(json.loads(line))}
        except Exception as err:  # noqa: BLE001 - reported to the caller
            reply = {"error": f"{type(err).__name__}: {err}"}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()
    return 0


def wait_until(predicate: Any, timeout_s: float, what: str, interval_s: float = 0.3) -> Any:
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        last = predicate()
        if last:
            return last
        time.sleep(interval_s)
    raise TimeoutError(f"{what}: not reached in {timeout_s:.0f} s (last: {last!r})")


if __name__ == "__main__" and sys.argv[1:] == ["agent"]:
    sys.exit(_agent())
