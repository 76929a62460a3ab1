"""The new heads put on a backbone (the report's ``paper`` head, ``pool``) and stems that keep resolution."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BN_VARIANCES", "HEAD_INITS", "STEMS", "KerasBatchNorm1d", "KerasSyncBatchNorm1d", "convert_sync_bn",
           "keep_resolution", "paper_head", "pool_head"]

STEMS = ("default", "stride1", "nopool", "keep")
HEAD_INITS = ("keras", "torch")  # paper head Linear init: Keras glorot_uniform + zero bias | PyTorch's nn.Linear default
BN_VARIANCES = ("unbiased", "biased")  # head BatchNorm running-variance update: PyTorch's | Keras's


class KerasBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose running variance follows the biased batch variance, as Keras's BatchNormalization does on
    a Dense output (PyTorch's follows the unbiased one: a factor B/(B−1) apart). Same parameters and buffers, so
    state dicts are interchangeable; evaluation is PyTorch's own."""

    def forward(self, x: Tensor) -> Tensor:  # x (B, C)
        if not (self.training and self.track_running_stats):
            return super().forward(x)
        out = F.batch_norm(x, None, None, self.weight, self.bias, True, 0.0, self.eps)  # batch statistics
        with torch.no_grad():
            var, mean = torch.var_mean(x.detach().float(), dim=0, correction=0)  # biased, as Keras
            self.running_mean.lerp_(mean.to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return out


class KerasSyncBatchNorm1d(KerasBatchNorm1d):
    """:class:`KerasBatchNorm1d` over the global batch of data-parallel training (``sync_bn``): batch mean and
    biased variance from every rank's share (one differentiable all-reduce of the per-feature sums, so gradients
    flow through the global statistics as in ``nn.SyncBatchNorm``), running statistics by the Keras rule. Outside
    an initialised process group of several ranks (or in evaluation) it is :class:`KerasBatchNorm1d`."""

    def forward(self, x: Tensor) -> Tensor:  # x (B, C)
        import torch.distributed as dist

        if not (self.training and self.track_running_stats and dist.is_available() and dist.is_initialized()
                and dist.get_world_size() > 1):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        xf = x.float()
        local = torch.cat([xf.sum(0), (xf * xf).sum(0), xf.new_full((1,), float(x.shape[0]))])  # (2C + 1,)
        total = all_reduce(local)  # summed over the ranks, differentiable
        c = x.shape[1]
        n = total[-1]
        mean = total[:c] / n
        var = (total[c:2 * c] / n - mean * mean).clamp_min(0.0)  # biased, as Keras
        out = (xf - mean) * torch.rsqrt(var + self.eps)
        if self.affine:
            out = out * self.weight + self.bias
        with torch.no_grad():
            self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), self.momentum)
            self.running_var.lerp_(var.detach().to(self.running_var.dtype), self.momentum)
            self.num_batches_tracked.add_(1)
        return out.to(x.dtype)


def convert_sync_bn(module: nn.Module) -> nn.Module:
    """``nn.SyncBatchNorm.convert_sync_batchnorm`` that keeps the Keras variance rule: every
    :class:`KerasBatchNorm1d` becomes a :class:`KerasSyncBatchNorm1d` (same parameters and buffers, so state dicts
    are unchanged), every other BatchNorm an ``nn.SyncBatchNorm``. Returns the converted module."""
    if isinstance(module, KerasBatchNorm1d) and not isinstance(module, KerasSyncBatchNorm1d):
        new = KerasSyncBatchNorm1d(module.num_features, eps=module.eps, momentum=module.momentum,
                                   affine=module.affine, track_running_stats=module.track_running_stats)
        new.load_state_dict(module.state_dict())
        if module.affine:
            new.weight.requires_grad_(module.weight.requires_grad)
            new.bias.requires_grad_(module.bias.requires_grad)
        return new.to(module.running_mean.device).train(module.training)
    if isinstance(module, nn.modules.batchnorm._BatchNorm) and not isinstance(module, (nn.SyncBatchNorm,
                                                                                       KerasBatchNorm1d)):
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        new_child = convert_sync_bn(child)
        if new_child is not child:
            module.add_module(name, new_child)
    return module


