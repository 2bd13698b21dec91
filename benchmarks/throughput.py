"""Training throughput and batch-1 latency of every execution path, as ratios to eager
NCHW measured side by side in one run.

    python benchmarks/throughput.py [--sizes 128 160 224] [--samples 6] [--threads 2]
                                    [--compile-samples] [--steps 6] [--rounds 3]

Networks: both published networks and ``--samples`` random samples (seeds 0..N-1) of each
space, with one output class (what the studies train).

Training: images per second of forward + backward + Adam step on batches of 16 (random
inputs: the data pipeline is measured by pipeline_overhead.py), for eager NCHW,
channels_last, torch.compile and both. The paths of one network and size are timed in
``--rounds`` alternating rounds of ``--steps`` steps each after their warm-up (for the
compiled paths the warm-up includes the compilation, whose time is reported separately);
the figure is the median step time. torch.compile runs on the published networks only,
unless ``--compile-samples`` (about a minute of compile time per network and size).

Latency: batch 1, ``--threads`` threads (default 1, as the studies measure it), eager
NCHW, eager channels_last and ONNX Runtime (intra-op threads = ``--threads``, inter-op 1),
all of a network's paths timed round-robin in one run (lightseg_nas.cost.measure_latency);
the table gives each path's median and its ratio to eager NCHW, and the rank of the
network among all networks on each backend.

Trainer, end to end: ``fit`` itself (batch preparation with augmentation, the step,
everything but validation and the first step) on EG1800 (synthetic portraits where
../shared is absent) at 160 px, both published networks, eager NCHW (``--no-channels-last``)
against the default path, ``--trainer-steps`` steps each, alternating over two rounds, then
once with ``compile`` (its first step, which compiles, reported apart); the figure is the
``images_per_s`` the trainer itself reports.

Writes benchmarks/results/throughput.md and throughput.csv; figures are written as they
come (throughput.csv is rewritten after every network), and a second call skips the rows
already there.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

# A fresh Inductor cache, so compile times are those of a first run (set before torch loads)
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="lightseg-inductor-"))

import pandas as pd  # noqa: E402
import torch  # noqa: E402

import search_spaces  # noqa: E402
from lightseg_nas.cost import count_params, measure_latency  # noqa: E402
from lightseg_nas.data import load_split  # noqa: E402
from lightseg_nas.data.transforms import get_preprocessing  # noqa: E402
from lightseg_nas.families import build_model  # noqa: E402
from lightseg_nas.presets import get_preset  # noqa: E402
from lightseg_nas.speed import compiled, place_input, place_model  # noqa: E402
from lightseg_nas.train import fit, images_per_s, segmentation_loss, settings_from  # noqa: E402
from lightseg_nas.speed import use_threads

REPO = Path(__file__).resolve().parents[1]
EG1800 = REPO.parent / "shared" / "data" / "eg1800"
OUT = Path(__file__).parent / "results"
TRAIN_PATHS = {"eager": (False, False), "channels_last": (True, False), "compile": (False, True), "compile+channels_last": (True, True)}
LATENCY_PATHS = {"eager": "torch", "channels_last": "torch-channels-last", "onnxruntime": "onnxruntime"}


def networks(samples: int) -> list[tuple[str, object]]:
    found = [(name, get_preset(name).model_copy(update={"num_classes": 1})) for name in ("extremec3net", "sinet")]
    for space in search_spaces.SPACES:
        found += [(f"{space}/{seed}", search_spaces.sample(space, seed, num_classes=1)) for seed in range(samples)]
    return found


def train_rates(config, size: int, paths: list[str], steps: int, rounds: int, batch: int = 16) -> dict:
    """Median images/s per path (and compile seconds), paths alternating round by round."""
    generator = torch.Generator().manual_seed(0)
    x = torch.randn(batch, 3, size, size, generator=generator)
    masks = torch.rand(batch, size, size, generator=generator) > 0.5
    runs = {}
    for path in paths:
        channels_last, compile_it = TRAIN_PATHS[path]
        torch.manual_seed(0)
        model = place_model(build_model(config).train(), channels_last)
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        forward = compiled(model, compile_it)
        inputs = place_input(x, channels_last)

        def step(forward=forward, optimizer=optimizer, inputs=inputs):
            loss = segmentation_loss(forward(inputs), masks)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()

        started = time.perf_counter()
        step()
        warm = time.perf_counter() - started
        step()
        runs[path] = {"step": step, "times": [], "first_step_s": warm}
    for _ in range(rounds):
        for run in runs.values():
            for _ in range(steps):
                started = time.perf_counter()
                run["step"]()
                run["times"].append(time.perf_counter() - started)
    return {path: (batch / statistics.median(run["times"]), run["first_step_s"]) for path, run in runs.items()}


def latencies(config, size: int, threads: int, repeats: int) -> dict:
    """Median ms per latency path: each backend times the network's copies round-robin."""
    results = {}
    for path, backend in LATENCY_PATHS.items():
        model = build_model(config).eval()
        results[path] = measure_latency({"net": model}, size=size, threads=threads, repeats=repeats, backend=backend)["net"].median_ms
    return results


