"""Study files (TOML): everything a search needs, validated before any work starts.

Paths inside a study file (an ``eg1800:PATH`` spec, a ``sqlite:///`` file) are resolved
relative to the study file, so a study folder can be moved or shared as a whole.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal, Optional

import tomllib
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lightseg_nas.checks import InputSize, Seed, reject_bools
from lightseg_nas.cost import LATENCY_BACKENDS
from lightseg_nas.errors import DatasetMissing, FieldError, UserError
from lightseg_nas.settings import RECIPES, Epochs, LossSettings, OptimizerSettings, SpeedSettings, SplitSettings, SupernetRecipe, SupernetSettings, bool_fields

# Cost objective -> the trial attribute that holds it (latency is kept as a ratio).
COST_ATTRS = {"params": "params", "macs": "macs", "latency": "latency_ratio"}
SAMPLERS = ("tpe", "nsga2", "gp", "random")


class _Section(BaseModel):
    # allow_inf_nan=False: nan and inf are refused for every number of a study file
    model_config = ConfigDict(frozen=True, extra="forbid", allow_inf_nan=False)


def _Count(default=..., low: int = 1, high: int = 1_000_000):
    return Field(default, ge=low, le=high, strict=True)


# A study name becomes folder and file names (NAME-report/, NAME-export/): letters, digits,
# '.', '_' and '-', starting with a letter or digit, so it can never leave the study folder.
STUDY_NAME_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$"


class StudySection(_Section):
    name: str = Field(pattern=STUDY_NAME_PATTERN)
    space: str
    # The named training recipe (lightseg_nas/settings.py RECIPES) that this study's chosen
    # networks are to be trained with to the end; the report says how.
    final_recipe: Optional[str] = None
    num_classes: Literal[1, 2] = 1
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: Seed = 0
    # The search stops when the study holds this many finished (complete or pruned) trials.
    n_trials: int = _Count(20)
    timeout_s: Optional[float] = Field(None, gt=0, le=1e8)
    # Optuna storage URL; default: a SQLite file named after the study file, beside it.
    storage: Optional[str] = None
    # A worker's running trial sends a heartbeat this often; one silent for grace_s seconds
    # (its worker was killed) is marked failed and retried by the next worker to start a trial.
    heartbeat_s: int = _Count(30, 1, 86_400)
    grace_s: int = _Count(120, 2, 864_000)

    @model_validator(mode="after")
    def _grace_exceeds_heartbeat(self) -> "StudySection":
        # a grace at or below the heartbeat lets one worker fail another's live trial
        if self.grace_s <= 2 * self.heartbeat_s:
            raise ValueError(f"grace_s ({self.grace_s}) must be more than twice heartbeat_s ({self.heartbeat_s})")
        return self


class DataSection(_Section, SplitSettings):
    spec: str = "synthetic"


class ObjectivesSection(_Section):
    # Maximised: validation foreground IoU (per image, averaged) at the last rung reached.
    accuracy: Literal["val_fg_iou"] = "val_fg_iou"
    # Minimised, any of params, macs (fvcore counter), latency (ratio to the reference preset).
    minimize: tuple[Literal["params", "macs", "latency"], ...] = ("params",)

    @model_validator(mode="after")
    def _distinct(self) -> "ObjectivesSection":
        if len(set(self.minimize)) != len(self.minimize):
            raise ValueError("minimize lists an objective twice")
        return self


class BudgetsSection(_Section):
    max_params: Optional[int] = Field(None, ge=1, le=10**12, strict=True)
    max_macs: Optional[float] = Field(None, gt=0, le=1e15)
    max_latency_ratio: Optional[float] = Field(None, gt=0, le=1e6)


class CostSection(_Section):
    # MACs (fvcore counter) and latency are measured at size x size, batch 1.
    size: InputSize = 224
    threads: int = _Count(1, 1, 1024)
    # How latency is measured: torch (eager NCHW), torch-channels-last, onnxruntime; every
    # latency figure records it (trial attribute latency_backend).
    backend: Literal[LATENCY_BACKENDS] = "torch"
    repeats: int = _Count(10, 1, 100_000)
    # Latency is measured as a ratio to this preset, timed in the same run.
    reference: str = "sinet"


class Rung(_Section):
    size: InputSize
    epochs: Epochs


class FidelitySection(_Section):
    # rungs: each candidate is trained (below); supernet: each candidate is scored with the
    # weights of the study's supernet ([supernet]) and recalibrated batch norm, untrained.
    mode: Literal["rungs", "supernet"] = "rungs"
    # Rungs in order; a candidate trains rung by rung (continuing its weights) while it is
    # promoted. With enabled = false every candidate trains through every rung.
    rungs: tuple[Rung, ...] = Field(default=(Rung(size=128, epochs=3),), min_length=1)
    enabled: bool = True
    # Successive halving: about 1 / reduction_factor of the candidates at a rung go on.
    reduction_factor: int = _Count(3, 2, 1000)


class SupernetSection(_Section, SupernetRecipe):
    """The supernet of [fidelity] mode = "supernet": its file (relative to the study file;
    default STEM-supernet/supernet.pt beside it) and, when that does not exist yet, the
    recipe that trains it first, on the study's data and its training split only."""

    file: Optional[str] = None


