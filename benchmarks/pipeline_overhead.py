"""Data-pipeline cost of the trainer: for the same batches in one run, the time of the
trainer's batch preparation (cache gather, augmentation, normalisation: the code ``fit``
runs) against the bare model's forward + backward + Adam step on the prepared batch.

    python benchmarks/pipeline_overhead.py [--steps 12] [--batch-size 16]

Both presets at 224 and 128 on this machine's threads (2 cores here). Uses EG1800 when
../shared is present, else synthetic portraits. Writes benchmarks/results/pipeline_overhead.md.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.data import load_split
from lightseg_nas.data.transforms import get_preprocessing
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset
from lightseg_nas.train import prepare_batch, segmentation_loss, settings_from

REPO = Path(__file__).resolve().parents[1]
EG1800 = REPO.parent / "shared" / "data" / "eg1800"
OUT = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=16)
    args = parser.parse_args()
    spec = f"eg1800:{EG1800}" if EG1800.is_dir() else "synthetic:count=200"
    rows = []
    for size in (224, 128):
        data = load_split(spec, "train", size)
        settings = settings_from(size=size, batch_size=args.batch_size)
        preprocessing = get_preprocessing("default")
        for preset in ("sinet", "extremec3net"):
            torch.manual_seed(0)
            model = build_model(get_preset(preset)).train()
            optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
            generator = torch.Generator().manual_seed(0)
            prepare_s, step_s = [], []
            for step in range(args.steps + 2):  # the first two are warm-up
                index = torch.randperm(len(data), generator=generator)[: args.batch_size]
                started = time.perf_counter()
                x, masks = prepare_batch(data, index, settings, preprocessing, generator, "cpu")
                prepared = time.perf_counter()
                loss = segmentation_loss(model(x), masks)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                done = time.perf_counter()
                if step >= 2:
                    prepare_s.append(prepared - started)
                    step_s.append(done - prepared)
            prepare, bare = sum(prepare_s), sum(step_s)
            rows.append(
                {
                    "preset": preset,
                    "size": size,
                    "bare_images_per_s": round(args.batch_size * args.steps / bare, 1),
                    "trainer_images_per_s": round(args.batch_size * args.steps / (prepare + bare), 1),
                    "pipeline_share_pct": round(100 * prepare / (prepare + bare), 1),
                }
            )
            print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pipeline_overhead.md").write_text(
        f"# Trainer data-pipeline cost ({spec.split(':')[0]}, batch {args.batch_size}, {args.steps} timed steps, "
        f"{torch.get_num_threads()} threads, torch {torch.__version__})\n\n"
        "pipeline_share_pct = time in batch preparation (gather, augment, normalise) / time of the whole "
        "training step, on the same batches in one run.\n\n" + table.to_markdown(index=False) + "\n"
    )
    print(table.to_markdown(index=False))


if __name__ == "__main__":
    main()