def paper_head(in_features: int, num_classes: int, hidden: int, dropout: float, *, init: str = "keras",
                bn_momentum: float = 0.01, bn_eps: float = 1e-3, bn_variance: str = "unbiased") -> nn.Sequential:
    """Flatten → [Linear(hidden) → ReLU → BatchNorm1d → Dropout] × 2 → Linear(num_classes); softmax in the loss.

    The defaults are Keras's, as the report's model had them: Dense glorot-uniform kernels with zero biases
    (``init="keras"``; ``"torch"`` keeps nn.Linear's own init), BatchNormalization momentum 0.99 (PyTorch momentum
    0.01) and epsilon 1e-3. ``bn_variance="biased"`` also updates the running variance as Keras does.
    """
    if init not in HEAD_INITS:
        raise ValueError(f"unknown head init {init!r}; valid: {', '.join(HEAD_INITS)}")
    if bn_variance not in BN_VARIANCES:
        raise ValueError(f"unknown bn_variance {bn_variance!r}; valid: {', '.join(BN_VARIANCES)}")
    norm = KerasBatchNorm1d if bn_variance == "biased" else nn.BatchNorm1d
    layers: list[nn.Module] = [nn.Flatten()]  # (B, C, h, w) -> (B, C·h·w)
    width = in_features
    for _ in range(2):
        layers += [nn.Linear(width, hidden), nn.ReLU(inplace=True),
                   norm(hidden, eps=bn_eps, momentum=bn_momentum), nn.Dropout(dropout)]
        width = hidden
    layers.append(nn.Linear(width, num_classes))  # (B, num_classes) logits
    head = nn.Sequential(*layers)
    if init == "keras":
        for m in head.modules():
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
    return head


def pool_head(channels: int, num_classes: int, dropout: float) -> nn.Sequential:
    """AdaptiveAvgPool2d(1) → Flatten → Dropout → Linear: (B, C, h, w) -> (B, num_classes)."""
    return nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(dropout), nn.Linear(channels, num_classes))


def keep_resolution(body: nn.Module, stem: str, name: str = "backbone") -> nn.Module:
    """Make ``body``'s stem shrink the image less, in place, keeping its (pretrained) weights: ``stride1`` runs the
    first convolution at stride 1, ``nopool`` replaces the stem's max-pool by the identity, ``keep`` does both,
    ``default`` nothing. For timm ResNets (``conv1`` [+ ``maxpool``]) and EfficientNets (``conv_stem``, which has no
    pool). Each halving removed makes every later feature map 2× wider and taller: about 4× the compute."""
    if stem not in STEMS:
        raise ValueError(f"unknown stem {stem!r}; valid: {', '.join(STEMS)}")
    if stem == "default":
        return body
    first = getattr(body, "conv1", None) or getattr(body, "conv_stem", None)
    if isinstance(first, nn.Sequential):  # deep stems (resnet*d, test_resnet): the first conv of the sequence
        first = next((m for m in first.modules() if isinstance(m, nn.Conv2d)), None)
    if not isinstance(first, nn.Conv2d):
        raise ValueError(f"stem {stem!r}: {name} has no ResNet/EfficientNet stem (conv1 or conv_stem) to change")
    if stem in ("stride1", "keep"):
        first.stride = (1, 1)
    if stem in ("nopool", "keep"):
        if not isinstance(getattr(body, "maxpool", None), nn.Module) or isinstance(body.maxpool, nn.Identity):
            raise ValueError(f"stem {stem!r}: {name} has no early max-pool (try stem=stride1)")
        body.maxpool = nn.Identity()
    return body
