"""What denormal floats cost: trained networks timed with and without the CPU's
flush-to-zero / denormals-are-zero modes (``lightseg_nas.speed.flush_denormals``, on by
default in every command), round-robin in one run, on real EG1800 images.

    python benchmarks/denormals.py [--models FILE.pt ...] [--released | --no-released]
                                   [--data eg1800:../shared/data/eg1800] [--size 224] [--repeats 3]
                                   [--threads 1] [--out benchmarks/results]

Networks: the committed `final` model files of the SINet-family study (SINet, ExtremeC3Net
and the searched `7825f0dea1a9`, trained by us with the `final` recipe) or --models, and
(with --released, where ``../shared/reference/official`` has them) the released SINet and
ExtremeC3Net weights. For each, in both memory layouts (NCHW, `evaluate`'s default, and
channels-last, the trainer's and `eval`'s path), two figures at --size: the evaluation
forward (batch 32, inference mode) in ms per image, and a training step (batch 16:
forward, cross-entropy, backward, an SGD step at learning rate 0) in seconds, every time
from the loaded weights and batch-norm statistics (a training step's batch norm moves its
running statistics, which is where denormals can sit); each with denormals kept (IEEE) and flushed,
alternating, the median of --repeats after one warm-up, and the ratio kept / flushed. One
thread only: the mode belongs to each CPU thread and is toggled here in the main one.
Writes OUT/denormals.md (with denormals.protocol.json beside it; a rerun with other
settings is refused rather than replacing them: give another --out).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from lightseg_nas.errors import UserError
from lightseg_nas.scripts import Parser, count, existing_file, fail, guard_results, write_results

NAME = "denormals"
REPO = Path(__file__).resolve().parents[1]
FINAL = REPO / "studies" / "eg1800_hybrid_r128-final"
OFFICIAL = REPO.parent / "shared" / "reference" / "official"
RELEASED = {"sinet": "SINet.pth", "extremec3net": "ExtremeC3.pth"}


def networks(model_files: list[Path], released: bool) -> dict[str, tuple[torch.nn.Module, dict]]:
    from lightseg_nas.data.transforms import get_preprocessing
    from lightseg_nas.families import build_model
    from lightseg_nas.inference import load_network
    from lightseg_nas.presets import get_preset, load_released_weights

    found = {}
    for path in model_files:
        model, preprocessing, _ = load_network(path)
        found[f"{path.stem} (trained here)"] = (model, preprocessing)
    for name, file in RELEASED.items() if released else ():
        model = load_released_weights(build_model(get_preset(name)), name, OFFICIAL / file)
        found[f"{name} (released weights)"] = (model, get_preprocessing("released"))
    return found


def timed(run) -> float:
    started = time.perf_counter()
    run()
    return time.perf_counter() - started


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("--models", nargs="+", type=existing_file,
                        default=[FINAL / "sinet.pt", FINAL / "extremec3net.pt", FINAL / "7825f0dea1a9.pt"])
    parser.add_argument("--released", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--data", default=f"eg1800:{REPO.parent / 'shared' / 'data' / 'eg1800'}")
    parser.add_argument("--size", type=count(32, 1024), default=224)
    parser.add_argument("--repeats", type=count(1, 1000), default=3)
    parser.add_argument("--threads", type=count(1, 1), default=1)
    parser.add_argument("--out", type=Path, default=Path(__file__).parent / "results")
    args = parser.parse_args()
    if args.released and not all((OFFICIAL / file).is_file() for file in RELEASED.values()):
        fail(f"the released weights are not at {OFFICIAL} (../shared is absent); give --no-released")
    protocol = {"models": [Path(path).name for path in args.models], "released": args.released, "data": args.data, "size": args.size,
                "repeats": args.repeats, "threads": args.threads, "torch": torch.__version__}
    guard_results(args.out, NAME, protocol)

    from lightseg_nas.data import load_split
    from lightseg_nas.data.transforms import normalize
    from lightseg_nas.speed import place_input, place_model

    torch.set_num_threads(args.threads)
    try:
        data = load_split(args.data, "val", args.size)
        found = networks(args.models, args.released)
    except UserError as error:
        fail(str(error))
    rows = []
    for (label, (model, preprocessing)), channels_last in ((network, layout) for network in found.items() for layout in (False, True)):
        model = place_model(model, channels_last)
        layout = "channels-last" if channels_last else "NCHW"
        x_eval = place_input(normalize(data.images[:32], preprocessing), channels_last)
        x_train = place_input(normalize(data.images[:16], preprocessing), channels_last)
        masks = data.masks[:16].long()
        optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
        weights = copy.deepcopy(model.state_dict())  # where the denormals are (a step's batch norm would change them)

        def forward():
            model.load_state_dict(weights)
            model.eval()
            with torch.inference_mode():
                model(x_eval)

        def step():
            model.load_state_dict(weights)
            model.train()
            optimizer.zero_grad(set_to_none=True)
            logits = model(x_train)
            loss = F.binary_cross_entropy_with_logits(logits[:, 0], masks.float()) if logits.shape[1] == 1 else F.cross_entropy(logits, masks)
            loss.backward()
            optimizer.step()

        times = {(kind, flush): [] for kind in ("eval", "train") for flush in (False, True)}
        try:
            for repeat in range(args.repeats + 1):
                for flush in (False, True):
                    torch.set_flush_denormal(flush)
                    for kind, run in (("eval", forward), ("train", step)):
                        seconds = timed(run)
                        if repeat:  # the first round is warm-up
                            times[kind, flush].append(seconds)
                print(f"{label}, {layout}: round {repeat + 1}/{args.repeats + 1} done", flush=True)
        finally:
            torch.set_flush_denormal(True)
        median = {key: statistics.median(values) for key, values in times.items()}
        rows.append((label, layout, 1000 * median["eval", False] / 32, 1000 * median["eval", True] / 32, median["train", False], median["train", True]))
    lines = [
        f"# Denormal floats: kept against flushed ({args.threads} thread, torch {torch.__version__})",
        "",
        f"Command: `python benchmarks/denormals.py --models {' '.join(protocol['models'])} {'--released' if args.released else '--no-released'} "
        f"--size {args.size} --repeats {args.repeats}` (model files from {FINAL.relative_to(REPO) if all(Path(p).parent == FINAL for p in args.models) else 'the given paths'}). "
        f"Data: the first images of the validation split of `{args.data}` (fraction 0.1, seed 0) at {args.size} px. eval: the forward of a batch of 32, "
        "inference mode, ms per image. train: one training step of a batch of 16 "
        "(forward, cross-entropy, backward, SGD at learning rate 0), seconds. Median of "
        f"{args.repeats} after one warm-up, kept and flushed alternating in one run; ratio: kept over flushed.",
        "",
        "| network | layout | eval ms/img kept | eval ms/img flushed | eval ratio | train step s kept | train step s flushed | train ratio |",
        "|:--|:--|--:|--:|--:|--:|--:|--:|",
        *(f"| {label} | {layout} | {ek:.1f} | {ef:.1f} | {ek / ef:.2f} | {tk:.2f} | {tf:.2f} | {tk / tf:.2f} |" for label, layout, ek, ef, tk, tf in rows),
        "",
    ]
    write_results(args.out, NAME, "\n".join(lines), protocol)


if __name__ == "__main__":
    main()
