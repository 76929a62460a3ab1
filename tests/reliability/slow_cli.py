"""``tinytransfer`` with a pause after every training batch, so a test's signal lands inside an epoch.

Usage: ``python slow_cli.py train ...`` (the arguments of the real CLI). ``TINYTRANSFER_STEP_SLEEP`` seconds
(default 0.05) pass after each batch of a shuffled (training) loader is yielded; nothing else changes: the
numbers are those of ``python -m tinytransfer.cli``, which the tests compare against.
"""

from __future__ import annotations

import os
import sys
import time

from tinytransfer import cli
from tinytransfer.data import loader

_PAUSE = float(os.environ.get("TINYTRANSFER_STEP_SLEEP", "0.05"))
_iter = loader.DeviceLoader.__iter__


def _slow_iter(self):  # type: ignore[no-untyped-def]
    for batch in _iter(self):
        yield batch
        if self.shuffle:
            time.sleep(_PAUSE)  # the step on this batch has run; a signal now arrives between steps


loader.DeviceLoader.__iter__ = _slow_iter

if __name__ == "__main__":
    sys.exit(cli.main())
