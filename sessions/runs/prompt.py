"""The system prompt of a step: the agent's own, then the request's extra instructions."""


def system_prompt_for(agent, request_system: str | None) -> str:
    return "\n\n".join(part for part in (agent.system_prompt, request_system) if part)
