"""Compaction: summarizing a session's older turns when its context nears the agent's budget."""


def compaction_if_needed(*, run, agent) -> None:
    """Before a step: compact the run's session when its context is over the agent's threshold."""


def compaction_config_clean(value) -> dict:
    """`Agent.compaction` as the API takes it (to be completed)."""
    return value
