"""Skills through the REST API, as a tenant admin uses them: server folders (only inside the operator's
roots), uploads (zip or SKILL.md, checked), and an agent's listing with eligibility and reasons."""

import base64
import os
import uuid

import httpx
import pytest

from tenants.models import Agent
from tests.skills.conftest import SKILLS_ROOT, skill_md, zip_of


@pytest.fixture
def api(live, tenant):
    with httpx.Client(base_url=f"{live}/api", headers=tenant.headers, timeout=30) as client:
        yield client


def listing(api, agent: str = "assistant") -> dict:
    response = api.get(f"/agents/{agent}/skills/")
    assert response.status_code == 200, response.text
    return {item["name"]: item for item in response.json()["results"]}


def test_an_agents_skills_are_listed_with_eligibility_and_reasons(api, skills_dir):
    skills_dir.write("shell-things", skill_md("shell-things", "Uses the shell.", front="requires:\n  bins: [sh]\n"))
    skills_dir.write("media/video", skill_md("video", "Cuts videos.", front="metadata:\n  openclaw:\n    requires: {bins: [ffmpeg-not-here]}\n"))
    skills_dir.write("keys", skill_md("keys", "Needs a token.", front="requires: {env: [BEAMCLAW_TEST_SKILL_TOKEN_UNSET]}\n"))
    skills_dir.write("mac", skill_md("mac", "Mac only.", front="os: [darwin]\n"))
    skills_dir.write("forced", skill_md("forced", "Always on.", front="always: true\nrequires: {bins: [nope-nope]}\n"))
    response = api.patch("/agents/assistant/", json={"skills_dirs": [str(skills_dir.path)]})
    assert response.status_code == 200, response.text

    skills = listing(api)
    assert skills["shell-things"] == {
        "name": "shell-things", "description": "Uses the shell.", "source": "skills_dirs[0]/shell-things",
        "eligible": True, "reason": "", "always": False,
    }
    assert (skills["video"]["eligible"], skills["video"]["reason"]) == (False, "missing binary: ffmpeg-not-here")
    assert skills["video"]["source"] == "skills_dirs[0]/media/video"
    assert skills["keys"]["reason"] == "missing env: BEAMCLAW_TEST_SKILL_TOKEN_UNSET"
    assert skills["mac"]["reason"] == "os: darwin only"
    assert (skills["forced"]["eligible"], skills["forced"]["always"]) == (True, True)
    assert str(SKILLS_ROOT) not in api.get("/agents/assistant/skills/").text, "server paths are not shown"

    assert api.patch("/agents/assistant/", json={"skills": {"disabled": ["shell-things"]}}).status_code == 200
    assert listing(api)["shell-things"]["reason"] == "disabled for this agent"
    assert api.patch("/agents/assistant/", json={"skills": {"enabled": ["keys"]}}).status_code == 200
    skills = listing(api)
    assert skills["shell-things"]["reason"] == "disabled for this agent (not in skills.enabled)"
    assert skills["keys"]["reason"] == "missing env: BEAMCLAW_TEST_SKILL_TOKEN_UNSET"


def test_a_malformed_skill_is_listed_with_its_path_and_line_and_edits_are_picked_up(api, skills_dir):
    folder = skills_dir.write("team/broken", "---\nname: broken\ndescription: [unclosed\nmore: 1\n---\nbody\n")
    skills_dir.write("open", "---\nname: open\ndescription: never closed\n")
    assert api.patch("/agents/assistant/", json={"skills_dirs": [str(skills_dir.path)]}).status_code == 200
    skills = listing(api)
    assert skills["broken"]["eligible"] is False
    assert skills["broken"]["reason"].startswith("skills_dirs[0]/team/broken/SKILL.md line 4: invalid YAML"), skills["broken"]
    assert skills["open"]["reason"] == (
        "skills_dirs[0]/open/SKILL.md line 1: the front matter opened here with '---' is never closed (add a line '---' after it)"
    )
    # Fixing the file in place shows at once: the cached scan notices the changed SKILL.md.
    (folder / "SKILL.md").write_text(skill_md("broken", "Fixed now."))
    assert listing(api)["broken"] == {**skills["broken"], "description": "Fixed now.", "eligible": True, "reason": ""}


def test_skills_dirs_outside_the_allowed_roots_are_refused(api, tenant, skills_dir):
    escape = skills_dir.path / "escape"
    escape.symlink_to("/etc")
    for value, words in [
        (["/etc"], "leads outside the allowed skills roots"),
        (["relative/skills"], "must be an absolute path"),
        ([f"{skills_dir.path}/../../etc"], "must not contain '..'"),
        ([str(escape)], "leads outside the allowed skills roots (through a symlink)"),
        ([str(skills_dir.path / "missing")], "does not exist"),
        ("/etc", "Must be a list"),
    ]:
        response = api.patch("/agents/assistant/", json={"skills_dirs": value})
        assert response.status_code == 400, (value, response.text)
        assert words in " ".join(response.json()["skills_dirs"]), (value, response.json())
    # A folder that got there another way (the Django admin, or set before the roots changed) is refused
    # when read, and says so in the listing.
    Agent.objects.filter(pk=tenant.agent.pk).update(skills_dirs=["/etc"])
    assert listing(api)["skills_dirs[0]"]["reason"].startswith("skills_dirs[0]: '/etc' leads outside the allowed skills roots")
    assert api.patch("/agents/assistant/", json={"skills": {"enabled": "all"}}).status_code == 400