def trainer_rates(steps: int, size: int = 160) -> list[dict]:
    """The trainer's own images_per_s, eager NCHW against the default, alternating twice."""
    spec = f"eg1800:{EG1800}" if EG1800.is_dir() else "synthetic:count=400"
    train, val = load_split(spec, "train", size), load_split(spec, "val", size)
    val = val.__class__(images=val.images[:16], masks=val.masks[:16], names=val.names[:16], description=val.description, synthetic=val.synthetic)
    rows = []
    for name in ("extremec3net", "sinet"):
        rates = {"eager": [], "default": []}

        def run(channels_last: bool, compile_it: bool = False) -> list[dict]:
            torch.manual_seed(0)
            model = build_model(get_preset(name).model_copy(update={"num_classes": 1}))
            settings = settings_from(epochs=1, size=size, max_steps=steps, channels_last=channels_last, compile=compile_it)
            return fit(model, train, val, settings, get_preprocessing("default"), progress=False)

        for _ in range(2):
            rates["eager"].append(images_per_s(run(False)))
            rates["default"].append(images_per_s(run(True)))
        compiled_history = run(True, compile_it=True)  # once: a second run would find Inductor's cache warm
        eager, default, with_compile = statistics.median(rates["eager"]), statistics.median(rates["default"]), images_per_s(compiled_history)
        # steps after which compiling pays for its first step, against the default path
        saved = 16 / default - 16 / with_compile
        break_even = compiled_history[0]["startup_s"] / saved if saved > 0 else float("inf")
        rows.append({
            "network": name, "size": size, "data": spec.split(":")[0], "eager_img_s": eager, "default_img_s": default, "default_x": default / eager,
            "compiled_img_s": with_compile, "compiled_x": with_compile / eager, "compile_first_step_s": compiled_history[0]["startup_s"],
            "compile_break_even_steps": break_even,
        })
        print(f"trainer {name} {size}px: eager {eager:.1f} img/s, default {default:.1f} ({default / eager:.2f}x), "
              f"compiled {with_compile:.1f} ({with_compile / eager:.2f}x, first step {compiled_history[0]['startup_s']:.0f} s)", flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 160, 224])
    parser.add_argument("--samples", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2, help="threads of the training measurements")
    parser.add_argument("--latency-threads", type=int, default=1)
    parser.add_argument("--latency-repeats", type=int, default=20)
    parser.add_argument("--compile-samples", action="store_true")
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--trainer-steps", type=int, default=30)
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()
    use_threads(args.threads)
    trainer_csv = args.out / "throughput_trainer.csv"
    if not trainer_csv.exists():
        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(trainer_rates(args.trainer_steps)).to_csv(trainer_csv, index=False)
        use_threads(args.threads)
    csv = args.out / "throughput.csv"
    done = pd.read_csv(csv) if csv.exists() else pd.DataFrame()
    rows = done.to_dict("records")
    seen = {(row["network"], row["size"]) for row in rows}
    for name, config in networks(args.samples):
        for size in args.sizes:
            if (name, size) in seen:
                continue
            paths = list(TRAIN_PATHS) if "/" not in name or args.compile_samples else ["eager", "channels_last"]
            rates = train_rates(config, size, paths, args.steps, args.rounds)
            use_threads(args.threads)
            lat = latencies(config, size, args.latency_threads, args.latency_repeats)
            use_threads(args.threads)
            row = {"network": name, "size": size, "params": count_params(build_model(config))}
            for path in TRAIN_PATHS:
                rate, first = rates.get(path, (float("nan"), float("nan")))
                row[f"train_{path}_img_s"] = rate
                row[f"train_{path}_x"] = rate / rates["eager"][0]
                if path.startswith("compile"):
                    row[f"train_{path}_first_step_s"] = first
            for path in LATENCY_PATHS:
                row[f"latency_{path}_ms"] = lat[path]
                row[f"latency_{path}_x"] = lat[path] / lat["eager"]
            rows.append(row)
            print(f"{name} {size}px: train " + ", ".join(f"{p} {row[f'train_{p}_x']:.2f}x" for p in TRAIN_PATHS)
                  + f" (eager {row['train_eager_img_s']:.1f} img/s); latency " + ", ".join(f"{p} {lat[p]:.2f} ms" for p in LATENCY_PATHS), flush=True)
            args.out.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(rows).to_csv(csv, index=False)
    write_markdown(pd.DataFrame(rows), pd.read_csv(trainer_csv), args)


