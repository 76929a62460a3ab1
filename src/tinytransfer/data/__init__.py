"""Stage 1, data: image decoding, the uint8 cache, dataset listing and splits, the demo/download sources, the
device loader and the batch augmentations (Keras warp, flip, Mixup/CutMix). Imports only ``config`` and ``fsutil``."""
