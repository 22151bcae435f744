"""Node processes forked from a pre-loaded "zygote" instead of each starting a new interpreter.

A node process spends about 0.65 s of CPU importing grpc, numpy,
cryptography, aiohttp, structlog, yaml and qcinode before it does anything,
and holds its own copy of the heap those imports build. A local cluster
therefore starts one helper process, the zygote, that imports all of it once
and then forks one child per node: the child starts with everything loaded,
and shares the zygote's pages with its siblings until it writes to them.

Theory of operation:
    * The zygote is ``python -m qcinode zygote --control-fd N`` (a hidden,
      internal command), started once per :class:`~qcinode.cluster.launcher.Cluster`
      with the node environment, in a session of its own. Its command line
      names qcinode, and so does every child's (a fork keeps it), which is
      how ``qcinode status`` and ``down`` recognise a node's PID.
    * Before it forks anything it imports what a node imports (the caller's
      ``preload``: the node's modules and those a running node imports later),
      then checks that it is still one thread (``threading.active_count()``
      and ``/proc/self/task``), collects garbage and freezes the heap
      (``gc.freeze()``: the children's collector then never walks, and so
      never copies, the pages of those objects). It has no event loop, no
      gRPC object, no thread pool and no socket but its control channel:
      gRPC, asyncio and OpenBLAS are not fork-safe once started, and each
      child starts them as a fresh process would.
    * Nothing secret lives in the zygote: the node's certificate and private
      key, the link bootstrap keys and the storage key are read by each
      child after the fork, as by an exec'd node. Key randomness is drawn
      after the fork: from ``os.urandom`` (``CsprngGenerator``, ``secrets``,
      ``uuid4``; the kernel's generator has no state in the process) and
      from generators the node creates at its start (``SeedSequence()``,
      ``default_rng()``, ``random.Random()``, seeded from the OS then).
      CPython reseeds the ``random`` module in every child; the child
      reseeds numpy's legacy global generator here, which no node code uses
      but a library might. What children do share is the interpreter's
      string-hash secret (PYTHONHASHSEED): it guards dictionaries against
      crafted collisions, and every node of one machine has the same one.
    * The control channel is an ``AF_UNIX`` ``SOCK_SEQPACKET`` socket pair:
      one JSON object per packet. The launcher sends ``{"spawn": ID,
      "argv": [...], "cwd": DIR, "env": {...}}`` with the node's log file descriptor
      attached (``SCM_RIGHTS``: the launcher opens the log, as before);
      the zygote answers ``{"ready": PID, "threads": N}`` once, then
      ``{"spawned": ID, "pid": PID}`` (or ``{"spawned": ID, "error":
      TEXT}``) per request, and ``{"exited": PID, "returncode": CODE}`` when
      it reaps a child (SIGCHLD wakes it): CODE as ``subprocess.Popen``
      reports it, the negative signal number for a killed child.
    * A child of the fork: a new session (``setsid``, as
      ``start_new_session=True`` gives an exec'd node), the zygote's signal
      handlers and wakeup descriptor undone, the control channel and the
      zygote's pipe closed, stdin from ``/dev/null``, stdout and stderr to the
      log file, the launcher's working directory and environment; then :func:`serve` returns
      the node's arguments to its caller, which runs the node's entry point
      and lets the interpreter exit as ``python -m qcinode node`` does.
    * The environment a process reads as it starts (the interpreter's
      ``PYTHON*``, glibc's ``MALLOC_*``, OpenBLAS's thread count: see
      :data:`START_TIME_PREFIXES`) is the zygote's for every child; a node
      that needs other values there is started with exec. The rest of the
      environment (``QCINODE_*`` included) is the launcher's at each fork.
    * End of file on the control channel (the launcher closed it, or exited,
      as ``qcinode up --detach`` does) ends the zygote and nothing else: its
      children run in their own sessions, and the init process adopts them.
    * On the launcher's side :class:`ForkedProcess` is a ``Popen``-like handle
      (``pid``, ``poll()``, ``wait(timeout)``, ``returncode``,
      ``send_signal``) fed by the zygote's ``exited`` reports. If the zygote
      dies, its children keep running; their handles then see them end when
      their PID goes away, with :data:`EXIT_STATUS_UNKNOWN` as the status
      (only a parent can learn it), and the launcher starts a new zygote
      for the next node.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from ..errors import ConfigError, QcinodeError

#: Environment variable choosing how the launcher starts nodes: ``fork`` (from the zygote) or ``exec``.
LAUNCH_ENV = "QCINODE_LAUNCH"
#: ``returncode`` of a forked node whose zygote died before it: only a process's parent learns its exit status.
EXIT_STATUS_UNKNOWN = 255
#: Seconds the launcher waits for a new zygote's imports (on a saturated machine they take many times their 1 s).
READY_TIMEOUT_S = 120.0
#: Environment variables read when the interpreter or a library the zygote loads starts (the interpreter's
#: options, glibc's allocator, the dynamic linker, BLAS and OpenMP thread pools, gRPC's core): fixed for
#: every child at the zygote's start. Conservative: a variable that only might be read early is listed.
START_TIME_PREFIXES = ("PYTHON", "MALLOC_", "GLIBC_TUNABLES", "LD_", "OPENBLAS_", "OMP_", "MKL_", "GOTO", "GRPC_")
_PACKET_BYTES = 1 << 20  # a node's argv is a few hundred bytes per neighbour
_POLL_SLICE_S = 0.1  # longest a waiting handle holds the channel before another thread's poll() gets it


class ZygoteError(QcinodeError):
    """The zygote could not be started or used (the launcher then starts nodes as new processes)."""


def launch_mode(environ: Mapping[str, str] | None = None) -> Literal["fork", "exec"]:
    """How nodes are started: :data:`LAUNCH_ENV` if set, else ``fork`` on Linux and ``exec`` elsewhere.

    Fork needs Linux: ``SOCK_SEQPACKET`` Unix sockets and ``/proc`` (and on
    macOS forking a process that has loaded the system's frameworks is not
    safe, which is why CPython stopped doing it there).

    Raises:
        ConfigError: A value other than ``fork`` or ``exec``, or ``fork`` off Linux.
    """
    value = (os.environ if environ is None else environ).get(LAUNCH_ENV, "").strip().lower()
    if not value:
        return "fork" if sys.platform == "linux" else "exec"
    if value not in ("fork", "exec"):
        raise ConfigError(f"{LAUNCH_ENV}: expected fork or exec, got {value!r}")
    if value == "fork" and sys.platform != "linux":
        raise ConfigError(f"{LAUNCH_ENV}: fork needs Linux (this is {sys.platform}); use exec")
    return "fork" if value == "fork" else "exec"


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie (an exited child not yet reaped)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child still answers kill(0); treat it as dead.
    with contextlib.suppress(OSError):
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    return True


def start_time_environment(env: Mapping[str, str]) -> dict[str, str]:
    """The part of ``env`` a process reads as it starts (:data:`START_TIME_PREFIXES`), which forked children cannot change."""
    return {name: value for name, value in env.items() if name.startswith(START_TIME_PREFIXES)}


def thread_count() -> int:
    """Threads of this process: the kernel's count where there is ``/proc`` (threads started by C code included)."""
    try:
        return len(os.listdir("/proc/self/task"))
    except OSError:
        return threading.active_count()


