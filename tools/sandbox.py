"""The exec sandbox: commands run as `sh -c` inside bubblewrap, never on the host.

Layers, outermost first:

- an unprivileged host uid per session (when the worker is root): even a namespace escape lands in an
  account that owns nothing but that session's workspace, and RLIMIT_NPROC, which the kernel counts per
  real uid, caps the session's processes (a fork bomb hits the wall, other sessions do not);
- rlimits set by `prlimit` before bwrap starts (address space, CPU time, processes, file size, open
  files, no core dumps);
- bwrap: new user, pid, network, ipc, uts and cgroup namespaces, no nested user namespaces, a root
  filesystem made of read-only /usr, a handful of /etc files that hold no secrets, a fresh /proc and
  /dev, size-capped tmpfs on /tmp and /dev/shm, and the session's workspace as the only writable bind
  (at /workspace). The project directory, /home, /root, /var and /run do not exist inside;
- a clean environment: bwrap itself is started with PATH only (the sandbox's pid 1 is bwrap, so its
  /proc/1/environ is readable inside), and the command gets a fixed minimal environment plus the
  caller's variables minus a blocklist;
- no network, or with `sandbox.network` a user-mode network (slirp4netns) in the sandbox's own
  namespace with the host's loopback unreachable and non-public ranges unroutable. Sharing the host's
  network namespace would hand the sandbox Redis, Postgres and the gateway on 127.0.0.1.

A wall-clock deadline ends the whole sandbox: SIGTERM to every process in its pid namespace, SIGKILL
after a grace period. Killing the namespace's init takes everything in it down, so no child outlives
the command (a command's own background children end with it, too). Output (stdout and stderr merged)
is read continuously and only its last EXEC_OUTPUT_LIMIT_BYTES are kept.
"""

import hashlib
import json
import logging
import os
import selectors
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Callable

from django.conf import settings

logger = logging.getLogger(__name__)

SANDBOX_PATH = "/usr/local/bin:/usr/bin:/bin"
SANDBOX_UID_INSIDE = 1000
WORKSPACE = "/workspace"
_HOST_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MIN_BWRAP_VERSION = (0, 8)  # --disable-userns and --size

# /etc entries a shell, coreutils, Python, git and TLS clients need; none holds a secret. passwd, group
# and hosts are generated (see _generated_etc) so the host's accounts are not listed inside.
_ETC_BINDS = (
    "alternatives", "ssl/certs", "ca-certificates", "ca-certificates.conf", "ld.so.cache", "ld.so.conf",
    "ld.so.conf.d", "localtime", "nsswitch.conf", "mime.types", "inputrc", "gitconfig", "python3",
    "python3.11", "python3.12", "perl",
)
# Unroutable for a network-enabled sandbox (the slirp network 10.0.2.0/24 stays reachable through its
# more specific connected route): private, shared, link-local (cloud metadata), benchmark, multicast
# and reserved ranges.
_BLOCKED_ROUTES = (
    "0.0.0.0/8", "10.0.0.0/8", "100.64.0.0/10", "169.254.0.0/16", "172.16.0.0/12", "192.0.0.0/24",
    "192.168.0.0/16", "198.18.0.0/15", "224.0.0.0/4", "240.0.0.0/4",
)


class SandboxError(Exception):
    """The sandbox could not be set up; the message says why and what to do."""


def _conf(name: str):
    return settings.BEAMCLAW_TOOLS[name]


def _which(name: str) -> str | None:
    return shutil.which(name, path=_HOST_TOOL_PATH)


@lru_cache(maxsize=1)
def _bwrap_version(path: str) -> tuple[int, ...]:
    out = subprocess.run([path, "--version"], capture_output=True, text=True, timeout=10, env={"PATH": _HOST_TOOL_PATH})
    try:
        return tuple(int(part) for part in out.stdout.split()[-1].split("."))
    except (IndexError, ValueError):
        return (0,)


def disk_problem(path: Path) -> str | None:
    """Why nothing more may be written under `path` (its filesystem is nearly full), or None."""
    stats = os.statvfs(path)
    free_mb = stats.f_bavail * stats.f_frsize // (1024 * 1024)
    if free_mb < _conf("EXEC_MIN_FREE_DISK_MB"):
        return f"the workspace disk is nearly full ({free_mb} MB left); free some space in /workspace"
    if stats.f_files and stats.f_favail < _conf("EXEC_MIN_FREE_INODES"):
        return f"the workspace disk is nearly out of inodes ({stats.f_favail} left); delete some files in /workspace"
    return None


