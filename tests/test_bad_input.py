"""Hostile and mistaken input for every command: one line on stderr, exit code 2, and
nothing harmed in the output folders or the study storage."""

import hashlib
import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

import search_spaces
from lightseg_nas.cli import app
from lightseg_nas.config import to_json
from lightseg_nas.data.transforms import get_preprocessing
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import make_record, save_record
from tests.fixtures import write_dataset
from tests.test_search import write_study

runner = CliRunner()


class Payload:
    def __reduce__(self):
        return (print, ("pwned",))


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("assets")
    config = search_spaces.sample("sinet", 2, num_classes=1)
    (root / "net.json").write_text(to_json(config))
    model = build_model(config)
    save_record(make_record(config, model, get_preprocessing("default"), training=None, metrics={}), root / "model.pt")
    good = (root / "model.pt").read_bytes()
    (root / "truncated.pt").write_bytes(good[: len(good) // 2])
    torch.save({"format": "lightseg-nas-model", "x": Payload()}, root / "pickled.pt")
    torch.save({"weight": torch.zeros(2)}, root / "foreign.pt")
    record = torch.load(root / "model.pt", weights_only=True)
    key = next(k for k, v in record["state_dict"].items() if v.ndim == 4)
    record["state_dict"][key] = torch.zeros(1, 1, 1, 1)
    torch.save(record, root / "tampered.pt")
    record = torch.load(root / "model.pt", weights_only=True)
    record["config"]["stem_width"] = -3
    torch.save(record, root / "badconfig.pt")
    record = torch.load(root / "model.pt", weights_only=True)
    record["config"]["num_classes"] = 21
    torch.save(record, root / "classes21.pt")
    from lightseg_nas.presets import get_preset

    torch.save(build_model(get_preset("extremec3net")).state_dict(), root / "ec3.pth")
    (root / "truncated.json").write_text(to_json(config)[:40])
    data = json.loads(to_json(config))
    (root / "wrongtype.json").write_text(json.dumps({**data, "stem_width": "wide"}))
    (root / "unknownkey.json").write_text(json.dumps({**data, "colour": "red"}))
    (root / "oldschema.json").write_text(json.dumps({**data, "schema_version": 0}))
    (root / "list.json").write_text("[1, 2]")
    (root / "notimage.jpg").write_bytes(b"\x00not an image")
    (root / "adir.jpg").mkdir()
    write_dataset(root / "eg1800", "extportraitseg")
    broken = write_dataset(root / "broken", "extportraitseg")
    (broken / "GT_png" / "00002_mask.png").unlink()
    study = write_study(root, fidelity="false")
    assert runner.invoke(app, ["search", str(study), "--n-trials", "2", "--no-progress", "--no-report"]).exit_code == 0
    text = study.read_text()
    (root / "truncated.toml").write_text(text[: len(text) // 3])
    (root / "wrongtypes.toml").write_text(text.replace("n_trials = 4", 'n_trials = "many"'))
    (root / "range.toml").write_text(text.replace('spec = "synthetic:count=12"', 'spec = "synthetic:count=12"\nval_fraction = 2'))
    (root / "badspec.toml").write_text(text.replace("synthetic:count=12", "imagenet"))
    (root / "badrung.toml").write_text(text.replace("size = 32", "size = 50"))
    (root / "unknownobjective.toml").write_text(text.replace('minimize = ["params"]', 'minimize = ["energy"]'))
    (root / "unknownsampler.toml").write_text(text.replace('seed = 0\n', 'seed = 0\nsampler = "cmaes"\n', 1))
    (root / "impossible.toml").write_text(text.replace("[budgets]\n", "[budgets]\nmax_params = 100\n"))
    (root / "badreference.toml").write_text(text.replace("[cost]\n", '[cost]\nreference = "unet"\n'))
    return root


# (name, command line with {A} for the assets folder, what stderr must say)
CASES = [
    # measure
    ("measure: unknown preset", "measure --preset unet", "unknown preset 'unet'"),
    ("measure: unknown space", "measure --space resnet", "unknown search space 'resnet'"),
    ("measure: truncated config", "measure --config {A}/truncated.json", "not valid JSON"),
    ("measure: wrong type in config", "measure --config {A}/wrongtype.json", "stem_width"),
    ("measure: unknown key in config", "measure --config {A}/unknownkey.json", "colour"),
    ("measure: old schema", "measure --config {A}/oldschema.json", "schema_version 0 is not supported"),
    ("measure: config not an object", "measure --config {A}/list.json", "expected a JSON object"),
    ("measure: missing config", "measure --config {A}/nothing.json", "cannot read config"),
    ("measure: size out of range", "measure --preset sinet --size 0", "multiple of 32"),
    ("measure: unknown backend", "measure --preset sinet --backend tensorrt", "'--backend'"),
    ("measure: threads out of range", "measure --preset sinet --threads 0", "--threads"),
    # train
    ("train: unknown dataset", "train --preset sinet --data imagenet --out {A}/out/train", "unknown dataset spec"),
    ("train: missing data folder", "train --preset sinet --data eg1800:{A}/none --out {A}/out/train", "no such dataset folder"),
    ("train: image without mask", "train --preset sinet --data eg1800:{A}/broken --out {A}/out/train", "00002_mask.png: mask missing"),
    ("train: bad synthetic options", "train --preset sinet --data synthetic:count=-1 --out {A}/out/train", "expected synthetic:count=N"),
    ("train: truncated config", "train {A}/truncated.json --out {A}/out/train", "not valid JSON"),
    ("train: config and preset", "train {A}/net.json --preset sinet --out {A}/out/train", "exactly one of"),
    ("train: wrong classes", "train --preset sinet --classes 5 --out {A}/out/train", "--classes must be 1 or 2"),
    ("train: negative lr", "train --preset sinet --lr -1 --out {A}/out/train", "--lr"),
    ("train: unknown schedule", "train --preset sinet --schedule step --out {A}/out/train", "--schedule"),
    ("train: val fraction out of range", "train --preset sinet --val-fraction 1.5 --out {A}/out/train", "--val-fraction"),
    ("train: unknown preprocessing", "train --preset sinet --preprocessing yuv --out {A}/out/train", "--preprocessing"),
    ("train: unknown device", "train --preset sinet --device tpu --out {A}/out/train", "--device"),
    # eval
    ("eval: pickled code", "eval --checkpoint {A}/pickled.pt", "refused"),
    ("eval: truncated model", "eval --checkpoint {A}/truncated.pt", "not a model file"),
    ("eval: foreign file", "eval --checkpoint {A}/foreign.pt", "not a lightseg-nas model file"),
    ("eval: tampered weights", "eval --checkpoint {A}/tampered.pt", "weights do not match"),
    ("eval: tampered config", "eval --checkpoint {A}/badconfig.pt", "stem_width"),
    ("eval: missing model", "eval --checkpoint {A}/none.pt", "no such model file"),
    ("eval: preset without weights", "eval --preset sinet", "needs --weights"),
    ("eval: weights that are not a state_dict", "eval --preset sinet --weights {A}/model.pt", "not a state_dict of tensors"),
    ("eval: weights of the other preset", "eval --preset sinet --weights {A}/ec3.pth", "does not match preset"),
    ("eval: unknown split", "eval --checkpoint {A}/model.pt --data eg1800:{A}/eg1800 --split holdout", "eg1800_holdout.txt: no such split list"),
    ("eval: synthetic unknown split", "eval --checkpoint {A}/model.pt --split holdout", "synthetic data has splits"),
    # predict
    ("predict: unreadable image", "predict {A}/model.pt {A}/notimage.jpg --out {A}/out/predict", "unreadable image"),
    ("predict: folder instead of image", "predict {A}/model.pt {A}/adir.jpg --out {A}/out/predict", "adir.jpg"),
    ("predict: missing image", "predict {A}/model.pt {A}/none.jpg --out {A}/out/predict", "no such image"),
    ("predict: tampered model", "predict {A}/tampered.pt {A}/notimage.jpg --out {A}/out/predict", "weights do not match"),
    ("predict: unknown preview", "predict {A}/model.pt {A}/notimage.jpg --out {A}/out/predict --preview sepia", "--preview"),
    # onnx
    ("onnx: pickled code", "onnx {A}/pickled.pt --out {A}/out/net.onnx", "refused"),
    ("onnx: bad size", "onnx {A}/model.pt --out {A}/out/net.onnx --size 30", "multiple of 32"),
    # compress
    ("compress: target above the current size", "compress {A}/model.pt --target-params 10000000 --out {A}/out/small.pt", "is not below the network's current"),
    ("compress: target below the fixed parts", "compress {A}/model.pt --target-params 10 --out {A}/out/small.pt", "below what this network's fixed parts need"),
    ("compress: MAC target below the fixed parts", "compress {A}/model.pt --target-macs 10 --out {A}/out/small.pt", "fixed parts"),
    ("compress: no target", "compress {A}/model.pt --out {A}/out/small.pt", "exactly one of --target-params"),
    ("compress: two targets", "compress {A}/model.pt --target-params 9 --target-macs 9 --out {A}/out/small.pt", "exactly one of"),
    ("compress: teacher classes unmappable", "compress {A}/model.pt --target-params 20000 --teacher {A}/classes21.pt --out {A}/out/small.pt", "cannot be mapped"),
    ("compress: teacher not ours", "compress {A}/model.pt --target-params 20000 --teacher {A}/foreign.pt --out {A}/out/small.pt", "not a lightseg-nas model file"),
    ("compress: teacher neither file nor preset", "compress {A}/model.pt --target-params 20000 --teacher unet --out {A}/out/small.pt", "neither a model file nor a preset"),
    ("compress: preset teacher without weights", "compress {A}/model.pt --target-params 20000 --teacher sinet --out {A}/out/small.pt", "needs --teacher-weights"),
    ("compress: model not ours", "compress {A}/foreign.pt --target-params 20000 --out {A}/out/small.pt", "not a lightseg-nas model file"),
    ("compress: pickled code", "compress {A}/pickled.pt --target-params 20000 --out {A}/out/small.pt", "refused"),
    ("compress: tampered model", "compress {A}/tampered.pt --target-params 20000 --out {A}/out/small.pt", "weights do not match"),
    ("compress: existing output", "compress {A}/model.pt --target-params 20000 --out {A}/net.json", "already exists"),
    ("compress: existing config beside the output", "compress {A}/model.pt --target-params 20000 --out {A}/net.pt", "net.json: already exists"),
    ("compress: unknown dataset", "compress {A}/model.pt --target-params 20000 --data imagenet --out {A}/out/small.pt", "unknown dataset spec"),
    ("compress: zero steps", "compress {A}/model.pt --target-params 20000 --steps 0 --out {A}/out/small.pt", "--steps"),
    # search
    ("search: missing study", "search {A}/none.toml", "no such study file"),
    ("search: truncated study", "search {A}/truncated.toml", "not valid TOML"),
    ("search: wrong type", "search {A}/wrongtypes.toml", "study.n_trials"),
    ("search: value out of range", "search {A}/range.toml", "data.val_fraction"),
    ("search: unknown dataset", "search {A}/badspec.toml", "unknown dataset spec"),
    ("search: rung size", "search {A}/badrung.toml", "multiple of 32"),
    ("search: unknown objective", "search {A}/unknownobjective.toml", "objectives.minimize.0"),
    ("search: unknown sampler", "search {A}/unknownsampler.toml", "study.sampler"),
    ("search: impossible budget", "search {A}/impossible.toml", "is impossible"),
    ("search: unknown reference preset", "search {A}/badreference.toml", "unknown preset 'unet'"),
    ("search: unreachable storage", "search {A}/tiny.toml --storage postgresql://x@127.0.0.1:1/none", "cannot be opened"),
    ("search: workers on sqlite", "search {A}/tiny.toml --workers 2", "use --storage postgresql"),
    ("search: zero trials", "search {A}/tiny.toml --n-trials 0", "--n-trials"),
    # report and export
    ("report: unknown study name", "report {A}/tiny.toml --study-name other", "no study 'other'"),
    ("report: missing storage", "report {A}/tiny.toml --storage sqlite:///{A}/none.db", "does not exist"),
    ("export: trial that does not exist", "export {A}/tiny.toml --trial 50 --out {A}/out/export", "has no trial 50"),
    ("export: no rule", "export {A}/tiny.toml --out {A}/out/export", "give exactly one of"),
    ("export: budget nobody meets", "export {A}/tiny.toml --best-under-params 5 --out {A}/out/export", "at most 5 parameters"),
]


def _snapshot(root: Path) -> dict:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(root.rglob("*")) if p.is_file()}


def assert_refused(result, expected: str, root: Path, before: dict) -> None:
    """The bad-input contract: exit code 2, one 'error:' line naming what is wrong, no
    traceback, and every file under ``root`` as it was."""
    assert result.exit_code == 2, (result.exit_code, result.output, repr(result.exception))
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert expected in result.stderr, result.stderr
    assert "Traceback" not in result.output and "pwned" not in result.output
    assert _snapshot(root) == before, "an input, output folder or the study storage changed"


@pytest.mark.parametrize("name,command,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input(assets, name, command, expected):
    before = _snapshot(assets)
    assert_refused(runner.invoke(app, command.format(A=assets).split()), expected, assets, before)
