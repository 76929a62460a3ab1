"""tinytransfer: ImageNet-pretrained CNNs turned into Tiny ImageNet-style classifiers.

The report's Keras recipe (VGG16 + new head, Keras augmentation, Adam + triangular CLR, freeze → fine-tune)
reproduced exactly, then faster and better recipes. ``tinytransfer --help`` lists the commands.
"""

__version__ = "0.1.0"

__all__ = ["__version__"]
