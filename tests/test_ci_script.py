"""`.ci/run` stops with an error when the browser test's chromium is missing and cannot be installed:
CI must not reach `make test` and pass with that test skipped (tests/test_serve_e2e.py fails it under
CI=true, which the script sets)."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / ".ci" / "run"


def tool_dir(tmp_path: Path, fakes: dict[str, str]) -> Path:
    """A PATH of only what the script needs: the real bash, dirname, timeout; fake apt-get and make."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for tool in ("bash", "dirname", "timeout"):
        (bin_dir / tool).symlink_to(shutil.which(tool))
    for name, body in fakes.items():
        (bin_dir / name).write_text(f"#!{shutil.which('bash')}\n{body}\n")
        (bin_dir / name).chmod(0o755)
    return bin_dir


def run_ci(bin_dir: Path) -> subprocess.CompletedProcess:
    env = {"PATH": str(bin_dir), "HOME": str(bin_dir)}
    return subprocess.run(
        [str(bin_dir / "bash"), str(SCRIPT)], env=env, capture_output=True, text=True, timeout=60
    )


MAKE = 'echo "make ran with CI=$CI"'


@pytest.mark.parametrize(
    ("fakes", "message"),
    [
        ({"make": MAKE}, "no apt-get"),
        ({"make": MAKE, "apt-get": '[ "$1" = update ] && exit 0; exit 100'}, "could not be installed"),
    ],
    ids=["no-apt-get", "install-fails"],
)
def test_ci_fails_when_chromium_cannot_be_installed(tmp_path, fakes, message):
    result = run_ci(tool_dir(tmp_path, fakes))
    assert result.returncode == 1, result
    assert message in result.stderr and "ERROR" in result.stderr
    assert "make ran" not in result.stdout


def test_ci_runs_the_tests_with_ci_set_once_chromium_is_there(tmp_path):
    bin_dir = tool_dir(tmp_path, {"make": MAKE, "chromium": "exit 0"})
    result = run_ci(bin_dir)
    assert result.returncode == 0, result
    assert result.stdout.strip() == "make ran with CI=true"
