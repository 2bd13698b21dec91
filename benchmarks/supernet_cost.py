"""What a supernet costs: one sandwich step of each space's supernet against one training step
of the published networks, and the time to score one sub-network (batch-norm recalibration
plus validation) against the time to train one candidate for a rung, measured side by side
in one run on the same batches.

    python benchmarks/supernet_cost.py [--size 160] [--batch-size 16] [--steps 6] [--threads 2]

Writes benchmarks/results/supernet_cost.md (and .csv). Synthetic images (speed does not
depend on their content). Each figure is the median of ``--steps`` timed steps after one
warm-up step; the supernet steps use the sandwich rule with 2 random sub-networks, as
``lightseg-nas supernet`` does by default.
"""

from __future__ import annotations

import argparse
import statistics
import time
from pathlib import Path

import pandas as pd
import torch

import search_spaces
from lightseg_nas.data import load_split
from lightseg_nas.data.transforms import get_preprocessing, normalize
from lightseg_nas.distill import pixel_kd, two_class_logits
from lightseg_nas.families import build_model
from lightseg_nas.losses import segmentation_loss
from lightseg_nas.metrics import evaluate
from lightseg_nas.presets import get_preset
from lightseg_nas.supernet import build_supernet, recalibrate, subnet
from lightseg_nas.speed import use_threads

OUT = Path(__file__).parent / "results"


def _timed(step, count: int) -> float:
    step()  # warm-up
    times = []
    for _ in range(count):
        started = time.perf_counter()
        step()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--val-images", type=int, default=134, help="EG1800's validation split has 134")
    parser.add_argument("--recalibration-images", type=int, default=256)
    args = parser.parse_args()
    use_threads(args.threads)
    preprocessing = get_preprocessing("default")
    data = load_split(f"synthetic:count={max(args.batch_size, args.recalibration_images, args.val_images)}", "train", args.size)
    x = normalize(data.images[: args.batch_size], preprocessing)
    masks = data.masks[: args.batch_size]
    rows = []

    def standalone_step(model):
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)

        def step():
            optimizer.zero_grad()
            segmentation_loss(model(x), masks).backward()
            optimizer.step()

        return step

    for preset in ("extremec3net", "sinet"):
        model = build_model(get_preset(preset)).train()
        rows.append({"what": f"training step, {preset} alone", "seconds": _timed(standalone_step(model), args.steps)})

    for space, classes in (("extremec3", 1), ("sinet", 2), ("hybrid", 2)):
        supernet = build_supernet(space, classes).train()
        optimizer = torch.optim.Adam(supernet.parameters(), lr=1e-3)
        generator = torch.Generator().manual_seed(0)
        module = search_spaces.supernet_space(space)

        def step():
            configs = [module.largest(classes), module.smallest(classes)]
            configs += [search_spaces.sample(space, int(torch.randint(0, 2**31 - 1, (1,), generator=generator)), classes) for _ in range(2)]
            optimizer.zero_grad()
            teacher = None
            for config in configs:
                logits = supernet(x, config)
                loss = segmentation_loss(logits, masks)
                if teacher is None:
                    teacher = two_class_logits(logits.detach())
                else:
                    loss = loss + pixel_kd(two_class_logits(logits), teacher, 1.0)
                loss.backward()
            optimizer.step()

        rows.append({"what": f"supernet sandwich step, {space} (largest, smallest, 2 random)", "seconds": _timed(step, args.steps)})
        val = data.__class__(data.images[: args.val_images], data.masks[: args.val_images], data.names[: args.val_images], data.description, data.synthetic)
        recal = data.images[: args.recalibration_images]
        supernet.eval()
        samples = iter(range(10_000))

        def score():
            network = subnet(supernet, search_spaces.sample(space, next(samples), classes))
            recalibrate(network, recal, preprocessing)
            evaluate(network, val, preprocessing)

        rows.append({"what": f"scoring one sampled {space} sub-network ({args.recalibration_images} recalibration + {args.val_images} validation images)", "seconds": _timed(score, args.steps)})

    frame = pd.DataFrame(rows)
    reference = frame.seconds[0]
    frame["x_extremec3net_step"] = (frame.seconds / reference).round(2)
    frame["seconds"] = frame.seconds.round(3)
    OUT.mkdir(parents=True, exist_ok=True)
    frame.to_csv(OUT / "supernet_cost.csv", index=False)
    text = (
        "# Supernet cost\n\n"
        f"Written by `python benchmarks/supernet_cost.py --size {args.size} --batch-size {args.batch_size} --steps {args.steps} "
        f"--threads {args.threads}`: medians of {args.steps} timed steps after a warm-up, {args.threads} threads, batch "
        f"{args.batch_size} at {args.size} px, eager NCHW, torch {torch.__version__} on the CPU, all in one run. x_extremec3net_step "
        "is each figure over one training step of ExtremeC3Net alone. A stand-alone training of E epochs on EG1800's 1,207 "
        f"training images takes E x {-(-1207 // args.batch_size)} such steps; a supernet epoch takes the same number of sandwich steps.\n\n"
        + frame.to_markdown(index=False)
        + "\n"
    )
    (OUT / "supernet_cost.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
