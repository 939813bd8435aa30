"""Skills: folders with a SKILL.md that teach an agent a procedure (to be built)."""


def skills_config_clean(value) -> dict:
    """`Agent.skills` as the API takes it (to be completed)."""
    return value
