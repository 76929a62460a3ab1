"""The export sidecar says how the dataset's images become the graph's input size (item 13 of issue 18)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from tinytransfer.data.augment import make_transform
from tinytransfer.outputs.export import resize_meta


def test_sidecar_resize_reproduces_the_training_transform():
    meta = resize_meta(64, 160)  # the demo recipe: 64 px images, 160 px input
    r = meta["resize"]
    assert meta["image_size"] == 64 and r["from"] == [64, 64] and r["to"] == [160, 160]
    assert (r["method"], r["align_corners"], r["antialias"], r["pixel_centers"]) == \
        ("bilinear", False, False, "half-pixel")
    mean, std = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)
    x = torch.randint(0, 256, (2, 3, 64, 64), generator=torch.Generator().manual_seed(0)).float()
    want = make_transform("none", mean, std, input_size=160)(x.clone(), None)  # what training and predict feed
    # what a program does from the sidecar alone: resize the 0..255 image as it says, then scale and normalise
    got = F.interpolate(x, size=tuple(r["to"]), mode=r["method"], align_corners=r["align_corners"],
                        antialias=r["antialias"])
    got = (got / 255 - 0.5) / 0.5
    torch.testing.assert_close(got, want, atol=1e-5, rtol=0)
    wrong = F.interpolate(x, size=(160, 160), mode="bilinear", align_corners=True)
    assert ((wrong / 255 - 0.5) / 0.5 - want).abs().max() > 1e-2  # the other pixel-centre convention differs
    assert resize_meta(64, 64)["resize"] is None
