"""The exec sandbox: commands run as `sh -c` inside bubblewrap, never on the host.

Layers, outermost first:

- an unprivileged host uid per session (when the worker is root): even a namespace escape lands in an
  account that owns nothing but that session's workspace, and RLIMIT_NPROC, which the kernel counts per
  real uid, caps the session's processes (a fork bomb hits the wall, other sessions do not);
- rlimits set by `prlimit` before bwrap starts (address space, CPU time, processes, file size, open
  files, no core dumps);
- cgroups, where the worker can make them (v2 delegated, or v1 memory and pids): every sandbox of a
  session is in that session's cgroup, below its tenant's, with memory and process limits for each
  (EXEC_SESSION_MEMORY_MB, EXEC_TENANT_MEMORY_MB...). bwrap waits on its block fd until the sandbox is
  placed, so nothing of it is born outside. Without cgroups, only the rlimits hold (`manage.py doctor`);
- a disk cap per workspace (EXEC_WORKSPACE_MB) by accounting: measured before the command starts, no
  file may grow past what is left (RLIMIT_FSIZE, lowered while the command runs), and the monitor walks
  the workspace when the filesystem loses space and stops the sandbox once it is over;
- bwrap: new user, pid, network, ipc, uts and cgroup namespaces, no nested user namespaces, a root
  filesystem made of read-only /usr, a handful of /etc files that hold no secrets, a fresh /proc and
  /dev, size-capped tmpfs on /tmp and /dev/shm, and the session's workspace as the only writable bind
  (at /workspace); the agent's skill folders are bound read-only at /skills/<name>. The project directory, /home, /root, /var and /run do not exist inside;
- a clean environment: bwrap itself is started with PATH only (the sandbox's pid 1 is bwrap, so its
  /proc/1/environ is readable inside), and the command gets a fixed minimal environment plus the
  caller's variables minus a blocklist;
- nothing secret in any argv: bwrap's options (environment values, host paths) come from a memfd
  (`--args`), the command from a read-only file the shell sources (/.exec/command), since every host
  user can read /proc/<pid>/cmdline, and the sandbox can read its own /proc/1/cmdline;
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
import re
import resource
import secrets
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
SKILLS_DIR = "/skills"
_HOST_TOOL_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
_MIN_BWRAP_VERSION = (0, 8)  # --disable-userns and --size

# /etc entries a shell, coreutils, Python, git and TLS clients need; none holds a secret. passwd, group
# and hosts are generated (see sandbox_etc) so the host's accounts are not listed inside.
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
         "--ro-bind", str(sandbox_etc(network=False)), "/etc",
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


def _generated_etc_files(network: bool) -> dict[str, str]:
    files = {
        "passwd": (
            "root:x:0:0:root:/root:/usr/sbin/nologin\n"
            f"sandbox:x:{SANDBOX_UID_INSIDE}:{SANDBOX_UID_INSIDE}:sandbox:{WORKSPACE}:/bin/sh\n"
            "nobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n"
        ),
        "group": f"root:x:0:\nsandbox:x:{SANDBOX_UID_INSIDE}:\nnogroup:x:65534:\n",
        "hosts": "127.0.0.1 localhost sandbox\n::1 localhost\n",
    }
    if network:
        files["resolv.conf"] = "nameserver 10.0.2.3\n"
    return files


@lru_cache(maxsize=1)
def _host_etc_digest() -> str:
    """What the allowed host /etc entries held when this process first looked: names, kinds, link
    targets, modes and contents."""
    digest = hashlib.sha256()
    for name in _ETC_BINDS:
        top = Path("/etc") / name
        paths = [top]
        if top.is_dir() and not top.is_symlink():
            paths += sorted(Path(d) / f for d, dirs, files in os.walk(top) for f in dirs + files)
        for path in paths:
            try:
                info = path.lstat()
                data = os.readlink(path).encode() if path.is_symlink() else path.read_bytes() if path.is_file() else b""
            except OSError:
                continue
            digest.update(f"{path}\0{info.st_mode}\0{len(data)}\0".encode() + data)
    return digest.hexdigest()[:16]


@lru_cache(maxsize=2)
def _sandbox_etc_name(network: bool) -> str:
    generated = json.dumps(_generated_etc_files(network), sort_keys=True).encode()
    digest = hashlib.sha256(generated + _host_etc_digest().encode()).hexdigest()[:16]
    return f"{'net' if network else 'offline'}-{digest}"


def sandbox_etc(*, network: bool) -> Path:
    """The sandbox's whole /etc, bound read-only as one mount (a bind per entry cost bwrap ~2 ms per exec):
    the generated passwd, group and hosts (and resolv.conf for a networked sandbox), so the host's
    accounts are not listed inside, and copies of the host's _ETC_BINDS entries. Made once per process,
    in a directory named by its content (then one stat per exec): workers sharing the workspace root
    share it, and a change on the host (new certificates, say) reaches sandboxes when the worker restarts."""
    root = Path(_conf("WORKSPACE_ROOT")) / ".sandbox-etc"
    target = root / _sandbox_etc_name(network)
    if target.is_dir():
        return target
    with _ETC_LOCK:
        _ensure_dir(root.parent, 0o711)
        _ensure_dir(root, 0o755)
        if target.is_dir():
            return target
        building = root / f".building-{os.getpid()}-{secrets.token_hex(4)}"
        building.mkdir(mode=0o755)
        try:
            for name, content in _generated_etc_files(network).items():
                (building / name).write_text(content)
                (building / name).chmod(0o644)
            for name in _ETC_BINDS:
                source, copy = Path("/etc") / name, building / name
                if not os.path.lexists(source):
                    continue
                copy.parent.mkdir(mode=0o755, parents=True, exist_ok=True)
                if source.is_symlink():
                    os.symlink(os.readlink(source), copy)
                elif source.is_dir():
                    shutil.copytree(source, copy, symlinks=True)
                else:
                    shutil.copy2(source, copy)
            building.chmod(0o755)
            os.rename(building, target)
        except OSError:
            shutil.rmtree(building, ignore_errors=True)
            if not target.is_dir():  # (another worker finished the same directory first: use theirs)
                raise
    return target


# --- cgroups: memory and processes for a session's and a tenant's sandboxes together -----------------

_CGROUP_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


@dataclass(frozen=True)
class Cgroups:
    """Where this worker keeps its sandboxes' cgroups: `bases` maps a hierarchy (v2: "unified"; v1:
    "memory" and "pids") to the directory under which tenant/session cgroups are made. Empty when
    cgroups cannot be used here; `problem` says why."""

    version: int
    bases: dict
    problem: str | None = None


def _own_cgroups() -> tuple[dict, dict]:
    """(hierarchy -> this process's cgroup path, hierarchy -> (mount point, mount root))."""
    paths = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for name in controllers.split(",") if controllers else ["unified"]:
            paths[name] = path
    mounts = {}
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        before, _, after = line.partition(" - ")
        fields, kinds = before.split(), after.split()
        if kinds[0] == "cgroup2":
            mounts.setdefault("unified", (fields[4], fields[3]))
        elif kinds[0] == "cgroup":
            for option in kinds[2].split(","):
                mounts.setdefault(option, (fields[4], fields[3]))
    return paths, mounts


def _own_cgroup_dir(hierarchy: str, paths: dict, mounts: dict) -> Path | None:
    if hierarchy not in paths or hierarchy not in mounts:
        return None
    mount, root = mounts[hierarchy]
    path = paths[hierarchy]
    if root != "/" and path.startswith(root):
        path = path[len(root):]
    return Path(mount) / path.lstrip("/")


def _make_base(directory: Path) -> str | None:
    """Create the worker's sandbox cgroup directory; the reason it cannot be made, or None."""
    try:
        directory.mkdir(exist_ok=True)
        probe = directory / f"probe-{os.getpid()}"
        probe.mkdir(exist_ok=True)
        probe.rmdir()
    except OSError as exc:
        return f"cannot create cgroups under {directory.parent} ({exc.strerror})"
    return None


@lru_cache(maxsize=1)
def cgroups() -> Cgroups:
    """Find cgroups this worker may create and fill: v2 with the memory and pids controllers
    delegated to its cgroup, else v1 memory and pids hierarchies it can write."""
    if not _conf("EXEC_CGROUPS"):
        return Cgroups(0, {}, "turned off (BEAMCLAW_EXEC_CGROUPS=0)")
    try:
        paths, mounts = _own_cgroups()
    except (OSError, ValueError, IndexError) as exc:
        return Cgroups(0, {}, f"cannot read /proc/self/cgroup ({exc})")
    problems = []
    own = _own_cgroup_dir("unified", paths, mounts)
    if own is not None and (own / "cgroup.controllers").exists():
        available = set((own / "cgroup.controllers").read_text().split())
        if {"memory", "pids"} <= available:
            base = own / "beamclaw-sandboxes"
            try:
                # Children of `own` get the controllers only if `own` hands them down; the kernel
                # refuses that while `own` holds processes other than in the root cgroup.
                enabled = set((own / "cgroup.subtree_control").read_text().split())
                if not {"memory", "pids"} <= enabled:
                    (own / "cgroup.subtree_control").write_text("+memory +pids")
                problem = _make_base(base)
                if problem is None:
                    (base / "cgroup.subtree_control").write_text("+memory +pids")
                    return Cgroups(2, {"unified": base})
                problems.append(f"cgroup v2: {problem}")
            except OSError as exc:
                problems.append(
                    f"cgroup v2: cannot enable the memory and pids controllers below {own} ({exc.strerror}); "
                    "start the worker in a cgroup delegated to it (systemd: Delegate=yes) whose processes "
                    "sit in a leaf"
                )
        else:
            problems.append(f"cgroup v2: the memory and pids controllers are not available in {own}")
    bases = {}
    for hierarchy in ("memory", "pids"):
        own = _own_cgroup_dir(hierarchy, paths, mounts)
        if own is None:
            problems.append(f"cgroup v1: no {hierarchy} hierarchy")
            continue
        problem = _make_base(own / "beamclaw-sandboxes")
        if problem is not None:
            problems.append(f"cgroup v1 {hierarchy}: {problem}")
            continue
        bases[hierarchy] = own / "beamclaw-sandboxes"
    if len(bases) == 2:
        return Cgroups(1, bases)
    return Cgroups(0, {}, "; ".join(problems))


def _cgroup_name(value: str) -> str:
    return value if _CGROUP_NAME.match(value) else hashlib.sha256(value.encode()).hexdigest()[:32]


_CGROUP_LOCK = threading.Lock()
_CGROUP_USERS: dict[tuple, int] = {}  # (tenant, scope) -> sandboxes of this process in that cgroup


def _write_limit(directory: Path, names: tuple[str, ...], value: int | str) -> None:
    for name in names:
        if (directory / name).exists():
            (directory / name).write_text(str(value))


def _cgroup_limits(version: int, hierarchy: str, directory: Path, *, memory_mb: int, processes: int) -> None:
    memory = memory_mb * 1024 * 1024
    if version == 2:
        _write_limit(directory, ("memory.max",), memory)
        _write_limit(directory, ("memory.swap.max",), 0)
        _write_limit(directory, ("pids.max",), processes)
    elif hierarchy == "memory":
        _write_limit(directory, ("memory.limit_in_bytes",), memory)
        # memory+swap, so swapping out does not let a sandbox hold more (only where swap accounting exists).
        _write_limit(directory, ("memory.memsw.limit_in_bytes",), memory)
    else:
        _write_limit(directory, ("pids.max",), processes)


def cgroup_enter(*, tenant: str, scope: str, pids: list[int]) -> dict:
    """Put `pids` in the scope's cgroup (made on first use, below its tenant's), with the session and
    tenant memory and process limits. Returns hierarchy -> session cgroup directory."""
    groups = cgroups()
    key = (tenant, scope)
    directories = {}
    with _CGROUP_LOCK:
        for hierarchy, base in groups.bases.items():
            tenant_dir = base / _cgroup_name(tenant)
            scope_dir = tenant_dir / _cgroup_name(scope)
            if not tenant_dir.exists():
                tenant_dir.mkdir(exist_ok=True)
                if groups.version == 2:
                    (tenant_dir / "cgroup.subtree_control").write_text("+memory +pids")
            _cgroup_limits(groups.version, hierarchy, tenant_dir, memory_mb=_conf("EXEC_TENANT_MEMORY_MB"),
                           processes=_conf("EXEC_TENANT_MAX_PROCESSES"))
            scope_dir.mkdir(exist_ok=True)
            _cgroup_limits(groups.version, hierarchy, scope_dir, memory_mb=_conf("EXEC_SESSION_MEMORY_MB"),
                           processes=_conf("EXEC_MAX_PROCESSES"))
            directories[hierarchy] = scope_dir
        _CGROUP_USERS[key] = _CGROUP_USERS.get(key, 0) + 1
    try:
        cgroup_join(directories, pids)
    except OSError:
        cgroup_leave(tenant=tenant, scope=scope, directories=directories)
        raise
    return directories


def cgroup_join(directories: dict, pids: list[int]) -> None:
    """Move `pids` into the cgroups `directories` maps each hierarchy to."""
    for directory in directories.values():
        for pid in pids:
            (directory / "cgroup.procs").write_text(str(pid))


def cgroup_leave(*, tenant: str, scope: str, directories: dict) -> None:
    """The last sandbox of a scope (in this process) removes its cgroup; one still in use elsewhere
    stays (rmdir refuses a cgroup with processes)."""
    key = (tenant, scope)
    with _CGROUP_LOCK:
        _CGROUP_USERS[key] = _CGROUP_USERS.get(key, 1) - 1
        if _CGROUP_USERS[key] > 0:
            return
        del _CGROUP_USERS[key]
        for directory in directories.values():
            try:
                directory.rmdir()
            except OSError:
                pass


def cgroup_oom_kills(directories: dict) -> int:
    """How many processes the kernel killed in these cgroups for want of memory, so far."""
    directory = directories.get("unified") or directories.get("memory")
    if directory is None:
        return 0
    name = "memory.events" if "unified" in directories else "memory.oom_control"
    try:
        for line in (directory / name).read_text().splitlines():
            key, _, value = line.partition(" ")
            if key == "oom_kill":
                return int(value)
    except (OSError, ValueError):
        pass
    return 0


# --- workspace disk use -----------------------------------------------------------------------------


def workspace_usage(path: Path) -> int:
    """Bytes of disk the files under `path` take (allocated blocks, each inode once, links not followed)."""
    total = 0
    seen = set()
    stack = [str(path)]
    while stack:
        try:
            entries = os.scandir(stack.pop())
        except OSError:
            continue
        with entries:
            for entry in entries:
                try:
                    info = entry.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (info.st_dev, info.st_ino) in seen:
                    continue
                seen.add((info.st_dev, info.st_ino))
                total += info.st_blocks * 512
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)
    return total


