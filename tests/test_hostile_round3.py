"""The third hostile-input round, by class: destructive outputs, check-then-act races,
damaged files, options that would be silently ignored, outputs, the environment (a full
disk, no memory) and numbers too long to read; the benchmark scripts' arguments are in
tests/test_benchmark_args.py. Every case keeps the contract of tests/test_bad_input.py:
exit code 2, one line on stderr, and every input, output folder and study storage
byte-identical afterwards."""

import contextlib
import copy
import errno
import json
from pathlib import Path

import optuna
import pytest
import torch
from typer.testing import CliRunner

import lightseg_nas.modelfile as modelfile
from lightseg_nas.checks import file_lock, folder_lock
from lightseg_nas.cli import app
from lightseg_nas.config import to_json
from lightseg_nas.data.transforms import get_preprocessing
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import make_record, save_record
from lightseg_nas.presets import get_preset
from lightseg_nas.search.storage import sqlite_lock
from lightseg_nas.settings import SupernetSettings
from lightseg_nas.train import settings_from
from tests.fixtures import stopping_after_one_epoch
from tests.test_bad_input import _snapshot, assert_refused
from tests.test_search import write_study
from tests.test_supernet import SUPERNET_STUDY

runner = CliRunner()
BIG = "9" * 5000


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    with contextlib.ExitStack() as held:
        yield _assets(tmp_path_factory.mktemp("round3"), held)


def _interrupted_training(out: Path, supernet: bool = False) -> None:
    """A run folder with the checkpoint of a run stopped after its first epoch."""
    import lightseg_nas.runs as runs_module  # the run layer writes every checkpoint
    import lightseg_nas.supernet as supernet_module
    import lightseg_nas.train as train_module

    if supernet:
        settings = SupernetSettings(epochs=2, size=32, batch_size=4, random_subnets=0, recalibration_images=4)
        real = runs_module.save_record
        calls = []

        def save_then_stop(record, path):
            real(record, path)
            calls.append(path)
            raise KeyboardInterrupt

        runs_module.save_record = save_then_stop
        try:
            with contextlib.suppress(KeyboardInterrupt):
                supernet_module.train_supernet("sinet", 1, "synthetic:count=8", out, settings, progress=False)
        finally:
            runs_module.save_record = real
        return
    with stopping_after_one_epoch(), contextlib.suppress(KeyboardInterrupt):
        train_module.train_to_file(get_preset("sinet"), "synthetic:count=8", out, settings_from(epochs=2, size=32, batch_size=4), progress=False)


