"""Skills: folders with a SKILL.md that teach an agent a procedure, which it reads when a task needs it.

A SKILL.md opens with YAML front matter (AgentSkills, as OpenClaw and nanobot write them): `name`,
`description`, and optional requirements and flags, read at the top level, under `metadata`, or under
`metadata.openclaw` (or `clawdbot`, `nanobot`), so skills written for those work unchanged:

    requires: {bins: [...], anyBins: [...], env: [...]}    os: [linux, darwin]    always: true

Invariants, and why:
- Nothing is dropped silently. A malformed SKILL.md (with its path and line), a refused folder, a name an
  earlier source already took and an unmet requirement all appear in the agent's listing with
  `eligible: false` and the reason. Only eligible skills the agent has enabled reach its prompt, the
  `skill` tool and the exec sandbox.
- Sources, the first one wins a name: the agent's `skills_dirs` in order (server folders), then the
  tenant's uploads. Server folders must lie inside the operator's SKILLS_ROOTS (BEAMCLAW_SKILLS_ROOTS);
  that is checked when a folder is set and again whenever it is read, so a root removed later, or a
  path set through the Django admin, is refused as well. Uploads live in Postgres, so every worker has
  them; a worker unpacks one into a cache folder named by its content hash when its files are needed.
- Reading never leaves a skill's folder: paths with `..` are refused and no symlink is followed out.
- Requirements are checked where the skill's commands will run: binaries in the directories of the
  sandbox's PATH on this worker host (the sandbox sees the host's /usr read-only), variables in the
  worker's environment, `os` against this host. `always: true` skips the binary and variable checks (as
  in OpenClaw), never `os`, and puts the whole skill in the prompt.
- This runs on every step of every run, so nothing is re-read that has not changed: a folder's scan is
  kept while every directory it walked and every SKILL.md it read has the same inode, mtime and size (one
  stat each), and a tenant's uploads are re-read only when their (count, last update) changes (one
  aggregate query).
"""

import hashlib
import io
import json
import logging
import os
import posixpath
import re
import secrets
import shutil
import stat
import sys
import threading
import zipfile
from dataclasses import dataclass, replace
from pathlib import Path

import yaml
from django.conf import settings
from django.db import transaction
from rest_framework import serializers

from beamclaw_project.errors import Conflict, InvalidInput, NotFound
from beamclaw_project.infra.rows import select_one
from sessions.models import Run
from tools.models import Skill
from tools.sandbox import SANDBOX_PATH, SKILLS_DIR

logger = logging.getLogger(__name__)

SKILL_FILE = "SKILL.md"
# Where the exec sandbox sees an enabled skill's folder, read-only; `{baseDir}` in a SKILL.md becomes it.
SANDBOX_SKILLS = SKILLS_DIR
NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
NAME_RULE = "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"
_VENDOR_KEYS = ("openclaw", "clawdbot", "nanobot")
_OS_ALIASES = {"macos": "darwin", "mac": "darwin", "osx": "darwin", "windows": "win32", "win": "win32"}
_MAX_SKILL_MD_BYTES = 256 * 1024
_MAX_FRONT_MATTER_DEPTH = 20
_SCAN_DEPTH = 6  # SKILL.md is found this many folders deep at most (as OpenClaw does)
_SCAN_MAX_DIRS = 5000
_DESCRIPTION_CHARS = 300  # in the prompt's list; the skill tool shows the whole of it
_ALWAYS_MAX_CHARS = 20_000
SKILL_TOOL = "skill"


def _conf(name: str):
    return settings.BEAMCLAW_TOOLS[name]


# --- parsing ----------------------------------------------------------------------------------------


class SkillFormatError(ValueError):
    """A SKILL.md that cannot be used; `line` is 1-based in the file."""

    def __init__(self, line: int, message: str):
        super().__init__(f"line {line}: {message}")
        self.line = line
        self.message = message


@dataclass(frozen=True)
class SkillDoc:
    name: str
    description: str
    body: str
    always: bool = False
    bins: tuple[str, ...] = ()
    any_bins: tuple[str, ...] = ()
    env: tuple[str, ...] = ()
    os: tuple[str, ...] = ()


