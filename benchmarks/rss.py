"""Run a command and record its own peak resident memory: `python -m benchmarks.rss OUT -- CMD...`.

`ru_maxrss` of a child includes the memory high-water mark of the process it was forked
from, so a child started directly by the (large, TensorFlow-holding) benchmark process
would report at least the benchmark's size. This small wrapper is the child's parent
instead; it writes {"returncode", "maxrss_kib"} as JSON to OUT and exits with the
command's status. Standard library only.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 4 or sys.argv[2] != "--":
        print("usage: python -m benchmarks.rss OUT.json -- CMD [ARGS...]", file=sys.stderr)
        return 2
    out, cmd = sys.argv[1], sys.argv[3:]
    proc = subprocess.Popen(cmd)
    _pid, status, usage = os.wait4(proc.pid, 0)
    code = os.waitstatus_to_exitcode(status)
    with open(out, "w", encoding="utf-8") as f:
        json.dump({"returncode": code, "maxrss_kib": int(usage.ru_maxrss)}, f)
    return code if code >= 0 else 1


if __name__ == "__main__":
    sys.exit(main())
