"""The hostile-input sweep, by class: non-finite values, storage, paths, outputs, values that
used to end in tracebacks, reports, crash recovery and images. Table-driven cases keep the
contract of tests/test_bad_input.py: exit code 2, one line on stderr, and every input,
output folder and study storage byte-identical afterwards."""

import contextlib
import json
import struct
import zlib
from pathlib import Path

import optuna
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import search_spaces
from lightseg_nas.checks import folder_lock
from lightseg_nas.cli import app
from lightseg_nas.config import to_json
from lightseg_nas.data.transforms import get_preprocessing
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import make_record, save_record
from lightseg_nas.search.storage import sqlite_lock
from tests.fixtures import write_dataset
from tests.test_bad_input import Payload, _snapshot, assert_refused
from tests.test_search import write_study

runner = CliRunner()


def png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height pixels (a decompression bomb's header)."""
    raw = Image.new("L", (1, 1)).tobytes()
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" + raw)) + chunk(b"IEND", b"")


@pytest.fixture(scope="module")
def hostile(tmp_path_factory):
    with contextlib.ExitStack() as held:
        yield _assets(tmp_path_factory.mktemp("hostile"), held)


def _assets(root: Path, held: contextlib.ExitStack) -> Path:
    config = search_spaces.sample("sinet", 2, num_classes=1)
    (root / "net.json").write_text(to_json(config))
    model = build_model(config)
    save_record(make_record(config, model, get_preprocessing("default"), training={"size": 64}, metrics={"val_size": 64}), root / "model.pt")
    record = torch.load(root / "model.pt", weights_only=True)

    def variant(name, change):
        copy = torch.load(root / "model.pt", weights_only=True)
        change(copy)
        torch.save(copy, root / name)

    key = next(k for k, v in record["state_dict"].items() if v.is_floating_point() and v.ndim == 4)
    variant("nan.pt", lambda r: r["state_dict"][key].fill_(float("nan")))
    variant("inf.pt", lambda r: r["state_dict"][key].fill_(float("inf")))
    variant("emptypre.pt", lambda r: r.update(preprocessing={}))
    variant("zerostd.pt", lambda r: r["preprocessing"].update(std=[0.0, 1.0, 1.0]))
    variant("traininglist.pt", lambda r: r.update(training=[1, 2]))
    data = json.loads(to_json(config))
    (root / "deep.json").write_text("[" * 100_000 + "]" * 100_000)
    (root / "boolwidth.json").write_text(json.dumps({**data, "stem_width": True}))
    (root / "hugeint.json").write_text(json.dumps({**data, "stem_width": 10**40}))
    (root / "file").write_text("a file, not a folder")
    write_dataset(root / "eg1800", "extportraitseg")
    latin = write_dataset(root / "latin1", "extportraitseg")
    (latin / "eg1800_train.txt").write_bytes("00001\n0000\xe9\n".encode("latin-1"))
    escape = write_dataset(root / "escape", "portraitnet")
    (escape / "eg1800_train.txt").write_text("00001.png\n../../outside.png\n00003.png\n")
    absolute = write_dataset(root / "absolute", "portraitnet")
    (absolute / "eg1800_train.txt").write_text("00001.png\n/etc/hostname\n")
    (root / "bomb.png").write_bytes(png_claiming(30_000, 30_000))
    Image.new("RGB", (40, 30), (200, 100, 50)).save(root / "a.jpg")
    Image.new("RGB", (40, 30), (50, 100, 200)).save(root / "a.png")
    Image.new("L", (40, 30)).save(root / "a_mask.png")
    # a run folder with a damaged checkpoint, one with a code-carrying checkpoint
    (root / "runs" / "truncated").mkdir(parents=True)
    good = (root / "model.pt").read_bytes()
    (root / "runs" / "truncated" / "checkpoint.pt").write_bytes(good[: len(good) // 3])
    (root / "runs" / "pickled").mkdir(parents=True)
    torch.save({"settings": {}, "x": Payload()}, root / "runs" / "pickled" / "checkpoint.pt")
    (root / "runs" / "empty").mkdir(parents=True)
    torch.save({"x": Payload()}, root / "pickled.pt.partial")
    (root / "small.pt.partial").write_bytes(good[:100])
    study = write_study(root, fidelity="false")
    text = study.read_text()

    def study_variant(name, old, new):
        assert old in text, old
        (root / name).write_text(text.replace(old, new, 1))

    study_variant("escape.toml", 'name = "tiny"', 'name = "../escaped"')
    study_variant("absolute.toml", 'name = "tiny"', 'name = "/tmp/absolute"')
    study_variant("newline.toml", 'name = "tiny"', 'name = "two\\nlines"')
    study_variant("grace.toml", "seed = 0\n", "seed = 0\nheartbeat_s = 30\ngrace_s = 30\n")
    study_variant("bigseed.toml", "seed = 0\n", "seed = 4294967296\n")
    study_variant("negseed.toml", "seed = 0\n", "seed = -1\n")
    study_variant("booltrials.toml", "n_trials = 4", "n_trials = true")
    study_variant("hugetrials.toml", "n_trials = 4", "n_trials = 99999999999999999999999")
    study_variant("nodata.toml", 'spec = "synthetic:count=12"', 'spec = "eg1800:no/such/folder"')
    study_variant("device.toml", "batch_size = 8", 'batch_size = 8\ndevice = "tpu"')
    study_variant("metadevice.toml", "batch_size = 8", 'batch_size = 8\ndevice = "meta"')
    study_variant("inflr.toml", "batch_size = 8", "batch_size = 8\nlr = inf")
    study_variant("nanlr.toml", "batch_size = 8", "batch_size = 8\nlr = nan")
    study_variant("bigrung.toml", "size = 64, epochs = 1", "size = 32000, epochs = 1")
    (root / "deep.toml").write_text("a = " + "[" * 50_000 + "]" * 50_000 + "\n")
    # 6. reports: a study whose only trial failed, a storage that is not a database
    study_variant("failed.toml", 'name = "tiny"', 'name = "tiny"')
    failed = optuna.create_study(storage=f"sqlite:///{root / 'failed.db'}", study_name="tiny", directions=["maximize", "minimize"])
    failed.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL, user_attrs={"reason": "boom"}))
    study_variant("garbage.toml", 'name = "tiny"', 'name = "tiny"')
    (root / "garbage.db").write_text("not a database " * 10)
    # 7. crash recovery and concurrency: a live search holds busy.db's lock, a live train its folder
    study_variant("busy.toml", 'name = "tiny"', 'name = "tiny"')
    held.enter_context(sqlite_lock(f"sqlite:///{root / 'busy.db'}"))
    held.enter_context(folder_lock(root / "runs" / "busy", "train"))
    # 8. images: truncated, not an image, empty; datasets with a mask of another size, a mask
    # with values other than 0/1/255, an image without its mask
    whole = (root / "a.jpg").read_bytes()
    (root / "truncated.jpg").write_bytes(whole[: len(whole) // 2])
    (root / "text.jpg").write_text("not an image")
    (root / "empty.png").write_bytes(b"")
    sized = write_dataset(root / "masksize", "extportraitseg")
    Image.new("L", (20, 20)).save(sized / "GT_png" / "00002_mask.png")
    valued = write_dataset(root / "maskvalues", "extportraitseg")
    Image.new("L", (48, 64), 7).save(valued / "GT_png" / "00001_mask.png")
    unmasked = write_dataset(root / "unmasked", "extportraitseg")
    (unmasked / "GT_png" / "00003_mask.png").unlink()
    return root


M = "{A}/model.pt"
TRAIN = "train --preset sinet --data synthetic:count=12 --out {A}/out/train"
# (class, name, command with {A} for the assets folder, what stderr must say)
CASES = [
    # 1. non-finite values and models
    ("finite", "train --lr inf", TRAIN + " --lr inf", "--lr"),
    ("finite", "train --lr nan", TRAIN + " --lr nan", "--lr"),
    ("finite", "train --weight-decay nan", TRAIN + " --weight-decay nan", "--weight-decay"),
    ("finite", "train --val-fraction nan", TRAIN + " --val-fraction nan", "--val-fraction"),
    ("finite", "compress --kd-temperature inf", f"compress {M} --target-params 20000 --kd-temperature inf --out {{A}}/out/s.pt", "--kd-temperature"),
    ("finite", "compress --lr nan", f"compress {M} --target-params 20000 --lr nan --out {{A}}/out/s.pt", "--lr"),
    ("finite", "search --timeout nan", "search {A}/tiny.toml --timeout nan", "--timeout"),
    ("finite", "search --timeout -5", "search {A}/tiny.toml --timeout -5", "--timeout"),
    ("finite", "search --timeout inf", "search {A}/tiny.toml --timeout inf", "--timeout"),
    ("finite", "onnx --tolerance nan", f"onnx {M} --out {{A}}/out/n.onnx --tolerance nan", "--tolerance"),
    ("finite", "onnx --tolerance -1", f"onnx {M} --out {{A}}/out/n.onnx --tolerance -1", "--tolerance"),
    ("finite", "eval nan weights", "eval {A}/nan.pt", "non-finite"),
    ("finite", "eval inf weights", "eval {A}/inf.pt", "non-finite"),
    ("finite", "predict nan weights", "predict {A}/nan.pt {A}/a.jpg --out {A}/out/p", "non-finite"),
    ("finite", "onnx nan weights", "onnx {A}/nan.pt --out {A}/out/n.onnx", "non-finite"),
    ("finite", "compress nan weights", "compress {A}/nan.pt --target-params 20000 --out {A}/out/s.pt", "non-finite"),
    ("finite", "compress nan teacher", f"compress {M} --target-params 20000 --teacher {{A}}/nan.pt --out {{A}}/out/s.pt", "non-finite"),
    ("finite", "compress --target-params nan%", f"compress {M} --target-params nan% --out {{A}}/out/s.pt", "--target-params"),
    ("finite", "compress --target-macs inf%", f"compress {M} --target-macs inf% --out {{A}}/out/s.pt", "--target-macs"),
    ("finite", "study lr = inf", "search {A}/inflr.toml", "training.lr"),
    ("finite", "study lr = nan", "search {A}/nanlr.toml", "training.lr"),
    # 2. storage
    ("storage", "grace not above the heartbeat", "search {A}/grace.toml", "grace_s"),
    ("storage", "password masked in a storage error", "search {A}/tiny.toml --storage postgresql://u:hunter2secret@127.0.0.1:1/db", "***"),
    ("storage", "not a storage URL", "search {A}/tiny.toml --storage ::nonsense", "not a storage URL"),
    ("storage", "unsupported storage", "search {A}/tiny.toml --storage mysql://u@h/db", "only sqlite"),
    ("storage", "sqlite folder missing", "search {A}/tiny.toml --storage sqlite:///{A}/no/such/folder/x.db", "does not exist"),
    # 3. paths
    ("paths", "study name with ../", "search {A}/escape.toml", "study.name"),
    ("paths", "absolute study name", "search {A}/absolute.toml", "study.name"),
    ("paths", "study name with a newline", "search {A}/newline.toml", "study.name"),
    ("paths", "--study-name with ../", "report {A}/tiny.toml --study-name ../x", "--study-name"),
    ("paths", "--study-name absolute", "export {A}/tiny.toml --study-name /tmp/x --front", "--study-name"),
    ("paths", "list entry with ../", "eval {A}/model.pt --data eg1800:{A}/escape --split trainval", "not a plain file name"),
    ("paths", "absolute list entry", "eval {A}/model.pt --data eg1800:{A}/absolute --split trainval", "not a plain file name"),
    # 4. outputs
    ("outputs", "train --out is a file", "train --preset sinet --data synthetic:count=12 --out {A}/file", "is a file"),
    ("outputs", "train --out under a file", "train --preset sinet --data synthetic:count=12 --out {A}/file/run", "is a file"),
    ("outputs", "compress --out under a file", f"compress {M} --target-params 20000 --out {{A}}/file/s.pt", "is a file"),
    ("outputs", "compress --out is a folder", f"compress {M} --target-params 20000 --out {{A}}/eg1800", "is a folder"),
    ("outputs", "predict --out is a file", "predict {A}/model.pt {A}/a.jpg --out {A}/file", "is a file"),
    ("outputs", "onnx --out is a folder", "onnx {A}/model.pt --out {A}/eg1800", "is a folder"),
    ("outputs", "two images, one output name", "predict {A}/model.pt {A}/a.jpg {A}/a.png --out {A}/out/p", "would both write a_mask.png"),
    ("outputs", "train --out on a read-only mount", "train --preset sinet --data synthetic:count=12 --out /proc/lightseg-run", "not writable"),
    ("outputs", "onnx --out on a read-only mount", "onnx {A}/model.pt --out /sys/lightseg/n.onnx", "not writable"),
    ("outputs", "an output replaces an input", "predict {A}/model.pt {A}/a.jpg {A}/a_mask.png --out {A}", "is one of the input images"),
    ("outputs", "train --resume with nothing to resume", "train --preset sinet --data synthetic:count=12 --out {A}/runs/empty --resume", "nothing to resume"),
    ("outputs", "compress --resume with nothing to resume", f"compress {M} --target-params 20000 --out {{A}}/out/s.pt --resume", "nothing to resume"),
    # 5. values that used to end in tracebacks
    ("traceback", "deeply nested config", "measure --config {A}/deep.json", "nested too deeply"),
    ("traceback", "deeply nested study", "search {A}/deep.toml", "nested too deeply"),
    ("traceback", "true as a width", "measure --config {A}/boolwidth.json", "stem_width: expected a number"),
    ("traceback", "huge width", "measure --config {A}/hugeint.json", "stem_width"),
    ("traceback", "true as n_trials", "search {A}/booltrials.toml", "study.n_trials"),
    ("traceback", "huge n_trials", "search {A}/hugetrials.toml", "study.n_trials"),
    ("traceback", "study seed 2^32", "search {A}/bigseed.toml", "study.seed"),
    ("traceback", "negative study seed", "search {A}/negseed.toml", "study.seed"),
    ("traceback", "train --seed 2^32", TRAIN + " --seed 4294967296", "--seed"),
    ("traceback", "train --seed -1", TRAIN + " --seed -1", "--seed"),
    ("traceback", "measure --seed huge", "measure --space sinet --seed 99999999999999999999999", "--seed"),
    ("traceback", "compress --seed 2^32", f"compress {M} --target-params 20000 --seed 4294967296 --out {{A}}/out/s.pt", "--seed"),
    ("traceback", "train --size 0", TRAIN + " --size 0", "--size"),
    ("traceback", "train --size -64", TRAIN + " --size -64", "--size"),
    ("traceback", "train --size 100", TRAIN + " --size 100", "--size"),
    ("traceback", "train --size huge", TRAIN + " --size 65536", "--size"),
    ("traceback", "eval --size huge", "eval {A}/model.pt --size 1000000", "--size"),
    ("traceback", "eval --size 0", "eval {A}/model.pt --size 0", "--size"),
    ("traceback", "predict --size -32", "predict {A}/model.pt {A}/a.jpg --out {A}/out/p --size -32", "--size"),
    ("traceback", "onnx --size 48", "onnx {A}/model.pt --out {A}/out/n.onnx --size 48", "--size"),
    ("traceback", "measure --size huge", "measure --preset sinet --size 40960", "--size"),
    ("traceback", "compress --mac-size 0", f"compress {M} --target-params 20000 --mac-size 0 --out {{A}}/out/s.pt", "--mac-size"),
    ("traceback", "study rung of 32000 px", "search {A}/bigrung.toml", "fidelity.rungs"),
    ("traceback", "train --device meta", TRAIN + " --device meta", "--device"),
    ("traceback", "compress --device meta", f"compress {M} --target-params 20000 --device meta --out {{A}}/out/s.pt", "--device"),
    ("traceback", "study device unknown", "search {A}/device.toml", "training.device"),
    ("traceback", "study device meta", "search {A}/metadevice.toml", "training.device"),
    ("traceback", "study data folder missing", "search {A}/nodata.toml", "no such dataset folder"),
    ("traceback", "split list not UTF-8", "eval {A}/model.pt --data eg1800:{A}/latin1 --split trainval", "not a UTF-8"),
    ("traceback", "preprocessing {}", "eval {A}/emptypre.pt", "preprocessing"),
    ("traceback", "std 0", "eval {A}/zerostd.pt", "preprocessing.std"),
    ("traceback", "training a list", "eval {A}/traininglist.pt", "training must be a mapping"),
    ("traceback", "truncated checkpoint on --resume", "train --preset sinet --data synthetic:count=12 --out {A}/runs/truncated --resume", "not a readable checkpoint"),
    ("traceback", "code in a checkpoint on --resume", "train --preset sinet --data synthetic:count=12 --out {A}/runs/pickled --resume", "refused"),
    ("traceback", "truncated .partial on --resume", f"compress {M} --target-params 20000 --data synthetic:count=12 --size 64 --out {{A}}/small.pt --resume", "not a readable partial"),
    ("traceback", "code in a .partial on --resume", f"compress {M} --target-params 20000 --data synthetic:count=12 --size 64 --out {{A}}/pickled.pt --resume", "refused"),
    ("traceback", "compress --target-params 150%", f"compress {M} --target-params 150% --out {{A}}/out/s.pt", "between 0 and 100"),
    ("traceback", "compress --target-params 0%", f"compress {M} --target-params 0% --out {{A}}/out/s.pt", "between 0 and 100"),
    ("traceback", "compress --target-params words", f"compress {M} --target-params half --out {{A}}/out/s.pt", "whole number"),
    ("traceback", "compress --target-params 1e5", f"compress {M} --target-params 1e5 --out {{A}}/out/s.pt", "whole number"),
    ("traceback", "unknown choice, one line", "predict {A}/model.pt {A}/a.jpg --out {A}/out/p --preview sepia", "'--preview'"),
    ("traceback", "unknown option, one line", "train --preset sinet --out {A}/out/train --speed 11", "No such option"),
    # 6. reports and exports of studies with nothing to show
    ("reports", "report of a study never run", "report {A}/tiny.toml", "run lightseg-nas search first"),
    ("reports", "export --front, no trial completed", "export {A}/failed.toml --front", "no full-fidelity trial"),
    ("reports", "export a failed trial", "export {A}/failed.toml --trial 0", "did not finish (fail: boom)"),
    ("reports", "export a trial that does not exist", "export {A}/failed.toml --trial 7", "has no trial 7"),
    ("reports", "export under a budget nothing meets", "export {A}/failed.toml --best-under-params 100000", "at most 100000"),
    ("reports", "report --out is a file", "report {A}/failed.toml --out {A}/file", "not a report folder"),
    ("reports", "storage that is not a database", "report {A}/garbage.toml", "file is not a database"),
    # 7. crash recovery and concurrency
    ("crash", "search while another search holds the SQLite file", "search {A}/busy.toml", "another search is running"),
    ("crash", "--workers on SQLite", "search {A}/tiny.toml --workers 2", "--workers needs a storage"),
    ("crash", "train in a folder another train is using", "train --preset sinet --data synthetic:count=12 --out {A}/runs/busy", "is running in this folder"),
    ("crash", "search on a damaged storage", "search {A}/garbage.toml", "cannot be opened"),
    # 8. images
    ("images", "decompression bomb", "predict {A}/model.pt {A}/bomb.png --out {A}/out/p", "too large"),
    ("images", "truncated JPEG", "predict {A}/model.pt {A}/truncated.jpg --out {A}/out/p", "unreadable image"),
    ("images", "not an image", "predict {A}/model.pt {A}/text.jpg --out {A}/out/p", "unreadable image"),
    ("images", "empty file", "predict {A}/model.pt {A}/empty.png --out {A}/out/p", "unreadable image"),
    ("images", "mask of another size", "eval {A}/model.pt --data eg1800:{A}/masksize --split trainval", "00002"),
    ("images", "mask values not 0/1/255", "eval {A}/model.pt --data eg1800:{A}/maskvalues --split trainval", "00001"),
    ("images", "image without its mask", "eval {A}/model.pt --data eg1800:{A}/unmasked --split trainval", "00003"),
]


@pytest.mark.parametrize("kind,name,command,expected", CASES, ids=[f"{c[0]}: {c[1]}" for c in CASES])
def test_hostile_input(hostile, kind, name, command, expected):
    before = _snapshot(hostile)
    result = runner.invoke(app, command.format(A=hostile).split())
    assert_refused(result, expected, hostile, before)
    assert "hunter2" not in result.output
    assert not (hostile / "escaped-report").exists() and not Path("/tmp/absolute-report").exists()


def test_every_class_has_cases():
    counts = {}
    for kind, *_ in CASES:
        counts[kind] = counts.get(kind, 0) + 1
    assert set(counts) == {"finite", "storage", "paths", "outputs", "traceback", "reports", "crash", "images"}
    assert min(counts.values()) >= 4


def test_an_error_line_clears_a_progress_bar_left_on_a_terminal():
    import io

    from tqdm import tqdm

    from lightseg_nas.commandline import say as _say

    class Terminal(io.StringIO):
        def isatty(self):
            return True

    screen = Terminal()
    bar = tqdm(total=8, desc="decoding", file=screen, disable=None)
    bar.update(1)
    assert "decoding" in screen.getvalue()
    _say("error: broken mask")
    assert bar not in getattr(tqdm, "_instances", ())
    # the bar's line is blanked and the cursor is back at its start, ready for the error line
    assert screen.getvalue().endswith("\r") and "decoding" not in screen.getvalue().rsplit("\r", 2)[-2]


def test_progress_bars_are_not_drawn_into_logs(tmp_path):
    result = runner.invoke(app, ["train", "--preset", "sinet", "--data", "synthetic:count=8", "--size", "32", "--epochs", "1", "--max-steps", "1", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    assert "training" not in result.stderr and "\r" not in result.stderr