_selftest_passed = False


def _selftest(bwrap: str) -> str | None:
    """Run an empty sandbox once per process: an installed bwrap may still be unable to create
    namespaces (kernel settings, a container's seccomp profile), and that deserves its own message
    rather than looking like the command failed."""
    global _selftest_passed
    if _selftest_passed:
        return None
    uid = _conf("SANDBOX_UID_BASE") if os.geteuid() == 0 else os.geteuid()
    identity = {"user": uid, "group": uid, "extra_groups": []} if uid != os.geteuid() else {}
    result = subprocess.run(
        [bwrap, "--unshare-all", "--unshare-user", "--disable-userns", *_root_filesystem_args(),
         "--proc", "/proc", "--dev", "/dev", "--", "/bin/true"],
        capture_output=True, text=True, timeout=30, env={"PATH": _HOST_TOOL_PATH}, cwd="/", **identity,
    )
    if result.returncode != 0:
        return result.stderr.strip()[-300:] or f"exit code {result.returncode}"
    _selftest_passed = True
    return None


def sandbox_problem(*, network: bool) -> str | None:
    """Why exec cannot run here, or None. Fails closed: no bwrap means no exec at all."""
    bwrap = _which("bwrap")
    if bwrap is None:
        return (
            "exec is unavailable: bubblewrap (bwrap) is not installed on this worker, and commands never run "
            "outside the sandbox. Install it with `apt-get install -y bubblewrap` (scripts/ensure_sandbox_tools.sh)."
        )
    if _bwrap_version(bwrap) < _MIN_BWRAP_VERSION:
        return f"exec is unavailable: bubblewrap {'.'.join(map(str, _MIN_BWRAP_VERSION))} or newer is required."
    if _which("prlimit") is None:
        return "exec is unavailable: prlimit (util-linux) is not installed on this worker."
    if (failure := _selftest(bwrap)) is not None:
        return (
            f"exec is unavailable: bubblewrap cannot create its sandbox on this worker ({failure}). It needs "
            "unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1 / user.max_user_namespaces > 0; "
            "in a container, a seccomp/AppArmor profile that allows them)."
        )
    if network:
        if os.geteuid() != 0:
            return "exec with network access needs a worker running as root (to set up slirp4netns); this agent has sandbox.network enabled."
        missing = [name for name in ("slirp4netns", "nsenter", "ip") if _which(name) is None]
        if missing:
            return (
                f"exec with network access needs {', '.join(missing)} on the worker (scripts/ensure_sandbox_tools.sh "
                "installs them); this agent has sandbox.network enabled."
            )
    return None


# --- workspaces and identities ----------------------------------------------------------------------


def sandbox_uid(*, tenant_slug: str, scope: str) -> int:
    """The host uid a scope's sandboxes run as: per session when the worker is root, else the worker's."""
    if os.geteuid() != 0:
        return os.geteuid()
    digest = hashlib.sha256(f"{tenant_slug}/{scope}".encode()).digest()
    return _conf("SANDBOX_UID_BASE") + int.from_bytes(digest[:8], "big") % _conf("SANDBOX_UID_COUNT")


def _ensure_dir(path: Path, mode: int) -> None:
    path.mkdir(mode=mode, parents=True, exist_ok=True)
    if path.stat().st_mode & 0o777 != mode:
        path.chmod(mode)


def workspace_path(*, tenant_slug: str, scope: str) -> Path:
    return Path(_conf("WORKSPACE_ROOT")) / tenant_slug / scope


def workspace_prepare(*, tenant_slug: str, scope: str, uid: int) -> Path:
    """Create the scope's workspace, owned by its sandbox uid. The root and tenant levels are
    traverse-only (0711), so one sandbox uid cannot list other tenants' or sessions' workspaces."""
    root = Path(_conf("WORKSPACE_ROOT"))
    _ensure_dir(root, 0o711)
    _ensure_dir(root / tenant_slug, 0o711)
    path = root / tenant_slug / scope
    path.mkdir(mode=0o700, exist_ok=True)
    if path.stat().st_uid != uid:
        # The uid mapping changed (e.g. SANDBOX_UID_BASE): hand everything over, never following links.
        for directory, dirs, files in os.walk(path, followlinks=False):
            for name in dirs + files:
                os.lchown(os.path.join(directory, name), uid, uid)
        os.lchown(path, uid, uid)
    return path


_ETC_LOCK = threading.Lock()


