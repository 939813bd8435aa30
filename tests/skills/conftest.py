"""Fixtures for the skills tests: a skills root the operator allows (BEAMCLAW_SKILLS_ROOTS) and a cache
folder for unpacked uploads, both readable by the sandboxes' uids, and helpers to write skill folders.

The environment is set at import (collection) time so the worker and Daphne, which copy os.environ when
they start, see the same roots as this process.
"""

import io
import os
import shutil
import tempfile
import textwrap
import zipfile
from pathlib import Path

import pytest

SKILLS_ROOT = Path(tempfile.mkdtemp(prefix="beamclaw-skills-root-"))
SKILLS_CACHE = Path(tempfile.mkdtemp(prefix="beamclaw-skills-cache-"))
for _path in (SKILLS_ROOT, SKILLS_CACHE):
    _path.chmod(0o755)  # the sandbox runs as another uid and must reach the bound folders
os.environ["BEAMCLAW_SKILLS_ROOTS"] = str(SKILLS_ROOT)
os.environ["BEAMCLAW_SKILLS_CACHE_ROOT"] = str(SKILLS_CACHE)


@pytest.fixture(autouse=True)
def skills_settings(settings):
    settings.BEAMCLAW_TOOLS = {**settings.BEAMCLAW_TOOLS, "SKILLS_ROOTS": [SKILLS_ROOT], "SKILLS_CACHE_ROOT": SKILLS_CACHE}
    return settings


@pytest.fixture(scope="session", autouse=True)
def _remove_skill_folders():
    yield
    shutil.rmtree(SKILLS_ROOT, ignore_errors=True)
    shutil.rmtree(SKILLS_CACHE, ignore_errors=True)


def skill_md(name: str, description: str, *, front: str = "", body: str = "") -> str:
    return f"---\nname: {name}\ndescription: {description}\n{textwrap.dedent(front)}---\n{body or f'# {name}'}\n"


@pytest.fixture
def skills_dir(request):
    """A fresh folder under the allowed root; `write(relative_folder, text, **files)` makes a skill folder."""
    base = Path(tempfile.mkdtemp(prefix=f"{request.node.name[:40]}-", dir=SKILLS_ROOT))
    base.chmod(0o755)

    class Dir:
        path = base

        @staticmethod
        def write(folder: str, text: str, files: dict | None = None) -> Path:
            target = base / folder
            target.mkdir(parents=True, exist_ok=True)
            (target / "SKILL.md").write_text(text)
            for name, content in (files or {}).items():
                (target / name).parent.mkdir(parents=True, exist_ok=True)
                (target / name).write_text(content)
            for directory, _, names in os.walk(base):
                os.chmod(directory, 0o755)
                for name in names:
                    os.chmod(os.path.join(directory, name), 0o644)
            return target

    return Dir


def zip_of(files: dict[str, bytes | str], *, symlinks: dict[str, str] | None = None) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for name, content in files.items():
            archive.writestr(name, content)
        for name, target in (symlinks or {}).items():
            info = zipfile.ZipInfo(name)
            info.external_attr = (0o120777 << 16)
            archive.writestr(info, target)
    return buffer.getvalue()
