"""Stage 5, outputs of a trained run: predictions, Grad-CAM and feature maps, figures, report.html, export
(TorchScript, ONNX). Imports every stage before it; ``run``, ``api`` and ``cli`` (on top) import it."""