def _send(sock: socket.socket, message: Mapping[str, Any], fds: Sequence[int] = ()) -> None:
    data = json.dumps(message).encode()
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


# --------------------------------------------------------------------------- the zygote


def serve(control_fd: int, preload: Callable[[], None]) -> list[str] | None:
    """The zygote: preloads, then forks a child per request on the control channel ``control_fd``.

    Args:
        control_fd: The zygote's end of the socket pair made by :meth:`Zygote.start`.
        preload: Imports what a node imports (called once, before anything is forked).

    Returns:
        None in the zygote, once the control channel is closed (the zygote
        should then exit; its children go on). In a forked child: the
        arguments of the node it is to run (after ``qcinode``), the child
        set up as described in the module docstring.

    Raises:
        ZygoteError: The imports started a thread, so forking would copy it half-alive.
    """
    control = socket.socket(fileno=control_fd)
    control.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, _PACKET_BYTES)
    preload()
    threads = thread_count()
    if threads != 1 or threading.active_count() != 1:
        names = ", ".join(t.name for t in threading.enumerate())
        _send(control, {"error": f"{threads} threads after the imports ({names}); a fork would copy them half-alive"})
        raise ZygoteError(f"{threads} threads after the imports ({names})")
    # Objects made by the imports live as long as the process: freeze them, so the children's
    # collections neither scan them nor write to their pages (which would copy them).
    gc.collect()
    gc.freeze()
    wake_r, wake_w = os.pipe()
    os.set_blocking(wake_r, False)
    os.set_blocking(wake_w, False)
    previous_chld = signal.getsignal(signal.SIGCHLD)
    signal.signal(signal.SIGCHLD, lambda signum, frame: None)  # a Python handler, so that the wakeup byte is written
    previous_wakeup = signal.set_wakeup_fd(wake_w)
    _send(control, {"ready": os.getpid(), "threads": threads})

    def restore_in_child() -> None:
        signal.set_wakeup_fd(previous_wakeup)
        signal.signal(signal.SIGCHLD, previous_chld if previous_chld is not None else signal.SIG_DFL)
        os.close(wake_r)
        os.close(wake_w)
        control.close()

    poller = select.poll()
    poller.register(control, select.POLLIN)
    poller.register(wake_r, select.POLLIN)
    while True:
        events = dict(poller.poll())
        if wake_r in events:
            with contextlib.suppress(BlockingIOError):
                while os.read(wake_r, 512):
                    pass
        if not _reap(control):
            return None
        if control.fileno() not in events:
            continue
        try:
            data, fds, flags, _ = socket.recv_fds(control, _PACKET_BYTES, 4)
        except OSError:
            return None
        if not data:
            for fd in fds:
                os.close(fd)
            return None  # the launcher closed its end: nothing more to start
        request: Any = None
        try:
            request = json.loads(data)
            if flags & socket.MSG_TRUNC or len(fds) != 1:
                raise ValueError(f"expected one descriptor (the log) and at most {_PACKET_BYTES} bytes, got {len(fds)} descriptors")
            argv = [str(a) for a in request["argv"]]
            cwd = None if request.get("cwd") is None else str(request["cwd"])
            env = {str(k): str(v) for k, v in request["env"].items()}
        except (ValueError, KeyError, TypeError, AttributeError) as exc:
            for fd in fds:
                os.close(fd)
            with contextlib.suppress(OSError):
                _send(control, {"spawned": request.get("spawn") if isinstance(request, dict) else None, "error": f"malformed request: {exc!r}"})
            continue
        log_fd = fds[0]
        sys.stdout.flush()
        sys.stderr.flush()
        pid = os.fork()
        if pid == 0:
            try:
                restore_in_child()
                _become_node(argv, log_fd, cwd, env)
            except BaseException:  # noqa: BLE001 - a child must never return into the zygote's loop
                with contextlib.suppress(BaseException):
                    import traceback

                    traceback.print_exc()
                    sys.stderr.flush()
                os._exit(127)
            return argv
        os.close(log_fd)
        try:
            _send(control, {"spawned": request["spawn"], "pid": pid})
        except OSError:
            return None