def _front_matter(text: str) -> tuple[str, int, str]:
    """(YAML text, the file line it starts on, body)."""
    lines = text.split("\n")
    start = 0
    while start < len(lines) and not lines[start].strip():
        start += 1
    if start == len(lines) or lines[start].rstrip() != "---":
        raise SkillFormatError(
            start + 1 if start < len(lines) else 1,
            "no YAML front matter: the file must start with a line '---', then `name:` and `description:`, then '---'",
        )
    for end in range(start + 1, len(lines)):
        if lines[end].rstrip() in ("---", "..."):
            return "\n".join(lines[start + 1:end]), start + 2, "\n".join(lines[end + 1:]).strip()
    raise SkillFormatError(start + 1, "the front matter opened here with '---' is never closed (add a line '---' after it)")


def _check_events(front: str, first_line: int) -> None:
    """Refuse what a YAML mapping of a few keys never needs and what would cost us: aliases (a few
    lines of them expand to gigabytes once written out as JSON) and deep nesting (recursion)."""
    depth = 0
    for event in yaml.parse(front, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise SkillFormatError(first_line + event.start_mark.line, "YAML aliases (*name) are not supported in a SKILL.md")
        if isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            depth += 1
            if depth > _MAX_FRONT_MATTER_DEPTH:
                raise SkillFormatError(first_line + event.start_mark.line, "the front matter is nested too deeply")
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            depth -= 1


def _strings(value, where: str, line: int) -> tuple[str, ...]:
    if value is None:
        return ()
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, list) or not all(isinstance(item, str) and item.strip() for item in value):
        raise SkillFormatError(line, f"{where} must be a list of names")
    return tuple(item.strip() for item in value)


def _requirement_sources(front: dict) -> list[dict]:
    """Where requirements may be written, most specific last: top level, metadata, metadata.<vendor>."""
    sources = [front]
    metadata = front.get("metadata")
    if isinstance(metadata, str):
        # AgentSkills allows string metadata; OpenClaw's is a JSON object, sometimes quoted as a string.
        try:
            metadata = json.loads(metadata)
        except ValueError:
            metadata = None
    if isinstance(metadata, dict):
        sources.append(metadata)
        sources.extend(metadata[key] for key in _VENDOR_KEYS if isinstance(metadata.get(key), dict))
    return sources


def skill_parse(text: str) -> SkillDoc:
    """Parse a SKILL.md; SkillFormatError (with the line) when it cannot be used."""
    if text.startswith("\ufeff"):
        text = text[1:]
    text = text.replace("\r\n", "\n")
    if "\x00" in text:
        raise SkillFormatError(1, "the file contains NUL characters; a SKILL.md is text")
    front_text, first_line, body = _front_matter(text)
    try:
        _check_events(front_text, first_line)
        loader = yaml.SafeLoader(front_text)
        try:
            node = loader.get_single_node()
            front = loader.construct_document(node) if node is not None else None
        finally:
            loader.dispose()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        line = first_line + (mark.line if mark is not None else 0)
        raise SkillFormatError(line, f"invalid YAML: {exc.problem or exc.context}") from None
    except yaml.YAMLError as exc:
        raise SkillFormatError(first_line, f"invalid YAML: {exc}") from None
    if not isinstance(front, dict):
        raise SkillFormatError(first_line, "the front matter must be a mapping of keys (name: ..., description: ...)")
    key_lines = {key.value: first_line + key.start_mark.line for key, _ in node.value if isinstance(key, yaml.ScalarNode)}
    fm_line = first_line - 1

    name = front.get("name")
    if not isinstance(name, str) or not name.strip():
        raise SkillFormatError(key_lines.get("name", fm_line), "the front matter needs `name:` (the skill's name)")
    name = name.strip()
    if not NAME.match(name) or name in (".", ".."):
        raise SkillFormatError(key_lines["name"], f"name {name!r} is not allowed: use {NAME_RULE}")
    description = front.get("description")
    if not isinstance(description, str) or not description.strip():
        raise SkillFormatError(
            key_lines.get("description", fm_line), "the front matter needs `description:` (what the skill is for, when to use it)"
        )

    bins, any_bins, env, os_list, always = [], [], [], (), False
    for source in _requirement_sources(front):
        line = key_lines.get("metadata", fm_line) if source is not front else fm_line
        requires = source.get("requires")
        if requires is not None:
            if not isinstance(requires, dict):
                raise SkillFormatError(key_lines.get("requires", line), "requires must be a mapping (bins, anyBins, env)")
            bins += _strings(requires.get("bins"), "requires.bins", key_lines.get("requires", line))
            any_bins += _strings(requires.get("anyBins"), "requires.anyBins", key_lines.get("requires", line))
            env += _strings(requires.get("env"), "requires.env", key_lines.get("requires", line))
        if source.get("os") is not None:
            os_list = tuple(
                _OS_ALIASES.get(item.lower(), item.lower()) for item in _strings(source["os"], "os", key_lines.get("os", line))
            )
        if source.get("always") is not None:
            if not isinstance(source["always"], bool):
                raise SkillFormatError(key_lines.get("always", line), "always must be true or false")
            always = always or source["always"]
    return SkillDoc(
        name=name, description=" ".join(description.split()), body=body, always=always,
        bins=tuple(dict.fromkeys(bins)), any_bins=tuple(dict.fromkeys(any_bins)), env=tuple(dict.fromkeys(env)), os=os_list,
    )


