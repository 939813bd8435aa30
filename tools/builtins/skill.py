"""skill: read one of the agent's skills (tools/skills.py), the whole SKILL.md or another file of its folder.

The system prompt lists the agent's skills by name and description only; this is how the model reads
one when a task needs it. Only skills that are eligible and enabled for the agent can be read, and a
path never leads out of the skill's folder.
"""

from beamclaw_project.errors import DomainError
from tools.base import ToolContext, ToolSpec, error_result
from tools.skills import SANDBOX_SKILLS, SKILL_FILE, SKILL_TOOL, skill_read, usable_skills

INPUT_SCHEMA = {
    "type": "object",
    "properties": {
        "name": {"type": "string", "minLength": 1, "maxLength": 64, "description": "The skill's name, as the system prompt lists it."},
        "path": {
            "type": "string",
            "maxLength": 1024,
            "description": f"A file (or folder) of the skill, relative to its folder; default {SKILL_FILE}.",
        },
    },
    "required": ["name"],
    "additionalProperties": False,
}

DESCRIPTION = (
    f"Read one of your skills: its full {SKILL_FILE} (instructions for a kind of task), or another file of the "
    f"skill's folder with `path` (a folder's path lists it). Commands run with exec see the same files, read-only, "
    f"at {SANDBOX_SKILLS}/<name>/."
)


def run_skill(context: ToolContext, tool_input: dict) -> dict:
    try:
        text = skill_read(context.agent, name=tool_input["name"], path=tool_input.get("path"))
    except DomainError as exc:
        return error_result(exc.message)
    return {"ok": True, "output": text, "skill": tool_input["name"]}


SKILL_READ_TOOL = ToolSpec(
    name=SKILL_TOOL,
    description=DESCRIPTION,
    input_schema=INPUT_SCHEMA,
    group="group:skills",
    run=run_skill,
    subject=lambda tool_input: str(tool_input.get("name", "")),
    offered=lambda agent, session: bool(usable_skills(agent)),
)