def _reap(control: socket.socket) -> bool:
    """Reaps every child that has exited and reports it; False once the launcher cannot be told any more."""
    while True:
        try:
            pid, status = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            return True
        try:
            _send(control, {"exited": pid, "returncode": os.waitstatus_to_exitcode(status)})
        except OSError:
            return False


def _become_node(argv: list[str], log_fd: int, cwd: str | None, env: Mapping[str, str]) -> None:
    """A forked child's set-up: what an exec'd node gets from ``Popen(..., start_new_session=True)``."""
    os.setsid()
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.dup2(log_fd, 1)
    os.dup2(log_fd, 2)
    os.close(devnull)
    os.close(log_fd)
    if cwd is not None:
        os.chdir(cwd)
    os.environ.clear()  # (putenv and unsetenv too, for the C libraries' getenv)
    os.environ.update(env)
    sys.argv = [sys.argv[0], *argv]
    random_module = sys.modules.get("numpy.random")
    if random_module is not None:
        random_module.seed()  # numpy's legacy global generator, from the OS now (not the zygote's state)


# --------------------------------------------------------------------------- the launcher's side


def _cwd() -> str | None:
    try:
        return os.getcwd()
    except FileNotFoundError:
        return None  # removed under us: the child stays in the zygote's, as an exec'd child would in ours