# --- sources: server folders -------------------------------------------------------------------------


@dataclass(frozen=True)
class SkillEntry:
    """One skill as found, usable or not. `source` is what a tenant may see of where it came from: the
    skills_dirs entry's index and the folder relative to it, never a server path; or "uploaded"."""

    name: str
    source: str
    doc: SkillDoc | None = None
    problem: str | None = None
    folder: Path | None = None  # a server folder's real path
    upload_id: str | None = None
    digest: str | None = None

    @property
    def description(self) -> str:
        return self.doc.description if self.doc else ""


def _roots() -> list[Path]:
    return [Path(os.path.realpath(root)) for root in _conf("SKILLS_ROOTS") if Path(root).is_absolute()]


def _inside(path: Path, root: Path) -> bool:
    return path == root or root in path.parents


def skills_dir_problem(value: str) -> str | None:
    """Why an agent may not read skills from this server folder, or None."""
    roots = _roots()
    if not roots:
        return (
            "server skill folders are turned off on this server (BEAMCLAW_SKILLS_ROOTS is empty); "
            "upload skills with POST /api/skills/ instead"
        )
    if not value.startswith("/"):
        return f"{value!r} must be an absolute path inside one of: {', '.join(map(str, roots))}"
    if ".." in value.split("/") or "\x00" in value:
        return f"{value!r} must not contain '..'"
    lexical = Path(posixpath.normpath(value))
    real = Path(os.path.realpath(lexical))
    if not any(_inside(real, root) for root in roots):
        through = " (through a symlink)" if any(_inside(lexical, root) for root in roots) else ""
        return f"{value!r} leads outside the allowed skills roots{through}; allowed: {', '.join(map(str, roots))}"
    if not real.is_dir():
        return f"{value!r} does not exist or is not a directory"
    return None


def _stamp(path: Path) -> tuple | None:
    try:
        info = os.stat(path, follow_symlinks=False)
    except OSError:
        return None
    return (info.st_ino, info.st_mtime_ns, info.st_size)


@dataclass
class _DirScan:
    entries: list[SkillEntry]
    stamps: dict[Path, tuple | None]

    def fresh(self) -> bool:
        return all(_stamp(path) == value for path, value in self.stamps.items())


_SCANS: dict[tuple[int, Path], _DirScan] = {}
_SCANS_LOCK = threading.Lock()


def _kept(doc: SkillDoc) -> SkillDoc:
    """What a cached entry holds: the body only for `always` skills (the prompt has those whole); the
    `skill` tool reads the others from their source."""
    return doc if doc.always else replace(doc, body="")


def _read_skill_folder(folder: Path, root: Path, label: str, stamps: dict) -> SkillEntry:
    relative = folder.relative_to(root).as_posix()
    source = label if relative == "." else f"{label}/{relative}"
    fallback_name = folder.name
    skill_md = folder / SKILL_FILE
    stamps[skill_md] = _stamp(skill_md)
    real = Path(os.path.realpath(skill_md))
    if real.parent != Path(os.path.realpath(folder)):
        return SkillEntry(name=fallback_name, source=source, problem=f"{source}/{SKILL_FILE}: a symlink out of its folder is not read")
    try:
        with open(real, "rb") as handle:
            data = handle.read(_MAX_SKILL_MD_BYTES + 1)
    except OSError as exc:
        return SkillEntry(name=fallback_name, source=source, problem=f"{source}/{SKILL_FILE}: cannot be read ({exc.strerror})")
    if len(data) > _MAX_SKILL_MD_BYTES:
        return SkillEntry(name=fallback_name, source=source, problem=f"{source}/{SKILL_FILE}: larger than {_MAX_SKILL_MD_BYTES // 1024} KB")
    try:
        doc = skill_parse(data.decode("utf-8"))
    except UnicodeDecodeError:
        return SkillEntry(name=fallback_name, source=source, problem=f"{source}/{SKILL_FILE}: not UTF-8 text")
    except SkillFormatError as exc:
        return SkillEntry(name=fallback_name, source=source, problem=f"{source}/{SKILL_FILE} {exc}")
    return SkillEntry(name=doc.name, source=source, doc=_kept(doc), folder=Path(os.path.realpath(folder)))