def _assets(root: Path, held: contextlib.ExitStack) -> Path:
    config = get_preset("sinet").model_copy(update={"num_classes": 1})
    model = build_model(config)
    save_record(make_record(config, model, get_preprocessing("default"), training={"size": 32}, metrics={"val_size": 32}), root / "model.pt")
    record = torch.load(root / "model.pt", weights_only=True)

    def model_variant(name, change):
        copied = copy.deepcopy(record)
        change(copied)
        torch.save(copied, root / name)

    model_variant("noid.pt", lambda r: r.pop("arch_id"))
    model_variant("prep_noname.pt", lambda r: r["preprocessing"].pop("name"))
    model_variant("prep_unknown.pt", lambda r: r["preprocessing"].update(name="sepia"))
    (root / "file").write_text("a file, not a folder")

    # damaged checkpoints: train and supernet runs stopped after one epoch, then altered
    for kind in ("train", "supernet"):
        _interrupted_training(root / f"{kind}-good", supernet=kind == "supernet")
        state = torch.load(root / f"{kind}-good" / "checkpoint.pt", weights_only=True)

        def checkpoint_variant(name, change, kind=kind, state=state):
            folder = root / f"{kind}-{name}"
            folder.mkdir()
            copied = copy.deepcopy(state)
            change(copied)
            torch.save(copied, folder / "checkpoint.pt")

        def nan(copied):
            key = next(k for k, v in copied["model"].items() if v.is_floating_point())
            copied["model"][key] = torch.full_like(copied["model"][key], float("nan"))

        checkpoint_variant("nolr", lambda c: c["settings"].pop("lr"))
        checkpoint_variant("model-empty", lambda c: c.update(model={}))
        checkpoint_variant("model-missing", lambda c: c.pop("model"))
        checkpoint_variant("optimizer-empty", lambda c: c.update(optimizer={}))
        checkpoint_variant("history-text", lambda c: c.update(history="epoch 1"))
        checkpoint_variant("nan", nan)

    # 1. destructive outputs: a study folder with its study file, database and supernet
    study_folder = root / "study"
    study_folder.mkdir()
    write_study(study_folder, fidelity="false")
    optuna.create_study(storage=f"sqlite:///{study_folder / 'tiny.db'}", study_name="tiny", directions=["maximize", "minimize"])
    (study_folder / "tiny-supernet").mkdir()
    (study_folder / "tiny-supernet" / "supernet.pt").write_bytes(b"a supernet, kept")
    (root / "here").mkdir()  # the working folder of every case
    (root / "here" / "work.txt").write_text("the user's own files")
    (root / "notes").mkdir()
    (root / "notes" / "summary.md").write_text("my own notes")
    (root / "notes" / "plan.txt").write_text("not a report file")
    supernet_study = root / "supernets"
    supernet_study.mkdir()
    (supernet_study / "inreport.toml").write_text(SUPERNET_STUDY.replace('name = "tiny"', 'name = "inreport"') + 'file = "inreport-report/supernet.pt"\n')
    (supernet_study / "outside.toml").write_text(SUPERNET_STUDY.replace('name = "tiny"', 'name = "outside"') + 'file = "../elsewhere/supernet.pt"\n')
    (supernet_study / "busy.toml").write_text(SUPERNET_STUDY.replace('name = "tiny"', 'name = "busy"'))
    held.enter_context(sqlite_lock(f"sqlite:///{supernet_study / 'busy.db'}"))

    # 2. races: another process holds the folder or the output
    held.enter_context(folder_lock(root / "busy-supernet", "supernet training"))
    held.enter_context(file_lock(root / "busy.pt.lock"))

    # damaged supernet files in the study a search would score with
    good = _supernet_record()
    for name, change in {
        "nosettings-key": lambda r: r["settings"].pop("size"),
        "empty-weights": lambda r: r.update(state_dict={}),
        "no-weights": lambda r: r.pop("state_dict"),
        "history-text": lambda r: r.update(history="epoch 1"),
    }.items():
        copied = copy.deepcopy(good)
        change(copied)
        torch.save(copied, supernet_study / f"{name}.pt")
        (supernet_study / f"{name}.toml").write_text(SUPERNET_STUDY.replace('name = "tiny"', f'name = "{name}"') + f'file = "{name}.pt"\n')
    copied = copy.deepcopy(good)
    key = next(k for k, v in copied["state_dict"].items() if v.is_floating_point())
    copied["state_dict"][key] = torch.full_like(copied["state_dict"][key], float("nan"))
    torch.save(copied, supernet_study / "nan.pt")
    (supernet_study / "nan.toml").write_text(SUPERNET_STUDY.replace('name = "tiny"', 'name = "nan"') + 'file = "nan.pt"\n')

    # 6. outputs: an export folder that is a file
    exports = root / "exports"
    exports.mkdir()
    write_study(exports, fidelity="false")
    failed = optuna.create_study(storage=f"sqlite:///{exports / 'tiny.db'}", study_name="tiny", directions=["maximize", "minimize"])
    failed.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "boom"}))
    (exports / "tiny-export").write_text("a file where the export folder goes")

    # 8. numbers too long to read
    (root / "big.toml").write_text(_big_study(root))
    data = json.loads(to_json(config))
    (root / "big.json").write_text(json.dumps(data).replace('"num_classes": 1', f'"num_classes": {BIG}'))
    (root / "bigwidth.json").write_text(json.dumps({**data, "stem_width": 0}).replace('"stem_width": 0', f'"stem_width": {BIG}'))
    return root


