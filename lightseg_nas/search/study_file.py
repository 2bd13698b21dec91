"""Study files (TOML): everything a search needs, validated before any work starts.

Paths inside a study file (an ``eg1800:PATH`` spec, a ``sqlite:///`` file) are resolved
relative to the study file, so a study folder can be moved or shared as a whole.
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Literal, Optional

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from lightseg_nas.errors import UserError

# Cost objective -> the trial attribute that holds it (latency is kept as a ratio).
COST_ATTRS = {"params": "params", "macs": "macs", "latency": "latency_ratio"}
SAMPLERS = ("tpe", "nsga2", "gp", "random")


class _Section(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class StudySection(_Section):
    name: str = Field(min_length=1)
    space: str
    num_classes: Literal[1, 2] = 1
    sampler: Literal["tpe", "nsga2", "gp", "random"] = "tpe"
    seed: int = 0
    # The search stops when the study holds this many finished (complete or pruned) trials.
    n_trials: int = Field(20, ge=1)
    timeout_s: Optional[float] = Field(None, gt=0)
    # Optuna storage URL; default: a SQLite file named after the study file, beside it.
    storage: Optional[str] = None
    # A worker's running trial sends a heartbeat this often; one silent for grace_s seconds
    # (its worker was killed) is marked failed and retried by the next worker to start a trial.
    heartbeat_s: int = Field(30, ge=1)
    grace_s: int = Field(120, ge=2)


class DataSection(_Section):
    spec: str = "synthetic"
    val_fraction: float = Field(0.1, gt=0, lt=1)
    val_seed: int = 0


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
    max_params: Optional[int] = Field(None, ge=1)
    max_macs: Optional[float] = Field(None, gt=0)
    max_latency_ratio: Optional[float] = Field(None, gt=0)


class CostSection(_Section):
    # MACs (fvcore counter) and latency are measured at size x size, batch 1.
    size: int = Field(224, ge=32)
    threads: int = Field(1, ge=1)
    repeats: int = Field(10, ge=1)
    # Latency is measured as a ratio to this preset, timed in the same run.
    reference: str = "sinet"


class Rung(_Section):
    size: int = Field(ge=32)
    epochs: int = Field(ge=1)


class FidelitySection(_Section):
    # Rungs in order; a candidate trains rung by rung (continuing its weights) while it is
    # promoted. With enabled = false every candidate trains through every rung.
    rungs: tuple[Rung, ...] = Field(default=(Rung(size=128, epochs=3),), min_length=1)
    enabled: bool = True
    # Successive halving: about 1 / reduction_factor of the candidates at a rung go on.
    reduction_factor: int = Field(3, ge=2)


class TrainingSection(_Section):
    batch_size: int = Field(16, ge=1)
    lr: float = Field(5e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    augment: bool = True
    device: str = "auto"


class ScreenSection(_Section):
    proxy: Literal["synflow", "grad_norm", "naswot"]
    # Skip training only once the proxy's Spearman correlation with validation IoU, measured
    # on this study's trained trials, reaches this value over at least min_trials trials.
    min_correlation: float = Field(0.5, ge=-1, le=1)
    min_trials: int = Field(8, ge=3)
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

    @property
    def objective_names(self) -> list[str]:
        return [self.objectives.accuracy, *self.objectives.minimize]


def _first_error(error: ValidationError) -> str:
    item = error.errors()[0]
    location = ".".join(str(part) for part in item["loc"])
    return f"{location}: {item['msg'].removeprefix('Value error, ')}"


def load_study_file(path: str | Path) -> StudyFile:
    """Read and validate a study file; names (space, presets) are checked too."""
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
        raise UserError(f"{path}: not valid TOML ({error})") from None
    try:
        study = StudyFile.model_validate({**data, "path": path.resolve()})
    except ValidationError as error:
        raise UserError(f"{path}: {_first_error(error)}") from None
    search_spaces.get_space(study.study.space)  # unknown space -> one line listing the known ones
    get_preset(study.cost.reference)
    if study.baselines.presets != "auto":
        for name in study.baselines.presets:
            get_preset(name)
            if name not in search_spaces.space_presets(study.study.space):
                raise UserError(f"{path}: baselines.presets: {name!r} is not a point of space {study.study.space!r}")
    if study.cost.size % 32:
        raise UserError(f"{path}: cost.size {study.cost.size} is not a multiple of 32")
    for rung in study.fidelity.rungs:
        if rung.size % 32:
            raise UserError(f"{path}: fidelity.rungs: size {rung.size} is not a multiple of 32")
    _check_budgets_reachable(path, study)
    from lightseg_nas.data import parse_spec

    try:
        parse_spec(study.data_spec())
    except UserError as error:
        raise UserError(f"{path}: data.spec: {error}") from None
    return study


def _check_budgets_reachable(path: Path, study: StudyFile) -> None:
    """A budget that even the space's smallest network exceeds can never be met."""
    import search_spaces
    from lightseg_nas.cost import count_macs, count_params
    from lightseg_nas.models import build_model

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
