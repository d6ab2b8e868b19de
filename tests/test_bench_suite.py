"""The CPU-safe parts of the speed benchmarks: gpu_check.py --smoke end to end, the FLOP count
of IR-SE-50, the Trainer-vs-bare-loop and head-cost measurements at tiny sizes, the GPU peak
table and the interleaving of rounds."""

from __future__ import annotations

import importlib
import math
import os
import re
import subprocess
import sys
from dataclasses import dataclass

import pytest
import torch

from tests.conftest import DEMO_CONFIG, REPO, require_module, require_shared

BENCH = REPO / "bench"
SECTION_TITLES = (
    "device",
    "FLOPs",
    "training throughput",
    "torch.compile",
    "evaluation throughput",
    "xCos head cost",
    "Trainer vs bare loop",
    "summary",
)
TINY_BACKBONE = {"type": "ir_se", "depth": 10, "width": 0.25, "embedding_dim": None}


@pytest.fixture
def bench(monkeypatch):
    """Imports a bench script the way running it does: with bench/ on sys.path (the scripts
    import their siblings)."""
    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module


@dataclass(frozen=True)
class Rounded:
    """The interval of values a printed number stands for: rounded to its last digit, "8.54"
    is anything in [8.535, 8.545]. Arithmetic on intervals bounds what the unrounded figures
    give, so a printed ratio can be checked against printed rates on a machine of any speed."""

    low: float
    high: float

    @classmethod
    def of(cls, text: str) -> Rounded:
        half = 0.5 * 10.0 ** -len(text.partition(".")[2])
        return cls(float(text) - half, float(text) + half)

    def __sub__(self, other: Rounded) -> Rounded:
        return Rounded(self.low - other.high, self.high - other.low)

    def __add__(self, other: Rounded) -> Rounded:
        return Rounded(self.low + other.low, self.high + other.high)

    def __mul__(self, other: Rounded | float) -> Rounded:
        other = exact(other)
        ends = [a * b for a in (self.low, self.high) for b in (other.low, other.high)]
        return Rounded(min(ends), max(ends))

    def __truediv__(self, other: Rounded | float) -> Rounded:
        other = exact(other)
        if other.low <= 0 <= other.high:
            return Rounded(-math.inf, math.inf)
        return self * Rounded(1 / other.high, 1 / other.low)

    def allows(self, other: Rounded | float) -> bool:
        """Whether one true value can lie behind both (the intervals overlap)."""
        other = exact(other)
        return self.low <= other.high and other.low <= self.high


def exact(value: Rounded | float) -> Rounded:
    return value if isinstance(value, Rounded) else Rounded(value, value)


def printed(pattern: str, text: str) -> tuple[str, ...]:
    """The numbers ``pattern``'s groups capture in ``text`` (which must match), as printed."""
    found = re.search(pattern, text, re.MULTILINE)
    assert found, f"{pattern!r} not in:\n{text}"
    return found.groups()


def section(out: str, title: str) -> str:
    """The text gpu_check.py printed under ``== title ==``."""
    start = out.index(f"\n== {title} ==\n") + len(title) + 8
    end = out.find("\n== ", start)
    return out[start : end if end >= 0 else len(out)]


@pytest.mark.slow
def test_gpu_check_smoke_runs_every_section_on_cpu():
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, str(BENCH / "gpu_check.py"), "--smoke"],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = done.stdout
    assert done.returncode == 0, out + done.stderr
    for title in SECTION_TITLES:
        assert f"\n== {title} ==\n" in out, title
    assert "!! section" not in out
    assert out.rstrip().endswith("sections failed: none")
    # Whatever the machine's speed, the printed figures must agree with each other (within
    # their rounding) and the summary must repeat the sections' figures.
    summary = section(out, "summary")
    embed, step = check_flops(section(out, "FLOPs"), summary)
    check_throughput(section(out, "training throughput"), "training", step, summary)
    check_throughput(section(out, "evaluation throughput"), "evaluation", embed, summary)
    check_head_share(section(out, "xCos head cost"), summary)
    check_trainer_vs_bare(section(out, "Trainer vs bare loop"), summary)


