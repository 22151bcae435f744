"""Play the kubelet for a rendered StatefulSet with plain processes in network namespaces.

The fallback for machines where no container runtime runs (docs/kubernetes.md):
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
  ``runAsUser``/``runAsGroup`` when that user can run the pod command (tried
  for real, through the same ``setpriv``/``prlimit`` chain), else uid 0
  *without capabilities* (see :attr:`NetnsKubelet.run_as`); if neither can,
  :attr:`NetnsKubelet.unusable` says why and the tests skip.
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

__all__ = ["ClientAgent", "NetnsKubelet", "PodmanClientAgent", "PodmanKubelet", "netns_unavailable_reason", "parse_quantity",
           "podman_unavailable_reason"]

RUNTIME = "network-namespace fallback"
#: This file: the client agent runs it as a script (``python kubelet.py agent``) where tests reach pods.
AGENT_SCRIPT = Path(__file__).resolve()
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

    def _adopt(self, docs: list[dict[str, Any]], workdir: Path, cluster_domain: str) -> None:
        """Reads the one StatefulSet of the rendered objects: what every runtime needs."""
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

    def __init__(self, docs: list[dict[str, Any]], workdir: Path, *, cluster_domain: str = "cluster.local") -> None:
        self._adopt(docs, workdir, cluster_domain)
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
        self.memory_limit = self._memory_limit()
        #: Why the manifest's user is not used, or why no pod can start here (see :attr:`unusable`).
        self.user_note = ""
        #: Set when neither the manifest's user nor uid 0 without capabilities can run the pod command.
        self.unusable: str | None = None
        self.run_as = self._pick_user()

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
        """(uid, gid) from the securityContext if that user can run the pod command, else None (uid 0).

        Checked by running it: the pod's command (the console script, through
        its interpreter) with ``--version``, under the same ``setpriv`` and
        ``prlimit`` chain a pod gets. Only that is conclusive: a uid may pass
        a direct ``setpriv`` of the interpreter and still fail one ``exec``
        later (an interpreter under a 0700 home, e.g. pyenv's under /root).
        If neither that user nor uid 0 without capabilities can, ``unusable``
        says why.
        """
        ctx = {**self.template["spec"].get("securityContext", {}), **self.container.get("securityContext", {})}
        uid = ctx.get("runAsUser")
        if uid is not None:
            user = (int(uid), int(ctx.get("runAsGroup", uid)))
            failure = self._cannot_run(user)
            if failure is None:
                return user
            self.user_note = f"uid {user[0]} cannot run {self.executable}: {failure}"
        failure = self._cannot_run(None)
        if failure is not None:
            self.unusable = f"{self.user_note + '; ' if self.user_note else ''}uid 0 without capabilities cannot run {self.executable} either: {failure}"
        return None

    def _wrapper(self, run_as: tuple[int, int] | None) -> list[str]:
        """What runs the pod command: no new privileges, no capabilities, the user, the memory limit."""
        wrapper = ["setpriv", "--no-new-privs", "--inh-caps=-all", "--bounding-set=-all"]
        if run_as is not None:
            uid, gid = run_as
            wrapper[1:1] = [f"--reuid={uid}", f"--regid={gid}", f"--groups={self._fs_group()}"]
        if self.memory_limit is not None:
            wrapper += ["prlimit", f"--as={self.memory_limit}", "--"]
        return wrapper

    def _cannot_run(self, run_as: tuple[int, int] | None) -> str | None:
        """Why the pod command cannot run as ``run_as`` (None: it can)."""
        try:
            check = subprocess.run(
                [*self._wrapper(run_as), self.executable, "--version"], capture_output=True, text=True, timeout=60, cwd="/", check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            return str(exc)
        if check.returncode == 0 and check.stdout.startswith("qcinode "):
            return None
        lines = (check.stderr or check.stdout).strip().splitlines()
        return lines[-1] if lines else f"exit code {check.returncode}"

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
        wrapper = ["ip", "netns", "exec", pod.netns, *self._wrapper(self.run_as)]
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
            ["ip", "netns", "exec", netns, sys.executable, str(AGENT_SCRIPT), "agent"],
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



# ---------------------------------------------------------------------- podman

PODMAN_RUNTIME = "podman"
# The checkout's podman configuration (tests/support/ -> the repository root). The client agent
# runs this file alone in a container, where no checkout surrounds it: nothing is read there.
_PODMAN_CONF = AGENT_SCRIPT.parent.parent.parent / "deploy" / "podman" / "containers.conf"
#: Where the client agent's container finds this file (mounted read-only; the image holds only qcinode).
_AGENT_IN_CONTAINER = "/qcinode-test/agent.py"


def podman(*args: str, check: bool = True, timeout: float = 60.0, input: str | None = None) -> subprocess.CompletedProcess[str]:
    """``podman ARGS`` with the project's containers.conf (runc, lowered ulimits) when it exists."""
    env = dict(os.environ)
    if _PODMAN_CONF.exists():
        env["CONTAINERS_CONF"] = str(_PODMAN_CONF)
    done = subprocess.run(["podman", *args], capture_output=True, text=True, timeout=timeout, env=env, input=input)
    if check and done.returncode != 0:
        raise RuntimeError(f"podman {' '.join(args)} failed ({done.returncode}): {done.stderr.strip()}")
    return done


def podman_unavailable_reason(image: str) -> str | None:
    """Why podman cannot run ``image`` here, or None."""
    if shutil.which("podman") is None:
        return "podman is not installed"
    try:
        done = podman("run", "--rm", "--network", "none", "--read-only", image, "--version", check=False, timeout=60)
    except subprocess.TimeoutExpired:
        return "podman run timed out"
    if done.returncode != 0:
        return f"podman cannot run {image}: {done.stderr.strip().splitlines()[-1:] or done.returncode}"
    return None


class PodmanKubelet(NetnsKubelet):
    """Runs the pods of one rendered StatefulSet as podman containers of a built image.

    One container per replica, named after the pod (``qcinode-N``), in a podman
    pod ``qcinode-N-sandbox`` that stands in for the Kubernetes pod sandbox: it
    holds the network namespace on a podman bridge network made for the run
    (subnet ``10.218.S.0/24``, pod N at ``.10+N`` via ``--ip``), the hostname
    and the names, and outlives a killed container as a sandbox does. Names: the pod's and each single-pod headless
    Service's names (:meth:`pod_names`) are ``--network-alias`` es answered by
    podman's DNS (aardvark-dns) when the network has DNS, else ``--add-host``
    entries for every pod in every container. The container gets the
    manifest's ``command`` (as entrypoint), ``args`` and ``env`` (fieldRefs and
    ``$(VAR)`` expanded), ConfigMap/Secret/projected volumes written to a
    per-pod host directory and bind-mounted read-only at their ``mountPath``,
    the ``data`` claim as a per-pod host directory owned by ``runAsUser`` that
    outlives the container (the PVC), ``emptyDir`` as a tmpfs (``sizeLimit``),
    ``--read-only`` (no extra tmpfs), ``--user runAsUser:runAsGroup``,
    ``--group-add fsGroup``, ``--cap-drop ALL``, ``no-new-privileges``, the
    default seccomp profile, and ``--memory``/``--cpus`` from the limits.
    Object handling (Services, volumes, quantities) is inherited from
    :class:`NetnsKubelet`; nothing there changes.
    """

    def __init__(self, docs: list[dict[str, Any]], workdir: Path, image: str, *, cluster_domain: str = "cluster.local",
                 use_dns: bool | None = None) -> None:
        self._adopt(docs, workdir, cluster_domain)
        self.image = image
        self.tag = secrets.token_hex(3)
        self.network = f"qcinode-test-{self.tag}"
        self.subnet = ""
        self.use_dns = use_dns
        self.pods = [
            Pod(
                name=f"{self.sts['metadata']['name']}-{i}",
                ordinal=i,
                ip="",
                netns="",
                root=self.workdir / "pods" / f"p{i}",
                pvc=self.workdir / "pvc" / f"data-{self.sts['metadata']['name']}-{i}",
            )
            for i in range(self.replicas)
        ]
        ctx = {**self.template["spec"].get("securityContext", {}), **self.container.get("securityContext", {})}
        uid = ctx.get("runAsUser")
        self.run_as = (int(uid), int(ctx.get("runAsGroup", uid))) if uid is not None else None
        self.memory_limit = self._memory_limit()
        self._containers: set[str] = set()
        self._sandboxes: set[str] = set()
        self._network_made = False

    # ------------------------------------------------------------------ names and network

    def pod_names(self, pod: Pod) -> list[str]:
        """Every DNS name of ``pod``: pod hostname names and single-pod headless Services."""
        suffixes = (f"{self.namespace}.svc", f"{self.namespace}.svc.{self.cluster_domain}")
        governing = self.sts["spec"]["serviceName"]
        names = [pod.name] + [f"{pod.name}.{governing}.{s}" for s in suffixes]
        for name, svc in self.objects("Service").items():
            target = svc["spec"].get("selector", {}).get("statefulset.kubernetes.io/pod-name")
            if target == pod.name and svc["spec"].get("clusterIP") == "None":
                names += [name] + [f"{name}.{s}" for s in suffixes]
        return names

    def setup_network(self) -> None:
        last = ""
        for _ in range(8):
            subnet = f"10.218.{secrets.randbelow(250) + 1}"
            done = podman("network", "create", "--subnet", f"{subnet}.0/24", "--gateway", f"{subnet}.1", self.network, check=False)
            if done.returncode == 0:
                self.subnet, self._network_made = subnet, True
                break
            last = done.stderr.strip()
        else:
            raise RuntimeError(f"podman network create failed: {last}")
        for pod in self.pods:
            pod.ip = f"{self.subnet}.{10 + pod.ordinal}"
        if self.use_dns is None:
            dns = podman("network", "inspect", self.network, "--format", "{{.DNSEnabled}}").stdout.strip()
            self.use_dns = dns == "true"

    def name_args(self, pod: Pod | None) -> list[str]:
        """``--network-alias`` (DNS) or ``--add-host`` (no DNS) arguments for a container (``pod`` None: a client)."""
        if self.use_dns:
            return [] if pod is None else [a for name in self.pod_names(pod) if name != pod.name for a in ("--network-alias", name)]
        return [a for other in self.pods for name in self.pod_names(other) for a in ("--add-host", f"{name}:{other.ip}")]

    # ------------------------------------------------------------------ pods

    def _prepare_pod(self, pod: Pod) -> None:
        if pod.root.exists():
            shutil.rmtree(pod.root)  # volumes other than the PVC are recreated with the pod
        pod.root.mkdir(parents=True)
        pod.pvc.mkdir(parents=True, exist_ok=True)
        volumes = {v["name"]: v for v in self.template["spec"].get("volumes", [])}
        claims = {c["metadata"]["name"] for c in self.sts["spec"].get("volumeClaimTemplates", [])}
        self._mounts: dict[str, list[str]] = getattr(self, "_mounts", {})
        mounts: list[str] = []
        for mount in self.container.get("volumeMounts", []):
            path = mount["mountPath"]
            volume = volumes.get(mount["name"])
            if mount["name"] in claims:
                os.chown(pod.pvc, *(self.run_as or (0, 0)))
                mounts += ["-v", f"{pod.pvc}:{path}:rw"]
            elif volume is not None and "emptyDir" in volume:
                size = volume["emptyDir"].get("sizeLimit")
                opts = ",".join(["rw", "mode=1777"] + ([f"size={parse_quantity(size)}"] if size else []))
                mounts += ["--tmpfs", f"{path}:{opts}"]
            else:
                host = pod.root / mount["name"]
                self._write_volume(volumes[mount["name"]], host, pod)
                for directory in [host, *(d for d in host.rglob("*") if d.is_dir())]:
                    directory.chmod(0o2755)
                    os.chown(directory, 0, self._fs_group())
                mounts += ["-v", f"{host}:{path}:{'ro' if mount.get('readOnly') else 'rw'}"]
        self._mounts[pod.name] = mounts
        fields = {"metadata.name": pod.name, "metadata.namespace": self.namespace, "status.podIP": pod.ip}
        pod.env = expand_env(self.container.get("env", []), fields)
        pod.argv = [expand_refs(a, pod.env) for a in self.container.get("args", [])]

    def run_args(self, pod: Pod) -> list[str]:
        """The ``podman run`` arguments for ``pod`` (after :meth:`_prepare_pod`)."""
        limits = self.container.get("resources", {}).get("limits", {})
        argv = ["run", "-d", "--name", pod.name, "--pod", self.sandbox(pod), "--read-only", "--read-only-tmpfs=false", "--cap-drop", "ALL",
                "--security-opt", "no-new-privileges", "--pull", "never",
                "--label", f"qcinode.test/run={self.tag}"]
        if self.run_as is not None:
            argv += ["--user", f"{self.run_as[0]}:{self.run_as[1]}"]
            if self._fs_group():
                argv += ["--group-add", str(self._fs_group())]
        if self.memory_limit is not None:
            argv += ["--memory", str(self.memory_limit)]
        if "cpu" in limits:
            cpu = str(limits["cpu"])
            argv += ["--cpus", str(int(cpu[:-1]) / 1000 if cpu.endswith("m") else float(cpu))]
        for key, value in pod.env.items():
            argv += ["--env", f"{key}={value}"]
        argv += self._mounts[pod.name]
        command = self.container.get("command")
        if command:
            argv += ["--entrypoint", json.dumps(command)]
        return argv + [self.image, *pod.argv]

    def sandbox(self, pod: Pod) -> str:
        """The podman pod standing in for the Kubernetes pod sandbox (network namespace, IP, names, hostname)."""
        return f"{pod.name}-sandbox"

    def start_pod(self, ordinal: int) -> Pod:
        """Start the pod's container, creating its sandbox (a podman pod: netns, IP, DNS names) first if needed."""
        pod = self.pods[ordinal]
        self._prepare_pod(pod)
        if self.sandbox(pod) not in self._sandboxes:
            self._sandboxes.add(self.sandbox(pod))
            podman("pod", "create", "--name", self.sandbox(pod), "--hostname", pod.name, "--network", self.network, "--ip", pod.ip,
                   *self.name_args(pod), "--label", f"qcinode.test/run={self.tag}")
        self._containers.add(pod.name)
        podman(*self.run_args(pod))
        return pod

    def kill_pod(self, ordinal: int, sig: int = signal.SIGKILL) -> None:
        """``podman kill -s SIG`` and remove the container; the sandbox (IP, names) and the PVC directory stay,
        as when the kubelet restarts a killed container in its pod."""
        name = self.pods[ordinal].name
        podman("kill", "-s", signal.Signals(sig).name.removeprefix("SIG"), name, check=False)
        podman("wait", name, check=False)
        podman("rm", "-f", "-t", "0", name, check=False)

    def state(self, ordinal: int) -> dict[str, Any]:
        """``podman inspect`` of the pod's container."""
        return dict(json.loads(podman("inspect", self.pods[ordinal].name).stdout)[0])

    def running(self, ordinal: int) -> bool:
        done = podman("inspect", "--format", "{{.State.Running}}", self.pods[ordinal].name, check=False)
        return done.stdout.strip() == "true"

    def log_tail(self, ordinal: int, lines: int = 30) -> str:
        done = podman("logs", "--tail", str(lines), self.pods[ordinal].name, check=False)
        return (done.stdout + done.stderr).strip()

    def close(self) -> None:
        """Remove every container of this run and the network."""
        names = set(self._containers)
        listed = podman("ps", "-a", "--filter", f"label=qcinode.test/run={self.tag}", "--format", "{{.Names}}", check=False)
        names.update(listed.stdout.split())
        if names:
            podman("rm", "-f", "-t", "0", *sorted(names), check=False)
        self._containers.clear()
        pods = podman("pod", "ps", "--filter", f"label=qcinode.test/run={self.tag}", "--format", "{{.Name}}", check=False)
        sandboxes = self._sandboxes | set(pods.stdout.split())
        if sandboxes:
            podman("pod", "rm", "-f", "-t", "0", *sorted(sandboxes), check=False)
        self._sandboxes.clear()
        if self._network_made:
            podman("network", "rm", "-f", self.network, check=False)
            self._network_made = False

    def leftovers(self) -> list[str]:
        """Containers and the network of this run still present (should be empty after :meth:`close`)."""
        listed = podman("ps", "-a", "--filter", f"label=qcinode.test/run={self.tag}", "--format", "{{.Names}}", check=False)
        out = listed.stdout.split()
        pods = podman("pod", "ps", "--filter", f"label=qcinode.test/run={self.tag}", "--format", "{{.Name}}", check=False)
        out += [f"pod {name}" for name in pods.stdout.split()]
        if podman("network", "exists", self.network, check=False).returncode == 0:
            out.append(f"network {self.network}")
        return out


class PodmanClientAgent(ClientAgent):
    """:class:`ClientAgent` in a container of ``image`` on the kubelet's network (names resolved as pods resolve them).

    ``mounts`` maps host paths to container paths (mounted read-only).
    """

    def __init__(self, kubelet: PodmanKubelet, mounts: dict[Path, str]) -> None:
        self.name = f"qcinode-client-{kubelet.tag}"
        mounts = {**mounts, AGENT_SCRIPT: _AGENT_IN_CONTAINER}
        volumes = [a for host, path in mounts.items() for a in ("-v", f"{host}:{path}:ro")]
        argv = ["podman", "run", "-i", "--rm", "--name", self.name, "--network", kubelet.network, "--ip", f"{kubelet.subnet}.250",
                *kubelet.name_args(None), "--read-only", "--user", "0", "--cap-drop", "ALL", "--pull", "never",
                "--label", f"qcinode.test/run={kubelet.tag}", *volumes, "--entrypoint", "python3", kubelet.image,
                _AGENT_IN_CONTAINER, "agent"]
        env = dict(os.environ)
        if _PODMAN_CONF.exists():
            env["CONTAINERS_CONF"] = str(_PODMAN_CONF)
        self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, start_new_session=True, env=env)

    def close(self) -> None:
        if self.process.stdin is not None:
            try:
                self.process.stdin.close()  # the agent exits at EOF, and --rm removes the container
            except OSError:
                pass
        try:
            self.process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pass
        podman("rm", "-f", "-t", "0", self.name, check=False)
        super().close()


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
        from qcinode.cluster.admin import node_status

        return node_status(request["target"], request["server_name"], Path(request["certs"]), timeout_s=5.0).to_json()
    if op == "etsi":
        from qcinode.kme.client import EtsiClient

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
