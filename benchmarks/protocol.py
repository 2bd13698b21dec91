"""Final-training protocol candidates: the published networks trained from scratch on EG1800
under named recipes (epochs, training size, teacher), all scored the same way.

    python benchmarks/protocol.py RUN [RUN ...] [--threads N]
    python benchmarks/protocol.py --list

A RUN is PRESET:RECIPE, e.g. ``extremec3net:30ep-224``; recipes are defined in RECIPES
below. Each run trains in runs/protocol/<preset>-<recipe>/ (checkpoint every epoch, so a
stop loses at most one epoch and the same command continues it) and, once finished, adds
one row to benchmarks/results/protocol.csv (replacing an older row of the same run) and
rewrites protocol.md. Every row is scored with the papers' protocol: per-image foreground
IoU on the validation split (10% of the training list, seed 0), images resized to 224x224
(OpenCV-style bilinear), masks by top-left nearest. The held-out test list is never read.
Skips when ../shared is absent.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.presets import get_preset
from lightseg_nas.train import settings_from, train_to_file

REPO = Path(__file__).resolve().parents[1]
EG1800 = REPO.parent / "shared" / "data" / "eg1800"
OUT = Path(__file__).parent / "results"

# Everything not named here is the trainer's default (batch 16, Adam lr 5e-3, cosine after
# one warm-up epoch, augmentation on, seed 0, validation 10% by seed 0).
RECIPES = {
    "30ep-160": dict(epochs=30, size=160),
    "30ep-224": dict(epochs=30, size=224),
    "60ep-160": dict(epochs=60, size=160),
    "60ep-224": dict(epochs=60, size=224),
    "100ep-224": dict(epochs=100, size=224),
    "30ep-160-lovasz": dict(epochs=30, size=160, loss="ce+lovasz"),
    "30ep-224-lovasz": dict(epochs=30, size=224, loss="ce+lovasz"),
}


def run(name: str, data: str, runs: Path, threads: int) -> dict:
    preset, _, recipe = name.partition(":")
    if recipe not in RECIPES:
        raise SystemExit(f"unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    settings = settings_from(**RECIPES[recipe])
    out = runs / f"{preset}-{recipe}"
    if not (out / "model.pt").exists():
        print(f"training {name} ({out})", flush=True)
        train_to_file(get_preset(preset), data, out, settings, resume=(out / "checkpoint.pt").exists(), progress=sys.stderr.isatty())
    model, preprocessing, record = load_network(out / "model.pt")
    metrics = evaluate_network(model, preprocessing, data, "val", 224, settings.val_fraction, settings.val_seed, progress=False)
    history = record["history"]
    return {
        "run": name,
        "preset": preset,
        "recipe": recipe,
        "params": sum(p.numel() for p in model.parameters()),
        "epochs": settings.epochs,
        "train_size": settings.size,
        "seed": settings.seed,
        "loss": settings.loss,
        "val_fg_iou_train_size": round(100 * history[-1]["val_fg_iou"], 2),
        "val_fg_iou_224": round(100 * metrics["fg_iou"], 2),
        "val_miou_224": round(100 * metrics["miou"], 2),
        "val_boundary_f_224": round(100 * metrics["boundary_f"], 2),
        "best_epoch_fg_iou_train_size": round(100 * max(row["val_fg_iou"] for row in history), 2),
        "fg_iou_at_half_epochs": round(100 * history[len(history) // 2 - 1]["val_fg_iou"], 2),
        "cpu_threads": threads,
        "train_minutes": round(sum(row["seconds"] for row in history) / 60, 1),
        "images_per_s": round(record["images_per_s"], 1) if record.get("images_per_s") else None,
        "compiled": any(row.get("compiled") for row in history),
        "torch": torch.__version__,
        "finished": time.strftime("%Y-%m-%d"),
    }


def write(rows: list[dict], out: Path = OUT) -> None:
    OUT = out
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "protocol.csv"
    table = pd.read_csv(path) if path.exists() else pd.DataFrame()
    fresh = pd.DataFrame(rows)
    if len(table):
        table = table[~table["run"].isin(fresh["run"])]
    table = pd.concat([table, fresh], ignore_index=True).sort_values(["preset", "epochs", "train_size", "run"])
    table.to_csv(path, index=False)
    shown = ["run", "params", "epochs", "train_size", "loss", "val_fg_iou_train_size", "val_fg_iou_224", "val_miou_224", "val_boundary_f_224", "fg_iou_at_half_epochs", "cpu_threads", "train_minutes", "images_per_s"]
    (OUT / "protocol.md").write_text(
        "# Final-training protocol candidates\n\n"
        "Written by `python benchmarks/protocol.py RUN ...` (see its docstring for the recipes). Published networks from "
        "scratch on the EG1800 training list minus a 10% validation split (seed 0); the test list is never read. "
        "Batch 16, Adam lr 5e-3, cosine after one warm-up epoch, augmentation on, seed 0, default preprocessing, the "
        "trainer's default execution path (channels-last; torch.compile for runs of 2,000+ steps).\n\n"
        "val_fg_iou_224 is the papers' metric (per-image foreground IoU averaged over the 134 validation images, "
        "images resized to 224x224 as the papers do). val_fg_iou_train_size is the trainer's last-epoch figure at the "
        "training size; fg_iou_at_half_epochs is the same at half the epochs (how far from flat the curve still is). "
        "train_minutes: the sum of epoch wall times with cpu_threads threads on this 2-core machine (indicative only). "
        "Run-to-run noise (other seeds) is 0.15-0.2 points.\n\n" + table[shown].to_markdown(index=False) + "\n"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="*", help="PRESET:RECIPE")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data", default=f"eg1800:{EG1800}")
    parser.add_argument("--folder", type=Path, default=REPO / "runs" / "protocol", help="run folders")
    parser.add_argument("--results", type=Path, default=OUT, help="where protocol.csv/md go")
    args = parser.parse_args()
    if args.list:
        for name, values in RECIPES.items():
            print(name, values)
        return
    if args.data.startswith("eg1800:") and not Path(args.data[7:]).is_dir():
        print(f"skipped: EG1800 not found at {args.data[7:]}")
        return
    if args.threads:
        torch.set_num_threads(args.threads)
    for name in args.runs:
        row = run(name, args.data, args.folder, torch.get_num_threads())
        write([row], args.results)
        print(row, flush=True)


if __name__ == "__main__":
    main()
