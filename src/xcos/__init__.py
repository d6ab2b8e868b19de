"""xcos: explainable face verification with the xCos metric.

Public API: ``load_config``, ``build_model``, ``Trainer``, ``run_test`` and the registries.
"""

from xcos.config import Config, load_config
from xcos.errors import ConfigError
from xcos.registry import (
    BACKBONES,
    DATASETS,
    HEADS,
    IDENTITY_HEADS,
    LOSSES,
    METRICS,
    OPTIMIZERS,
    PAIR_SETS,
    SCHEDULERS,
    TARGETS,
)
from xcos.version import __version__ as __version__  # the one place it is written


def __getattr__(name: str):
    # Heavy parts load on first use, so `import xcos` stays cheap.
    if name == "build_model":
        from xcos.models.xcos_model import build_model

        return build_model
    if name == "Trainer":
        from xcos.engine.trainer import Trainer

        return Trainer
    if name == "Verifier":
        from xcos.explain.verifier import Verifier

        return Verifier
    if name == "Explanation":
        from xcos.explain.explanation import Explanation

        return Explanation
    if name == "run_test":
        from xcos.engine.tester import run_test

        return run_test
    raise AttributeError(f"module 'xcos' has no attribute {name!r}")


__all__ = [
    "BACKBONES",
    "DATASETS",
    "HEADS",
    "IDENTITY_HEADS",
    "LOSSES",
    "METRICS",
    "OPTIMIZERS",
    "PAIR_SETS",
    "SCHEDULERS",
    "TARGETS",
    "Config",
    "ConfigError",
    "Explanation",
    "Trainer",
    "Verifier",
    "build_model",
    "load_config",
    "run_test",
]
