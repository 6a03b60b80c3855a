"""Training step time of FCMAE pre-training against supervised training of the same encoder, and the FLOPs of
the dense masked encoder against the official sparse one's.

    python benchmarks/fcmae_step.py --device cpu --model convnextv2_atto --image-size 224 --batch-size 8 \\
        --steps 3 --warmup 1 --threads 1 --clock thread --json runs/bench/fcmae_atto_224.json
    python benchmarks/fcmae_step.py --device cpu --model convnextv2_atto --image-size 32 --patch-size 1 \\
        --batch-size 64 --steps 5 --warmup 2 --threads 1 --clock thread --json runs/bench/fcmae_atto_32.json

A step is forward, backward and an AdamW step, on one fixed random batch (data loading is not measured):

- ``fcmae``: ``create_fcmae(model)`` drawing a fresh random mask every step, as pre-training does; its encoder is
  the dense masked one (``convnext_pl.models.fcmae``), which computes every site;
- ``supervised``: ``create_model(model)`` with its classifier head and cross-entropy, the same encoder and stem.

Each measurement times ``--steps`` steps after ``--warmup`` untimed ones; the two paths run interleaved (in a
rotating order) ``--repeats`` times and the medians are reported, as in ``train_throughput.py``, whose window and
environment record this reuses. On a shared CPU use ``--threads 1 --clock thread``: with other jobs on the cores,
OpenMP's spin-waiting threads can slow a step several times over, unevenly, and wall-clock ratios stop meaning
anything.

FLOPs are forward FLOPs of one image, counted by ``torch.utils.flop_counter.FlopCounterMode`` (convolutions and
matmuls, 2 per multiply-add). The official encoder is sparse (MinkowskiEngine, which does not install on current
PyTorch), so its cost is an estimate: its stem is dense (it runs before the mask is applied), and every later
layer does the dense layer's per-site work at the visible sites only, so sparse = stem + visible fraction x (dense
encoder - stem). That is an upper bound, as a sparse depthwise convolution next to a masked patch reads fewer
neighbours; and it counts FLOPs, not time (a sparse convolution's gathers and scatters do not run at a dense
kernel's FLOP rate).
"""

import argparse
import json
import statistics
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.flop_counter import FlopCounterMode
from train_throughput import LR, WEIGHT_DECAY, Window, _environment, _load_average, set_threads

from convnext_pl.models import create_model
from convnext_pl.models.fcmae import FCMAE, create_fcmae
from convnext_pl.training.optim import build_optimizer

PATHS = ("supervised", "fcmae")


# ------------------------------------------------------------------------------------------------- timing
class StepLoop:
    """Forward, backward and AdamW step of one network on a fixed batch; ``loss_of`` maps the network and the batch
    to the loss (the FCMAE's own masked loss, or cross-entropy of the classifier)."""

    def __init__(
        self, net: nn.Module, loss_of: Callable[[nn.Module], torch.Tensor], device: torch.device, clock: str
    ):
        self.net, self.loss_of, self.device, self.clock = net.to(device).train(), loss_of, device, clock
        # The same AdamW for both paths (train_throughput.py's lr and decay; their values do not change the time).
        self.optimizer = build_optimizer(self.net, LR, WEIGHT_DECAY)

    def measure(self, warmup: int, steps: int, batch_size: int) -> Window:
        window = Window(self.device, steps, self.clock)
        for index in range(warmup + steps):
            if index == warmup:
                window.start()
            loss = self.loss_of(self.net)
            self.optimizer.zero_grad(set_to_none=True)
            window.memory.sample()
            loss.backward()
            window.memory.sample()
            self.optimizer.step()
        window.stop(batch_size)
        return window


def build_loops(args) -> tuple[dict[str, StepLoop], FCMAE, nn.Module]:
    torch.manual_seed(0)
    device = torch.device(args.device)
    fcmae = create_fcmae(args.model, mask_ratio=args.mask_ratio, patch_size=args.patch_size)
    classifier = create_model(args.model, num_classes=args.num_classes, patch_size=args.patch_size)
    images = torch.randn(args.batch_size, 3, args.image_size, args.image_size, device=device)
    targets = torch.randint(args.num_classes, (args.batch_size,), device=device)
    loops = {
        "supervised": StepLoop(
            classifier, lambda net: F.cross_entropy(net(images), targets), device, args.clock
        ),
        "fcmae": StepLoop(
            fcmae, lambda net: net(images)[0], device, args.clock
        ),  # (loss, pred, mask): a new mask each step
    }
    return loops, fcmae, classifier


# -------------------------------------------------------------------------------------------------- FLOPs
def _flops(fn: Callable[[], object]) -> int:
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        fn()
    return counter.get_total_flops()


