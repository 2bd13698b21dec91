"""What every benchmark script shares with the CLI's contract: a bad argument ends in one
line (``error: ...``, exit code 2) before anything is read, trained or written; a finished
run is reused only when it was trained with the same protocol; and a rerun never replaces
committed results with figures of another protocol.

A benchmark records the protocol of the results it writes in ``NAME.protocol.json`` beside
them; writing NAME again with another protocol is refused (give ``--out`` another folder).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import NoReturn

from lightseg_nas.settings import SEED_MAX

__all__ = ["Parser", "add_retraining_protocol", "positive_number", "count", "seed", "shard", "existing_file", "fail", "check_reusable", "guard_results", "record_protocol"]


def fail(message: str) -> NoReturn:
    print(f"error: {message}", file=sys.stderr)
    raise SystemExit(2)


class Parser(argparse.ArgumentParser):
    """argparse with the one-line error contract (no usage block)."""

    def __init__(self, doc: str, **kwargs):
        super().__init__(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter, **kwargs)

    def error(self, message: str):
        fail(f"{message} (see --help)")


def count(low: int = 1, high: int = 1_000_000):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"{value} is outside {low}..{high:,}")
        return value

    parse.__name__ = "count"
    return parse


def seed(text: str) -> int:
    return count(0, SEED_MAX)(text)


def shard(text: str) -> tuple[int, int]:
    """K/N with 1 <= K <= N."""
    try:
        k, n = (int(part) for part in text.split("/"))
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: give K/N, e.g. 1/2") from None
    if not 1 <= k <= n:
        raise argparse.ArgumentTypeError(f"{text!r}: K must be from 1 to N")
    return k, n


def existing_file(text: str) -> Path:
    path = Path(text)
    if not path.is_file():
        raise argparse.ArgumentTypeError(f"{text}: no such file")
    return path


def positive_number(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (value > 0 and value < float("inf")):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number above 0")
    return value


def add_retraining_protocol(parser: argparse.ArgumentParser, runs: Path) -> None:
    """The stand-alone retraining protocol the audit and the search comparison share (15
    epochs at 160 px, batch 16, lr 5e-3, seed 0, scored at 224) and their runs folder."""
    parser.add_argument("--epochs", type=count(1, 10_000), default=15)
    parser.add_argument("--size", type=count(32, 2048), default=160)
    parser.add_argument("--eval-size", type=count(32, 2048), default=224)
    parser.add_argument("--batch-size", type=count(1, 4096), default=16)
    parser.add_argument("--lr", type=positive_number, default=5e-3)
    parser.add_argument("--seed", type=seed, default=0)
    parser.add_argument("--runs", type=Path, default=runs)


def check_reusable(model_file: Path, settings) -> None:
    """A finished model file under a benchmark's runs folder is reused only when the
    trainer's protocol check passes (train.protocol_differences); otherwise one line, before
    any training."""
    from lightseg_nas.train import protocol_differences

    differ = protocol_differences(model_file, settings) if Path(model_file).exists() else []
    if differ:
        fail(f"{model_file}: was trained with another protocol ({', '.join(differ)}); give another --runs folder to train with this one")


def _protocol_file(out: Path, name: str) -> Path:
    return Path(out) / f"{name}.protocol.json"


def guard_results(out: Path, name: str, protocol: dict) -> None:
    """Refuse (before any work) to write results NAME into OUT where results of another
    protocol are kept."""
    path = _protocol_file(out, name)
    if not path.exists():
        return
    try:
        kept = json.loads(path.read_text())
    except (OSError, ValueError):
        fail(f"{path}: unreadable; remove it or give another --out")
    differ = sorted(key for key in set(kept) | set(protocol) if kept.get(key) != protocol.get(key))
    if differ:
        shown = ", ".join(f"{key} {kept.get(key)!r} there, {protocol.get(key)!r} here" for key in differ)
        fail(f"{Path(out) / name}: holds results of another protocol ({shown}); give another --out folder")


def record_protocol(out: Path, name: str, protocol: dict) -> None:
    Path(out).mkdir(parents=True, exist_ok=True)
    _protocol_file(out, name).write_text(json.dumps(protocol, indent=2, sort_keys=True, default=str) + "\n")


def write_results(out: Path, name: str, text: str, protocol: dict) -> None:
    """OUT/NAME.md with ``text``, its protocol beside it (what ``guard_results`` checks on a
    rerun), and the text printed."""
    Path(out).mkdir(parents=True, exist_ok=True)
    (Path(out) / f"{name}.md").write_text(text)
    record_protocol(out, name, protocol)
    print(text)