def check_flops(text: str, summary: str) -> tuple[Rounded, Rounded]:
    """forward + backward = step, the printed step / forward; the summary repeats them."""
    (embed,) = printed(r"^model\.embed forward: ([\d.]+) GFLOP per image$", text)
    step_line = r"forward ([\d.]+) \+ backward ([\d.]+) = ([\d.]+) GFLOP per image"
    parts = printed(step_line + r" \(step / forward ([\d.]+);", text)
    forward, backward, step, ratio = map(Rounded.of, parts)
    assert (forward + backward).allows(step) and (step / forward).allows(ratio), text
    assert (
        f"GFLOP per image: embed {embed}, training step {parts[2]} (forward {parts[0]})" in summary
    )
    return Rounded.of(embed), step


def check_throughput(text: str, title: str, gflop: Rounded, summary: str) -> None:
    """TFLOP/s = images/s x GFLOP per image / 1000 on every row; the summary repeats the table."""
    table = text[text.index("variant") : text.rindex("\n(")]
    rows = re.findall(r"^(\S+) +([\d.]+) +([\d.]+) +-$", table, re.MULTILINE)
    assert [row[0] for row in rows] == ["bf16", "bf16+channels_last"], table
    for _, rate, tflops in rows:
        assert (Rounded.of(rate) * gflop / 1000).allows(Rounded.of(tflops)), (title, rate, tflops)
    assert f"\n{title}:\n{table}\n" in summary, (title, summary)


def check_head_share(text: str, summary: str) -> None:
    """share = head / backbone time, printed in the summary too."""
    times = r"backbone fwd\+bwd ([\d.]+) ms, xCos head fwd\+bwd ([\d.]+) ms, share ([\d.]+)%"
    backbone, head, share = printed(times, text)
    assert (Rounded.of(head) / Rounded.of(backbone) * 100).allows(Rounded.of(share)), text
    assert f"xCos head / backbone fwd+bwd (bf16): {share}%" in summary, summary


def check_trainer_vs_bare(text: str, summary: str) -> None:
    """Both loops run the same images per round (rate x round time); the ratio is the quotient
    of the rates and the overhead its complement; the summary repeats the rates and overhead."""
    pairs, steps = printed(r"(\d+) pairs, (\d+) steps per round", text)
    images = int(pairs) * 2 * int(steps)
    loops = re.findall(r"^(Trainer|bare loop) +([\d.]+) +([\d.]+)$", text, re.MULTILINE)
    assert [loop[0] for loop in loops] == ["Trainer", "bare loop"], text
    for _, seconds, rate in loops:
        assert (Rounded.of(seconds) * Rounded.of(rate)).allows(images), (seconds, rate, text)
    (_, _, trainer), (_, _, bare) = loops
    ratio, overhead = printed(r"^Trainer / bare: ([\d.]+) \(overhead (-?[\d.]+)%", text)
    assert (Rounded.of(trainer) / Rounded.of(bare)).allows(Rounded.of(ratio)), text
    assert ((exact(1.0) - Rounded.of(ratio)) * 100).allows(Rounded.of(overhead)), text
    assert f": {trainer} vs {bare} images/s, overhead {overhead}%" in summary, summary


@pytest.mark.slow
def test_flops_of_ir_se_50_at_112(bench):
    gpu_check = bench("gpu_check")
    config = gpu_check.check_config(gpu_check.Sizes(classes=100), self_target=True)
    assert config.model.backbone["depth"] == 50 and config.model.backbone["width"] == 1.0
    flops = gpu_check.count_flops(config, torch.device("cpu"), pairs=1)
    # The convolutions of IR-50 at 112x112 come to 6.3 G multiply-adds per face (InsightFace's
    # figure for its ResNet-50-IR); FlopCounterMode counts 2 FLOPs per multiply-add.
    assert 12.0e9 < flops["embed"] < 13.2e9
    # Head, attention and a 100-class identity head add well under 1% to the backbone.
    assert flops["embed"] < flops["forward"] < 1.01 * flops["embed"]
    # Backward: gradients for the inputs and for the weights, each about a forward's work.
    assert 2.9 < flops["step"] / flops["forward"] < 3.05
    assert flops["step"] == pytest.approx(flops["forward"] + flops["backward"])