class ForkedProcess:
    """A node forked by a zygote, with the parts of ``subprocess.Popen`` the launcher's callers use.

    ``poll()`` and ``wait()`` read the zygote's reports; a node whose zygote
    has died is seen to end when its PID goes away (status
    :data:`EXIT_STATUS_UNKNOWN`).
    """

    def __init__(self, zygote: Zygote, pid: int, args: list[str]) -> None:
        self._zygote = zygote
        self.pid = pid
        self.args = args
        self.returncode: int | None = None

    def poll(self) -> int | None:
        """The exit status if the node has ended, else None (never blocks)."""
        if self.returncode is None:
            self._zygote.collect(0.0)
        return self.returncode

    def wait(self, timeout: float | None = None) -> int:
        """Waits for the node to end and returns its status.

        Raises:
            subprocess.TimeoutExpired: Still running after ``timeout`` seconds.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.returncode is None:
            remaining = _POLL_SLICE_S if deadline is None else deadline - time.monotonic()
            if remaining <= 0:
                raise subprocess.TimeoutExpired(self.args, timeout if timeout is not None else 0.0)
            self._zygote.collect(min(remaining, _POLL_SLICE_S))
        return self.returncode

    def send_signal(self, sig: int) -> None:
        if self.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, sig)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def __repr__(self) -> str:
        return f"<ForkedProcess pid={self.pid} returncode={self.returncode}>"


class Zygote:
    """The launcher's end of a zygote: its process, its control channel, the nodes it forked.

    Use from one thread at a time for :meth:`spawn`; :meth:`ForkedProcess.poll`
    and ``wait`` may be called from any thread.
    """

    def __init__(self, process: subprocess.Popen[bytes], control: socket.socket, env: Mapping[str, str], pid: int, threads: int) -> None:
        self.process = process
        self.env = dict(env)
        self.pid = pid
        self.threads = threads  # the zygote's own count when it was ready (1)
        self._control: socket.socket | None = control
        self._lock = threading.RLock()
        self._children: dict[int, ForkedProcess] = {}
        self._exits: dict[int, int] = {}  # reports for PIDs without a handle yet
        self._replies: dict[int, dict[str, Any]] = {}
        self._next_id = 0

    @classmethod
    def start(cls, command: Sequence[str], env: Mapping[str, str], stderr: int, ready_timeout_s: float = READY_TIMEOUT_S) -> Zygote:
        """Starts a zygote and waits until it has imported everything.

        Args:
            command: Its command line; ``--control-fd N`` is appended.
            env: Its environment, and so every node's it forks.
            stderr: Descriptor its standard error goes to (its stdout is /dev/null).
            ready_timeout_s: How long its imports may take.

        Raises:
            ZygoteError: It exited, refused (it had threads) or was not ready in time.
        """
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        with theirs:
            process = subprocess.Popen(
                [*command, "--control-fd", str(theirs.fileno())],
                pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=dict(env),
                start_new_session=True,  # Ctrl-C at the launcher's terminal is the launcher's to handle
            )
        try:
            ours.settimeout(ready_timeout_s)
            try:
                data = ours.recv(_PACKET_BYTES)
            except TimeoutError:
                raise ZygoteError(f"the zygote was not ready after {ready_timeout_s:g} s") from None
            ours.settimeout(None)
            message = json.loads(data) if data else {"error": f"it exited with code {process.wait(10)}"}
            if "ready" not in message:
                raise ZygoteError(f"the zygote did not start: {message.get('error', message)}")
            return cls(process, ours, env, int(message["ready"]), int(message["threads"]))
        except BaseException:
            ours.close()
            with contextlib.suppress(OSError):
                process.kill()
            process.wait()
            raise

    def can_fork(self, env: Mapping[str, str]) -> bool:
        """Whether a node with environment ``env`` can be forked from here: the zygote runs and ``env`` agrees with its start-time part."""
        return self._control is not None and start_time_environment(env) == start_time_environment(self.env)

    @property
    def connected(self) -> bool:
        """Whether the control channel is open (the zygote can fork)."""
        return self._control is not None

    def spawn(self, argv: Sequence[str], log_fd: int, cwd: str | None = None, env: Mapping[str, str] | None = None) -> ForkedProcess:
        """Forks a node running ``qcinode ARGV...`` with stdout and stderr on ``log_fd``.

        Args:
            argv: The node's arguments after ``qcinode``.
            log_fd: Its stdout and stderr (the zygote gets a copy; the caller still owns this one).
            cwd: Its working directory (default: the caller's, if it still exists).
            env: Its environment (default: the zygote's); see :meth:`can_fork`.

        Raises:
            ZygoteError: The zygote has gone or refused the request.
        """
        with self._lock:
            control = self._control
            if control is None:
                raise ZygoteError("the zygote's control channel is closed")
            self._next_id += 1
            request_id = self._next_id
            try:
                _send(control, {"spawn": request_id, "argv": list(argv), "cwd": cwd or _cwd(), "env": dict(self.env if env is None else env)}, [log_fd])
            except OSError as exc:
                self._disconnect()
                raise ZygoteError(f"the zygote did not take the request: {exc}") from None
            while request_id not in self._replies:
                if self._control is None:
                    raise ZygoteError(f"the zygote exited (code {self.process.poll()}) before it forked the node")
                self.collect(_POLL_SLICE_S)
            reply = self._replies.pop(request_id)
            if "pid" not in reply:
                raise ZygoteError(f"the zygote refused to fork: {reply.get('error', reply)}")
            pid = int(reply["pid"])
            handle = ForkedProcess(self, pid, list(argv))
            self._children[pid] = handle
            if pid in self._exits:
                handle.returncode = self._exits.pop(pid)
            return handle

    def collect(self, timeout_s: float) -> None:
        """Reads the zygote's reports for up to ``timeout_s`` seconds (until the first arrives) and applies them."""
        with self._lock:
            control = self._control
            if control is None:
                self._check_orphans()
                if timeout_s > 0 and any(c.returncode is None for c in self._children.values()):
                    time.sleep(min(timeout_s, 0.05))
                    self._check_orphans()
                return
            poller = select.poll()  # not select(): a test process may hold more than 1024 descriptors
            poller.register(control, select.POLLIN)
            wait_ms = round(1000 * timeout_s)
            while True:
                if not poller.poll(wait_ms):
                    return
                try:
                    data = control.recv(_PACKET_BYTES)
                except OSError:
                    data = b""
                if not data:
                    self._disconnect()
                    return
                self._apply(json.loads(data))
                wait_ms = 0  # read what else is queued, without waiting

    def _apply(self, message: dict[str, Any]) -> None:
        if "exited" in message:
            pid, code = int(message["exited"]), int(message["returncode"])
            child = self._children.get(pid)
            if child is None:
                self._exits[pid] = code
            else:
                child.returncode = code
        elif "spawned" in message and isinstance(message["spawned"], int):
            self._replies[message["spawned"]] = message

    def _disconnect(self) -> None:
        """The zygote has gone: its children, if alive, become orphans watched by PID."""
        if self._control is not None:
            self._control.close()
            self._control = None
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.process.wait(timeout=1)
        self._check_orphans()

    def _check_orphans(self) -> None:
        for child in self._children.values():
            if child.returncode is None and not pid_alive(child.pid):
                child.returncode = EXIT_STATUS_UNKNOWN

    def close(self, timeout_s: float = 10.0) -> None:
        """Closes the control channel: the zygote exits, the nodes it forked go on running.

        Reports already queued are read first, so nodes that have ended keep
        their status; the others are from then on watched by PID.
        """
        with self._lock:
            if self._control is not None:
                self.collect(0.0)
            if self._control is not None:
                self._control.close()
                self._control = None
            try:
                self.process.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
