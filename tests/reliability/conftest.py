"""Fixtures of the reliability group: generated trees and a runner for real ``tinytransfer`` subprocesses.

The top-level ``tests/conftest.py`` fixtures (``make_tiny_tree``, ``tiny_tree``) apply here as everywhere; this
file adds what several modules of the group share. Helpers that tests call directly live in ``_util.py``.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from ._util import write_run_tree


@pytest.fixture(autouse=True)
def one_thread() -> None:
    """In-process training on one thread, as the subprocesses (OMP_NUM_THREADS=1): on two shared cores, torch's
    default pool of threads makes a tiny step 10-30× slower."""
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(old)


@pytest.fixture(scope="module")
def run_tree(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The dataset of the CLI runs: 3 classes × 16 train (6 steps an epoch at batch 8), 15 val, 32×32."""
    return write_run_tree(tmp_path_factory.mktemp("data") / "tiny")
