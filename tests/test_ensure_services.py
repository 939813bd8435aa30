"""scripts/ensure_services.sh on a machine without PostgreSQL or Redis: what `make run` would install, or
what it tells the operator to run. The machine is played by a PATH that holds only the basic tools (and
apt-get or not) and URLs on a port where nothing listens; BEAMCLAW_SERVICES_DRY_RUN keeps it from
installing anything for real."""

import os
import shutil
import subprocess

import pytest

from tests.procs import ROOT, free_port

SCRIPT = ROOT / "scripts" / "ensure_services.sh"


def run_script(tmp_path, *, tools: list[str], dry_run: bool) -> subprocess.CompletedProcess:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ["id", "seq", "sleep", "awk", "env", *tools]:
        (bin_dir / tool).symlink_to(shutil.which(tool))
    port = free_port()  # nothing listens there: the servers are "missing"
    env = {
        "HOME": str(tmp_path), "PATH": str(bin_dir),
        "DATABASE_URL": f"postgres://127.0.0.1:{port}/beamclaw", "REDIS_URL": f"redis://127.0.0.1:{port}/0",
        **({"BEAMCLAW_SERVICES_DRY_RUN": "1"} if dry_run else {}),
    }
    return subprocess.run([shutil.which("bash"), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(os.geteuid() != 0, reason="installs only as root or with passwordless sudo")
def test_missing_servers_are_installed_with_apt_get_when_it_may(tmp_path):
    result = run_script(tmp_path, tools=["apt-get"], dry_run=True)
    assert result.returncode == 0, result.stderr
    assert "would run: env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends postgresql redis-server" in result.stdout


def test_without_a_package_manager_it_says_what_to_do_and_fails(tmp_path):
    result = run_script(tmp_path, tools=[], dry_run=False)
    assert result.returncode == 1
    assert "PostgreSQL is not usable at DATABASE_URL" in result.stderr
    assert "Redis is not reachable at REDIS_URL" in result.stderr
    assert "install postgresql redis with this system's package manager" in result.stderr
    assert "Or set DATABASE_URL / REDIS_URL to servers you already have." in result.stderr