def _scan(index: int, directory: Path) -> _DirScan:
    """Every skill folder under `directory` (itself included), not following symlinked folders and not
    looking inside a skill folder for more."""
    label = f"skills_dirs[{index}]"
    entries: list[SkillEntry] = []
    stamps: dict[Path, tuple | None] = {}
    stack = [(directory, 0)]
    visited = 0
    while stack:
        folder, depth = stack.pop()
        stamps[folder] = _stamp(folder)
        visited += 1
        if visited > _SCAN_MAX_DIRS:
            entries.append(SkillEntry(name=label, source=label, problem=f"{label}: more than {_SCAN_MAX_DIRS} folders; stopped looking"))
            break
        try:
            with os.scandir(folder) as listing:
                children = sorted(listing, key=lambda entry: entry.name)
        except OSError as exc:
            entries.append(SkillEntry(name=folder.name, source=label, problem=f"{label}: a folder cannot be read ({exc.strerror})"))
            continue
        if any(child.name == SKILL_FILE for child in children):
            entries.append(_read_skill_folder(folder, directory, label, stamps))
            continue
        if depth + 1 < _SCAN_DEPTH:
            subfolders = [c for c in children if not c.name.startswith(".") and c.is_dir(follow_symlinks=False)]
            stack.extend((Path(child.path), depth + 1) for child in reversed(subfolders))
    entries.sort(key=lambda entry: entry.source)
    return _DirScan(entries=entries, stamps=stamps)


def _dir_entries(index: int, value) -> list[SkillEntry]:
    label = f"skills_dirs[{index}]"
    if not isinstance(value, str):
        return [SkillEntry(name=label, source=label, problem=f"{label}: must be a path")]
    if (problem := skills_dir_problem(value)) is not None:
        return [SkillEntry(name=label, source=label, problem=f"{label}: {problem}")]
    directory = Path(os.path.realpath(value))
    key = (index, directory)
    with _SCANS_LOCK:
        cached = _SCANS.get(key)
    if cached is not None and cached.fresh():
        return cached.entries
    scan = _scan(index, directory)
    with _SCANS_LOCK:
        _SCANS[key] = scan
    return scan.entries


# --- sources: uploads --------------------------------------------------------------------------------

_UPLOADS: dict[int, tuple[tuple, list[SkillEntry]]] = {}
_UPLOADS_KEPT = 1024  # tenants whose lists a worker keeps; the oldest kept goes first
_UPLOADS_LOCK = threading.Lock()


def _upload_entry(skill: Skill) -> SkillEntry:
    try:
        doc = skill_parse(skill.skill_md)
    except SkillFormatError as exc:  # checked at upload; only a row edited by hand gets here
        return SkillEntry(name=skill.name, source="uploaded", problem=f"uploaded {SKILL_FILE} {exc}", upload_id=str(skill.pk))
    return SkillEntry(name=skill.name, source="uploaded", doc=_kept(doc), upload_id=str(skill.pk), digest=skill.digest)


# Every step asks for its tenant's uploads' revision, so the query is written out (beamclaw_project/infra/rows.py).
_REVISION_SQL = 'SELECT count(*), max(updated_at) FROM "{skills}" WHERE tenant_id = {tenant}'
_REVISION_ATTRIBUTE = "_uploads_revision"


def uploads_revision_statement(run_id) -> tuple[str, list]:
    """The query an agent's skills start with (its tenant's uploads' revision), for the tenant of a run: a
    step sends it with its other first reads (sessions/runs/step.py), then hands its row to
    uploads_revision_known."""
    tenant = f'(SELECT "tenant_id" FROM "{Run._meta.db_table}" WHERE "id" = %s)'
    return _REVISION_SQL.format(skills=Skill._meta.db_table, tenant=tenant), [run_id]


def tenant_uploads_revision_statement(tenant_id) -> tuple[str, list]:
    """uploads_revision_statement for a tenant named by its id (a new session's run carries the row to its first
    step: sessions/runs/kernel.py, first_step_reads)."""
    return _REVISION_SQL.format(skills=Skill._meta.db_table, tenant="%s"), [tenant_id]


