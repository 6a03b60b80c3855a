"""The end of the training transform, run on whole batches on the training device: RandAugment (drawn in the
workers), normalisation and random erasing, in the recipe's order.

The fast training path (``fast_pipeline: true`` of the image-folder data modules) leaves the DataLoader workers
with uint8 images, a quarter of the bytes of float32 ones, and the RandAugment ops and magnitudes each image drew
(``rand_augment.py``), and does the per-pixel work here, after the batch is on the GPU: RandAugment on uint8, as
timm's Pillow ops do it, then, as timm's ``PrefetchLoader`` does, normalisation and the same ``RandomErasing``
class applied per image to the normalised batch, so the distribution is the recipe's. Random erasing draws from
python's ``random`` and the device's generator; they are seeded per batch from the batch's first sample seed
(``resumable.py``), because the Lightning hook this runs in comes before ``StepSeeding`` seeds the step, and a
resumed run must draw what the uninterrupted one drew. RandAugment draws nothing here.
"""

import contextlib
import random
from collections.abc import Iterator, Sequence

import torch
from timm.data.random_erasing import RandomErasing

from convnext_pl.data.augment.rand_augment import BatchRandAugment


@contextlib.contextmanager
def seeded_device_generators(seed: int, device: torch.device) -> Iterator[None]:
    """Run the block with python's ``random``, torch's CPU generator and ``device``'s generator seeded with
    ``seed``, and put all three back afterwards."""
    python_state = random.getstate()
    accelerators = [device] if device.type != "cpu" else []
    with torch.random.fork_rng(devices=accelerators, device_type=device.type if accelerators else "cuda"):
        random.seed(seed)
        torch.random.default_generator.manual_seed(seed)
        if accelerators:
            torch.get_device_module(device.type).manual_seed(seed)  # the current device, the batch's
        yield
    random.setstate(python_state)


class DeviceAugment:
    """uint8 image batches -> RandAugment-ed, normalised float32 batches with timm's random erasing, on the
    batches' device.

    Args:
        mean: per-channel mean (0..1 scale).
        std: per-channel std (0..1 scale).
        re_prob: probability of erasing each image (recipe 0.25); 0 disables it.
        re_mode: erasing fill (``pixel``: per-pixel normal noise, the recipe's).
        re_count: at most this many erased boxes per image (recipe 1).
        rand_augment: applies the workers' RandAugment draws (None: the batches come without draws).
    """

    def __init__(
        self,
        mean: Sequence[float],
        std: Sequence[float],
        re_prob: float,
        re_mode: str = "pixel",
        re_count: int = 1,
        rand_augment: BatchRandAugment | None = None,
    ):
        self.mean, self.std = tuple(mean), tuple(std)
        self.rand_augment = rand_augment
        self.re_prob, self.re_mode, self.re_count = re_prob, re_mode, re_count
        self._erasing: dict[torch.device, RandomErasing] = {}

    def __call__(
        self,
        images: torch.Tensor,
        seed: int | None = None,
        draws: tuple[torch.Tensor, torch.Tensor] | None = None,
    ) -> torch.Tensor:
        """RandAugment ``images`` (uint8 [N, 3, H, W]) by ``draws`` (op ids, arguments: [N, L] each), normalise and
        erase; ``seed`` fixes the erasing draws (None: the generators as they stand)."""
        device = images.device
        if draws is not None and self.rand_augment is not None:
            images = self.rand_augment(images, *draws)
        # (x / 255 - mean) / std in one pass: (x - 255 mean) / (255 std), as timm's PrefetchLoader computes it.
        mean = torch.tensor([255 * m for m in self.mean], device=device).view(1, -1, 1, 1)
        std = torch.tensor([255 * s for s in self.std], device=device).view(1, -1, 1, 1)
        batch = images.float().sub_(mean).div_(std)
        if self.re_prob <= 0:
            return batch
        erasing = self._erasing.get(device)
        if erasing is None:
            erasing = RandomErasing(self.re_prob, mode=self.re_mode, max_count=self.re_count, device=device)
            self._erasing[device] = erasing
        if seed is None:
            return erasing(batch)
        with seeded_device_generators(seed, device):
            return erasing(batch)

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(rand_augment={self.rand_augment}, re_prob={self.re_prob}, "
            f"re_mode={self.re_mode}, re_count={self.re_count})"
        )
