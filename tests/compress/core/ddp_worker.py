"""Run by tests/compress/core/test_distributed.py, under torchrun or alone: train a tiny EDSR with
``compress.core.train.fit`` and save this rank's weights and losses to ``OUT/rank<R>.pt``.

    python tests/compress/core/ddp_worker.py OUT IMAGES STEPS DIE_AT RESUME
"""

import os
import sys
from pathlib import Path

import torch

from compress.core.data import PatchConfig, list_images, load_pairs, random_patches
from compress.core.distributed import ranks, release_process_group
from compress.core.train import fit
from compress.core.train_config import TrainConfig
from tests.conftest import tiny_edsr


def main() -> None:
    out, images, steps, die_at, resume = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.set_num_threads(1)
    pairs = load_pairs(list_images(images), 2)
    fixed_lr, fixed_hr = next(random_patches(pairs, 2, PatchConfig(lr_patch=16, batch_size=ranks().world * 4, seed=99)))
    model = tiny_edsr(2, seed=0)

    def probe() -> float:
        with torch.no_grad():
            return float(torch.nn.functional.l1_loss(model.eval()(torch.from_numpy(fixed_lr)), torch.from_numpy(fixed_hr)))

    def die(step: int) -> None:
        if step == die_at:
            os._exit(17)  # killed after the checkpoint of step 5, before that of step 10

    resumed = torch.load(resume, weights_only=True)["step"] if Path(resume).is_file() else 0
    before = probe()
    cfg = TrainConfig(steps=steps, lr=1e-3, ckpt_every=5, precision=os.environ.get("WORKER_PRECISION", "fp32"), seed=3)
    batches = random_patches(pairs, 2, PatchConfig(lr_patch=16, batch_size=4, seed=1))
    log = fit(model, batches, cfg, 2, hooks=[die], resume=Path(resume))
    torch.save({"state": model.state_dict(), "before": before, "after": probe(), "resumed_from": resumed,
                "steps_done": log.steps_done, "world": ranks().world}, out / f"rank{ranks().rank}.pt")
    release_process_group()  # as the CLI does (compress/pipeline/cli.py main)


if __name__ == "__main__":
    main()