def write_markdown(frame: pd.DataFrame, trainer: pd.DataFrame, args) -> None:
    lines = [
        "# Training throughput and latency by execution path",
        "",
        f"torch {torch.__version__}, {args.threads} threads for training (batch 16, forward + backward + Adam, random inputs), "
        f"{args.latency_threads} thread(s) for batch-1 latency ({args.latency_repeats} repeats, median). "
        "Ratios are to eager NCHW of the same network and size, measured side by side in the same run "
        "(training: paths alternating in rounds; latency: one backend after another). "
        "Written by `python benchmarks/throughput.py`.",
        "",
        "## The trainer, end to end (default path against eager NCHW)",
        "",
        f"`fit` on {trainer.data.iloc[0]} at {trainer['size'].iloc[0]} px, batch 16, augmentation on, {args.trainer_steps} steps per run, "
        "two alternating rounds (median); images/s as the trainer reports it (`images_per_s`: training steps only).",
        "",
        trainer[["network", "eager_img_s", "default_img_s", "default_x", "compiled_img_s", "compiled_x"]].to_markdown(index=False, floatfmt=".2f"),
        "",
        "With `--compile` (channels-last too; one run, since a second would find Inductor's cache warm): the first step, which "
        "compiles, and the number of steps after which compiling has paid for it against the default path "
        "(a partial last batch of an epoch compiles once more, not counted here):",
        "",
        trainer[["network", "compile_first_step_s", "compile_break_even_steps"]].to_markdown(index=False, floatfmt=".0f"),
        "",
    ]
    for size, group in frame.groupby("size"):
        lines += [f"## {size}x{size}", "", "Training images/s as a ratio to eager NCHW (eager's own images/s in the first column):", ""]
        table = group[["network", "params", "train_eager_img_s"] + [f"train_{p}_x" for p in TRAIN_PATHS if p != "eager"]].copy()
        lines += [table.to_markdown(index=False, floatfmt=".2f"), ""]
        compiled_rows = group.dropna(subset=["train_compile_first_step_s"])
        if len(compiled_rows):
            lines += ["First compiled training step (compile included), seconds (a figure under a few seconds is a hit in Inductor's "
                      "cache: the same graph was compiled earlier in this run, e.g. by the trainer section at 160 px):", ""]
            lines += [compiled_rows[["network", "train_compile_first_step_s", "train_compile+channels_last_first_step_s"]].to_markdown(index=False, floatfmt=".1f"), ""]
        lat = group[["network"] + [f"latency_{p}_ms" for p in LATENCY_PATHS] + [f"latency_{p}_x" for p in LATENCY_PATHS if p != "eager"]].copy()
        for p in LATENCY_PATHS:
            lat[f"rank_{p}"] = group[f"latency_{p}_ms"].rank(method="min").astype(int)
        lines += ["Batch-1 latency (ms), ratio to eager NCHW, and each network's rank (1 = fastest) on each backend:", ""]
        lines += [lat.to_markdown(index=False, floatfmt=".2f"), ""]
        ranks = {p: group[f"latency_{p}_ms"].rank() for p in LATENCY_PATHS}
        agree = {p: ranks["eager"].corr(ranks[p], method="spearman") for p in LATENCY_PATHS if p != "eager"}
        lines += ["Spearman correlation of the latency ranking with eager NCHW's: " + ", ".join(f"{p} {v:.2f}" for p, v in agree.items()), ""]
    summary = frame.groupby("size")[[f"train_{p}_x" for p in TRAIN_PATHS if p != "eager"]].median()
    lines += ["## Median training ratio over all networks", "",
              "(channels-last over all networks; the torch.compile columns over the networks compiled, by default the published two)", "",
              summary.to_markdown(floatfmt=".2f"), ""]
    (args.out / "throughput.md").write_text("\n".join(lines))
    print(f"wrote {args.out / 'throughput.md'}")


if __name__ == "__main__":
    main()
