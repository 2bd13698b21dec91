"""What the boundary-band Lovász term (``--edge-weight``) adds to a training step. The same
network and batch are timed round-robin in one run, in three forms:

* cross-entropy alone;
* cross-entropy plus the edge term, with the trainer's band (two 1-D window sums);
* cross-entropy plus the edge term, with the band as 2-D max pools (dilation minus erosion,
  the trainer's former code, kept here as the reference).

    python benchmarks/edge_term_cost.py [--network sinet] [--size 224] [--batch-size 16]
                                        [--steps 5] [--threads 1] [--out benchmarks/results]

Each training step is a forward, the loss, a backward and an SGD step, on a random batch with
a rectangular mask. The figures are the median step time over --steps, after one warm-up step,
and each edge form as a ratio to cross-entropy alone. Writes OUT/edge_term_cost.md, with
edge_term_cost.protocol.json beside it. A rerun with other settings is refused rather than
replacing those results: give another --out.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lightseg_nas.losses as losses
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset, list_presets
from lightseg_nas.scripts import Parser, count, guard_results, write_results
from lightseg_nas.speed import use_threads

NAME = "edge_term_cost"


def max_pool_band(masks: torch.Tensor, width: int) -> torch.Tensor:
    m = masks[:, None].float()
    pad = width // 2
    return (F.max_pool2d(m, width, 1, pad) + F.max_pool2d(1 - m, width, 1, pad) - 1)[:, 0] > 0


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--network", choices=list_presets(), default="sinet")
    parser.add_argument("--size", type=count(32, 1024), default=224)
    parser.add_argument("--batch-size", type=count(1, 256), default=16)
    parser.add_argument("--steps", type=count(1, 1000), default=5)
    parser.add_argument("--threads", type=count(1, 1024), default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    protocol = {"network": args.network, "size": args.size, "batch_size": args.batch_size, "steps": args.steps,
                "threads": args.threads, "torch": torch.__version__}
    guard_results(args.out, NAME, protocol)

    use_threads(args.threads)
    torch.manual_seed(0)
    model = build_model(get_preset(args.network)).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1e-3)
    x = torch.randn(args.batch_size, 3, args.size, args.size)
    masks = torch.zeros(args.batch_size, args.size, args.size, dtype=torch.long)
    masks[:, args.size // 6: args.size * 5 // 6, args.size // 4: args.size * 3 // 4] = 1
    trainer_band = losses.boundary_band
    forms = {"ce": (0.0, trainer_band), "ce+edge (window sums)": (0.5, trainer_band), "ce+edge (2-D max pools)": (0.5, max_pool_band)}
    times = {form: [] for form in forms}
    try:
        for step in range(args.steps + 1):
            for form, (edge, band) in forms.items():
                losses.boundary_band = band
                started = time.perf_counter()
                optimizer.zero_grad(set_to_none=True)
                losses.segmentation_loss(model(x), masks, "ce", edge_weight=edge).backward()
                optimizer.step()
                if step:  # the first round is warm-up
                    times[form].append(time.perf_counter() - started)
            print(f"round {step + 1}/{args.steps + 1} done", flush=True)
    finally:
        losses.boundary_band = trainer_band
    median = {form: statistics.median(values) for form, values in times.items()}
    lines = [
        f"# Edge-term cost per training step ({args.network}, batch {args.batch_size} at {args.size} px, "
        f"{args.threads} thread(s), torch {torch.__version__})",
        "",
        f"Command: `python benchmarks/edge_term_cost.py --network {args.network} --size {args.size} --batch-size {args.batch_size} "
        f"--steps {args.steps} --threads {args.threads}`. Median over {args.steps} steps of forward, loss, backward and SGD step, "
        "the three forms timed round-robin in one run (one warm-up round left out); ratio: over cross-entropy alone.",
        "",
        "| loss | median step s | ratio to ce |",
        "|:--|--:|--:|",
        *(f"| {form} | {median[form]:.3f} | {median[form] / median['ce']:.2f} |" for form in forms),
        "",
    ]
    write_results(args.out, NAME, "\n".join(lines), protocol)


if __name__ == "__main__":
    main()
