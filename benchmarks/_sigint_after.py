"""Run a command and send it one SIGINT once its JSON results file holds N rows; exit with its exit code.

    python benchmarks/_sigint_after.py FILE N -- COMMAND...

What ``gpu_check.sh`` at toy sizes uses to stop a step mid-run at a point that depends on the step's progress, not
on the machine's speed (a timeout that may land before the script installs its handlers, or after it ends).
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time


def rows(path: str) -> int:
    try:
        with open(path) as f:
            return len(json.load(f).get("rows", []))
    except (OSError, ValueError):
        return 0


def main(argv: list[str]) -> int:
    path, n, sep, *cmd = argv
    assert sep == "--" and cmd, __doc__
    proc = subprocess.Popen(cmd)
    sent = False
    while proc.poll() is None:
        if not sent and rows(path) >= int(n):
            proc.send_signal(signal.SIGINT)
            sent = True
        time.sleep(0.05)
    if not sent:
        print(f"_sigint_after: the command ended before {path} held {n} rows", flush=True)
    return proc.returncode


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
