import json

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import search_spaces
from lightseg_nas.cli import app
from lightseg_nas.data.transforms import get_preprocessing
from lightseg_nas.families import build_model
from lightseg_nas.modelfile import make_record, save_record

runner = CliRunner()


@pytest.fixture
def model_file(tmp_path):
    config = search_spaces.sample("hybrid", 4, num_classes=2)
    torch.manual_seed(0)
    model = build_model(config).eval()
    path = tmp_path / "model.pt"
    save_record(make_record(config, model, get_preprocessing("default"), training=None, metrics={}), path)
    return path


@pytest.mark.parametrize("name,file", [("sinet", "SINet.pth"), ("extremec3net", "ExtremeC3.pth")])
def test_released_weights_reproduce_their_quality_on_eg1800(official, eg1800, name, file):
    result = runner.invoke(
        app, ["eval", "--preset", name, "--weights", str(official / file), "--data", f"eg1800:{eg1800}", "--split", "val", "--json"]
    )
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.stdout)
    assert metrics["n_images"] == 134 and metrics["size"] == 224
    assert metrics["fg_iou"] > 0.94, metrics
    assert {"fg_iou", "miou", "boundary_f", "n_images"} <= set(metrics)


def test_predict_writes_mask_at_image_size_and_preview(model_file, tmp_path):
    image = tmp_path / "portrait.jpg"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (90, 70, 3), dtype=np.uint8)).save(image)
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model_file), str(image), "--out", str(out), "--size", "64"])
    assert result.exit_code == 0, result.output
    with Image.open(out / "portrait_mask.png") as mask:
        assert mask.size == (70, 90) and set(np.unique(np.asarray(mask))) <= {0, 255}
    assert (out / "portrait_preview.jpg").exists()


def test_predict_unreadable_image_writes_nothing(model_file, tmp_path):
    bad = tmp_path / "bad.jpg"
    bad.write_bytes(b"nope")
    out = tmp_path / "out"
    result = runner.invoke(app, ["predict", str(model_file), str(bad), "--out", str(out)])
    assert result.exit_code == 2 and "bad.jpg: unreadable image" in result.stderr
    assert not out.exists()


def test_onnx_export_matches_pytorch(model_file, tmp_path):
    out = tmp_path / "net.onnx"
    result = runner.invoke(app, ["onnx", str(model_file), "--out", str(out), "--size", "64"])
    assert result.exit_code == 0, result.output
    difference = float(result.stdout.split("=")[-1].split()[0])
    assert out.exists() and difference < 1e-4


class Payload:
    def __reduce__(self):
        return (print, ("this would have run",))


def test_model_files_that_hold_code_or_are_not_ours_are_refused(tmp_path):
    pickled = tmp_path / "evil.pt"
    torch.save({"format": "lightseg-nas-model", "payload": Payload()}, pickled)
    result = runner.invoke(app, ["eval", "--checkpoint", str(pickled)])
    assert result.exit_code == 2 and "refused" in result.stderr
    plain = tmp_path / "plain.pt"
    torch.save({"weight": torch.zeros(1)}, plain)
    result = runner.invoke(app, ["onnx", str(plain), "--out", str(tmp_path / "x.onnx")])
    assert result.exit_code == 2 and "not a lightseg-nas model file" in result.stderr
    assert not (tmp_path / "x.onnx").exists()


def test_tampered_weights_are_refused(model_file, tmp_path):
    record = torch.load(model_file, weights_only=True)
    record["state_dict"].pop(next(iter(record["state_dict"])))
    tampered = tmp_path / "tampered.pt"
    torch.save(record, tampered)
    result = runner.invoke(app, ["predict", str(tampered), str(model_file), "--out", str(tmp_path / "o")])
    assert result.exit_code == 2 and "weights do not match" in result.stderr


def test_a_write_that_dies_halfway_leaves_the_old_file_and_no_debris(model_file):
    from lightseg_nas.modelfile import atomic_write

    before = model_file.read_bytes()

    def dies_halfway(path):
        path.write_bytes(before[: len(before) // 2])
        raise OSError("disk vanished")

    with pytest.raises(OSError):
        atomic_write(model_file, dies_halfway)
    assert model_file.read_bytes() == before
    assert [p.name for p in model_file.parent.iterdir()] == [model_file.name]
    atomic_write(model_file, lambda path: path.write_bytes(b"new"))
    assert model_file.read_bytes() == b"new" and oct(model_file.stat().st_mode & 0o777) != oct(0o600)