def _generated_etc() -> Path:
    """passwd/group/hosts/resolv.conf for the sandbox, written once per process under the workspace root."""
    directory = Path(_conf("WORKSPACE_ROOT")) / ".sandbox-etc"
    files = {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{SANDBOX_UID_INSIDE}:{SANDBOX_UID_INSIDE}:sandbox:{WORKSPACE}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID_INSIDE}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
        "resolv.conf": "nameserver 10.0.2.3\n",
    }
    with _ETC_LOCK:
        _ensure_dir(directory.parent, 0o711)
        _ensure_dir(directory, 0o755)
        for name, content in files.items():
            target = directory / name
            if not target.exists() or target.read_text() != content:
                tmp = directory / f".{name}.{os.getpid()}"
                tmp.write_text(content)
                tmp.chmod(0o644)
                os.replace(tmp, target)
    return directory


# --- the command line -------------------------------------------------------------------------------


@dataclass(frozen=True)
class SandboxSpec:
    command: str
    workspace: Path
    uid: int
    workdir: str = WORKSPACE
    env: dict = field(default_factory=dict)
    timeout: float = 120.0
    network: bool = False


def _root_filesystem_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{top}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    for name in _ETC_BINDS:
        args += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    return args


def _rlimit_args(uid: int) -> list[str]:
    mb = 1024 * 1024
    return [
        _which("prlimit") or "prlimit",
        f"--as={_conf('EXEC_MEMORY_MB') * mb}",
        f"--cpu={_conf('EXEC_CPU_SECONDS')}",
        f"--nproc={_nproc_limit(uid)}",
        f"--fsize={_conf('EXEC_FILE_SIZE_MB') * mb}",
        "--nofile=1024",
        "--core=0",
        "--",
    ]


def _nproc_limit(uid: int) -> int:
    """RLIMIT_NPROC counts every process of the real uid. A root worker gives each session its own uid;
    a non-root worker shares its uid with its sandboxes, so its own processes and threads are added."""
    if uid != os.geteuid() or os.geteuid() == 0:
        return _conf("EXEC_MAX_PROCESSES")
    own = 0
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    own += len(os.listdir(f"/proc/{entry.name}/task"))
            except OSError:
                continue
    return own + _conf("EXEC_MAX_PROCESSES")