class TrainingSection(_Section, OptimizerSettings, LossSettings, SpeedSettings):
    """batch_size, lr, weight_decay (OptimizerSettings), loss (LossSettings) and how trials train, not what
    (SpeedSettings: channels-last on; torch.compile automatic, and a trial is far shorter
    than the steps that earn back compiling)."""

    augment: bool = True
    device: str = "auto"


class ScreenSection(_Section):
    proxy: Literal["synflow", "grad_norm", "naswot"]
    # Skip training only once the proxy's Spearman correlation with validation IoU, measured
    # on this study's trained trials, reaches this value over at least min_trials trials.
    min_correlation: float = Field(0.5, ge=-1, le=1)
    min_trials: int = _Count(8, 3)
    # Candidates whose proxy score falls below this quantile of the scores seen are skipped.
    skip_below_quantile: float = Field(0.3, gt=0, lt=1)


class ProxiesSection(_Section):
    compute: tuple[Literal["synflow", "grad_norm", "naswot"], ...] = ()
    screen: Optional[ScreenSection] = None

    @model_validator(mode="after")
    def _screen_is_computed(self) -> "ProxiesSection":
        if self.screen is not None and self.screen.proxy not in self.compute:
            raise ValueError(f"screen.proxy {self.screen.proxy!r} must also be listed in compute")
        return self


class BaselinesSection(_Section):
    # Published networks to enqueue as baseline trials; "auto" = those that are points of the space.
    presets: Literal["auto"] | tuple[str, ...] = "auto"


class StudyFile(_Section):
    study: StudySection
    data: DataSection = DataSection()
    objectives: ObjectivesSection = ObjectivesSection()
    budgets: BudgetsSection = BudgetsSection()
    cost: CostSection = CostSection()
    fidelity: FidelitySection = FidelitySection()
    training: TrainingSection = TrainingSection()
    supernet: SupernetSection = SupernetSection()
    proxies: ProxiesSection = ProxiesSection()
    baselines: BaselinesSection = BaselinesSection()
    # Where the file was read from (not part of the TOML).
    path: Optional[Path] = None

    @property
    def folder(self) -> Path:
        return self.path.parent if self.path else Path.cwd()

    def storage_url(self, override: str | None = None) -> str:
        url = override or self.study.storage
        if url is None:
            stem = self.path.stem if self.path else self.study.name
            return f"sqlite:///{(self.folder / f'{stem}.db').resolve()}"
        if url.startswith("sqlite:///") and not url.startswith("sqlite:////"):
            # relative SQLite paths are relative to the study file
            return f"sqlite:///{(self.folder / url[len('sqlite:///'):]).resolve()}"
        return url

    def data_spec(self) -> str:
        spec = self.data.spec
        if spec.startswith("eg1800:") and not Path(spec[7:]).expanduser().is_absolute():
            return f"eg1800:{(self.folder / spec[7:]).resolve()}"
        return spec

    def supernet_path(self) -> Path:
        if self.supernet.file is None:
            stem = self.path.stem if self.path else self.study.name
            return self.folder / f"{stem}-supernet" / "supernet.pt"
        path = Path(self.supernet.file).expanduser()
        return path if path.is_absolute() else (self.folder / path).resolve()

    def supernet_settings(self) -> SupernetSettings:
        """The [supernet] recipe on the study's own validation split."""
        recipe = self.supernet.model_dump(exclude={"file"})
        return SupernetSettings(**recipe, val_fraction=self.data.val_fraction, val_seed=self.data.val_seed)

    @property
    def objective_names(self) -> list[str]:
        return [self.objectives.accuracy, *self.objectives.minimize]


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    location = ".".join(str(part) for part in item["loc"])
    return f"{location}: {item['msg'].removeprefix('Value error, ')}"


DERIVED_FOLDERS = ("report", "export", "final")


def derived_folder(study: StudyFile, kind: str, study_name: str | None = None) -> Path:
    """STEM-report / STEM-export / STEM-final beside the study file (STEM-NAME-... for
    another study name in the storage): named after the file, so two study files in one
    folder never share one."""
    import re

    if study_name is not None and not re.match(STUDY_NAME_PATTERN, study_name):
        raise FieldError("study_name", f"{{0}} {study_name!r}: use letters, digits, '.', '_' and '-' (at most 100), starting with a letter or digit")
    stem = study.path.stem if study.path else study.study.name
    return study.folder / (f"{stem}-{study_name}-{kind}" if study_name else f"{stem}-{kind}")