def uploads_revision_known(agent, row: tuple) -> None:
    """Give a loaded agent row its tenant's uploads' revision, read just now with other statements: its
    skills are then worked out without asking again."""
    setattr(agent, _REVISION_ATTRIBUTE, row)


def _upload_entries(tenant_id: int, revision: tuple | None = None) -> list[SkillEntry]:
    if revision is None:
        revision = select_one(*tenant_uploads_revision_statement(tenant_id))
    with _UPLOADS_LOCK:
        cached = _UPLOADS.get(tenant_id)
    if cached is not None and cached[0] == revision:
        return cached[1]
    rows = Skill.objects.filter(tenant_id=tenant_id).only("id", "name", "skill_md", "digest").order_by("name")
    entries = [_upload_entry(skill) for skill in rows]
    with _UPLOADS_LOCK:
        if len(_UPLOADS) >= _UPLOADS_KEPT and tenant_id not in _UPLOADS:
            _UPLOADS.pop(next(iter(_UPLOADS)))
        _UPLOADS[tenant_id] = (revision, entries)
    return entries


# --- what an agent has -------------------------------------------------------------------------------


@dataclass(frozen=True)
class AgentSkill:
    entry: SkillEntry
    eligible: bool
    reason: str = ""

    @property
    def name(self) -> str:
        return self.entry.name

    @property
    def always(self) -> bool:
        return bool(self.entry.doc and self.entry.doc.always)


def _unmet(doc: SkillDoc) -> list[str]:
    reasons = []
    if doc.os and sys.platform not in doc.os:
        reasons.append(f"os: {', '.join(doc.os)} only")
    if doc.always:
        return reasons
    reasons += [f"missing binary: {name}" for name in doc.bins if shutil.which(name, path=SANDBOX_PATH) is None]
    if doc.any_bins and not any(shutil.which(name, path=SANDBOX_PATH) for name in doc.any_bins):
        reasons.append(f"missing binary: one of {', '.join(doc.any_bins)}")
    reasons += [f"missing env: {name}" for name in doc.env if not os.environ.get(name)]
    return reasons


def _switched_off(name: str, config: dict) -> str | None:
    if name in (config.get("disabled") or ()):
        return "disabled for this agent"
    if "enabled" in config and name not in config["enabled"]:
        return "disabled for this agent (not in skills.enabled)"
    return None


# Set on an agent row once its skills are worked out: a step loads its agent afresh and needs the skills
# twice (the system prompt, and whether to offer the `skill` tool), each time a query and a folder scan.
_MEMO_ATTRIBUTE = "_agent_skills"


def agent_skills(agent) -> list[AgentSkill]:
    """Every skill the agent could have, in source order, each eligible or with the reason it is not.
    Worked out once per loaded agent row (load the agent again to see skills changed since)."""
    memo = getattr(agent, _MEMO_ATTRIBUTE, None)
    if memo is None:
        memo = _agent_skills(agent)
        setattr(agent, _MEMO_ATTRIBUTE, memo)
    return memo


def _agent_skills(agent) -> list[AgentSkill]:
    config = agent.skills if isinstance(agent.skills, dict) else {}
    entries = [entry for index, value in enumerate(agent.skills_dirs or []) for entry in _dir_entries(index, value)]
    entries += _upload_entries(agent.tenant_id, getattr(agent, _REVISION_ATTRIBUTE, None))
    taken: dict[str, str] = {}
    result = []
    for entry in entries:
        if entry.problem is not None:
            result.append(AgentSkill(entry, False, entry.problem))
            continue
        if entry.name in taken:
            result.append(AgentSkill(entry, False, f"shadowed by the skill of the same name from {taken[entry.name]}"))
            continue
        taken[entry.name] = entry.source
        reasons = [off] if (off := _switched_off(entry.name, config)) else _unmet(entry.doc)
        result.append(AgentSkill(entry, not reasons, "; ".join(reasons)))
    return result


def usable_skills(agent) -> list[AgentSkill]:
    return [skill for skill in agent_skills(agent) if skill.eligible]


def skills_config_clean(value) -> dict:
    """`Agent.skills` as the API takes it: {"enabled": [names]?, "disabled": [names]?}. `enabled`
    present means only those (an empty list: none); `disabled` always wins."""
    if value is None:
        return {}
    if not isinstance(value, dict) or set(value) - {"enabled", "disabled"}:
        raise serializers.ValidationError('Must be an object with optional "enabled" and "disabled" lists of skill names.')
    cleaned = {}
    for key in ("enabled", "disabled"):
        if key not in value:
            continue
        names = value[key]
        if not isinstance(names, list) or len(names) > 500:
            raise serializers.ValidationError(f"{key} must be a list of at most 500 skill names.")
        for index, name in enumerate(names):
            if not isinstance(name, str) or not NAME.match(name):
                raise serializers.ValidationError(f"{key}[{index}] must be a skill name ({NAME_RULE}).")
        cleaned[key] = list(dict.fromkeys(names))
    return cleaned