@pytest.mark.parametrize(
    "name, peak",
    [
        ("NVIDIA H100 80GB HBM3", 989.0),
        ("NVIDIA H100 PCIe", 756.0),
        ("NVIDIA H100 NVL", 835.0),
        ("NVIDIA H200", 989.0),
        ("NVIDIA A100-SXM4-80GB", 312.0),
        ("NVIDIA A100 80GB PCIe", 312.0),
        ("NVIDIA L40S", 362.0),
        ("NVIDIA L4", 121.0),
        ("NVIDIA A10", 125.0),
        ("NVIDIA GeForce RTX 4090", 165.0),
        ("NVIDIA GeForce RTX 3090", 71.0),
        ("NVIDIA A10G", None),
        ("NVIDIA GeForce RTX 3090 Ti", None),
        ("Tesla T4", None),
        ("Some Future GPU", None),
    ],
)
def test_peak_table_lookup(bench, name, peak):
    assert bench("gpu_check").peak_bf16_tflops(name) == peak


def test_trainer_overhead_compare_times_both_loops(bench):
    trainer_overhead = bench("trainer_overhead")
    from xcos.config import load_config

    layer = {
        "data": {
            "train": {"type": trainer_overhead.DATASET_TYPE, "num_classes": 8},
            "batch_size": 2,
        },
        "model": {"backbone": {**TINY_BACKBONE, "input_size": 64}},
        "trainer": {"compile": False},
    }
    config = load_config(DEMO_CONFIG, [layer])
    result = trainer_overhead.compare(config, torch.device("cpu"), steps=2, rounds=1)
    assert set(result) == {
        "batch_pairs", "steps", "rounds", "amp", "channels_last",
        "trainer_images_per_s", "bare_images_per_s", "trainer_round_s", "bare_round_s",
        "ratio", "overhead",
    }  # fmt: skip
    assert (result["batch_pairs"], result["steps"], result["rounds"]) == (2, 2, 1)
    assert (result["amp"], result["channels_last"]) == ("bf16", True)  # the demo's settings
    for loop in ("trainer", "bare"):  # 2 pairs (4 images) a step, 2 steps a round
        assert result[f"{loop}_images_per_s"] == pytest.approx(4 * 2 / result[f"{loop}_round_s"])
    ratio = result["trainer_images_per_s"] / result["bare_images_per_s"]
    assert result["ratio"] == pytest.approx(ratio)
    assert result["overhead"] == pytest.approx(1 - ratio)


def test_memory_pairs_look_like_the_training_pairs(bench):
    pairs = bench("trainer_overhead").MemoryPairs(pairs=10, num_classes=3, pool=4, image_size=16)
    assert len(pairs) == 10 and pairs.num_classes == 3
    item = pairs[5]
    assert set(item) == {"image_a", "image_b", "identity_a", "identity_b", "label"}
    assert item["image_a"].shape == (3, 16, 16) and item["identity_a"].ndim == 0
    assert item["label"] == int(item["identity_a"] == item["identity_b"])
    pairs.set_epoch(2)
    assert torch.equal(pairs[5]["image_b"], pairs[(2, 5)]["image_b"])  # the sampler's keys
    # Partners change with the epoch, as in the real pair datasets.
    assert any(
        not torch.equal(pairs[(0, i)]["image_b"], pairs[(1, i)]["image_b"]) for i in range(10)
    )


def test_head_cost_measures_both_parts(bench):
    head_cost = bench("head_cost")
    model = head_cost.head_model({**TINY_BACKBONE, "input_size": 64})
    result = head_cost.measure_head_cost(model, 2, torch.device("cpu"), rounds=1)
    assert set(result) == {"batch_pairs", "images", "backbone_s", "head_s", "share"}
    assert (result["batch_pairs"], result["images"]) == (2, 4)
    assert result["backbone_s"] > 0 and result["head_s"] > 0
    assert result["share"] == pytest.approx(result["head_s"] / result["backbone_s"])


def test_head_step_backward_reaches_its_input_and_every_head_parameter(bench):
    head_cost = bench("head_cost")
    model = head_cost.head_model({**TINY_BACKBONE, "input_size": 64}).train()
    features = torch.randn(4, model.backbone.out_channels, 4, 4, requires_grad=True)
    head_cost.head_step(model, features, head_cost.autocast_for("none", torch.device("cpu")))
    assert features.grad is not None and features.grad.abs().sum() > 0
    assert all(p.grad is not None for p in model.head.parameters())
    assert all(p.grad is None for p in model.backbone.parameters())


