"""GPU check: training and evaluation speed of IR-SE-50 + xCos on one NVIDIA GPU, in minutes.

The model is configs/xcos_train_config.json (IR-SE-50 at 112x112, its xCos head, ArcFace
identity head over ``--classes`` identities, 85,742 as in MS1M-ArcFace / faces_emore, and its
pretrained IR-SE-50 target network, here with random weights: the speed does not depend on
them; ``--self-target`` drops it). Sections, each printed under ``== title ==``; a section that
fails prints its error and the next one runs (the exit status is then 1):

- device: name, compute capability, memory, torch / CUDA / cuDNN versions, TF32 switches;
- FLOPs: per image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (2 per
  multiply-add): the embedding forward (``model.embed``) and a training step's forward and
  backward;
- training throughput: images/s of a full step (forward, losses, backward, update) on a fixed
  batch of 128 pairs (256 images) in GPU memory, for bf16 autocast and fp16 autocast +
  GradScaler, each with channels-last off / on, with TFLOP/s and the fraction of the GPU's
  dense bf16 peak;
- torch.compile: the best eager variant against its compiled twin (``--compile all``: every
  variant; ``none``: skipped);
- evaluation throughput: ``model.embed`` in eval mode under no_grad and bf16 autocast, 512
  images per batch, contiguous and channels-last;
- xCos head cost: the head's forward+backward as a share of the backbone's (bench/head_cost.py);
- Trainer vs bare loop: bench/trainer_overhead.py's comparison on this config;
- summary: a block to paste into doc/performance.md.

Variants are timed side by side in one process, in interleaved rounds after a warm-up round,
medians reported; CUDA work is synchronised around every timing. ``--smoke`` runs every section
on the CPU with tiny sizes (a small IR-SE, 2 pairs, 2 steps, no compile unless asked), so the
script itself can be tested without a GPU.

    bash bench/gpu_check.sh [--smoke] [--compile best|all|none] [--compile-all] [--steps 10]
        [--rounds 3] [--classes 85742] [--self-target] [--no-cudnn-benchmark]
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import functools
import gc
import json
import platform
import re
import sys
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any

import torch
from head_cost import head_model, measure_head_cost
from timing import interleave, median
from torch.utils.flop_counter import FlopCounterMode
from trainer_overhead import DATASET_TYPE, build_recipe, compare, format_result

from xcos.config import Config, load_config
from xcos.models.xcos_model import XCosModel, build_model, inference_config
from xcos.registry import LOSSES

CONFIG = "configs/xcos_train_config.json"

#: Dense (no sparsity) bf16 tensor-core peak in TFLOP/s per GPU, from NVIDIA's datasheets
#: (the GeForce figures: FP32 accumulation, from the architecture whitepapers). The first
#: pattern found in ``torch.cuda.get_device_name()`` wins, so the specific names come first.
#: The SXM H100 reports itself as "NVIDIA H100 80GB HBM3".
PEAK_BF16_TFLOPS: tuple[tuple[str, float], ...] = (
    (r"H100.*PCIe", 756.0),
    (r"H100.*NVL", 835.0),
    (r"H100", 989.0),
    (r"H200", 989.0),
    (r"A100", 312.0),
    (r"L40S", 362.0),
    (r"L40\b", 181.0),
    (r"L4\b", 121.0),
    (r"A10\b", 125.0),
    (r"RTX 4090(?! D)", 165.0),
    (r"RTX 3090(?! Ti)", 71.0),
)
PEAK_SOURCE = "NVIDIA datasheet, dense bf16"


def peak_bf16_tflops(device_name: str) -> float | None:
    """Dense bf16 peak of the named GPU, or None for a GPU not in the table."""
    for pattern, tflops in PEAK_BF16_TFLOPS:
        if re.search(pattern, device_name, flags=re.IGNORECASE):
            return tflops
    return None


@dataclasses.dataclass
class Sizes:
    """How much work each section does (the GPU run; ``smoke`` shrinks it for the CPU)."""

    pairs: int = 128
    steps: int = 10
    rounds: int = 3
    eval_batch: int = 512
    overhead_steps: int = 20
    classes: int = 85_742
    backbone: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"type": "ir_se", "depth": 50, "width": 1.0, "embedding_dim": None}
    )
    target_backbone: dict[str, Any] = dataclasses.field(
        default_factory=lambda: {"type": "ir_se", "depth": 50, "width": 1.0, "embedding_dim": 512}
    )

    @classmethod
    def smoke(cls) -> Sizes:
        """Seconds on a CPU: 2 pairs, 2 steps, one round, an IR-SE-10 at a quarter width."""
        small = {"type": "ir_se", "depth": 10, "width": 0.25}
        return cls(
            pairs=2,
            steps=2,
            rounds=1,
            eval_batch=4,
            overhead_steps=2,
            classes=16,
            backbone={**small, "embedding_dim": None},
            target_backbone={**small, "embedding_dim": 64},
        )


class Sections:
    """Runs each section under its header; a failure is printed and remembered, not raised."""

    def __init__(self) -> None:
        self.failed: list[str] = []

    @contextlib.contextmanager
    def run(self, title: str) -> Iterator[None]:
        print(f"\n== {title} ==", flush=True)
        start = time.perf_counter()
        try:
            yield
        except Exception:
            self.failed.append(title)
            print(f"!! section {title!r} failed:", flush=True)
            traceback.print_exc(file=sys.stdout)
        finally:
            gc.collect()  # the section's models go before the next one allocates
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
            print(f"({time.perf_counter() - start:.1f} s)", flush=True)


def check_config(sizes: Sizes, self_target: bool) -> Config:
    """configs/xcos_train_config.json on in-memory pairs, without validation sets."""
    target = (
        {"type": "self"}
        if self_target
        else {"type": "pretrained", "checkpoint": None, "backbone": sizes.target_backbone}
    )
    layer = {
        "data": {
            "train": {"type": DATASET_TYPE, "num_classes": sizes.classes, "image_size": 112},
            "batch_size": sizes.pairs,
            "num_workers": 0,
        },
        "model": {"backbone": sizes.backbone, "target": target, "pretrained": None},
        "validation": {"pair_sets": [], "monitor": None},
        "test": {"pair_sets": []},
    }
    return load_config(CONFIG, [layer])


def with_precision(config: Config, amp: str, channels_last: bool) -> Config:
    """``config`` with another ``trainer.amp`` / ``trainer.channels_last``."""
    overrides = [f"trainer.amp={amp}", f"trainer.channels_last={json.dumps(channels_last)}"]
    return load_config(config.raw, [], overrides)


def random_batch(pairs: int, size: int, classes: int, device: torch.device) -> dict:
    """A training batch of random faces and identities, already on ``device``."""
    generator = torch.Generator().manual_seed(0)
    batch = {
        "image_a": torch.randn(pairs, 3, size, size, generator=generator),
        "image_b": torch.randn(pairs, 3, size, size, generator=generator),
        "identity_a": torch.randint(classes, (pairs,), generator=generator),
        "identity_b": torch.randint(classes, (pairs,), generator=generator),
    }
    batch["label"] = (batch["identity_a"] == batch["identity_b"]).long()
    return {key: value.to(device) for key, value in batch.items()}


def num_classes(config: Config) -> int:
    return int(config.data.train["num_classes"])


# ----------------------------------------------------------------------------- FLOPs


def count_flops(config: Config, device: torch.device, pairs: int = 1) -> dict[str, float]:
    """FLOPs per image (2 per multiply-add, as FlopCounterMode counts): ``embed`` (backbone
    and grid head, the evaluation forward), ``forward`` and ``backward`` of a training step
    (with the identity head, the losses and a pretrained target's forward), ``step`` (both)."""
    torch.manual_seed(0)
    model = build_model(config.model, num_classes(config)).to(device).train()
    losses = [LOSSES.build(c, f"losses.{i}") for i, c in enumerate(config.losses)]
    batch = random_batch(pairs, model.input_size, num_classes(config), device)
    with FlopCounterMode(display=False) as embed, torch.no_grad():
        model.embed(batch["image_a"])
    with FlopCounterMode(display=False) as forward:
        outputs = model(batch)
        total = sum(loss(outputs, batch) for loss in losses)
    with FlopCounterMode(display=False) as backward:
        total.backward()
    images = 2 * pairs
    counts = {
        "embed": embed.get_total_flops() / pairs,
        "forward": forward.get_total_flops() / images,
        "backward": backward.get_total_flops() / images,
    }
    counts["step"] = counts["forward"] + counts["backward"]
    return counts


# ----------------------------------------------------------------------------- speed


def variant_name(amp: str, channels_last: bool, compiled: bool = False) -> str:
    return amp + ("+channels_last" if channels_last else "") + ("+compile" if compiled else "")


def run_steps(step: Callable[[dict], Any], batch: dict, steps: int) -> None:
    for _ in range(steps):
        step(batch)


def measure_training(
    config: Config,
    device: torch.device,
    variants: list[tuple[str, bool, bool]],
    steps: int,
    rounds: int,
) -> dict[str, float]:
    """Training images/s of each (amp, channels_last, compiled) variant on a fixed batch in
    device memory (the model's speed, not the data pipeline's), interleaved."""
    pairs, works = config.data.batch_size, {}
    for amp, channels_last, compiled in variants:
        variant = with_precision(config, amp, channels_last)
        recipe = build_recipe(variant, num_classes(config), device, compile=compiled)
        recipe.model.train()
        size = recipe.model.input_size
        batch = recipe.to_device(random_batch(pairs, size, num_classes(config), device))
        works[variant_name(amp, channels_last, compiled)] = functools.partial(
            run_steps, recipe.step, batch, steps
        )
    times = interleave(works, device, rounds)
    return {name: 2 * pairs * steps / median(values) for name, values in times.items()}


def embed_steps(model: XCosModel, images: torch.Tensor, steps: int) -> None:
    with torch.no_grad(), torch.autocast(images.device.type, dtype=torch.bfloat16):
        for _ in range(steps):
            model.embed(images)


def measure_evaluation(
    config: Config, device: torch.device, batch: int, steps: int, rounds: int
) -> dict[str, float]:
    """Evaluation images/s (``model.embed``, eval mode, no_grad, bf16), contiguous and
    channels-last, interleaved."""
    works = {}
    for channels_last in (False, True):
        fmt = torch.channels_last if channels_last else torch.contiguous_format
        model = build_model(inference_config(config.model)).to(device).eval()
        model.to(memory_format=fmt)
        size = model.input_size
        images = torch.randn(batch, 3, size, size, device=device).contiguous(memory_format=fmt)
        works[variant_name("bf16", channels_last)] = functools.partial(
            embed_steps, model, images, steps
        )
    times = interleave(works, device, rounds)
    return {name: batch * steps / median(values) for name, values in times.items()}


def training_variants(device: torch.device) -> list[tuple[str, bool, bool]]:
    """bf16 and fp16 (CUDA only: fp16 autocast needs a GradScaler on the GPU), each with
    channels-last off and on; all eager."""
    amps = ["bf16", "fp16"] if device.type == "cuda" else ["bf16"]
    return [(amp, channels_last, False) for amp in amps for channels_last in (False, True)]


def compile_variants(
    mode: str, training: dict[str, float], device: torch.device
) -> list[tuple[str, bool, bool]]:
    """Eager and compiled twins of the best eager variant (``best``) or of every one (``all``)."""
    eager = training_variants(device)
    if mode == "best":
        best = max(training, key=training.get)
        eager = [v for v in eager if variant_name(*v) == best]
    return [(amp, cl, compiled) for amp, cl, _ in eager for compiled in (False, True)]


# ----------------------------------------------------------------------------- sections


def peak_text(peak: float | None) -> str:
    return f"peak {peak:.0f} TFLOP/s ({PEAK_SOURCE})" if peak else "peak unknown"


def device_section(device: torch.device, report: dict[str, Any]) -> None:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        name = props.name
        print(
            f"GPU: {name}, compute capability {props.major}.{props.minor}, "
            f"{props.total_memory / 2**30:.1f} GiB, {props.multi_processor_count} SMs"
        )
        print(
            f"torch {torch.__version__}, CUDA {torch.version.cuda}, "
            f"cuDNN {torch.backends.cudnn.version()}"
        )
        print(
            f"TF32 matmul {torch.backends.cuda.matmul.allow_tf32}, TF32 cuDNN "
            f"{torch.backends.cudnn.allow_tf32}, cudnn.benchmark {torch.backends.cudnn.benchmark}"
        )
        peak = peak_bf16_tflops(name)
    else:
        name = f"CPU {platform.processor() or platform.machine()}"
        print(
            f"{name}, {torch.get_num_threads()} threads, torch {torch.__version__} "
            "(smoke run: tiny sizes, the numbers are not a measurement)"
        )
        peak = None
    print(peak_text(peak))
    report["device"], report["peak"] = name, peak


def flops_section(config: Config, device: torch.device, report: dict[str, Any]) -> None:
    flops = count_flops(config, device)
    print(f"model.embed forward: {flops['embed'] / 1e9:.2f} GFLOP per image")
    print(
        f"training step: forward {flops['forward'] / 1e9:.2f} + backward "
        f"{flops['backward'] / 1e9:.2f} = {flops['step'] / 1e9:.2f} GFLOP per image "
        f"(step / forward {flops['step'] / flops['forward']:.2f}; the target network and the "
        "no-grad parts have no backward)"
    )
    report["flops"] = flops


def throughput_table(
    images_per_s: dict[str, float], flops_per_image: float | None, peak: float | None
) -> str:
    """images/s with the TFLOP/s they mean and their fraction of the dense bf16 peak."""
    rows = [f"{'variant':<28} {'images/s':>9} {'TFLOP/s':>8} {'of peak':>8}"]
    for name, value in images_per_s.items():
        tflops = value * flops_per_image / 1e12 if flops_per_image else None
        achieved = f"{tflops:.2f}" if tflops is not None else "-"
        share = f"{tflops / peak:.1%}" if tflops is not None and peak else "-"
        rows.append(f"{name:<28} {value:>9.1f} {achieved:>8} {share:>8}")
    return "\n".join(rows)


def flops_of(report: dict[str, Any], key: str) -> float | None:
    return report.get("flops", {}).get(key)


def training_section(
    config: Config, device: torch.device, sizes: Sizes, report: dict[str, Any]
) -> None:
    print(
        f"{sizes.pairs} pairs ({2 * sizes.pairs} images) per step, {sizes.steps} steps per "
        f"round, median of {sizes.rounds} interleaved rounds"
    )
    variants = training_variants(device)
    report["training"] = measure_training(config, device, variants, sizes.steps, sizes.rounds)
    print(throughput_table(report["training"], flops_of(report, "step"), report.get("peak")))


def compile_section(
    config: Config, device: torch.device, sizes: Sizes, mode: str, report: dict[str, Any]
) -> None:
    if mode == "none":
        print("skipped (--compile none; a smoke run compiles only when asked)")
        return
    variants = compile_variants(mode, report["training"], device)
    print(f"eager vs compiled ({mode}); the warm-up round compiles")
    report["compile"] = measure_training(config, device, variants, sizes.steps, sizes.rounds)
    print(throughput_table(report["compile"], flops_of(report, "step"), report.get("peak")))


def evaluation_section(
    config: Config, device: torch.device, sizes: Sizes, report: dict[str, Any]
) -> None:
    print(f"model.embed, eval mode, no_grad, bf16 autocast, {sizes.eval_batch} images per batch")
    result = measure_evaluation(config, device, sizes.eval_batch, sizes.steps, sizes.rounds)
    report["evaluation"] = result
    print(throughput_table(result, flops_of(report, "embed"), report.get("peak")))


def head_section(device: torch.device, sizes: Sizes, report: dict[str, Any]) -> None:
    rounds = max(sizes.rounds, 5) if device.type == "cuda" else sizes.rounds
    result = measure_head_cost(
        head_model(sizes.backbone), sizes.pairs, device, "bf16", False, rounds
    )
    report["head"] = result
    print(
        f"bf16, {sizes.pairs} pairs: backbone fwd+bwd {result['backbone_s'] * 1e3:.2f} ms, "
        f"xCos head fwd+bwd {result['head_s'] * 1e3:.2f} ms, share {result['share']:.2%} "
        "(target <= 2%)"
    )


def overhead_section(
    config: Config, device: torch.device, sizes: Sizes, report: dict[str, Any]
) -> None:
    result = compare(config, device, sizes.overhead_steps, sizes.rounds)
    report["overhead"] = result
    print(
        f"amp {result['amp']}, channels_last {result['channels_last']}, {result['batch_pairs']} "
        f"pairs, {result['steps']} steps per round, median of {result['rounds']} rounds"
    )
    print(format_result(result))


def summary(report: dict[str, Any], config: Config, failed: list[str]) -> str:
    """The results in a few lines for doc/performance.md."""
    backbone = config.model.backbone
    lines = [
        f"device: {report.get('device', '?')}, torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, {peak_text(report.get('peak'))}",
        f"model: ir_se depth {backbone['depth']} width {backbone['width']}, 112x112, xCos head, "
        f"{config.model.identity_head['type']} over {num_classes(config)} identities, "
        f"target {config.model.target['type']}",
    ]
    flops = report.get("flops")
    if flops:
        lines.append(
            f"GFLOP per image: embed {flops['embed'] / 1e9:.2f}, training step "
            f"{flops['step'] / 1e9:.2f} (forward {flops['forward'] / 1e9:.2f})"
        )
    tables = (("training", "step", "training"), ("compile", "step", "torch.compile"))
    for key, flop_key, title in (*tables, ("evaluation", "embed", "evaluation")):
        if key in report:
            lines += [
                f"{title}:",
                throughput_table(report[key], flops_of(report, flop_key), report.get("peak")),
            ]
    if "head" in report:
        lines.append(f"xCos head / backbone fwd+bwd (bf16): {report['head']['share']:.2%}")
    if "overhead" in report:
        result = report["overhead"]
        lines.append(
            f"Trainer vs bare loop ({result['amp']}, {result['batch_pairs']} pairs): "
            f"{result['trainer_images_per_s']:.1f} vs {result['bare_images_per_s']:.1f} "
            f"images/s, overhead {result['overhead']:.1%}"
        )
    lines.append(f"sections failed: {', '.join(failed) or 'none'}")
    return "```\n" + "\n".join(lines) + "\n```"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="CPU, tiny sizes (a test run)")
    parser.add_argument(
        "--device", choices=["cuda", "cpu"], default="cuda", help="cpu implies --smoke"
    )
    parser.add_argument(
        "--compile",
        choices=["best", "all", "none"],
        help="default: best on the GPU, none in a smoke run",
    )
    parser.add_argument("--compile-all", action="store_true", help="same as --compile all")
    parser.add_argument("--steps", type=int, help="timed steps per round")
    parser.add_argument("--rounds", type=int, help="interleaved rounds")
    parser.add_argument("--classes", type=int, help="identities of the ArcFace head")
    parser.add_argument(
        "--self-target",
        action="store_true",
        help="no pretrained target network (xCos explains its own cosine)",
    )
    parser.add_argument(
        "--no-cudnn-benchmark",
        dest="cudnn_benchmark",
        action="store_false",
        help="leave torch.backends.cudnn.benchmark off (the Trainer turns it on for CUDA runs "
        "that are not trainer.deterministic)",
    )
    return parser.parse_args(argv)