def test_uploads_are_listed_replaced_and_deleted(api):
    folder = {
        "deploy/SKILL.md": skill_md("deploy", "Deploys the app.", body="Run {baseDir}/run.sh"),
        "deploy/run.sh": "#!/bin/sh\necho deploying\n",
        "deploy/docs/notes.txt": "notes",
    }
    response = api.post("/skills/", json={"zip_base64": base64.b64encode(zip_of(folder)).decode()})
    assert response.status_code == 201, response.text
    uploaded = response.json()
    assert (uploaded["name"], uploaded["file_count"]) == ("deploy", 3)
    assert sorted(f["path"] for f in uploaded["files"]) == ["SKILL.md", "docs/notes.txt", "run.sh"]
    response = api.post("/skills/", json={"skill_md": skill_md("notes", "Takes notes.")})
    assert response.status_code == 201, response.text

    assert sorted(s["name"] for s in api.get("/skills/").json()["results"]) == ["deploy", "notes"]
    replaced = api.post("/skills/", json={"skill_md": skill_md("deploy", "Deploys, version two.")})
    assert replaced.status_code == 200 and replaced.json()["id"] == uploaded["id"]
    assert api.get(f"/skills/{uploaded['id']}/").json()["description"] == "Deploys, version two."
    assert listing(api)["deploy"] == {"name": "deploy", "description": "Deploys, version two.", "source": "uploaded",
                                      "eligible": True, "reason": "", "always": False}

    assert api.delete(f"/skills/{uploaded['id']}/").status_code == 204
    assert api.get(f"/skills/{uploaded['id']}/").status_code == 404
    assert "deploy" not in listing(api)


def test_multipart_upload_of_a_zip_or_a_skill_md(api):
    folder = {"deploy/SKILL.md": skill_md("deploy", "Deploys the app."), "deploy/run.sh": "#!/bin/sh\necho deploying\n"}
    response = api.post("/skills/", files={"file": ("deploy.zip", zip_of(folder), "application/zip")})
    assert response.status_code == 201, response.text
    assert sorted(f["path"] for f in response.json()["files"]) == ["SKILL.md", "run.sh"]
    response = api.post("/skills/", files={"file": ("SKILL.md", skill_md("lint", "Lints code.").encode(), "text/markdown")})
    assert response.status_code == 201, response.text
    response = api.post("/skills/", files={"file": ("SKILL.md", b"---\nname: x\n---\n", "text/markdown")})
    assert response.status_code == 400 and response.json()["file"] == [
        "SKILL.md line 1: the front matter needs `description:` (what the skill is for, when to use it)"
    ]
    response = api.post("/skills/", files={"file": ("big.zip", os.urandom(1_100_000), "application/zip")})
    assert response.status_code == 413, response.text
    assert sorted(s["name"] for s in api.get("/skills/").json()["results"]) == ["deploy", "lint"]


@pytest.mark.parametrize(
    ("files", "symlinks", "words"),
    [
        ({"SKILL.md": skill_md("a", "A."), "../evil.sh": "x"}, None, "'..'"),
        ({"SKILL.md": skill_md("a", "A."), "/etc/cron.d/evil": "x"}, None, "absolute or unsafe path"),
        ({"SKILL.md": skill_md("a", "A.")}, {"link": "/etc/passwd"}, "symlink"),
        ({"SKILL.md": skill_md("a", "A."), "big.bin": b"\0" * 600_000}, None, "unpacks to more than allowed"),
        ({f"f{i}.txt": "x" for i in range(201)} | {"SKILL.md": skill_md("a", "A.")}, None, "more than 200 files"),
        ({"readme.txt": "no skill here"}, None, "no SKILL.md"),
        ({"SKILL.md": "---\nname: a\n---\n"}, None, "SKILL.md line 1: the front matter needs `description:`"),
    ],
)
def test_unsafe_or_oversized_archives_are_refused(api, files, symlinks, words):
    response = api.post("/skills/", json={"zip_base64": base64.b64encode(zip_of(files, symlinks=symlinks)).decode()})
    assert response.status_code == 400, response.text
    assert words in " ".join(response.json()["zip_base64"]), response.json()
    assert api.get("/skills/").json()["count"] == 0


def test_a_zip_bomb_and_an_upload_over_the_cap_are_refused(api):
    bomb = zip_of({"SKILL.md": skill_md("bomb", "B."), "zeros": b"\0" * 50_000_000})
    assert len(bomb) < 100_000
    response = api.post("/skills/", json={"zip_base64": base64.b64encode(bomb).decode()})
    assert response.status_code == 400 and "unpacks to more than allowed" in response.text, response.text
    response = api.post("/skills/", json={"zip_base64": base64.b64encode(os.urandom(1_100_000)).decode()})
    assert response.status_code == 413, response.text
    response = api.post("/skills/", json={"skill_md": "x", "zip_base64": "eA=="})
    assert response.status_code == 400 and "exactly one" in response.json()["file"][0]


def test_another_tenants_skill_is_not_found(api, live, make_tenant):
    created = api.post("/skills/", json={"skill_md": skill_md("private", "Mine.")}).json()
    other = make_tenant()
    with httpx.Client(base_url=f"{live}/api", headers=other.headers, timeout=30) as intruder:
        assert intruder.get(f"/skills/{created['id']}/").status_code == 404
        assert intruder.delete(f"/skills/{created['id']}/").status_code == 404
        assert intruder.get("/skills/").json()["count"] == 0
        assert "private" not in intruder.get("/agents/assistant/skills/").text
        assert intruder.get(f"/skills/{uuid.uuid4()}/").status_code == 404
    assert api.get(f"/skills/{created['id']}/").status_code == 200
