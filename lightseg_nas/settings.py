"""Every run setting, defined once: its type, its limits, its default.

Training (``train``), compression (``compress``) and a study's trials (the study file's
``[training]``, ``[data]`` and rungs) share these definitions instead of copying them, and
the CLI shows the defaults it reads from here. This module imports neither torch nor any
other module of the package but ``errors``, so ``lightseg-nas --help`` stays fast.
"""

from __future__ import annotations

from typing import Annotated, Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator
from pydantic_core import PydanticUndefined

from lightseg_nas.errors import FieldError

__all__ = [
    "INPUT_MULTIPLE", "MAX_SIZE", "SEED_MAX", "COMPILE_AUTO_STEPS", "Seed", "InputSize", "Epochs", "Settings", "StepSettings",
    "OptimizerSettings", "LossSettings", "SplitSettings", "SpeedSettings", "DistillSettings", "TrainSettings", "CompressSettings", "SupernetRecipe", "SupernetSettings",
    "default_text", "parse_options", "bool_fields", "changed_settings", "RECIPES", "LOSSES",
]

INPUT_MULTIPLE = 32  # the networks down-sample by 8 and pool by up to 4 more
# Largest input side: the papers work at 224; past this a cached split of EG1800 alone needs
# several GB, so a larger value is a typo rather than a plan.
MAX_SIZE = 1024
SEED_MAX = 2**32 - 1  # numpy and torch generators take 32-bit seeds
# Runs of at least this many training steps compile in automatic mode (lightseg_nas/speed.py).
COMPILE_AUTO_STEPS = 2000

Seed = Annotated[int, Field(ge=0, le=SEED_MAX, strict=True)]
# An input side: a multiple of INPUT_MULTIPLE from INPUT_MULTIPLE to MAX_SIZE (the one rule).
InputSize = Annotated[int, Field(ge=INPUT_MULTIPLE, le=MAX_SIZE, multiple_of=INPUT_MULTIPLE, strict=True)]
Epochs = Annotated[int, Field(ge=1, le=100_000, strict=True)]
BatchSize = Annotated[int, Field(ge=1, le=4096, strict=True)]
LearningRate = Annotated[float, Field(gt=0, le=10)]


class Settings(BaseModel):
    # frozen, unknown keys refused, and allow_inf_nan=False: nan and inf are refused for
    # every number (a learning rate of inf is an error, not a diverged run)
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


class StepSettings(Settings):
    """What an optimisation step takes: batch size and Adam's learning rate."""

    batch_size: BatchSize = Field(16, description="Batch size.")
    lr: LearningRate = Field(5e-3, description="Adam learning rate.")


class OptimizerSettings(StepSettings):
    weight_decay: float = Field(1e-4, ge=0, le=10, description="Adam weight decay.")


# ce (cross-entropy), lovasz (Lovász hinge) or ce+lovasz (lightseg_nas/losses.py)
LOSSES = ("ce", "lovasz", "ce+lovasz")


class LossSettings(Settings):
    loss: Literal[LOSSES] = Field("ce", description="ce (cross-entropy), lovasz (Lovász hinge, per image) or ce+lovasz.")
    # Weight of a second Lovász hinge restricted to a band around each mask's boundary (the
    # official recipe's `Edge` term: 0.5); 0 leaves it out.
    edge_weight: float = Field(0.0, ge=0, le=1e3, description="Weight of a Lovász hinge over a band around each mask's boundary (the official recipe's edge term: 0.5).")
    # Width in pixels of that band: a square kernel, dilation minus erosion of the mask (the
    # official recipe: 15 for the whole network, 5 for the encoder stage). Odd.
    edge_band: int = Field(15, ge=3, le=101, strict=True, description="Width of that band in pixels (odd).")

    @field_validator("edge_band")
    @classmethod
    def _odd_band(cls, value: int) -> int:
        if value % 2 == 0:
            raise ValueError(f"must be odd (a square kernel with a centre), got {value}")
        return value


class SplitSettings(Settings):
    """The validation split: this fraction of the training list, picked by this seed."""

    val_fraction: float = Field(0.1, gt=0, lt=1, description="Fraction of the training list carved out as 'val'.")
    val_seed: Seed = Field(0, description="Seed that picks the validation images.")


class SpeedSettings(Settings):
    """How a run's steps execute, not what they compute (lightseg_nas/speed.py): channels-last
    weights and inputs; torch.compile True, False or None (automatic)."""

    channels_last: bool = Field(True, description="Weights and inputs channels-last (NHWC): faster on CPUs, same computation.")
    compile: Optional[bool] = Field(
        None, description="torch.compile the training step: faster per step, about a minute of compiling per network and input shape, so it pays on long runs only."
    )


class DistillSettings(Settings):
    """The distillation terms' settings (lightseg_nas/distill.py), for ``train --teacher``
    and ``compress``."""

    kd_weight: float = Field(1.0, ge=0, le=1e6, description="Weight of pixel-wise distillation (with --teacher).")
    kd_temperature: float = Field(2.0, gt=0, le=1e3, description="Distillation temperature (with --teacher).")
    cwd_weight: float = Field(1.0, ge=0, le=1e6, description="Weight of channel-wise distillation (with --teacher).")


