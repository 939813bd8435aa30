"""SKILL.md parsing (tools/skills.py skill_parse), a pure function: front matter as AgentSkills, OpenClaw
and nanobot write it, and every way a file can be malformed reported with its line."""

import pytest

from tools.skills import SkillFormatError, skill_parse


def test_requirements_are_read_at_the_top_level_under_metadata_and_under_metadata_openclaw():
    top = skill_parse("---\nname: a\ndescription: A.\nrequires:\n  bins: [sh]\nos: [linux]\nalways: true\n---\nBody\n")
    assert (top.bins, top.os, top.always, top.body) == (("sh",), ("linux",), True, "Body")
    nested = skill_parse("---\nname: b\ndescription: B.\nmetadata:\n  requires: {env: [TOKEN]}\n  os: [macos]\n---\n")
    assert (nested.env, nested.os) == (("TOKEN",), ("darwin",))
    # OpenClaw's own layout: a JSON5 object (trailing commas included) under metadata.openclaw.
    openclaw = skill_parse(
        '---\nname: gh\ndescription: "GitHub via the gh CLI."\nmetadata:\n  {\n    "openclaw":\n      {\n'
        '        "emoji": "x",\n        "requires": { "bins": ["gh"], "anyBins": ["jq", "yq"] },\n      },\n  }\n---\n'
    )
    assert (openclaw.name, openclaw.bins, openclaw.any_bins) == ("gh", ("gh",), ("jq", "yq"))
    as_string = skill_parse('---\nname: c\ndescription: C.\nmetadata: \'{"clawdbot": {"always": true}}\'\n---\n')
    assert as_string.always is True


@pytest.mark.parametrize(
    ("text", "line", "words"),
    [
        ("---\nname: x\ndescription: y\n", 1, "never closed"),
        ("---\nname: x\ndescription: [oops\nother: 1\n---\n", 4, "invalid YAML"),
        ("---\n- a\n- b\n---\n", 2, "must be a mapping"),
        ("\n\n---\ndescription: y\n---\n", 3, "needs `name:`"),
        ("---\nname: x\nother: 1\n---\n", 1, "needs `description:`"),
        ("# no front matter\n", 1, "no YAML front matter"),
        ("---\nname: ../../etc\ndescription: y\n---\n", 2, "is not allowed"),
        ("---\nname: x\ndescription: y\nrequires: [sh]\n---\n", 4, "requires must be a mapping"),
        ("---\nname: x\ndescription: y\na: &a [1, 2]\nb: [*a, *a]\n---\n", 5, "aliases"),
    ],
)
def test_a_malformed_file_says_which_line(text, line, words):
    with pytest.raises(SkillFormatError) as caught:
        skill_parse(text)
    assert caught.value.line == line and words in str(caught.value), str(caught.value)