COMMAND_FILE = "/.exec/command"


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding `data`, positioned at its start. Unlike a pipe it cannot
    fill up before bwrap reads it, and unlike argv it is not world-readable in /proc."""
    fd = os.memfd_create(name, 0)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


@dataclass
class Launch:
    """What starts one sandbox: the argv and the descriptors it must inherit (closed by `close`)."""

    argv: list[str]
    pass_fds: list[int]
    own_fds: list[int]

    def close(self) -> None:
        for fd in self.own_fds:
            os.close(fd)
        self.own_fds = []


def bwrap_options(spec: SandboxSpec, *, info_fd: int, block_fd: int | None, command_fd: int) -> list[str]:
    """bwrap's options. They reach bwrap through `--args FD`, never its argv: argv is readable by every
    host user in /proc/<pid>/cmdline (and inside, as the sandbox's /proc/1/cmdline), and these carry
    the caller's environment values and host paths."""
    etc = _generated_etc()
    tmp_bytes = str(_conf("EXEC_TMP_SIZE_MB") * 1024 * 1024)
    args = [
        "--unshare-all",
        "--unshare-user",
        "--disable-userns",
        "--uid", str(SANDBOX_UID_INSIDE),
        "--gid", str(SANDBOX_UID_INSIDE),
        "--hostname", "sandbox",
        "--die-with-parent",
        "--new-session",
        *_root_filesystem_args(),
        "--ro-bind", str(etc / "passwd"), "/etc/passwd",
        "--ro-bind", str(etc / "group"), "/etc/group",
        "--ro-bind", str(etc / "hosts"), "/etc/hosts",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", tmp_bytes, "--tmpfs", "/tmp",
        "--size", tmp_bytes, "--tmpfs", "/dev/shm",
        "--bind", str(spec.workspace), WORKSPACE,
        # The command travels as a read-only file, not as `sh -c <command>`, for the same reason.
        "--perms", "0444", "--ro-bind-data", str(command_fd), COMMAND_FILE,
    ]
    if spec.network:
        args += ["--ro-bind", str(etc / "resolv.conf"), "/etc/resolv.conf"]
    args += [
        # The root is a tmpfs bwrap made for the sandbox: without this, /etc/x or /x would be writable
        # (though private and gone afterwards), which is a confusing place to leave files.
        "--remount-ro", "/",
        "--chdir", spec.workdir,
        "--clearenv",
        "--info-fd", str(info_fd),
    ]
    if block_fd is not None:
        args += ["--block-fd", str(block_fd)]
    for name, value in sandbox_environment(spec.env).items():
        args += ["--setenv", name, value]
    return args


def bwrap_launch(spec: SandboxSpec, *, info_fd: int, block_fd: int | None = None) -> Launch:
    """prlimit, then bwrap reading its options from a memfd, then `sh` sourcing the command file.
    Every process of the sandbox shows only `... -c . /.exec/command` in its cmdline."""
    command_fd = _memfd("exec-command", spec.command.encode() + b"\n")
    try:
        options = bwrap_options(spec, info_fd=info_fd, block_fd=block_fd, command_fd=command_fd)
        args_fd = _memfd("bwrap-args", b"".join(option.encode() + b"\0" for option in options))
    except BaseException:
        os.close(command_fd)
        raise
    argv = [*_rlimit_args(spec.uid), _which("bwrap") or "bwrap", "--args", str(args_fd), "--", "/bin/sh", "-c", f". {COMMAND_FILE}"]
    fds = [args_fd, command_fd]
    return Launch(argv=argv, pass_fds=fds, own_fds=list(fds))


def sandbox_environment(extra: dict) -> dict:
    env = {
        "PATH": SANDBOX_PATH,
        "HOME": WORKSPACE,
        "USER": "sandbox",
        "LOGNAME": "sandbox",
        "SHELL": "/bin/sh",
        "LANG": "C.UTF-8",
        "TERM": "dumb",
        "TMPDIR": "/tmp",
    }
    env.update(extra)
    return env


# --- output -----------------------------------------------------------------------------------------


class TailBuffer:
    """The last `limit` bytes of a stream, plus how many bytes went through it in total."""

    def __init__(self, limit: int):
        self.limit = limit
        self.total = 0
        self._data = bytearray()
        self._lock = threading.Lock()

    def append(self, chunk: bytes) -> None:
        with self._lock:
            self.total += len(chunk)
            self._data += chunk
            if len(self._data) > self.limit:
                # bytearray deletes from the front without moving the rest.
                del self._data[: len(self._data) - self.limit]

    @property
    def truncated(self) -> bool:
        return self.total > len(self._data)

    def text(self) -> str:
        with self._lock:
            data = bytes(self._data)
            dropped = self.total - len(data)
        text = data.decode("utf-8", errors="replace")
        return f"[... {dropped} earlier bytes of output omitted ...]\n{text}" if dropped else text

    def since(self, offset: int) -> tuple[str, int]:
        """Output after byte `offset` of the stream (what is still kept of it) and the new offset."""
        with self._lock:
            start = max(offset, self.total - len(self._data))
            data = bytes(self._data[start - (self.total - len(self._data)):])
            total = self.total
        prefix = f"[... {start - offset} bytes omitted ...]\n" if start > offset else ""
        return prefix + data.decode("utf-8", errors="replace"), total


# --- running ----------------------------------------------------------------------------------------


def _namespace_members(pid_ns_inode: int) -> list[int]:
    """Host pids of the processes in a pid namespace (compared by the namespace's inode, so a recycled
    pid is never signalled)."""
    members = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            if os.stat(f"/proc/{entry.name}/ns/pid").st_ino == pid_ns_inode:
                members.append(int(entry.name))
        except OSError:
            continue
    return members


def _read_info(fd: int, timeout: float = 10.0) -> dict | None:
    """bwrap's --info-fd JSON (child-pid and namespace ids), or None if bwrap ended before writing it."""
    data = b""
    deadline = time.monotonic() + timeout
    with selectors.DefaultSelector() as selector:
        selector.register(fd, selectors.EVENT_READ)
        while time.monotonic() < deadline:
            if not selector.select(deadline - time.monotonic()):
                break
            chunk = os.read(fd, 4096)
            if not chunk:
                break
            data += chunk
            try:
                return json.loads(data)
            except ValueError:
                continue
    return None


class SandboxProcess:
    """One sandboxed command. A monitor thread reads its output, enforces its deadline and records its
    exit; callers wait on it (the yield window) or leave it running in the background."""

    def __init__(self, spec: SandboxSpec, *, on_exit: Callable[["SandboxProcess"], None] | None = None):
        self.spec = spec
        self.output = TailBuffer(_conf("EXEC_OUTPUT_LIMIT_BYTES"))
        self.started_at = time.time()
        self.exit_code: int | None = None
        self.timed_out = False
        self.stopped_for: str | None = None  # why the sandbox was stopped early (deadline, disk, kill)
        self._on_exit = on_exit
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._kill_at: float | None = None
        self._pid_ns: int | None = None
        self._popen: subprocess.Popen | None = None
        self._slirp: subprocess.Popen | None = None
        self._slirp_exit_w: int | None = None

    # -- lifecycle --

    def start(self) -> "SandboxProcess":
        # bwrap reports its sandbox's pid (info fd), then waits (block fd) before it starts the command:
        # the moment to put the sandbox in its cgroup and give it its network, before it can fork.
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        launch = None
        identity = {}
        if self.spec.uid != os.geteuid():
            identity = {"user": self.spec.uid, "group": self.spec.uid, "extra_groups": []}
        try:
            launch = bwrap_launch(self.spec, info_fd=info_w, block_fd=block_r)
            self._popen = subprocess.Popen(
                launch.argv,
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                env={"PATH": _HOST_TOOL_PATH},
                cwd="/",
                pass_fds=[info_w, block_r, *launch.pass_fds],
                process_group=0,
                **identity,
            )
        except BaseException:
            os.close(info_r)
            os.close(block_w)
            raise
        finally:
            os.close(info_w)
            os.close(block_r)
            if launch is not None:
                launch.close()
        self._deadline = time.monotonic() + self.spec.timeout
        try:
            info = _read_info(info_r)
        finally:
            os.close(info_r)
        if info is not None:
            self._pid_ns = info.get("pid-namespace")
        try:
            self._contain(info)
            if self.spec.network:
                self._start_network(info)
            try:
                os.write(block_w, b"1")
            except BrokenPipeError:
                pass  # bwrap already failed; the monitor reports its message and exit code
        except (SandboxError, OSError, subprocess.SubprocessError):
            self._kill_now()
            self._popen.wait()
            self._stop_network()
            self._popen.stdout.close()
            self._popen.stdin.close()
            raise
        finally:
            os.close(block_w)
        threading.Thread(target=self._monitor, name="sandbox-monitor", daemon=True).start()
        return self

    def _contain(self, info: dict | None) -> None:
        """Resource limits for the whole sandbox (none yet beyond the rlimits)."""

    def _start_network(self, info: dict | None) -> None:
        """slirp4netns gives the sandbox's namespace a NATed interface with the host's loopback disabled;
        routes make non-public ranges unreachable. The command starts after this (block fd)."""
        if info is None or "child-pid" not in info:
            raise SandboxError("the sandbox ended before its network could be set up")
        child = str(info["child-pid"])
        ready_r, ready_w = os.pipe()
        # slirp4netns exits when this fd's write end closes: when we say so, or when this process dies.
        exit_r, self._slirp_exit_w = os.pipe()
        try:
            # Two races avoided: without --configure, slirp4netns leaves `lo` to bwrap (tap0 is set up
            # below); with a netns path it joins only the network namespace, not the sandbox's user
            # namespace, which bwrap may be replacing by a nested one at this very moment.
            self._slirp = subprocess.Popen(
                [_which("slirp4netns"), "--mtu=65520", "--disable-host-loopback", "--enable-sandbox",
                 "--enable-seccomp", f"--ready-fd={ready_w}", f"--exit-fd={exit_r}",
                 "--netns-type=path", f"/proc/{child}/ns/net", "tap0"],
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                env={"PATH": _HOST_TOOL_PATH}, cwd="/", pass_fds=(ready_w, exit_r), process_group=0,
            )
        finally:
            os.close(ready_w)
            os.close(exit_r)
        with selectors.DefaultSelector() as selector:
            selector.register(ready_r, selectors.EVENT_READ)
            ready = selector.select(10) and os.read(ready_r, 1) == b"1"
        os.close(ready_r)
        if not ready:
            raise SandboxError("slirp4netns did not bring up the sandbox network")
        commands = (
            "link set tap0 mtu 65520 up\n"
            "addr add 10.0.2.100/24 dev tap0\n"
            "route add default via 10.0.2.2 dev tap0\n"
            + "".join(f"route add prohibit {cidr}\n" for cidr in _BLOCKED_ROUTES)
        )
        result = subprocess.run(
            [_which("nsenter"), f"--net=/proc/{child}/ns/net", _which("ip"), "-batch", "-"],
            input=commands.encode(), capture_output=True, timeout=10, env={"PATH": _HOST_TOOL_PATH}, cwd="/",
        )
        if result.returncode != 0:
            raise SandboxError(f"could not set up the sandbox network: {result.stderr.decode(errors='replace')[-300:]}")

    def _monitor(self) -> None:
        stdout = self._popen.stdout.fileno()
        grace = _conf("EXEC_KILL_GRACE_SECONDS")
        next_disk_check = 0.0
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                disk = None
                if now >= next_disk_check:
                    next_disk_check = now + 1.0
                    disk = disk_problem(self.spec.workspace)
                with self._lock:
                    if self.stopped_for is None and now >= self._deadline:
                        self.timed_out = True
                        self._request_termination_locked(f"timed out after {self.spec.timeout:g} s", grace)
                    elif self.stopped_for is None and disk is not None:
                        self._request_termination_locked(disk, grace)
                    kill_due = self._kill_at is not None and now >= self._kill_at
                if kill_due:
                    self._kill_now()
                    self._kill_at = None
                # Wake up regularly: a kill may be requested from another thread.
                if selector.select(timeout=0.2):
                    chunk = os.read(stdout, 65536)
                    if not chunk:
                        break
                    self.output.append(chunk)
        try:
            self._popen.wait(timeout=grace + 5)
        except subprocess.TimeoutExpired:
            self._kill_now()
            self._popen.wait()
        self._popen.stdout.close()
        if self._popen.stdin:
            try:
                self._popen.stdin.close()
            except OSError:
                pass
        self._stop_network()
        code = self._popen.returncode
        self.exit_code = code if code >= 0 else 128 - code
        self._done.set()
        if self._on_exit is not None:
            try:
                self._on_exit(self)
            except Exception:  # noqa: BLE001 - bookkeeping must not kill the monitor thread silently
                logger.exception("sandbox exit callback failed")

    def _stop_network(self) -> None:
        if self._slirp_exit_w is not None:
            os.close(self._slirp_exit_w)
            self._slirp_exit_w = None
        if self._slirp is None:
            return
        try:
            self._slirp.wait(timeout=5)
        except subprocess.TimeoutExpired:
            self._slirp.kill()
            self._slirp.wait()

    # -- control (any thread) --

    def _request_termination_locked(self, reason: str, grace: float) -> None:
        self.stopped_for = reason
        logger.info("stopping sandboxed command (%s): %.200s", reason, self.spec.command)
        self._signal_members(signal.SIGTERM)
        self._kill_at = time.monotonic() + grace

    def terminate(self, reason: str = "killed") -> None:
        """SIGTERM everything in the sandbox now, SIGKILL what is left after the grace period."""
        with self._lock:
            if self._done.is_set() or self.stopped_for is not None:
                return
            self._request_termination_locked(reason, _conf("EXEC_KILL_GRACE_SECONDS"))

    def _signal_members(self, sig: int) -> None:
        if self._pid_ns is None:
            self._kill_now()
            return
        for pid in _namespace_members(self._pid_ns):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                continue

    def _kill_now(self) -> None:
        """SIGKILL the namespace (its init dying takes every member with it) and bwrap itself."""
        if self._pid_ns is not None:
            for pid in _namespace_members(self._pid_ns):
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    continue
        if self._popen is not None and self._popen.poll() is None:
            try:
                os.killpg(self._popen.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass

    def wait(self, timeout: float | None) -> bool:
        return self._done.wait(timeout)

    @property
    def running(self) -> bool:
        return not self._done.is_set()

    def write(self, data: bytes, *, eof: bool = False) -> int:
        """Write to the command's stdin without ever blocking the caller; returns bytes accepted."""
        stdin = self._popen.stdin
        if stdin is None or stdin.closed or not self.running:
            raise BrokenPipeError("the process has exited or its input is closed")
        written = 0
        try:
            if data:
                os.set_blocking(stdin.fileno(), False)
                try:
                    written = os.write(stdin.fileno(), data)
                except BlockingIOError:
                    written = 0  # the command is not reading; the caller learns that nothing was taken
            if eof:
                stdin.close()
        except (OSError, ValueError) as exc:  # the monitor closed stdin as the process exited
            raise BrokenPipeError(str(exc)) from exc
        return written


def sandbox_run(spec: SandboxSpec, *, on_exit=None) -> SandboxProcess:
    problem = sandbox_problem(network=spec.network)
    if problem:
        raise SandboxError(problem)
    return SandboxProcess(spec, on_exit=on_exit).start()