class TrainSettings(OptimizerSettings, LossSettings, SplitSettings, DistillSettings, SpeedSettings):
    epochs: Epochs = Field(30, description="Epochs.")
    # Per-step learning-rate schedule after a linear warm-up over the first epoch's steps.
    schedule: Literal["cosine", "poly", "constant"] = Field("cosine", description="Learning-rate schedule after one warm-up epoch.")
    # Train and validate at size x size.
    size: InputSize = Field(224, description="Training and validation resolution.")
    seed: Seed = Field(0, description="Seed of initialisation, shuffling and augmentation.")
    augment: bool = Field(True, description="Scale/crop, flip, rotation, colour, blur.")
    # The random affine warp of augmentation: "default" (rotation up to 15 degrees, scale
    # 0.75-1.25, shift up to 15%, reflected borders) or "official" (the released networks'
    # recipe: rotation up to 45 degrees, scale 0.5-1.5, shift up to a quarter of the side,
    # grey borders).
    affine: Literal["default", "official"] = Field(
        "default", description="Augmentation's affine warp: default (rotation 15, scale 0.75-1.25) or official (rotation 45, scale 0.5-1.5, grey borders)."
    )
    # Epochs (out of ``epochs``) spent first on the encoder's own output, as in the papers.
    encoder_epochs: int = Field(0, ge=0, le=100_000, strict=True, description="First epochs train the encoder's own output (papers' stage 1).")
    preprocessing: Literal["default", "released"] = Field("default", description="default (RGB) or released (the published weights' BGR recipe).")
    # Stop after this many optimisation steps in total (smoke tests); None = all epochs.
    max_steps: Optional[int] = Field(None, ge=1, le=10**9, strict=True, description="Stop after this many steps in total (smoke tests).")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")
    # Distil from this teacher, as named: a model file or a preset.
    teacher: Optional[str] = None
    # The named recipe (RECIPES) these settings started from, if any.
    recipe: Optional[str] = None


class SupernetRecipe(OptimizerSettings, LossSettings):
    """How a weight-sharing supernet trains (lightseg_nas/supernet.py): every step trains the
    largest, the smallest and ``random_subnets`` random sub-networks (the sandwich rule),
    the others also distilled from the largest (in-place distillation)."""

    epochs: Epochs = Field(20, description="Epochs.")
    size: InputSize = Field(224, description="Training, recalibration and validation resolution.")
    seed: Seed = Field(0, description="Seed of initialisation, shuffling, augmentation and sampled sub-networks.")
    augment: bool = Field(True, description="Scale/crop, flip, rotation, colour, blur.")
    schedule: Literal["cosine", "poly", "constant"] = Field("cosine", description="Learning-rate schedule after one warm-up epoch.")
    random_subnets: int = Field(2, ge=0, le=16, strict=True, description="Random sub-networks per step, besides the largest and the smallest.")
    # weight and temperature of the in-place distillation (0: labels alone); the
    # temperature is 1 here, where a teacher's distillation takes 2: the largest
    # sub-network is no trained teacher, so its distribution is not softened further
    kd_weight: float = Field(1.0, ge=0, le=1e6, description="Weight of in-place distillation from the largest sub-network (0: labels alone).")
    kd_temperature: float = Field(1.0, gt=0, le=1e3, description="In-place distillation temperature.")
    # training images (the first of the training split, not augmented) that recalibrate a
    # sub-network's batch-norm statistics before it is scored
    recalibration_images: int = Field(256, ge=1, le=100_000, strict=True, description="Training images that recalibrate a sub-network's batch norm before it is scored.")
    # Stop after this many optimisation steps in total (smoke tests); None = all epochs.
    max_steps: Optional[int] = Field(None, ge=1, le=10**9, strict=True, description="Stop after this many steps in total (smoke tests).")


class SupernetSettings(SupernetRecipe, SplitSettings):
    """A supernet's recipe and the validation split it must never train on."""


# Named training recipes: values a run takes unless its own options say otherwise
# (``train --recipe NAME``; a study file names the one its winners are trained with).
# Measured in benchmarks/results/learning_curve.md and protocol.md.
RECIPES: dict[str, dict] = {
    # the learning-curve protocol: quick, 1.5 points short of its own 224 px score
    "curve": {"epochs": 15, "size": 160},
    # the final-training protocol for chosen networks: training at the papers' 224 px scored
    # ExtremeC3Net 1.1 points above training at 160 for 30 epochs; still short of convergence
    # (epochs 15 to 30 gained another point), but about 1 CPU-hour per ExtremeC3Net here
    "final": {"epochs": 30, "size": 224},
    # near convergence, with the one piece of the official recipe that paid at 30 epochs:
    # SINet's final recipe stretched to 100 epochs gained 0.35 points and was flat from
    # epoch 80; the boundary-band Lovász term (weight 0.5) gained 0.24 at 30 epochs (one
    # seed each, benchmarks/results/long_curves_*.md and protocol.md). The official affine
    # warp (-2.70) and encoder-first epochs (-0.58) did not pay and are left out. The two
    # together: SINet 95.24 (two seeds; +0.60 on seed 0's 100-epoch curve), 7825f0dea1a9
    # 94.60 (+0.34, seed 0), SINet compressed to 37,540 parameters and distilled 94.62 (two
    # seeds; studies/eg1800_hybrid_r128-long); SINet took 98-116 CPU-minutes against the
    # final recipe's 34 (all beside other work).
    "long": {"epochs": 100, "size": 224, "edge_weight": 0.5},
}


