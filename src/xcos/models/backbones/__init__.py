"""Backbones; importing this package registers them in ``xcos.registry.BACKBONES``."""

from xcos.models.backbones import arcface_torch, dlib_resnet, iresnet, patch_encoder
from xcos.models.backbones.arcface_torch import ArcFaceIResNet
from xcos.models.backbones.dlib_resnet import DlibResNet
from xcos.models.backbones.iresnet import IResNet, ir, ir_se
from xcos.models.backbones.patch_encoder import PatchEncoder
from xcos.models.backbones.protocol import BackboneProtocol, DecomposableBackbone

__all__ = [
    "ArcFaceIResNet",
    "BackboneProtocol",
    "DecomposableBackbone",
    "DlibResNet",
    "IResNet",
    "PatchEncoder",
    "arcface_torch",
    "dlib_resnet",
    "ir",
    "ir_se",
    "iresnet",
    "patch_encoder",
]
