"""Cost table: params, MACs by counter and latency ratio to SINet for both presets and a
dozen random samples of each space. Writes benchmarks/results/cost_table.{csv,md}.

    python benchmarks/cost_table.py [--samples 12] [--size 224] [--threads 1] [--repeats 20]

Latency: every network is timed round-robin with SINet in the same run (batch 1, eager
PyTorch on the CPU); the ratio is the figure to read, absolute times drift on a shared CPU.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
import torch

import search_spaces
from lightseg_nas.config import arch_id
from lightseg_nas.cost import count_macs, count_params, measure_latency
from lightseg_nas.families import build_model
from lightseg_nas.presets import get_preset

OUT = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--samples", type=int, default=12)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()

    networks = {f"preset:{name}": get_preset(name) for name in ("extremec3net", "sinet")}
    for space in search_spaces.list_spaces():
        for seed in range(args.samples):
            networks[f"{space}:seed{seed}"] = search_spaces.sample(space, seed)
    rows = []
    for name, config in networks.items():
        # Two classes everywhere so that MACs compare with the papers' figures.
        config = config.model_copy(update={"num_classes": 2})
        model = build_model(config)
        macs = count_macs(model, args.size)
        reference = build_model(get_preset("sinet"))
        latency = measure_latency({"net": model, "sinet": reference}, args.size, args.threads, repeats=args.repeats)
        rows.append(
            {
                "network": name,
                "arch_id": arch_id(config),
                "params": count_params(model),
                **{f"macs_{counter}_M": round(count.macs / 1e6, 2) for counter, count in macs.items()},
                "latency_ratio_to_sinet": round(latency["net"].median_ms / latency["sinet"].median_ms, 3),
                "latency_ms": round(latency["net"].median_ms, 2),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    OUT.mkdir(parents=True, exist_ok=True)
    table.to_csv(OUT / "cost_table.csv", index=False)
    header = (
        f"# Cost table ({args.size}x{args.size}, 2 classes, batch 1, {args.threads} CPU thread(s), "
        f"torch {torch.__version__})\n\n"
        "MACs by counter: `fvcore` = fvcore plus our handlers (nothing uncounted); `conv_only` = "
        "Conv2d layers only (the papers' convention); `thop` = thop module hooks (functional ops "
        "uncounted). Latency ratio: median of round-robin runs against SINet in the same run.\n\n"
    )
    (OUT / "cost_table.md").write_text(header + table.to_markdown(index=False) + "\n")
    print(f"wrote {OUT / 'cost_table.csv'} and {OUT / 'cost_table.md'}")


if __name__ == "__main__":
    main()