def skills_dirs_clean(value) -> list[str]:
    """`Agent.skills_dirs` as the API takes it: absolute server folders inside SKILLS_ROOTS."""
    if value is None:
        return []
    if not isinstance(value, list) or len(value) > 20 or not all(isinstance(item, str) for item in value):
        raise serializers.ValidationError("Must be a list of at most 20 absolute folder paths.")
    for index, item in enumerate(value):
        if (problem := skills_dir_problem(item)) is not None:
            raise serializers.ValidationError(f"skills_dirs[{index}]: {problem}.")
    return value


# --- the prompt --------------------------------------------------------------------------------------


def _with_base_dir(text: str, name: str) -> str:
    return text.replace("{baseDir}", f"{SANDBOX_SKILLS}/{name}")


def skills_prompt(agent, *, can_read: bool) -> str:
    """The skills part of the system prompt: the eligible skills as a compact list (when the agent may
    use the `skill` tool to read them), and the `always` ones whole."""
    usable = usable_skills(agent)
    listed = [skill for skill in usable if not skill.always] if can_read else []
    always = [skill for skill in usable if skill.always]
    if not listed and not always:
        return ""
    parts = ["## Skills"]
    if listed:
        lines = [
            f'Skills hold instructions for particular tasks. When a task matches one, first read it with the '
            f'`{SKILL_TOOL}` tool ({{"name": "<name>"}}), then follow it; exec commands see its files at '
            f"{SANDBOX_SKILLS}/<name>/ (read-only)."
        ]
        for skill in listed:
            description = skill.entry.description
            if len(description) > _DESCRIPTION_CHARS:
                description = description[: _DESCRIPTION_CHARS - 1] + "…"
            lines.append(f"- {skill.name}: {description}")
        parts.append("\n".join(lines))
    for skill in always:
        body = _with_base_dir(skill.entry.doc.body, skill.name)
        if len(body) > _ALWAYS_MAX_CHARS:
            body = body[:_ALWAYS_MAX_CHARS] + f"\n[… cut here; the {SKILL_TOOL} tool shows the whole skill]"
        parts.append(f"### Skill: {skill.name}\n{skill.entry.description}\n\n{body}")
    return "\n\n".join(parts)


# --- files: where a skill's folder is, and reading from it -------------------------------------------


class SkillUnavailable(NotFound):
    field = "name"


def _materialize(entry: SkillEntry) -> Path:
    """An uploaded skill's folder on this worker, unpacked on first use. The folder is named by the
    content hash and written under a temporary name, then renamed, so a reader never sees half of it."""
    root = Path(_conf("SKILLS_CACHE_ROOT"))
    target = root / entry.digest
    if target.is_dir():
        return target
    root.mkdir(mode=0o755, parents=True, exist_ok=True)
    archive = Skill.objects.filter(pk=entry.upload_id).values_list("archive", flat=True).first()
    if archive is None:
        raise SkillUnavailable(f"skill {entry.name!r} was deleted")
    staging = root / f".{entry.digest}.{os.getpid()}.{secrets.token_hex(4)}"
    try:
        staging.mkdir(mode=0o755)
        for path, content in _archive_files(bytes(archive)).items():
            (staging / path).parent.mkdir(parents=True, exist_ok=True)
            (staging / path).write_bytes(content)
        # Readable by the sandboxes' uids, writable by nobody but this worker.
        for directory, _, names in os.walk(staging):
            os.chmod(directory, 0o755)
            for name in names:
                os.chmod(os.path.join(directory, name), 0o644)
        os.rename(staging, target)
    except OSError:
        if not target.is_dir():  # else another thread or worker unpacked it first
            raise
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return target


def skill_folder(entry: SkillEntry) -> Path:
    return entry.folder if entry.folder is not None else _materialize(entry)


def skill_mounts(agent) -> tuple[tuple[str, Path], ...]:
    """(name, host folder) of each eligible, enabled skill: what the exec sandbox binds read-only at
    /skills/<name>."""
    mounts = []
    for skill in usable_skills(agent):
        try:
            mounts.append((skill.name, skill_folder(skill.entry)))
        except (OSError, SkillUnavailable):
            logger.warning("skill %s of agent %s could not be prepared for the sandbox", skill.name, agent.pk, exc_info=True)
    return tuple(mounts)