def workspace_over_cap(used: int) -> str | None:
    cap = _conf("EXEC_WORKSPACE_MB")
    if used < cap * 1024 * 1024:
        return None
    return (
        f"the workspace is over its {cap} MB cap ({used // (1024 * 1024)} MB used); delete files in "
        "/workspace (commands may still run, but cannot grow files)"
    )


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
    # Whose cgroup the sandbox joins (tenant slug and scope); direct callers without one share a group.
    tenant: str = "-"
    scope: str = "-"
    # Disk the workspace takes when the command starts (workspace_usage); None: measured here.
    workspace_used: int | None = None
    # The agent's skills, (name, host folder): each is bound read-only at /skills/<name>
    # (tools/skills.py skill_mounts; names are checked there, so none is '..' or holds a '/').
    skills: tuple[tuple[str, Path], ...] = ()


def _root_filesystem_args() -> list[str]:
    args = ["--ro-bind", "/usr", "/usr"]
    for top in ("bin", "sbin", "lib", "lib32", "lib64", "libx32"):
        host = f"/{top}"
        if os.path.islink(host):
            args += ["--symlink", os.readlink(host), host]
        elif os.path.isdir(host):
            args += ["--ro-bind", host, host]
    return args


def _rlimit_args(spec: SandboxSpec) -> list[str]:
    mb = 1024 * 1024
    # No single file may grow past what the workspace has left: such a write fails in the command (EFBIG,
    # SIGXFSZ) rather than filling the disk. Several files at once are the monitor's job (see _monitor).
    fsize = _conf("EXEC_FILE_SIZE_MB") * mb
    if spec.workspace_used is not None:
        fsize = _file_size_limit(spec, _conf("EXEC_WORKSPACE_MB") * mb - spec.workspace_used)
    return [
        _which("prlimit") or "prlimit",
        f"--as={_conf('EXEC_MEMORY_MB') * mb}",
        f"--cpu={_conf('EXEC_CPU_SECONDS')}",
        f"--nproc={_nproc_limit(spec.uid)}",
        f"--fsize={fsize}",
        "--nofile=1024",
        "--core=0",
        "--",
    ]


