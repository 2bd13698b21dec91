"""One settings schema: training, compression and a study's trials share one definition (and
one validation rule) per setting; the library names settings as fields, the CLI as options."""

from __future__ import annotations

import pytest
from pydantic import ValidationError
from typer.testing import CliRunner

from lightseg_nas.checks import check_size
from lightseg_nas.cli import app
from lightseg_nas.errors import FieldError, UserError
from lightseg_nas.search.study_file import DataSection, Rung, TrainingSection
from lightseg_nas.settings import INPUT_MULTIPLE, CompressSettings, TrainSettings, default_text
from lightseg_nas.train import settings_from

COMPRESS = {"metric": "params", "target": 1000}


@pytest.mark.parametrize("size", [INPUT_MULTIPLE - 1, INPUT_MULTIPLE + 1, 100, 0, 2048])
def test_one_size_rule_everywhere(size):
    with pytest.raises(UserError, match=f"multiple of {INPUT_MULTIPLE}"):
        check_size(size, "size")
    for build in (lambda: TrainSettings(size=size), lambda: CompressSettings(**COMPRESS, size=size), lambda: Rung(size=size, epochs=1)):
        with pytest.raises(ValidationError):
            build()


@pytest.mark.parametrize("field,value", [("lr", float("inf")), ("lr", 0.0), ("batch_size", 0), ("val_fraction", 1.0), ("weight_decay", -1.0)])
def test_a_shared_setting_is_validated_alike_by_train_compress_and_the_study_file(field, value):
    sections = {"val_fraction": DataSection}.get(field, TrainingSection)
    for model, extra in ((TrainSettings, {}), (CompressSettings, COMPRESS), (sections, {})):
        if field in model.model_fields:
            with pytest.raises(ValidationError):
                model(**extra, **{field: value})
    assert TrainSettings.model_fields[field].default == sections.model_fields[field].default


def test_a_trial_trains_with_the_study_files_values_and_the_shared_defaults():
    training, data = TrainingSection(lr=0.01), DataSection(val_seed=3)
    settings = TrainSettings(**training.model_dump(), **data.model_dump(include={"val_fraction", "val_seed"}), epochs=2, size=64)
    assert settings.lr == 0.01 and settings.val_seed == 3 and settings.batch_size == TrainSettings().batch_size


def test_the_library_names_fields_and_the_cli_names_options(tmp_path):
    with pytest.raises(FieldError) as caught:
        settings_from(encoder_epochs=5, epochs=5)
    assert "encoder_epochs (5) must be fewer than epochs (5)" in str(caught.value) and "--" not in str(caught.value)
    with pytest.raises(FieldError, match="^lr: "):
        settings_from(lr=-1.0)
    result = CliRunner().invoke(app, ["train", "--preset", "sinet", "--out", str(tmp_path / "r"), "--encoder-epochs", "5", "--epochs", "5"])
    assert result.exit_code == 2 and "--encoder-epochs (5) must be fewer than --epochs (5)" in result.output
    result = CliRunner().invoke(app, ["train", "--preset", "sinet", "--out", str(tmp_path / "r"), "--lr", "-1"])
    assert result.exit_code == 2 and "--lr: " in result.output


def test_the_help_shows_the_settings_defaults():
    result = CliRunner().invoke(app, ["train", "--help"], terminal_width=200)
    for field in ("epochs", "batch_size", "lr", "size"):
        assert f"[default: ({default_text(TrainSettings, field)})]" in result.output, field


def test_a_recipe_gives_defaults_that_options_override_and_is_recorded():
    from lightseg_nas.settings import RECIPES

    for name, values in RECIPES.items():
        settings = settings_from(recipe=name)
        assert settings.recipe == name and all(getattr(settings, k) == v for k, v in values.items())
        overridden = settings_from(recipe=name, epochs=3)
        assert overridden.epochs == 3 and overridden.recipe == name
    assert settings_from().recipe is None
    with pytest.raises(FieldError, match="recipe 'nope' is unknown"):
        settings_from(recipe="nope")


def test_every_boolean_setting_of_a_study_file_takes_true_and_false(tmp_path):
    from lightseg_nas.search import load_study_file
    from lightseg_nas.search.study_file import StudyFile
    from lightseg_nas.settings import bool_fields
    from tests.test_search import write_study

    sections = {"channels_last": "training", "compile": "training", "augment": "training", "enabled": "fidelity"}
    assert bool_fields(StudyFile) == set(sections)
    for value in ("true", "false"):
        path = write_study(tmp_path, fidelity=value)
        text = path.read_text().replace("[training]\n", f"[training]\nchannels_last = {value}\ncompile = {value}\naugment = {value}\n")
        path.write_text(text)
        study = load_study_file(path)
        assert study.training.channels_last is study.training.compile is study.training.augment is study.fidelity.enabled is (value == "true")
    path.write_text(text.replace("batch_size = 8", "batch_size = true"))
    with pytest.raises(UserError, match="training.batch_size: expected a number"):
        load_study_file(path)


def test_the_cli_options_of_run_settings_come_from_the_schema():
    """train, supernet and compress generate their setting options from the fields: every
    field they offer has a description, and --help shows its flag with that text."""
    from typer.testing import CliRunner

    from lightseg_nas import cli
    from lightseg_nas.settings import CompressSettings, SupernetSettings, TrainSettings

    offered = {
        "train": (TrainSettings, cli.TRAIN_SETTINGS + cli.DISTILL_SETTINGS + cli.SPEED_SETTINGS),
        "supernet": (SupernetSettings, cli.SUPERNET_SETTINGS),
        "compress": (CompressSettings, cli.COMPRESS_SETTINGS + cli.DISTILL_SETTINGS + cli.SPEED_SETTINGS + ("max_steps_per_step", "device")),
    }
    for command, (model, names) in offered.items():
        text = " ".join(CliRunner().invoke(cli.app, [command, "--help"], terminal_width=400).stdout.split())
        own_wording = {("supernet", "loss"), ("compress", "lr"), ("compress", "kd_weight"), ("compress", "kd_temperature"), ("compress", "cwd_weight")}
        for name in names:
            description = model.model_fields[name].description
            assert description, (command, name)
            assert "--" + name.replace("_", "-") in text, (command, name)
            if (command, name) not in own_wording:  # the help is the field's own text
                assert " ".join(description.split()) in text, (command, name)
        assert "Epochs." in text or command == "compress"


def test_a_generated_option_is_validated_by_its_field(tmp_path):
    from typer.testing import CliRunner

    from lightseg_nas.cli import app

    for args, expected in [(["--edge-band", "4"], "--edge-band"), (["--loss", "l2"], "--loss"), (["--lr", "inf"], "--lr"), (["--affine", "none"], "--affine")]:
        result = CliRunner().invoke(app, ["train", "--preset", "sinet", "--out", str(tmp_path / "run"), *args])
        assert result.exit_code == 2 and expected in result.stderr and len(result.stderr.strip().splitlines()) == 1, result.output
    assert not (tmp_path / "run").exists()
