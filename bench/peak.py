"""Run one command and record its wall time and peak RSS, as ``/usr/bin/time -v`` would.

    python bench/peak.py OUT.json LOG -- COMMAND ...

A process's ``ru_maxrss`` includes the memory of the process it was forked from (Linux records the old
address space's high-water mark at exec), so the benchmark, which has a model loaded, cannot measure
its own children directly: it starts this small script (no torch import), and this script's child
starts from a few MiB. Writes ``{"exit_code", "wall_seconds", "peak_rss_mib"}`` to OUT.json.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    if len(argv) < 4 or argv[2] != "--":
        sys.exit(__doc__)
    out, log, command = argv[0], argv[1], argv[3:]
    with open(log, "w") as logfile:
        start = time.perf_counter()
        child = subprocess.Popen(command, stdout=logfile, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(child.pid, 0)
        wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    record = {
        "exit_code": code,
        "wall_seconds": round(wall, 2),
        "peak_rss_mib": round(usage.ru_maxrss / 1024, 1),
    }
    with open(out, "w") as f:
        json.dump(record, f)
    return code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
