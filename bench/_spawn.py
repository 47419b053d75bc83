"""Run a command from a small process, so that its peak RSS is its own.

On Linux a process's ``ru_maxrss`` starts from the resident size of the
process it was forked from (``exec`` keeps the old address space's high-water
mark), so a child of the benchmark coordinator, which holds MXNet and the
test set, would report at least the coordinator's size.  This launcher is
small: what it starts reports its own peak.

``python -m bench._spawn --report FILE -- CMD ...`` runs CMD with this
process's stdin/stdout/stderr, waits, writes ``{"wall_seconds", "maxrss_mb",
"returncode"}`` to FILE (wall time from just before the fork to the exit,
so without this launcher's own start-up) and exits with CMD's status.
"""
from __future__ import annotations

import json
import os
import sys
import time


def main(argv):
    report = None
    if argv[:1] == ["--report"]:
        report, argv = argv[1], argv[2:]
    if argv[:1] == ["--"]:
        argv = argv[1:]
    t = time.perf_counter()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child
        try:
            os.execvp(argv[0], argv)
        finally:
            os._exit(127)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - t
    code = os.waitstatus_to_exitcode(status)
    if report:
        with open(report, "w") as fh:
            json.dump({"wall_seconds": wall, "maxrss_mb": usage.ru_maxrss / 1024.0, "returncode": code}, fh)
    return code if code >= 0 else 128 - code


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