def count_flops(fcmae: FCMAE, classifier: nn.Module, image_size: int) -> dict:
    """Forward FLOPs of one image: the classifier, the FCMAE's parts, and the sparse encoder's estimate (see the
    module docstring)."""
    fcmae, classifier = fcmae.cpu().eval(), classifier.cpu().eval()
    image = torch.randn(1, 3, image_size, image_size)
    mask = fcmae.random_mask(image)
    with torch.no_grad():
        features = fcmae.forward_encoder(image, mask)
    visible = 1.0 - mask.mean().item()  # int(L * (1 - mask_ratio)) / L
    stem = _flops(lambda: fcmae.encoder.downsample_layers[0](image))
    dense = _flops(lambda: fcmae.forward_encoder(image, mask))
    sparse = stem + visible * (dense - stem)
    return {
        "classifier": _flops(lambda: classifier(image)),
        "fcmae_encoder_dense": dense,
        "fcmae_encoder_sparse_estimate": round(sparse),
        "fcmae_stem": stem,
        "fcmae_decoder": _flops(lambda: fcmae.forward_decoder(features, mask)),
        "visible_fraction": round(visible, 4),
        "dense_over_sparse": round(dense / sparse, 3),
        "sparse_estimate": "stem + visible_fraction * (dense encoder - stem); an upper bound (sparse depthwise "
        "convolutions beside masked patches read fewer neighbours)",
    }


# --------------------------------------------------------------------------------------------------- main
def run(args) -> dict:
    loops, fcmae, classifier = build_loops(args)
    load_before = _load_average()
    for path in PATHS:  # untimed round: allocator growth, first-touch page faults, kernel selection
        loops[path].measure(args.warmup, 1, args.batch_size)
    ms: dict[str, list[float]] = {path: [] for path in PATHS}
    peaks: dict[str, list[float]] = {path: [] for path in PATHS}
    for repeat in range(args.repeats):
        for path in PATHS[repeat % 2 :] + PATHS[: repeat % 2]:  # rotate so no path always runs first
            window = loops[path].measure(args.warmup, args.steps, args.batch_size)
            ms[path].append(1e3 * args.batch_size / window.images_per_s)
            peaks[path].append(window.peak_bytes / 2**20)
            print(f"repeat {repeat}  {path:<10} {ms[path][-1]:10.1f} ms/step", flush=True)
    median = {path: statistics.median(ms[path]) for path in PATHS}
    return {
        "ms_per_step": {path: round(median[path], 2) for path in PATHS},
        "fcmae_over_supervised": round(median["fcmae"] / median["supervised"], 3),
        "repeats_ms_per_step": {path: [round(v, 2) for v in ms[path]] for path in PATHS},
        "peak_memory_mib": {path: round(max(peaks[path]), 1) for path in PATHS},
        "memory_kind": "cuda_max_memory_allocated" if args.device == "cuda" else "process_rss",
        "mask_patch": fcmae.patch_size,
        "forward_flops_per_image": count_flops(fcmae, classifier, args.image_size),
        "config": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "environment": _environment(args, load_before),
    }


def table(result: dict) -> str:
    ms, flops = result["ms_per_step"], result["forward_flops_per_image"]
    config = result["config"]
    lines = [
        f"{config['model']}, {config['image_size']} px, batch {config['batch_size']}, mask patch "
        f"{result['mask_patch']} px, {result['environment']['device']}",
        f"{'training step (fwd + bwd + AdamW)':<40}{'ms/step':>12}",
        f"{'  supervised classification':<40}{ms['supervised']:>12.1f}",
        f"{'  FCMAE pre-training':<40}{ms['fcmae']:>12.1f}",
        f"{'  FCMAE / supervised':<40}{result['fcmae_over_supervised']:>12.3f}",
        f"{'forward FLOPs per image':<40}{'GFLOPs':>12}",
    ]
    rows = [
        ("  classifier (dense)", "classifier"),
        ("  FCMAE encoder, dense masked", "fcmae_encoder_dense"),
        ("  FCMAE encoder, sparse (estimate)", "fcmae_encoder_sparse_estimate"),
        ("  FCMAE decoder", "fcmae_decoder"),
    ]
    lines += [f"{label:<40}{flops[key] / 1e9:>12.4f}" for label, key in rows]
    lines += [
        f"{'  dense / sparse encoder':<40}{flops['dense_over_sparse']:>12.3f}",
        f"sparse estimate: {flops['sparse_estimate']}; visible fraction {flops['visible_fraction']}",
    ]
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--model", default="convnextv2_atto", help="a hierarchical ConvNeXt of the registry")
    parser.add_argument("--image-size", type=int, default=224, help="a multiple of the mask patch")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per measurement")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps before each measurement")
    parser.add_argument("--repeats", type=int, default=3, help="interleaved measurements per path (median)")
    parser.add_argument(
        "--patch-size", type=int, help="stem patch (None: 4, 32-px mask patches; 1 for small images: 8)"
    )
    parser.add_argument("--mask-ratio", type=float, default=0.6, help="the paper's 0.6")
    parser.add_argument("--num-classes", type=int, default=1000, help="the supervised head's classes")
    parser.add_argument(
        "--clock",
        choices=["wall", "thread"],
        default="wall",
        help="ms of wall-clock time, or of CPU time of the training thread (CPU with --threads 1: a shared machine)",
    )
    parser.add_argument("--threads", type=int, help="torch intra-op threads (default: torch's, one per core)")
    parser.add_argument("--json", type=Path, help="write the results to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    set_threads(args)
    result = run(args)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return result


if __name__ == "__main__":
    main()
