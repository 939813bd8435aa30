"""`make run`'s process manager (scripts/procs.py) relays every line a process writes, whole and in order,
however fast it writes and however long a line is."""

import subprocess
import sys

from tests.conftest import ROOT

TALKER = r"""
import sys
for n in range(2000):
    print(f"line {n} " + "x" * (n % 300))
print("long " + "y" * 300_000)
sys.stdout.write("no newline at the end")
"""


def test_every_line_arrives_whole_and_in_order(tmp_path):
    (tmp_path / "talker.py").write_text(TALKER)
    (tmp_path / "Procfile").write_text(f"talk: {sys.executable} -u talker.py\n")
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "procs.py"), "-f", "Procfile", "-d", str(tmp_path), "start"],
        cwd=tmp_path, capture_output=True, text=True, timeout=60,
    )
    relayed = [line.split(" | ", 1)[1] for line in result.stdout.splitlines() if line.split(" | ", 1)[0].endswith(" talk.1")]
    expected = [f"line {n} " + "x" * (n % 300) for n in range(2000)] + ["long " + "y" * 300_000, "no newline at the end"]
    assert relayed == expected
