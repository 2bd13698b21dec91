"""Shrinking a trained network to the 37.7K-parameter regime on EG1800: what it costs.

    python benchmarks/compress.py [--target 37738] [--steps 3] [--epochs-per-step 2] [--size 160]

Arms, all on the EG1800 training list minus a 10% validation split (seed 0), validated at
224x224 (the papers' resolution; per-image foreground IoU, the papers' "mIoU") and at the
training size:

  (a) big:        SINet (86,910 params, 2.3x the target) trained from scratch,
                  --big-epochs at --size (the learning-curve protocol);
  (b) prune+FT:   (a) compressed to --target by `compress` without a teacher;
  (c) prune+FT+KD: the same with (a) as teacher (pixel-wise + channel-wise KD);
  (d) scratch:    (c)'s pruned architecture trained from scratch for as many epochs as (c)'s
                  weights received in all (big epochs + fine-tuning epochs), same protocol as (a);
  (d') scratch-short: the same for the fine-tuning epochs only.

Every arm is resumable (runs/compress_bench/...); a second call continues. Writes
benchmarks/results/compress_<steps>x<epochs-per-step>-lr<ft-lr>.{md,json}. Skips when ../shared is absent.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import pandas as pd
import torch

from lightseg_nas.compress import compress_to_file, format_row
from lightseg_nas.compress import settings_from as compress_settings
from lightseg_nas.config import arch_id, config_from_dict
from lightseg_nas.cost import count_params
from lightseg_nas.inference import evaluate_network, load_network
from lightseg_nas.modelfile import load_record
from lightseg_nas.presets import get_preset
from lightseg_nas.train import settings_from, train_to_file
from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]
EG1800 = REPO.parent / "shared" / "data" / "eg1800"
OUT = Path(__file__).parent / "results"


def _train(config, data: str, out: Path, settings, progress: bool) -> Path:
    if not (out / "model.pt").exists():
        print(f"training {out.name} ({settings.epochs} epochs)", flush=True)
        train_to_file(config, data, out, settings, resume=(out / "checkpoint.pt").exists(), progress=progress)
    return out / "model.pt"


def _compress(source: Path, out: Path, data: str, settings, teacher: Path | None, progress: bool) -> Path:
    if not out.exists():
        print(f"compressing {source} -> {out.name} (teacher: {teacher})", flush=True)
        partial = out.with_name(out.name + ".partial")
        compress_to_file(
            source, out, data, settings, str(teacher) if teacher else None, None, resume=partial.exists(),
            progress=progress, on_row=lambda row: print("  " + format_row(row), flush=True),
        )
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--target", type=int, default=37_738, help="parameters (ExtremeC3Net's 37,738 by default)")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--epochs-per-step", type=int, default=4)
    parser.add_argument("--big-epochs", type=int, default=15)
    parser.add_argument("--size", type=int, default=160)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=5e-3, help="from-scratch learning rate (a, d)")
    parser.add_argument("--ft-lr", type=float, default=5e-3, help="fine-tuning learning rate (b, c)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--data", default=f"eg1800:{EG1800}")
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "compress_bench")
    args = parser.parse_args()
    if args.data.startswith("eg1800:") and not Path(args.data[7:]).is_dir():
        print(f"skipped: EG1800 not found at {args.data[7:]}")
        return
    if args.threads:
        use_threads(args.threads)
    progress = sys.stderr.isatty()
    args.runs.mkdir(parents=True, exist_ok=True)

    scratch = dict(size=args.size, batch_size=args.batch_size, lr=args.lr, seed=args.seed)
    big = _train(get_preset("sinet"), args.data, args.runs / "big", settings_from(epochs=args.big_epochs, **scratch), progress)
    shrink = compress_settings(
        metric="params", target=args.target, steps=args.steps, epochs_per_step=args.epochs_per_step, lr=args.ft_lr,
        batch_size=args.batch_size, size=args.size, seed=args.seed,
    )
    schedule = f"{args.steps}x{args.epochs_per_step}"
    tag = f"{schedule}-lr{args.ft_lr:g}"
    prune_ft = _compress(big, args.runs / f"prune_ft-{tag}.pt", args.data, shrink, None, progress)
    prune_ft_kd = _compress(big, args.runs / f"prune_ft_kd-{tag}.pt", args.data, shrink, big, progress)
    pruned_config = config_from_dict(load_record(prune_ft_kd)["config"])
    ft_epochs = args.steps * args.epochs_per_step
    total = args.big_epochs + ft_epochs
    folder = f"scratch-{arch_id(pruned_config)}"
    scratch_long = _train(pruned_config, args.data, args.runs / f"{folder}-{total}ep", settings_from(epochs=total, **scratch), progress)
    scratch_short = _train(pruned_config, args.data, args.runs / f"{folder}-{ft_epochs}ep", settings_from(epochs=ft_epochs, **scratch), progress)

    arms = [
        ("(a) big (SINet)", big, args.big_epochs),
        ("(b) prune + fine-tune", prune_ft, args.big_epochs + ft_epochs),
        ("(c) prune + fine-tune + KD", prune_ft_kd, args.big_epochs + ft_epochs),
        ("(d) pruned arch. from scratch, same total epochs", scratch_long, args.big_epochs + ft_epochs),
        ("(d') pruned arch. from scratch, fine-tuning epochs", scratch_short, ft_epochs),
    ]
    rows = []
    for name, path, epochs in arms:
        model, preprocessing, record = load_network(path)
        at_224 = evaluate_network(model, preprocessing, args.data, "val", 224, 0.1, 0, progress)
        at_size = evaluate_network(model, preprocessing, args.data, "val", args.size, 0.1, 0, progress)
        rows.append(
            {
                "arm": name,
                "params": count_params(model),
                "arch_id": record["arch_id"],
                "epochs": epochs,
                "val_fg_iou_224px": round(100 * at_224["fg_iou"], 2),
                f"val_fg_iou_{args.size}px": round(100 * at_size["fg_iou"], 2),
                "val_miou_224px": round(100 * at_224["miou"], 2),
                "val_boundary_f_224px": round(100 * at_224["boundary_f"], 2),
                "train_minutes": round(record.get("train_seconds", 0) / 60, 1),
            }
        )
        print(rows[-1], flush=True)
    table = pd.DataFrame(rows)
    steps = {
        name: load_record(path)["compress"]["steps"] for name, path in (("prune_ft", prune_ft), ("prune_ft_kd", prune_ft_kd))
    }
    step_rows = [
        {"run": run, "step": r["step"], "params": r["params"], "macs_conv_only_M": round(r["macs"] / 1e6, 2),
         f"val_fg_iou_{args.size}px": round(100 * r["val_fg_iou"], 2), "minutes": round(r["seconds"] / 60, 1)}
        for run, rs in steps.items() for r in rs
    ]
    OUT.mkdir(exist_ok=True)
    name = f"compress_{tag}"
    (OUT / f"{name}.json").write_text(json.dumps({"settings": vars(args) | {"runs": str(args.runs), "data": args.data}, "arms": rows, "steps": step_rows}, indent=2) + "\n")
    a, b, c, d = (rows[i]["val_fg_iou_224px"] for i in range(4))
    text = [
        "# Compression to the 37.7K regime on EG1800",
        "",
        f"Command: `python benchmarks/compress.py --target {args.target} --steps {args.steps} --epochs-per-step {args.epochs_per_step} --ft-lr {args.ft_lr:g} "
        f"--big-epochs {args.big_epochs} --size {args.size}` (torch {torch.__version__}, CPU).",
        f"Training: EG1800 train minus a 10% validation split (seed 0), {args.size}x{args.size}, batch {args.batch_size}, augmentation on; "
        f"from scratch Adam {args.lr} cosine; fine-tuning Adam {args.ft_lr} cosine per step; KD: pixel-wise (T=2, weight 1) + channel-wise (weight 1), teacher (a).",
        "fg IoU = per-image foreground IoU averaged over the 134 validation images (the papers' \"mIoU\"). train_minutes: summed epoch times on a shared 2-core machine, indicative only.",
        "",
        table.to_markdown(index=False),
        "",
        f"(c) - (d) = {c - d:+.2f} points; (c) - (a) = {c - a:+.2f} points; (b) - (a) = {b - a:+.2f} points (validation fg IoU at 224).",
        "",
        "Per step of `compress` (validation at the training size; MACs by the conv_only counter at 224x224):",
        "",
        pd.DataFrame(step_rows).to_markdown(index=False),
        "",
    ]
    (OUT / f"{name}.md").write_text("\n".join(text))
    print("\n".join(text))


if __name__ == "__main__":
    main()