def sizes_from(args: argparse.Namespace, smoke: bool) -> Sizes:
    sizes = Sizes.smoke() if smoke else Sizes()
    for name in ("steps", "rounds", "classes"):
        if getattr(args, name) is not None:
            setattr(sizes, name, getattr(args, name))
    return sizes


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    smoke = args.smoke or args.device == "cpu"
    if not smoke and not torch.cuda.is_available():
        print("no CUDA GPU here: run with --smoke for the CPU check of this script")
        return 2
    device = torch.device("cpu" if smoke else "cuda")
    sizes = sizes_from(args, smoke)
    mode = "all" if args.compile_all else args.compile or ("none" if smoke else "best")
    torch.backends.cudnn.benchmark = args.cudnn_benchmark
    config = check_config(sizes, args.self_target)
    report: dict[str, Any] = {}
    sections = Sections()
    steps = (
        ("device", lambda: device_section(device, report)),
        ("FLOPs", lambda: flops_section(config, device, report)),
        ("training throughput", lambda: training_section(config, device, sizes, report)),
        ("torch.compile", lambda: compile_section(config, device, sizes, mode, report)),
        ("evaluation throughput", lambda: evaluation_section(config, device, sizes, report)),
        ("xCos head cost", lambda: head_section(device, sizes, report)),
        ("Trainer vs bare loop", lambda: overhead_section(config, device, sizes, report)),
        ("summary", lambda: print(summary(report, config, sections.failed))),
    )
    for title, section in steps:
        with sections.run(title):
            section()
    print(f"\nsections failed: {', '.join(sections.failed) or 'none'}")
    return 1 if sections.failed else 0


if __name__ == "__main__":
    sys.exit(main())