def _usable(agent, name: str) -> AgentSkill:
    for skill in agent_skills(agent):
        if skill.name == name and skill.entry.problem is None:
            if not skill.eligible:
                raise SkillUnavailable(f"skill {name!r} is not available to this agent: {skill.reason}")
            return skill
    raise SkillUnavailable(f"there is no skill named {name!r}; the system prompt lists the skills")


def skill_read(agent, *, name: str, path: str | None = None) -> str:
    """A skill's SKILL.md (with {baseDir} replaced) or another file of its folder, or a folder's listing."""
    skill = _usable(agent, name)
    if path in (None, "", SKILL_FILE):
        if skill.entry.folder is None:
            # An upload's SKILL.md is in its row: no need to unpack the folder for it.
            markdown = Skill.objects.filter(pk=skill.entry.upload_id).values_list("skill_md", flat=True).first()
            if markdown is None:
                raise SkillUnavailable(f"skill {name!r} was deleted")
            return _with_base_dir(markdown, name)
        path = SKILL_FILE
    if path.startswith("/") or "\\" in path or "\x00" in path or ".." in path.split("/"):
        raise InvalidInput("must be a path relative to the skill's folder, without '..'", field="path")
    folder = skill_folder(skill.entry)
    target = Path(os.path.realpath(folder / path))
    if not _inside(target, Path(os.path.realpath(folder))):
        raise InvalidInput(f"{path!r} leads out of the skill's folder", field="path")
    if target.is_dir():
        names = sorted(p.name + ("/" if p.is_dir() else "") for p in target.iterdir())
        return "\n".join(names) or "(empty folder)"
    if not target.is_file():
        raise InvalidInput(f"skill {name!r} has no file {path!r}", field="path")
    with open(target, "rb") as handle:
        data = handle.read(_conf("SKILL_MAX_FILE_BYTES") + 1)
    if len(data) > _conf("SKILL_MAX_FILE_BYTES"):
        raise InvalidInput(f"{path!r} is too large to show; read it with exec at {SANDBOX_SKILLS}/{name}/{path}", field="path")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidInput(f"{path!r} is not text; use it with exec at {SANDBOX_SKILLS}/{name}/{path}", field="path") from None
    return _with_base_dir(text, name) if target.name == SKILL_FILE else text


# --- uploads -----------------------------------------------------------------------------------------


class UploadError(InvalidInput):
    field = "file"


_ZIP_JUNK = ("__MACOSX/",)
_ZIP_JUNK_NAMES = (".DS_Store",)


def _entry_path(name: str) -> str:
    if "\x00" in name or "\\" in name or name.startswith("/") or re.match(r"^[A-Za-z]:", name):
        raise UploadError(f"the archive holds an absolute or unsafe path ({name!r}); paths must be relative to the skill folder")
    parts = [part for part in name.split("/") if part not in ("", ".")]
    if ".." in parts:
        raise UploadError(f"the archive holds a path with '..' ({name!r}), which could write outside the skill folder")
    return "/".join(parts)


def _archive_files(data: bytes) -> dict[str, bytes]:
    """The files of a zip, checked: no unsafe paths, no links, bounded count and sizes (declared and
    actual, so a zip bomb is refused before it is unpacked)."""
    max_files, max_file, max_total = _conf("SKILL_MAX_FILES"), _conf("SKILL_MAX_FILE_BYTES"), _conf("SKILL_MAX_TOTAL_BYTES")
    try:
        archive = zipfile.ZipFile(io.BytesIO(data))
        infos = archive.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, ValueError, EOFError) as exc:
        raise UploadError(f"not a readable zip archive ({exc})") from None
    files: dict[str, bytes] = {}
    declared = 0
    with archive:
        for info in infos:
            if info.filename.startswith(_ZIP_JUNK) or info.filename.rsplit("/", 1)[-1] in _ZIP_JUNK_NAMES:
                continue
            path = _entry_path(info.filename)
            mode = info.external_attr >> 16
            if stat.S_ISLNK(mode):
                raise UploadError(f"the archive holds a symlink ({info.filename!r}); skills may not contain links")
            if info.is_dir() or not path:
                continue
            if info.flag_bits & 0x1:
                raise UploadError(f"{info.filename!r} is encrypted; upload an unencrypted zip")
            if len(files) >= max_files:
                raise UploadError(f"the archive holds more than {max_files} files")
            declared += info.file_size
            if info.file_size > max_file or declared > max_total:
                raise UploadError(f"{info.filename!r} unpacks to more than allowed ({max_file} bytes per file, {max_total} in all)")
            try:
                with archive.open(info) as member:
                    content = member.read(max_file + 1)
            except (zipfile.BadZipFile, NotImplementedError, RuntimeError, OSError, EOFError) as exc:
                raise UploadError(f"{info.filename!r} cannot be unpacked ({exc})") from None
            if len(content) != info.file_size:
                raise UploadError(f"{info.filename!r} unpacks to a different size than the archive declares; refused")
            if path in files or any(other.startswith(path + "/") or path.startswith(other + "/") for other in files):
                raise UploadError(f"the archive holds {path!r} twice")
            files[path] = content
    return files