def _supernet_record() -> dict:
    import lightseg_nas.supernet as supernet_module

    out = Path(__import__("tempfile").mkdtemp())
    settings = SupernetSettings(epochs=1, size=32, batch_size=4, random_subnets=0, recalibration_images=4, max_steps=1)
    supernet_module.train_supernet("extremec3", 1, "synthetic:count=12", out, settings, progress=False)
    return torch.load(out / "supernet.pt", weights_only=True)


def _big_study(root: Path) -> str:
    folder = root / "bigstudy"
    folder.mkdir()
    return write_study(folder, fidelity="false").read_text().replace("n_trials = 4", f"n_trials = {BIG}")


M = "{A}/model.pt"
TINY_TRAIN = "--data synthetic:count=8 --size 32 --batch-size 4 --epochs 1 --max-steps 1 --no-progress"
COMPRESS = f"compress {M} --target-params 95% --data synthetic:count=8 --size 32 --steps 1 --epochs-per-step 1 --max-steps-per-step 1 --no-progress"
CASES = [
    # 1. destructive outputs: only a report folder this tool wrote is ever replaced
    ("destructive", "report --out the study's own folder", "report {A}/study/tiny.toml --out {A}/study", "did not write as a report"),
    ("destructive", "report --out the supernet's folder", "report {A}/study/tiny.toml --out {A}/study/tiny-supernet", "did not write as a report"),
    ("destructive", "report --out a folder of other files", "report {A}/study/tiny.toml --out {A}/notes", "did not write as a report"),
    ("destructive", "report --out the folder above the study", "report {A}/study/tiny.toml --out {A}", "did not write as a report"),
    ("destructive", "report --out .", "report {A}/study/tiny.toml --out .", "a name of its own"),
    ("destructive", "search whose report would replace a folder", "search {A}/study/tiny.toml --study-name x --n-trials 1", None),
    ("destructive", "supernet file inside the report folder", "search {A}/supernets/inreport.toml", "inside inreport-report/"),
    ("destructive", "supernet file outside the study folder", "search {A}/supernets/outside.toml", "outside the study's folder"),
    # 2. check-then-act races: the lock first, then the check
    ("race", "search while another holds the study, before the supernet", "search {A}/supernets/busy.toml", "another search is running"),
    ("race", "supernet into a folder another supernet training holds", "supernet --space sinet --out {A}/busy-supernet " + TINY_TRAIN, "is running in this folder"),
    ("race", "compress into an OUT another compression writes", COMPRESS + " --out {A}/busy.pt", "another compression is writing it"),
    ("race", "train into a folder another train holds", "train --preset sinet --out {A}/busy-supernet " + TINY_TRAIN, "is running in this folder"),
    # 4. damaged files
    *[
        ("damaged", f"{kind} checkpoint: {name}", f"{'train --preset sinet' if kind == 'train' else 'supernet --space sinet'} --out {{A}}/{kind}-{name} --resume "
         + ("--data synthetic:count=8 --size 32 --batch-size 4 --epochs 2" if kind == "train" else "--data synthetic:count=8 --size 32 --batch-size 4 --epochs 2 --random-subnets 0 --recalibration-images 4"),
         expected)
        for kind in ("train", "supernet")
        for name, expected in [
            ("nolr", "settings lack 'lr'"), ("model-empty", "model is empty"), ("model-missing", "has no 'model'"),
            ("optimizer-empty", "optimizer is empty"), ("history-text", "history is a str"), ("nan", "non-finite weights"),
        ]
    ],
    ("damaged", "train --resume alone, settings lacking a key", "train --out {A}/train-nolr --resume", "settings lack 'lr'"),
    ("damaged", "supernet file: settings lack a key", "search {A}/supernets/nosettings-key.toml", "settings lack 'size'"),
    ("damaged", "supernet file: empty weights", "search {A}/supernets/empty-weights.toml", "state_dict is empty"),
    ("damaged", "supernet file: no weights", "search {A}/supernets/no-weights.toml", "state_dict is missing"),
    ("damaged", "supernet file: nan weights", "search {A}/supernets/nan.toml", "non-finite"),
    ("damaged", "supernet file: history is text", "search {A}/supernets/history-text.toml", "history is a str"),
    ("damaged", "model file without arch_id as --teacher", "train --preset sinet --teacher {A}/noid.pt --out {A}/out/t " + TINY_TRAIN, "lacks 'arch_id'"),
    ("damaged", "model file without arch_id to compress", COMPRESS.replace(M, "{A}/noid.pt") + " --out {A}/out/c.pt", "lacks 'arch_id'"),
    ("damaged", "preprocessing without a name (eval)", "eval {A}/prep_noname.pt --data synthetic:count=8", "preprocessing.name"),
    ("damaged", "preprocessing without a name (compress)", COMPRESS.replace(M, "{A}/prep_noname.pt") + " --out {A}/out/c.pt", "preprocessing.name"),
    ("damaged", "unknown preprocessing (predict)", "predict {A}/prep_unknown.pt {A}/file --out {A}/out/p", "preprocessing.name"),
    ("damaged", "unknown preprocessing (onnx)", "onnx {A}/prep_unknown.pt --out {A}/out/x.onnx", "preprocessing.name"),
    # 5. options that would be silently ignored
    ("ignored", "train --kd-weight without --teacher", "train --preset sinet --kd-weight 2 --out {A}/out/t " + TINY_TRAIN, "--kd-weight goes with --teacher"),
    ("ignored", "train --kd-temperature without --teacher", "train --preset sinet --kd-temperature 4 --out {A}/out/t " + TINY_TRAIN, "--kd-temperature goes with --teacher"),
    ("ignored", "train --cwd-weight without --teacher", "train --preset sinet --cwd-weight 0.5 --out {A}/out/t " + TINY_TRAIN, "--cwd-weight goes with --teacher"),
    ("ignored", "compress --kd-weight without --teacher", COMPRESS + " --kd-weight 2 --out {A}/out/c.pt", "--kd-weight goes with --teacher"),
    ("ignored", "compress --cwd-weight without --teacher", COMPRESS + " --cwd-weight 2 --out {A}/out/c.pt", "--cwd-weight goes with --teacher"),
    # 6. outputs
    ("outputs", "export --front --out FILE", "export {A}/exports/tiny.toml --front --out {A}/file", "is a file"),
    ("outputs", "export --out FILE/sub", "export {A}/exports/tiny.toml --front --out {A}/file/sub", "is a file"),
    ("outputs", "STEM-export is a file", "export {A}/exports/tiny.toml --front", "is a file"),
    ("outputs", "export --trial N --out FILE", "export {A}/exports/tiny.toml --trial 0 --out {A}/file", "is a file"),
    ("outputs", "report --out FILE/sub", "report {A}/exports/tiny.toml --out {A}/file/sub", "is a file"),
    # 8. numbers
    ("numbers", "5000-digit integer in a study file", "search {A}/big.toml", "too many digits"),
    ("numbers", "5000-digit integer in a config (measure)", "measure --config {A}/big.json", "too many digits"),
    ("numbers", "5000-digit integer in a config (train)", "train {A}/bigwidth.json --out {A}/out/t " + TINY_TRAIN, "too many digits"),
    ("numbers", "5000-digit option value", f"train --preset sinet --epochs {BIG} --out {{A}}/out/t", "--epochs"),
]


