"""tinytransfer: ImageNet-pretrained CNNs turned into Tiny ImageNet-style classifiers.

The report's Keras recipe (VGG16 + new head, Keras augmentation, Adam + triangular CLR, freeze → fine-tune)
reproduced, then faster and better recipes. The Python API::

    import tinytransfer as tt
    run = tt.train("demo", "data/digits", out="runs/digits")
    run.predict("some.jpg")[0].name, run.evaluate("val")["top1"]
    tt.load("runs/digits").report()
"""

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # the names below, for type checkers; at run time they load on first use (see __getattr__)
    from .api import (
        Prediction,
        Run,
        UserError,
        audit,
        create_model,
        demo,
        list_backbones,
        list_recipes,
        load,
        lr_find,
        resume,
        train,
    )

__version__ = "0.1.0"

__all__ = [
    "Prediction",
    "Run",
    "UserError",
    "__version__",
    "audit",
    "create_model",
    "demo",
    "list_backbones",
    "list_recipes",
    "load",
    "lr_find",
    "resume",
    "train",
]


def __getattr__(name: str) -> Any:
    """``tt.train`` and the other API names load :mod:`tinytransfer.api` (and torch) on first use, so that
    ``import tinytransfer.config`` or ``tinytransfer.plots`` stays light and keeps the modules' import order."""
    if name in __all__ and name != "__version__":
        from . import api

        return getattr(api, name)
    raise AttributeError(f"module 'tinytransfer' has no attribute {name!r}")
