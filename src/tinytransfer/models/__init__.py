"""Stage 2, models: the backbone registry and ``create_model``, the report's heads, weight files and their key maps,
and which parameters train. Imports ``config``, ``fsutil`` and ``data`` (for downloads) only."""