def _check_written_path(path: Path, study: StudyFile, field: str, relative: bool) -> None:
    """A file the study writes: never inside a folder that a report or export replaces, and,
    when given relative to the study file, never outside the study's folder (an absolute path
    is the user saying so explicitly)."""
    folder = study.folder.resolve()
    resolved = path.resolve()
    if relative and folder not in resolved.parents:
        raise UserError(f"{study.path}: {field}: {path} is outside the study's folder {folder}; give an absolute path to write there")
    stem = study.path.stem if study.path else study.study.name
    for parent in resolved.parents:
        if parent.parent == folder and parent.name.startswith(f"{stem}-") and parent.name.endswith(tuple(f"-{k}" for k in DERIVED_FOLDERS)):
            raise UserError(f"{study.path}: {field}: {path} is inside {parent.name}/, which the study's report, export or final runs write; choose another place")


def load_study_file(path: str | Path, needs_data: bool = True) -> StudyFile:
    """Read and validate a study file; names (space, presets) are checked too. Commands that
    only read the storage (report, export) pass ``needs_data=False``: the data folder need
    not exist for them."""
    import search_spaces
    from lightseg_nas.presets import get_preset

    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UserError(f"{path}: no such study file") from None
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: cannot read study file ({error.__class__.__name__})") from None
    except tomllib.TOMLDecodeError as error:
        raise UserError(f"{path}: not valid TOML ({str(error).splitlines()[0]})") from None
    except RecursionError:
        raise UserError(f"{path}: nested too deeply to be a study file") from None
    except ValueError as error:  # an integer of over 4,300 digits
        from lightseg_nas.config import too_many_digits

        raise UserError(f"{path}: {too_many_digits(error)}") from None
    reject_bools(data, bool_fields(StudyFile), f"{path}: ")
    try:
        study = StudyFile.model_validate({**data, "path": path.resolve()})
    except ValidationError as error:
        raise UserError(f"{path}: {_first_error(error)}") from None
    search_spaces.get_space(study.study.space)  # unknown space -> one line listing the known ones
    if study.study.final_recipe is not None and study.study.final_recipe not in RECIPES:
        raise UserError(f"{path}: study.final_recipe: {study.study.final_recipe!r} is unknown; known: {', '.join(sorted(RECIPES))}")
    get_preset(study.cost.reference)
    if study.baselines.presets != "auto":
        for name in study.baselines.presets:
            get_preset(name)
            if name not in search_spaces.space_presets(study.study.space):
                raise UserError(f"{path}: baselines.presets: {name!r} is not a point of space {study.study.space!r}")
    if study.fidelity.mode == "supernet":
        try:
            search_spaces.supernet_space(study.study.space)
        except UserError as error:
            raise UserError(f"{path}: fidelity.mode: {error}") from None
    _check_budgets_reachable(path, study)
    from lightseg_nas.data import parse_spec
    from lightseg_nas.train import resolve_device

    try:
        kind, options = parse_spec(study.data_spec())
    except UserError as error:
        raise UserError(f"{path}: data.spec: {error}") from None
    if needs_data and kind == "eg1800" and not Path(options["path"]).expanduser().is_dir():
        raise DatasetMissing(f"{path}: data.spec: {options['path']}: no such dataset folder")
    if study.supernet.file is not None:
        _check_written_path(study.supernet_path(), study, "supernet.file", not Path(study.supernet.file).expanduser().is_absolute())
    url = study.study.storage
    if url is not None and url.startswith("sqlite:///") and url != "sqlite:///:memory:":
        from lightseg_nas.search.storage import sqlite_path

        _check_written_path(sqlite_path(study.storage_url()), study, "study.storage", not url.startswith("sqlite:////"))
    try:
        resolve_device(study.training.device)
    except UserError as error:
        raise UserError(f"{path}: training.device: {error}") from None
    return study


def _check_budgets_reachable(path: Path, study: StudyFile) -> None:
    """A budget that even the space's smallest network exceeds can never be met."""
    import search_spaces
    from lightseg_nas.cost import count_macs, count_params
    from lightseg_nas.families import build_model

    budgets = study.budgets
    if budgets.max_params is None and budgets.max_macs is None:
        return
    model = build_model(search_spaces.smallest(study.study.space, study.study.num_classes))
    params = count_params(model)
    if budgets.max_params is not None and params > budgets.max_params:
        raise UserError(f"{path}: budgets.max_params {budgets.max_params} is impossible: the smallest network of space {study.study.space!r} has {params} parameters")
    if budgets.max_macs is not None:
        macs = count_macs(model, study.cost.size, counters=["fvcore"])["fvcore"].macs
        if macs > budgets.max_macs:
            raise UserError(f"{path}: budgets.max_macs {budgets.max_macs:g} is impossible: the smallest network of space {study.study.space!r} needs {macs} MACs at {study.cost.size}px")