def _file_size_limit(spec: SandboxSpec, left: int) -> int:
    """RLIMIT_FSIZE for a workspace with `left` bytes to go: never above EXEC_FILE_SIZE_MB, and never
    below the command file bwrap itself writes when it sets up the sandbox."""
    return min(_conf("EXEC_FILE_SIZE_MB") * 1024 * 1024, max(left, len(spec.command.encode()) + 1))


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
    identity: dict  # Popen's user/group arguments, when the argv does not switch user itself

    def close(self) -> None:
        for fd in self.own_fds:
            os.close(fd)
        self.own_fds = []


def bwrap_options(spec: SandboxSpec, *, info_fd: int, block_fd: int | None, command_fd: int) -> list[str]:
    """bwrap's options. They reach bwrap through `--args FD`, never its argv: argv is readable by every
    host user in /proc/<pid>/cmdline (and inside, as the sandbox's /proc/1/cmdline), and these carry
    the caller's environment values and host paths."""
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
        "--ro-bind", str(sandbox_etc(network=spec.network)), "/etc",
        "--proc", "/proc",
        "--dev", "/dev",
        "--size", tmp_bytes, "--tmpfs", "/tmp",
        "--size", tmp_bytes, "--tmpfs", "/dev/shm",
        "--bind", str(spec.workspace), WORKSPACE,
        *[arg for name, folder in spec.skills for arg in ("--ro-bind", str(folder), f"{SKILLS_DIR}/{name}")],
        # The command travels as a read-only file, not as `sh -c <command>`, for the same reason.
        "--perms", "0444", "--ro-bind-data", str(command_fd), COMMAND_FILE,
    ]
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
    switch, identity = _user_switch(spec.uid)
    argv = [*switch, *_rlimit_args(spec), _which("bwrap") or "bwrap", "--args", str(args_fd), "--", "/bin/sh", "-c", f". {COMMAND_FILE}"]
    fds = [args_fd, command_fd]
    return Launch(argv=argv, pass_fds=fds, own_fds=list(fds), identity=identity)


