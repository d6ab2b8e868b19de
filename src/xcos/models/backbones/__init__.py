"""Backbones; importing this package registers them in ``xcos.registry.BACKBONES``."""

from xcos.models.backbones import iresnet
from xcos.models.backbones.iresnet import IResNet, ir, ir_se

__all__ = ["IResNet", "ir", "ir_se", "iresnet"]
