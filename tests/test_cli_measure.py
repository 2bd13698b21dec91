import json

import pytest
import torch
from typer.testing import CliRunner

from lightseg_nas.cli import app
from lightseg_nas.config import to_json
from lightseg_nas.presets import get_preset

runner = CliRunner()


def test_measure_json_has_the_documented_fields():
    result = runner.invoke(app, ["measure", "--preset", "sinet", "--size", "64", "--repeats", "2", "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["params"] == 86_910
    assert set(report["macs"]) == {"fvcore", "conv_only", "thop"}
    assert report["macs_uncounted"]["fvcore"] == []
    assert report["latency_ms"] > 0 and report["latency_ratio"] > 0


@pytest.mark.parametrize("backend", ["torch", "torch-channels-last", "onnxruntime"])
def test_measure_names_its_latency_backend(backend, monkeypatch):
    from lightseg_nas import cost

    placed = []
    monkeypatch.setattr(cost, "place_model", lambda model, channels_last: placed.append(channels_last) or model.to(memory_format=torch.channels_last))
    result = runner.invoke(app, ["measure", "--preset", "sinet", "--size", "64", "--repeats", "2", "--backend", backend, "--json"])
    assert result.exit_code == 0, result.output
    assert placed == ([True, True] if backend == "torch-channels-last" else [])  # candidate and reference
    report = json.loads(result.output)
    assert report["latency"]["backend"] == backend and report["latency_reference"]["backend"] == backend


def test_measure_config_file_and_space_sample(tmp_path):
    path = tmp_path / "net.json"
    path.write_text(to_json(get_preset("extremec3net")))
    result = runner.invoke(app, ["measure", "--config", str(path), "--size", "64", "--repeats", "1", "--reference", "none"])
    assert result.exit_code == 0, result.output
    assert "37,738" in result.output
    result = runner.invoke(app, ["measure", "--space", "hybrid", "--seed", "5", "--size", "64", "--repeats", "1", "--json"])
    assert result.exit_code == 0, result.output


@pytest.mark.parametrize(
    "args,expected",
    [
        (["--preset", "unet"], "unknown preset 'unet'"),
        (["--space", "mobilenet"], "unknown search space 'mobilenet'"),
        (["--preset", "sinet", "--size", "100"], "multiple of 32"),
        (["--preset", "sinet", "--classes", "3"], "--classes must be 1 or 2"),
        ([], "give exactly one of"),
        (["--config", "/nonexistent/net.json"], "cannot read config"),
    ],
)
def test_measure_bad_input_is_one_line_and_exit_2(args, expected):
    result = runner.invoke(app, ["measure", *args, "--repeats", "1"])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], result.stderr


def test_measure_malformed_config_file(tmp_path):
    path = tmp_path / "net.json"
    path.write_text('{"family": "sinet", "num_classes": 2')
    result = runner.invoke(app, ["measure", "--config", str(path)])
    assert result.exit_code == 2
    assert "not valid JSON" in result.stderr and str(path) in result.stderr


def test_the_cli_lists_every_latency_backend():
    from lightseg_nas.cli import Backend
    from lightseg_nas.cost import LATENCY_BACKENDS

    assert tuple(b.value for b in Backend) == LATENCY_BACKENDS