def _user_switch(uid: int) -> tuple[list[str], dict]:
    """How the sandbox's first process becomes `uid` (real, effective and saved, no supplementary
    groups): an argv prefix, or Popen's user/group arguments. setpriv is preferred: with those arguments
    Python must fork the worker (copying its page tables, ~4 ms for a 120 MB process and more for a
    bigger worker) instead of vfork-ing it."""
    if uid == os.geteuid():
        return [], {}
    setpriv = _which("setpriv")
    if setpriv is None:
        return [], {"user": uid, "group": uid, "extra_groups": []}
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--"], {}


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
        self.memory_limited: str | None = None  # which memory limit had the kernel kill a process
        self._on_exit = on_exit
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._kill_at: float | None = None
        self._pid_ns: int | None = None
        self._popen: subprocess.Popen | None = None
        self._slirp: subprocess.Popen | None = None
        self._slirp_exit_w: int | None = None
        self._cgroups: dict = {}  # hierarchy -> the session's cgroup directory, while the sandbox runs
        self._tenant_cgroup_oom = self._session_cgroup_oom = 0

    # -- lifecycle --

    def start(self) -> "SandboxProcess":
        # bwrap reports its sandbox's pid (info fd), then waits (block fd) before it starts the command:
        # the moment to put the sandbox in its cgroup and give it its network, before it can fork.
        info_r, info_w = os.pipe()
        block_r, block_w = os.pipe()
        launch = None
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
                **launch.identity,
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
            # bwrap first, as soon as it exists: the first move of a process into a cgroup after a quiet
            # spell waits for the kernel's RCU grace period (5-10 ms on a small VM), which then passes
            # while bwrap builds the sandbox rather than after it.
            self._contain_launcher()
            try:
                info = _read_info(info_r)
            finally:
                os.close(info_r)
                info_r = None
            if info is not None:
                self._pid_ns = info.get("pid-namespace")
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
            self._leave_cgroup()
            self._popen.stdout.close()
            self._popen.stdin.close()
            raise
        finally:
            if info_r is not None:
                os.close(info_r)
            os.close(block_w)
        threading.Thread(target=self._monitor, name="sandbox-monitor", daemon=True).start()
        return self

    def _contain_launcher(self) -> None:
        """Put bwrap in the session's cgroup (see _contain). Fails closed: a worker that found usable
        cgroups does not run a sandbox outside them."""
        if not cgroups().bases:
            return
        try:
            self._cgroups = cgroup_enter(tenant=self.spec.tenant, scope=self.spec.scope, pids=[self._popen.pid])
        except OSError as exc:
            raise SandboxError(f"could not place the sandbox in its cgroup ({exc}); see `manage.py doctor`") from exc

    def _contain(self, info: dict | None) -> None:
        """Put the sandbox's first process in bwrap's cgroup while bwrap waits on its block fd: everything
        the command starts is born inside. (bwrap may have made it before it was moved itself.)"""
        if not cgroups().bases:
            return
        if info is None or "child-pid" not in info:
            raise SandboxError("the sandbox ended before it could be placed in its cgroup")
        try:
            cgroup_join(self._cgroups, [info["child-pid"]])
        except OSError as exc:
            raise SandboxError(f"could not place the sandbox in its cgroup ({exc}); see `manage.py doctor`") from exc
        self._session_cgroup_oom = cgroup_oom_kills(self._cgroups)
        self._tenant_cgroup_oom = cgroup_oom_kills({k: v.parent for k, v in self._cgroups.items()})

    def _leave_cgroup(self) -> None:
        """Note a kill by the memory limit in the output (the model should know why), then let go."""
        if not self._cgroups:
            return
        session = cgroup_oom_kills(self._cgroups) > self._session_cgroup_oom
        tenant = cgroup_oom_kills({k: v.parent for k, v in self._cgroups.items()}) > self._tenant_cgroup_oom
        if session or tenant:
            limit = (
                f"this session's sandboxes may use {_conf('EXEC_SESSION_MEMORY_MB')} MB together" if session
                else f"this tenant's sandboxes may use {_conf('EXEC_TENANT_MEMORY_MB')} MB together on a worker"
            )
            self.memory_limited = limit
            self.output.append(
                f"\n[out of memory: {limit}; the kernel killed a process of this sandbox. Use less memory, or "
                "stop other commands of this session (process tool, action kill)]\n".encode()
            )
        cgroup_leave(tenant=self.spec.tenant, scope=self.spec.scope, directories=self._cgroups)
        self._cgroups = {}

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

    def _lower_file_size_limit(self, left: int) -> None:
        """As the workspace fills up, lower RLIMIT_FSIZE of every process in the sandbox to what is left,
        so the next write past the cap fails in the command (EFBIG) instead of overshooting it. Children
        inherit the limit; a second pass catches those forked during the first."""
        if self._pid_ns is None:
            return
        limit = _file_size_limit(self.spec, left)
        if limit >= self._fsize_now:
            return
        self._fsize_now = limit
        for _ in range(2):
            for pid in _namespace_members(self._pid_ns):
                try:
                    resource.prlimit(pid, resource.RLIMIT_FSIZE, (limit, limit))
                except (ProcessLookupError, PermissionError):
                    continue

    def _workspace_check(self, now: float) -> str | None:
        """Why the sandbox must stop for disk reasons, or None. statvfs is cheap and runs every tick; the
        workspace is walked (exact, but costs time on big trees) when the filesystem lost half of what
        the workspace had left, and at least every few seconds (others freeing space could hide it)."""
        if (problem := disk_problem(self.spec.workspace)) is not None:
            return problem
        if now < self._walk_not_before:
            return None
        stats = os.statvfs(self.spec.workspace)
        free = stats.f_bavail * stats.f_frsize
        # Space freed meanwhile (by this command's `rm`, or anyone's) must not hide later growth: measure
        # from the highest free space seen. What the workspace has left is then underestimated, never over.
        self._walk_free = max(self._walk_free, free)
        # Half of what was left: each walk halves the room a fast writer has before the next one.
        if self._walk_free - free < max(self._walk_left // 2, 16 * 1024 * 1024) and now < self._walk_due:
            return None
        return self._walk(free)

    def _walk(self, free: int) -> str | None:
        started = time.monotonic()
        used = workspace_usage(self.spec.workspace)
        took = time.monotonic() - started
        self._walk_free, self._walk_left = free, self._workspace_limit - used
        self._walk_not_before = started + max(0.05, 5 * took)
        self._walk_due = started + max(5.0, 20 * took)
        self._lower_file_size_limit(self._walk_left)
        # A workspace that started over its cap may stay there (its commands can delete, not grow).
        return workspace_over_cap(used) if used > self._workspace_limit else None

    def _monitor(self) -> None:
        stdout = self._popen.stdout.fileno()
        grace = _conf("EXEC_KILL_GRACE_SECONDS")
        next_disk_check = 0.0
        stats = os.statvfs(self.spec.workspace)
        used = self.spec.workspace_used
        if used is None:
            used = workspace_usage(self.spec.workspace)
        self._workspace_limit = max(_conf("EXEC_WORKSPACE_MB") * 1024 * 1024, used)
        self._walk_free, self._walk_left = stats.f_bavail * stats.f_frsize, self._workspace_limit - used
        self._walk_not_before = 0.0
        self._walk_due = time.monotonic() + 5.0
        self._fsize_now = _file_size_limit(self.spec, self._walk_left)
        with selectors.DefaultSelector() as selector:
            selector.register(stdout, selectors.EVENT_READ)
            while True:
                now = time.monotonic()
                disk = None
                if now >= next_disk_check and self.stopped_for is None:
                    next_disk_check = now + 0.1
                    disk = self._workspace_check(now)
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
                if selector.select(timeout=0.1):
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
        self._leave_cgroup()
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


def sandbox_report() -> list[tuple[str, bool, str]]:
    """What bounds a sandbox on this worker, as (check, ok, detail) lines for `manage.py doctor`."""
    mb = _conf
    lines = []
    problem = sandbox_problem(network=False)
    lines.append(("exec sandbox", problem is None, problem or f"bubblewrap {'.'.join(map(str, _bwrap_version(_which('bwrap'))))} works"))
    if problem is None:
        network = sandbox_problem(network=True)
        lines.append(("exec network (sandbox.network)", network is None, network or "slirp4netns available"))
    groups = cgroups()
    per_process = (
        f"per process: {mb('EXEC_MEMORY_MB')} MB address space, {mb('EXEC_FILE_SIZE_MB')} MB per file, "
        f"{mb('EXEC_CPU_SECONDS')} s CPU"
    )
    if groups.bases:
        lines.append((
            "sandbox memory and processes", True,
            f"cgroup v{groups.version} ({', '.join(str(b) for b in groups.bases.values())}): "
            f"{mb('EXEC_SESSION_MEMORY_MB')} MB and {mb('EXEC_MAX_PROCESSES')} processes per session, "
            f"{mb('EXEC_TENANT_MEMORY_MB')} MB and {mb('EXEC_TENANT_MAX_PROCESSES')} processes per tenant; {per_process}",
        ))
    else:
        nproc = "per session uid (root worker)" if os.geteuid() == 0 else "shared with the worker's own uid (non-root worker)"
        lines.append((
            "sandbox memory and processes", False,
            f"no cgroups ({groups.problem}). Fallback: rlimits only, {per_process}, "
            f"{mb('EXEC_MAX_PROCESSES')} processes {nproc}; a session's sandboxes together are not bounded "
            "in memory. Run the worker as root with cgroup v1 memory+pids or a delegated cgroup v2.",
        ))
    lines.append((
        "workspace disk", True,
        f"{mb('EXEC_WORKSPACE_MB')} MB per workspace by accounting (measured before and while commands run; "
        "no file may grow past what is left), not by a filesystem quota: a burst of parallel writers can "
        "overshoot it briefly (docs/tools.md)",
    ))
    root = Path(mb("WORKSPACE_ROOT"))
    if root.exists():
        disk = disk_problem(root)
        lines.append(("workspace filesystem", disk is None, disk or f"{root}: enough free space and inodes"))
    return lines