@pytest.mark.parametrize("kind,name,command,expected", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_round3_hostile_input(assets, kind, name, command, expected, monkeypatch):
    monkeypatch.chdir(assets / "here")
    if expected is None:  # the search's own report folder is another kind of folder here
        (assets / "study" / "tiny-x-report").mkdir(exist_ok=True)
        (assets / "study" / "tiny-x-report" / "mine.txt").write_text("kept")
        expected = "did not write as a report"
    before = _snapshot(assets)
    assert_refused(runner.invoke(app, command.format(A=assets).split()), expected, assets, before)
    assert not (assets / "out").exists() and not (assets / "elsewhere").exists()


def test_every_class_of_round3_has_cases():
    counts = {}
    for kind, *_ in CASES:
        counts[kind] = counts.get(kind, 0) + 1
    assert set(counts) == {"destructive", "race", "damaged", "ignored", "outputs", "numbers"}
    assert min(counts.values()) >= 4


def _disk_full(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device", "/simulated/disk")


ENVIRONMENT = [
    ("train", "train --preset sinet --out {A}/env/train " + TINY_TRAIN),
    ("supernet", "supernet --space sinet --out {A}/env/supernet --random-subnets 0 --recalibration-images 4 " + TINY_TRAIN),
    ("compress", COMPRESS + " --out {A}/env/small.pt"),
    ("onnx", "onnx {A}/model.pt --out {A}/env/model.onnx"),
    ("report", "report {A}/exports/tiny.toml --out {A}/env/report --no-png"),
]


@pytest.mark.parametrize("command", [c for _, c in ENVIRONMENT], ids=[n for n, _ in ENVIRONMENT])
@pytest.mark.parametrize("failure", ["disk full", "out of memory"])
def test_a_full_disk_or_no_memory_ends_in_one_line_and_leaves_nothing(assets, command, failure, monkeypatch):
    import lightseg_nas.search.report as report

    if failure == "disk full":
        # every write of a file of ours goes through atomic_write (model files, checkpoints,
        # ONNX), and the report writes its CSV tables itself
        def full(path, write):
            raise OSError(errno.ENOSPC, "No space left on device", str(path))

        monkeypatch.setattr(modelfile, "atomic_write", full)
        for module in ("lightseg_nas.onnx_export", "lightseg_nas.compress", "lightseg_nas.search.export"):
            if hasattr(__import__(module, fromlist=["x"]), "atomic_write"):
                monkeypatch.setattr(f"{module}.atomic_write", full)
        monkeypatch.setattr(report.pd.DataFrame, "to_csv", _disk_full)
    else:
        def no_memory(*args, **kwargs):
            raise RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried to allocate 100663296 bytes")

        monkeypatch.setattr(torch.nn.Conv2d, "forward", no_memory)
        monkeypatch.setattr(report.pd.DataFrame, "to_csv", lambda *a, **k: no_memory())
    before = _snapshot(assets)
    assert_refused(runner.invoke(app, command.format(A=assets).split()), "no space left" if failure == "disk full" else "out of memory", assets, before)
    leftovers = [p for p in (assets / "env").rglob("*")] if (assets / "env").exists() else []
    assert not [p for p in leftovers if p.is_file()], leftovers


@pytest.mark.slow
def test_a_real_out_of_memory_ends_in_one_line(tmp_path):
    """supernet at 1024 px under an address-space limit: the allocator fails for real."""
    import resource
    import subprocess
    import sys

    def limit():
        resource.setrlimit(resource.RLIMIT_AS, (3 * 2**30, 3 * 2**30))

    command = [sys.executable, "-m", "lightseg_nas.cli", "supernet", "--space", "sinet", "--data", "synthetic:count=2", "--size", "1024", "--batch-size", "2",
               "--out", str(tmp_path / "s"), "--no-progress", "--threads", "1"]
    result = subprocess.run(command, preexec_fn=limit, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2, result.stderr[-2000:]
    assert result.stderr.strip().splitlines() == ["error: out of memory; nothing half-written is kept (try a smaller --size or --batch-size, or fewer --threads)"]
    assert not (tmp_path / "s").exists()
