"""Final-training protocol candidates: the published networks trained from scratch on EG1800
under named recipes (epochs, training size, loss, the official recipe's pieces), all scored
the same way.

    python benchmarks/protocol.py RUN [RUN ...] [--threads N]
    python benchmarks/protocol.py --list

A RUN is NETWORK:RECIPE, e.g. ``extremec3net:30ep-224`` or ``sinet1:final-edge0.5``. A
NETWORK is a preset (extremec3net, sinet: the released 2-class heads) or the preset with
``1`` appended (one output logit, as the studies build them). Recipes are defined in RECIPES
below; the ``final-*`` ones are the trainer's ``final`` recipe (30 epochs at 224) with one
piece of the official recipe added: the boundary-band Lovasz term (``--edge-weight 0.5``),
the official affine warp (``--affine official``), or encoder-first training
(``--encoder-epochs 10``, the first 10 of the 30 epochs). Each run trains in
runs/protocol/<network>-<recipe>/ (checkpoint every epoch, so a stop loses at most one epoch
and the same command continues it; ``lightseg-nas train ... --out`` that folder trains the
same run) and, once finished, adds one row to benchmarks/results/protocol.csv (replacing
the row of the same run) and rewrites protocol.md. A finished run, and a committed row, are
reused or replaced only when they were trained with this run's protocol; otherwise one line,
before any training. Every row is scored with the papers' protocol: per-image foreground IoU
on the validation split (10% of the training list, seed 0), images resized to 224x224
(OpenCV-style bilinear), masks by top-left nearest. The held-out test list is never read.
Skips when ../shared is absent.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.errors import UserError
from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.presets import get_preset
from lightseg_nas.scripts import Parser, count, fail
from lightseg_nas.train import protocol_differences, settings_from, train_to_file
from lightseg_nas.speed import use_threads

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
    "final": dict(recipe="final"),
    "final-edge0.5": dict(recipe="final", edge_weight=0.5),
    "final-affine": dict(recipe="final", affine="official"),
    "final-enc10": dict(recipe="final", encoder_epochs=10),
}
# the columns of a row that name its protocol (a committed row is replaced only by the same)
PROTOCOL_COLUMNS = ("classes", "epochs", "train_size", "seed", "loss", "edge_weight", "affine", "encoder_epochs")
DEFAULTS = {"classes": 2, "edge_weight": 0.0, "affine": "default", "encoder_epochs": 0}  # rows written before these columns


def network_of(name: str):
    """A preset, or the preset with 1 appended for its 1-logit head."""
    base, classes = (name[:-1], 1) if name.endswith("1") else (name, None)
    config = get_preset(base)
    return config if classes is None else config.model_copy(update={"num_classes": classes})


def plan(name: str):
    """(network, settings, run folder name) of NETWORK:RECIPE, or one line saying what is wrong."""
    network, _, recipe = name.partition(":")
    if recipe not in RECIPES:
        fail(f"{name!r}: unknown recipe {recipe!r}; known: {', '.join(RECIPES)}")
    try:
        config = network_of(network)
    except UserError as error:
        fail(f"{name!r}: {error}")
    return config, settings_from(**RECIPES[recipe]), f"{network}-{recipe}"


def protocol_of(config, settings) -> dict:
    return {"classes": config.num_classes, "epochs": settings.epochs, "train_size": settings.size, "seed": settings.seed, "loss": settings.loss,
            "edge_weight": settings.edge_weight, "affine": settings.affine, "encoder_epochs": settings.encoder_epochs}


def check(name: str, config, settings, folder: Path, results: Path) -> None:
    """A finished run in the folder, and the committed row of this run, hold this protocol."""
    model_file = folder / "model.pt"
    differ = protocol_differences(model_file, settings, config) if model_file.exists() else []
    if differ:
        fail(f"{model_file}: was trained with another network or protocol ({', '.join(differ)}); give another --folder")
    path = results / "protocol.csv"
    if path.exists():
        rows = pd.read_csv(path)
        rows = rows[rows["run"] == name]
        if len(rows):
            kept = {key: rows.iloc[0].get(key, DEFAULTS.get(key)) for key in PROTOCOL_COLUMNS}
            kept = {key: DEFAULTS.get(key) if pd.isna(value) else value for key, value in kept.items()}
            wanted = protocol_of(config, settings)
            differ = [key for key in PROTOCOL_COLUMNS if str(kept[key]) != str(wanted[key]) and not _same_number(kept[key], wanted[key])]
            if differ:
                fail(f"{path}: the row of {name} holds another protocol ({', '.join(differ)}); give another --results folder")


def _same_number(a, b) -> bool:
    try:
        return float(a) == float(b)
    except (TypeError, ValueError):
        return False


def run(name: str, data: str, runs: Path, threads: int) -> dict:
    config, settings, folder_name = plan(name)
    out = runs / folder_name
    if not (out / "model.pt").exists():
        print(f"training {name} ({out})", flush=True)
        train_to_file(config, data, out, settings, resume=(out / "checkpoint.pt").exists(), progress=sys.stderr.isatty())
    model, preprocessing, record = load_network(out / "model.pt")
    metrics = evaluate_network(model, preprocessing, data, "val", 224, settings.val_fraction, settings.val_seed, progress=False)
    history = record["history"]
    return {
        "run": name,
        "preset": name.partition(":")[0],
        "recipe": name.partition(":")[2],
        "params": sum(p.numel() for p in model.parameters()),
        **protocol_of(config, settings),
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
    table = pd.concat([table, fresh], ignore_index=True)
    for key, value in DEFAULTS.items():
        table[key] = table[key].fillna(value) if key in table else value
    table = table.sort_values(["preset", "epochs", "train_size", "run"])
    table.to_csv(path, index=False)
    shown = ["run", "params", "classes", "epochs", "train_size", "loss", "edge_weight", "affine", "encoder_epochs", "val_fg_iou_train_size", "val_fg_iou_224", "val_miou_224", "val_boundary_f_224", "fg_iou_at_half_epochs", "cpu_threads", "train_minutes", "images_per_s"]
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
        "classes: output logits (2: the released heads; 1: the studies' networks, e.g. `sinet1`). edge_weight, affine, "
        "encoder_epochs: the official recipe's pieces (boundary-band Lovasz term, affine warp, encoder-first epochs of the total). "
        "Run-to-run noise (other seeds) is 0.15-0.2 points.\n\n" + table[shown].to_markdown(index=False) + "\n"
    )


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("runs", nargs="*", help="NETWORK:RECIPE")
    parser.add_argument("--list", action="store_true", help="print the recipes and exit")
    parser.add_argument("--threads", type=count(1, 1024), default=None, help="torch threads (default: torch's)")
    parser.add_argument("--data", default=f"eg1800:{EG1800}")
    parser.add_argument("--folder", type=Path, default=REPO / "runs" / "protocol", help="run folders")
    parser.add_argument("--results", type=Path, default=OUT, help="where protocol.csv/md go")
    args = parser.parse_args()
    if args.list:
        for name, values in RECIPES.items():
            print(name, values)
        return
    if not args.runs:
        fail("give at least one NETWORK:RECIPE run (see --list)")
    for name in args.runs:  # every run checked before any training
        config, settings, folder_name = plan(name)
        check(name, config, settings, args.folder / folder_name, args.results)
    if args.data.startswith("eg1800:") and not Path(args.data[7:]).is_dir():
        print(f"skipped: EG1800 not found at {args.data[7:]}")
        return
    if args.threads:
        use_threads(args.threads)
    for name in args.runs:
        row = run(name, args.data, args.folder, torch.get_num_threads())
        write([row], args.results)
        print(row, flush=True)


if __name__ == "__main__":
    main()
