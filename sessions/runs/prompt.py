"""The system prompt of a step: the agent's own, then its skills (tools/skills.py), then the request's
extra instructions, then what JSON mode asks of the reply (json_mode.py).

The skills part lists each eligible skill in one line (name and description) when the agent may read
skills with the `skill` tool, and holds the `always` skills whole. It is rebuilt on every step, from
the skill lists tools/skills.py keeps while their folders and uploads are unchanged. The format
instruction comes last so that nothing after it contradicts it.
"""

from sessions.runs.json_mode import json_mode_instruction
from tools.registry import allowed_tools
from tools.skills import SKILL_TOOL, skills_prompt


def system_prompt_for(agent, request_system: str | None, response_format: dict | None = None) -> str:
    can_read = any(spec.name == SKILL_TOOL for spec in allowed_tools(agent))
    skills = skills_prompt(agent, can_read=can_read)
    parts = (agent.system_prompt, skills, request_system, json_mode_instruction(response_format))
    return "\n\n".join(part for part in parts if part)
