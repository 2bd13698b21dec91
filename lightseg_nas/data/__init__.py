"""Datasets by spec string, decoded once into a resized in-memory cache.

Specs: ``eg1800:PATH`` (either public layout), ``synthetic`` or
``synthetic:count=N,seed=S`` (the embedded default: procedural portraits, no download).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from lightseg_nas.errors import UserError

__all__ = ["SegmentationData", "load_split", "parse_spec", "split_fingerprint", "DEFAULT_SPEC", "SPEC_KINDS"]

DEFAULT_SPEC = "synthetic"
SPEC_KINDS = ("eg1800", "synthetic")
SYNTHETIC_DEFAULTS = {"count": 400, "seed": 0}


@dataclass
class SegmentationData:
    images: torch.Tensor  # uint8 (N, 3, S, S), RGB
    masks: torch.Tensor  # uint8 (N, S, S), 1 = person
    names: list[str]
    description: str  # says where the data came from; "synthetic" is always in it for synthetic data
    synthetic: bool

    def __len__(self) -> int:
        return len(self.names)


def parse_spec(spec: str) -> tuple[str, dict]:
    kind, _, rest = spec.partition(":")
    if kind == "eg1800":
        if not rest:
            raise UserError("dataset spec 'eg1800' needs a folder: eg1800:PATH")
        return kind, {"path": rest}
    if kind == "synthetic":
        options = dict(SYNTHETIC_DEFAULTS)
        for item in filter(None, rest.split(",")):
            key, _, value = item.partition("=")
            if key not in SYNTHETIC_DEFAULTS or not value.isdigit():
                raise UserError(f"dataset spec {spec!r}: expected synthetic:count=N,seed=S (got {item!r})")
            options[key] = int(value)
        if options["count"] < 1:
            raise UserError(f"dataset spec {spec!r}: count must be at least 1")
        return kind, options
    raise UserError(f"unknown dataset spec {spec!r}; known kinds: eg1800:PATH, synthetic[:count=N,seed=S]")


def split_fingerprint(spec: str, val_fraction: float = 0.1, val_seed: int = 0) -> str:
    """Which images train and which validate, independent of where the dataset lies: a hash
    of the kind and the train and val names (EG1800), or of the generator's options
    (synthetic). Two runs with one fingerprint trained and validated on the same images, so
    a file made on one machine is recognised on another whose dataset sits elsewhere."""
    import hashlib
    import json

    kind, options = parse_spec(spec)
    if kind == "synthetic":
        identity = {"kind": kind, **options}
    else:
        from lightseg_nas.data.eg1800 import split_names

        root = Path(options["path"]).expanduser()
        identity = {"kind": kind, **{split: sorted(split_names(root, split, val_fraction, val_seed)) for split in ("train", "val")}}
    return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


def load_split(
    spec: str,
    split: str,
    size: int,
    val_fraction: float = 0.1,
    val_seed: int = 0,
    progress: bool = False,
) -> SegmentationData:
    """One split of a dataset at ``size`` x ``size``."""
    kind, options = parse_spec(spec)
    if kind == "synthetic":
        from lightseg_nas.data.synthetic import SPLIT_OFFSETS, synthetic_split

        if split not in SPLIT_OFFSETS:
            raise UserError(f"synthetic data has splits {', '.join(SPLIT_OFFSETS)}; got {split!r}")
        # val and test are a fifth of train's count (at least 8 images)
        count = options["count"] if split == "train" else max(8, options["count"] // 5)
        images, masks, names = synthetic_split(split, count, size, options["seed"])
        description = f"synthetic portraits (procedural, seed {options['seed']}, split {split}, {count} images)"
    else:
        from lightseg_nas.data.eg1800 import load_eg1800

        path = Path(options["path"]).expanduser()
        images, masks, names = load_eg1800(path, split, size, val_fraction, val_seed, progress)
        carved = f", validation {val_fraction:g} carved with seed {val_seed}" if split in ("train", "val") else ""
        description = f"eg1800 {path} (split {split}, {len(names)} images{carved})"
    return SegmentationData(
        images=torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(),
        masks=torch.from_numpy(masks).contiguous(),
        names=names,
        description=description,
        synthetic=kind == "synthetic",
    )
