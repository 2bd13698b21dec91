"""What the metrics add to an evaluation. The same network and batch are timed round-robin
in one run, in three forms:

* the network's forward alone (inference mode, the layout `eval` uses);
* the forward plus the metrics as ``evaluate`` computes them (boundary-F windows as shifted
  ORs of bool maps);
* the forward plus the metrics with the windows as float 2-D max pools (the former code,
  kept here as the reference; both give the same figures, tested in tests/test_train.py).

    python benchmarks/metric_cost.py [--network sinet] [--size 224] [--batch-size 32]
                                     [--steps 5] [--threads 1] [--out benchmarks/results]

The batch is random pixels; the target a rectangle, the prediction the network's own
(untrained weights, so a ragged map with many boundary pixels: no faster than a real one).
The figures are the median batch time over --steps, after one warm-up round, and each form
as a ratio to the forward alone. Writes OUT/metric_cost.md, with metric_cost.protocol.json
beside it. A rerun with other settings is refused rather than replacing those results: give
another --out.
"""

from __future__ import annotations

import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

import lightseg_nas.metrics as metrics
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset, list_presets
from lightseg_nas.scripts import Parser, count, guard_results, write_results
from lightseg_nas.speed import flush_denormals, place_input, place_model, use_threads

NAME = "metric_cost"


def max_pool_boundary(mask: torch.Tensor) -> torch.Tensor:
    m = mask[:, None].float()
    return (F.max_pool2d(m, 3, 1, 1) + F.max_pool2d(-m, 3, 1, 1))[:, 0] > 0


def max_pool_dilate(mask: torch.Tensor, radius: int) -> torch.Tensor:
    return F.max_pool2d(mask[:, None].float(), 2 * radius + 1, 1, radius)[:, 0] > 0


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--network", choices=list_presets(), default="sinet")
    parser.add_argument("--size", type=count(32, 1024), default=224)
    parser.add_argument("--batch-size", type=count(1, 256), default=32)
    parser.add_argument("--steps", type=count(1, 1000), default=5)
    parser.add_argument("--threads", type=count(1, 1024), default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    protocol = {"network": args.network, "size": args.size, "batch_size": args.batch_size, "steps": args.steps,
                "threads": args.threads, "torch": torch.__version__}
    guard_results(args.out, NAME, protocol)

    use_threads(args.threads)
    flush_denormals()
    torch.manual_seed(0)
    model = place_model(build_model(get_preset(args.network)).eval(), True)
    x = place_input(torch.randn(args.batch_size, 3, args.size, args.size), True)
    target = torch.zeros(args.batch_size, args.size, args.size, dtype=torch.bool)
    target[:, args.size // 6: args.size * 5 // 6, args.size // 4: args.size * 3 // 4] = True
    ours = (metrics._boundary, metrics._dilate)
    forms = {"forward alone": None, "forward + metrics (shifted ORs)": ours, "forward + metrics (2-D max pools)": (max_pool_boundary, max_pool_dilate)}
    times = {form: [] for form in forms}
    try:
        with torch.inference_mode():
            for step in range(args.steps + 1):
                for form, windows in forms.items():
                    started = time.perf_counter()
                    prediction = metrics.predict_foreground(model(x))
                    if windows:
                        metrics._boundary, metrics._dilate = windows
                        metrics.SegmentationMeter().update(prediction, target)
                    if step:  # the first round is warm-up
                        times[form].append(time.perf_counter() - started)
                print(f"round {step + 1}/{args.steps + 1} done", flush=True)
    finally:
        metrics._boundary, metrics._dilate = ours
    median = {form: statistics.median(values) for form, values in times.items()}
    alone = median["forward alone"]
    lines = [
        f"# Metric cost per evaluation batch ({args.network}, batch {args.batch_size} at {args.size} px, "
        f"{args.threads} thread(s), torch {torch.__version__})",
        "",
        f"Command: `python benchmarks/metric_cost.py --network {args.network} --size {args.size} --batch-size {args.batch_size} "
        f"--steps {args.steps} --threads {args.threads}`. Median over {args.steps} batches of the forward (channels-last, "
        "inference mode) and the metrics (fg IoU, mIoU sums, boundary F at tolerance 2), the three forms timed round-robin "
        "in one run (one warm-up round left out); ratio: over the forward alone.",
        "",
        "| form | median batch s | ratio to the forward |",
        "|:--|--:|--:|",
        *(f"| {form} | {median[form]:.3f} | {median[form] / alone:.2f} |" for form in forms),
        "",
    ]
    write_results(args.out, NAME, "\n".join(lines), protocol)


if __name__ == "__main__":
    main()