def test_interleave_alternates_after_warmup(bench):
    timing = bench("timing")
    calls: list[str] = []
    times = timing.interleave(
        {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")},
        torch.device("cpu"),
        rounds=3,
        warmup=1,
    )
    # warm-up a, b; then rounds a, b / b, a / a, b: neither always goes first
    assert calls == ["a", "b", "a", "b", "b", "a", "a", "b"]
    assert {name: len(values) for name, values in times.items()} == {"a": 3, "b": 3}


def test_a_failing_section_is_reported_and_the_next_one_runs(bench, capsys):
    sections = bench("gpu_check").Sections()
    with sections.run("broken"):
        raise RuntimeError("no compiler")
    with sections.run("fine"):
        print("still running")
    out = capsys.readouterr().out
    assert sections.failed == ["broken"]
    assert "== broken ==" in out and "no compiler" in out and "still running" in out


@pytest.mark.slow
def test_onnx_vs_torch_prints_both_runtimes_and_their_ratio(tiny_checkpoint):
    require_module("onnxruntime")
    script = BENCH / "onnx_vs_torch.py"
    argv = [sys.executable, str(script), "-p", str(tiny_checkpoint), "--batch", "1", "3"]
    out = subprocess.run([*argv, "--rounds", "1"], capture_output=True, text=True, check=True)
    rows = re.findall(
        r"^ir_se 64px\s+(\d+)\s+([\d.]+)\s+([\d.]+)\s+([\d.]+)x\s+([\d.e+-]+)$",
        out.stdout,
        re.MULTILINE,
    )
    assert [int(row[0]) for row in rows] == [1, 3], out.stdout
    for _, torch_rate, ort_rate, ratio, max_diff in rows:
        # Rates are printed to 0.1 and the ratio to 0.01: on a loaded machine a rate near
        # 1 pair/s moves by several percent in rounding alone, so the ratio must be one that
        # the printed rates allow.
        quotient = Rounded.of(ort_rate) / Rounded.of(torch_rate)
        assert quotient.allows(Rounded.of(ratio)), (torch_rate, ort_rate, ratio)
        assert float(max_diff) <= 1e-4


@pytest.mark.slow
def test_serve_load_compares_batching_on_and_off_on_loopback_only(tiny_checkpoint, tiny_synth):
    script = BENCH / "serve_load.py"
    refused = subprocess.run(
        [sys.executable, str(script), "-p", str(tiny_checkpoint), "--host", "0.0.0.0"],
        capture_output=True,
        text=True,
    )
    assert refused.returncode == 2 and "loopback" in refused.stderr
    argv = [sys.executable, str(script), "-p", str(tiny_checkpoint), "--faces"]
    argv += [str(tiny_synth / "val"), "--clients", "4", "--requests", "8", "--rounds", "1"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True, timeout=180).stdout
    rates = {}
    for variant in ("batching on", "batching off"):
        row = rf"^{variant}\s+(\d+)\s+([\d.]+)\s+(\d+)\s+(\d+)\s+(\d+)$"
        requests, rates[variant], p50, p95, failed = printed(row, out)
        assert (int(requests), int(failed)) == (8, 0) and int(p50) <= int(p95), out
    (ratio,) = printed(r"^requests/s, batching on / off: ([\d.]+)x$", out)
    quotient = Rounded.of(rates["batching on"]) / Rounded.of(rates["batching off"])
    assert quotient.allows(Rounded.of(ratio)), out


@pytest.mark.slow
def test_align_bench_compares_detectors_on_the_same_lfw_images():
    lfw = require_shared("data/lfw")
    argv = [sys.executable, str(BENCH / "align.py"), "--lfw", str(lfw), "--images", "6"]
    argv += ["--rounds", "1", "--variants", "facenet", "cascade"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    rows = re.findall(
        r"^(facenet|cascade)\s+([\d.]+)\s+([\d.]+)x\s+([\d.]+) GiB\s+([\d.]+)% of (\d+)",
        out,
        re.MULTILINE,
    )
    assert [row[0] for row in rows] == ["facenet", "cascade"], out
    base = Rounded.of(rows[0][1])
    for _, rate, ratio, memory, within, count in rows:
        assert (Rounded.of(rate) / base).allows(Rounded.of(ratio)), out
        assert 0.1 < float(memory) < 8 and int(count) == 6
        # the reference against itself, and the same detector batched: the same landmarks
        assert float(within) == 100.0
