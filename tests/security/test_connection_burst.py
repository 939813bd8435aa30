"""Daphne listens with a backlog that holds a burst of connection opens (beamclaw_project/daphne_hardening.py).
The burst itself (300 clients connecting at once, none lost) is measured by bench/load_bench.py: on a quiet
machine the kernel's SYN retries hide an overflowing queue behind a one-second stall."""

import subprocess
from urllib.parse import urlsplit

from beamclaw_project.daphne_hardening import LISTEN_BACKLOG


def test_daphne_listens_with_a_backlog_for_bursts(live):
    # `ss` shows a listening socket's backlog as its Send-Q; Twisted's default is 50. The kernel caps the
    # backlog asked for at net.core.somaxconn.
    port = urlsplit(live).port
    listing = subprocess.run(["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True).stdout
    backlogs = {int(line.split()[2]) for line in listing.splitlines()}
    somaxconn = int(open("/proc/sys/net/core/somaxconn").read())
    assert backlogs == {min(LISTEN_BACKLOG, somaxconn)}, listing