def _skill_files(files: dict[str, bytes]) -> dict[str, bytes]:
    """The skill folder inside an archive: its top level, or the one folder everything is in."""
    if SKILL_FILE in files:
        return files
    tops = {path.split("/", 1)[0] for path in files}
    if len(tops) == 1 and all("/" in path for path in files):
        top = tops.pop()
        inner = {path[len(top) + 1:]: content for path, content in files.items()}
        if SKILL_FILE in inner:
            return inner
    raise UploadError(f"the archive has no {SKILL_FILE} at its top (or inside its one top folder)")


def _pack(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(files):
            archive.writestr(zipfile.ZipInfo(path, date_time=(1980, 1, 1, 0, 0, 0)), files[path], zipfile.ZIP_DEFLATED)
    return buffer.getvalue()


def _digest(files: dict[str, bytes]) -> str:
    digest = hashlib.sha256()
    for path in sorted(files):
        digest.update(path.encode() + b"\0" + hashlib.sha256(files[path]).digest())
    return digest.hexdigest()


def skill_upload(*, tenant, data: bytes, field: str = "file") -> tuple[Skill, bool]:
    """Store a skill from a zip of its folder or a lone SKILL.md; a skill of the same name is replaced
    (same id). Returns (skill, created). Refusals name `field` and say what to change."""
    if len(data) > _conf("SKILL_UPLOAD_MAX_BYTES"):
        raise UploadError(f"the upload is larger than {_conf('SKILL_UPLOAD_MAX_BYTES')} bytes", field=field)
    try:
        if data[:4] == b"PK\x03\x04" or data[:4] == b"PK\x05\x06":
            files = _skill_files(_archive_files(data))
        else:
            if len(data) > _MAX_SKILL_MD_BYTES:
                raise UploadError(f"{SKILL_FILE} is larger than {_MAX_SKILL_MD_BYTES // 1024} KB")
            files = {SKILL_FILE: data}
        try:
            markdown = files[SKILL_FILE].decode("utf-8")
        except UnicodeDecodeError:
            raise UploadError(f"{SKILL_FILE} is not UTF-8 text") from None
        if len(files[SKILL_FILE]) > _MAX_SKILL_MD_BYTES:
            raise UploadError(f"{SKILL_FILE} is larger than {_MAX_SKILL_MD_BYTES // 1024} KB")
        try:
            doc = skill_parse(markdown)
        except SkillFormatError as exc:
            raise UploadError(f"{SKILL_FILE} {exc}") from None
    except UploadError as exc:
        exc.field = field
        raise
    markdown = markdown.lstrip("\ufeff")
    values = {
        "description": doc.description, "skill_md": markdown, "archive": _pack(files), "digest": _digest(files),
        "file_count": len(files), "size": sum(map(len, files.values())),
    }
    with transaction.atomic():
        existing = Skill.objects.select_for_update().filter(tenant=tenant, name=doc.name).first()
        if existing is None and Skill.objects.filter(tenant=tenant).count() >= _conf("SKILLS_MAX_PER_TENANT"):
            raise Conflict(f"this tenant already has {_conf('SKILLS_MAX_PER_TENANT')} skills; delete one first", code="skills_limit")
        skill, created = Skill.objects.update_or_create(tenant=tenant, name=doc.name, defaults=values)
    return skill, created


def skill_delete(*, skill: Skill) -> None:
    skill.delete()


def skill_files(skill: Skill) -> list[dict]:
    """The files of an uploaded skill: path and size."""
    with zipfile.ZipFile(io.BytesIO(bytes(skill.archive))) as archive:
        return [{"path": info.filename, "size": info.file_size} for info in archive.infolist()]