def with_recipe(recipe: Optional[str], values: dict, leave_out: tuple[str, ...] = ()) -> dict:
    """Given values (None = not given) on top of a named recipe's (less ``leave_out``), with
    the recipe's name; a FieldError for an unknown name. Without a recipe, the values."""
    if recipe is None:
        return values
    if recipe not in RECIPES:
        raise FieldError("recipe", f"{{0}} {recipe!r} is unknown; known: {', '.join(sorted(RECIPES))}")
    taken = {k: v for k, v in RECIPES[recipe].items() if k not in leave_out}
    return {**taken, **{k: v for k, v in values.items() if v is not None}, "recipe": recipe}


class CompressSettings(StepSettings, LossSettings, SplitSettings, DistillSettings, SpeedSettings):
    metric: Literal["params", "macs"]
    # The named recipe (RECIPES) whose loss, size and step settings the fine-tuning took, if any.
    recipe: Optional[str] = None
    # An absolute target, or a percentage of the network's current cost (resolved against
    # the model when the compression starts): exactly one of the two.
    target: Optional[int] = Field(None, ge=1, le=10**15, strict=True)
    target_percent: Optional[float] = Field(None, gt=0, lt=100)
    steps: int = Field(3, ge=1, le=100, strict=True, description="Prune -> fine-tune rounds; targets fall geometrically.")
    epochs_per_step: Epochs = Field(4, description="Fine-tuning epochs after each pruning.")
    # Fine-tuning and validation resolution.
    size: InputSize = Field(224, description="Fine-tuning and validation resolution.")
    # Resolution at which MACs are counted (and a MAC target is meant).
    mac_size: InputSize = Field(224, description="Resolution at which MACs are counted.")
    seed: Seed = Field(0, description="Seed of shuffling and augmentation; step k uses seed + k.")
    # Stop each fine-tuning after this many steps (smoke tests); None = whole epochs.
    max_steps_per_step: Optional[int] = Field(None, ge=1, le=10**9, strict=True, description="Stop each fine-tuning after this many optimiser steps (smoke tests).")
    device: str = Field("auto", description="auto (CUDA when present, else CPU), cpu, cuda, cuda:N.")


def parse_options(model_class: type[BaseModel], values: dict) -> BaseModel:
    """Given values (None = not given) into a settings model, or a FieldError naming the field."""
    try:
        return model_class(**{k: v for k, v in values.items() if v is not None})
    except ValidationError as error:
        item = error.errors()[0]
        raise FieldError("_".join(map(str, item["loc"])), f"{{0}}: {item['msg']}") from None


def bool_fields(model: type[BaseModel]) -> set[str]:
    """Names of the boolean fields of a settings model and of the models nested in it: the
    keys where a TOML or JSON ``true``/``false`` is a value, not a mistake."""
    import typing

    found, seen = set(), set()

    def visit(annotation, name):
        if annotation is bool:
            found.add(name)
        elif isinstance(annotation, type) and issubclass(annotation, BaseModel):
            if annotation not in seen:
                seen.add(annotation)
                for field, info in annotation.model_fields.items():
                    visit(info.annotation, field)
        else:
            for argument in typing.get_args(annotation):
                visit(argument, name)

    visit(model, None)
    return found


# Settings added after checkpoints and model files were first written: a stored table
# without them is from before them (see changed_settings); any other missing key is damage.
ADDED_LATER = frozenset({"loss", "recipe", "edge_weight", "edge_band", "affine"})


def missing_settings(stored: dict, model_class: type[BaseModel], ignore=()) -> list[str]:
    """Fields of ``model_class`` that a stored settings table lacks and that existed from the
    first version on: a sign of a damaged or hand-edited file."""
    return [name for name in model_class.model_fields if name not in stored and name not in ADDED_LATER and name not in ignore]


def changed_settings(stored: dict, current: BaseModel, ignore=()) -> list[str]:
    """The settings of ``current`` that differ from those a checkpoint stored, as
    'name stored (now current)'. A setting the checkpoint lacks was added after it was
    written: that version behaved as its default, so the default is what it stored."""
    changed = []
    for name, value in current.model_dump().items():
        if name in ignore:
            continue
        field = type(current).model_fields[name]
        before = stored.get(name, field.default) if field.default is not PydanticUndefined else stored.get(name)
        if before != value:
            changed.append(f"{name} {before!r} (now {value!r})")
    return changed


def default_text(settings: type[BaseModel], name: str) -> str:
    """A field's default as the CLI's help shows it."""
    value = settings.model_fields[name].default
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)
