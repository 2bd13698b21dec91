"""Learning curves of the published networks trained from scratch on EG1800 (the baseline
every searched network is compared against), validation split held out by seed.

    python benchmarks/learning_curve.py [--presets sinet extremec3net] [--epochs 15] [--size 160]
                                        [--no-channels-last] [--compile] [--tag NAME]

Resumable: each run checkpoints every epoch under runs/curves/<preset>/ and a second call
continues it. Writes benchmarks/results/learning_curve.csv (one row per preset and epoch:
validation metrics at the training size) and learning_curve.md (with the final models'
validation fg IoU at 224x224, the papers' resolution, and the trainer's images_per_s).
The execution path is the trainer's default (channels-last) unless told otherwise;
``--tag NAME`` writes learning_curve_NAME.* and runs/curves/...-NAME instead, so runs of
other paths sit beside the default's. Skips when ../shared is absent.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.presets import get_preset
from lightseg_nas.train import settings_from, train_to_file

REPO = Path(__file__).resolve().parents[1]
EG1800 = REPO.parent / "shared" / "data" / "eg1800"
OUT = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--presets", nargs="+", default=["sinet", "extremec3net"])
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=f"eg1800:{EG1800}")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "curves")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--compile", action="store_true")
    parser.add_argument("--tag", default="")
    args = parser.parse_args()
    suffix = f"_{args.tag}" if args.tag else ""
    if args.data.startswith("eg1800:") and not Path(args.data[7:]).is_dir():
        print(f"skipped: EG1800 not found at {args.data[7:]}")
        return

    settings = settings_from(
        epochs=args.epochs, size=args.size, batch_size=args.batch_size, lr=args.lr, seed=args.seed,
        channels_last=args.channels_last, compile=args.compile,
    )
    rows, finals = [], []
    for preset in args.presets:
        out = args.runs / f"{preset}-{args.size}px-{args.epochs}ep{suffix.replace('_', '-')}"
        if not (out / "model.pt").exists():
            print(f"training {preset} ({out})", flush=True)
            train_to_file(get_preset(preset), args.data, out, settings, resume=(out / "checkpoint.pt").exists(), progress=sys.stderr.isatty())
        model, preprocessing, record = load_network(out / "model.pt")
        rows += [{"preset": preset, **row} for row in record["history"]]
        metrics = evaluate_network(model, preprocessing, args.data, "val", 224, settings.val_fraction, settings.val_seed)
        finals.append(
            {
                "preset": preset,
                "params": sum(p.numel() for p in model.parameters()),
                f"val_fg_iou_{args.size}px": round(100 * record["history"][-1]["val_fg_iou"], 2),
                "val_fg_iou_224px": round(100 * metrics["fg_iou"], 2),
                "val_miou_224px": round(100 * metrics["miou"], 2),
                "val_boundary_f_224px": round(100 * metrics["boundary_f"], 2),
                "train_minutes": round(sum(row["seconds"] for row in record["history"]) / 60, 1),
                "images_per_s": round(record["images_per_s"], 1) if record.get("images_per_s") else None,
            }
        )
        print(finals[-1], flush=True)
    OUT.mkdir(parents=True, exist_ok=True)
    curve = pd.DataFrame(rows)
    curve.to_csv(OUT / f"learning_curve{suffix}.csv", index=False)
    table = pd.DataFrame(finals)
    text = (
        f"# Learning curves: published networks from scratch on EG1800\n\n"
        f"Protocol: train split minus a 10% validation split (seed {settings.val_seed}), {args.epochs} epochs at "
        f"{args.size}x{args.size}, batch {args.batch_size}, Adam lr {args.lr:g} cosine, default preprocessing, "
        f"augmentation on, seed {args.seed}, torch {torch.__version__} on the CPU; execution path: "
        f"{'channels-last' if args.channels_last else 'eager NCHW'}{', torch.compile' if args.compile else ''}.\n"
        f"train_minutes is the sum of the epochs' wall times (validation included) on a 2-core machine; images_per_s is "
        f"the trainer's own figure (training steps only). Times are indicative: compare paths with benchmarks/throughput.py.\n"
        f"fg IoU = per-image foreground IoU averaged over the validation images (the papers' \"mIoU\").\n\n"
        + table.to_markdown(index=False)
        + "\n\nPer-epoch validation fg IoU (at the training size):\n\n"
        + curve.pivot(index="epoch", columns="preset", values="val_fg_iou").mul(100).round(2).to_markdown()
        + "\n"
    )
    (OUT / f"learning_curve{suffix}.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
