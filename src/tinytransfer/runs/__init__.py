"""Stage 3, runs: the run folder and every file in it (config.yaml, metrics.csv, Table 1, lock), checkpoints, the
background checkpoint writer, TensorBoard. Imports ``config``, ``fsutil``, ``data`` and ``models`` only."""
