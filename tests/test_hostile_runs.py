"""Hostile cases that need a run to show: a server that never answers, crashes and signals,
diverging training, concurrent runs, reports of failed studies, odd images, first use."""

import re
import signal
import socket
import subprocess
import threading
import time
from pathlib import Path

import numpy as np
import optuna
import pytest
import torch
from optuna.trial import TrialState
from PIL import Image
from typer.testing import CliRunner

from lightseg_nas.checks import folder_lock
from lightseg_nas.cli import app
from lightseg_nas.data import load_split
from lightseg_nas.data.images import read_mask, read_photo
from lightseg_nas.errors import UserError
from lightseg_nas.search import load_study_file, run_search, write_report
from tests.fixtures import write_dataset
from tests.test_scaleout import CLI, ENV, running_trials, search_process, wait_for
from tests.test_search import SLOW_RUNGS, write_study

runner = CliRunner()
REPO = Path(__file__).resolve().parents[1]


@pytest.fixture
def silent_server():
    """A TCP server on loopback that accepts connections and never says a word."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(16)
    server.settimeout(0.2)
    held, stop = [], threading.Event()

    def serve():
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join()
    for connection in held:
        connection.close()
    server.close()


def test_a_server_that_never_answers_times_out_and_signals_still_stop_the_search(tmp_path, silent_server):
    study = write_study(tmp_path, fidelity="false")
    url = f"postgresql://user:hunter2secret@127.0.0.1:{silent_server}/db"
    started = time.monotonic()
    timed = subprocess.run([*CLI, "search", str(study), "--storage", url + "?connect_timeout=2", "--no-progress"], env=ENV, capture_output=True, text=True, timeout=60)
    assert timed.returncode == 2 and time.monotonic() - started < 30
    assert "cannot be opened" in timed.stderr and len(timed.stderr.strip().splitlines()) == 1
    assert "hunter2secret" not in timed.stderr + timed.stdout and "***" in timed.stderr
    # the default connect timeout is longer: SIGTERM while connecting stops it at once
    waiting = subprocess.Popen([*CLI, "search", str(study), "--storage", url, "--no-progress"], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    sent = time.monotonic()
    waiting.send_signal(signal.SIGTERM)
    assert waiting.wait(timeout=30) == 130 and time.monotonic() - sent < 8
    stderr = waiting.stderr.read()
    assert "interrupted" in stderr and "hunter2secret" not in stderr


def test_passwords_are_masked_in_everything_a_run_writes(tmp_path, postgres_url):
    study = write_study(tmp_path, fidelity="false")
    url = postgres_url.replace("postgres@", "postgres:hunter2secret@")
    result = subprocess.run([*CLI, "search", str(study), "--storage", url, "--study-name", "masked", "--n-trials", "1", "--no-progress"], env=ENV, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "***" in result.stdout and "hunter2secret" not in result.stdout + result.stderr
    report = tmp_path / "tiny-masked-report"
    assert (report / "summary.md").exists()
    for path in report.iterdir():
        assert b"hunter2secret" not in path.read_bytes(), path


def _sqlite_search_in_a_trial(tmp_path, n_trials):
    """(study file, storage URL, search process) once the process is inside its first trial."""
    study = write_study(tmp_path, fidelity="false", rungs=SLOW_RUNGS)
    storage = f"sqlite:///{tmp_path / 'tiny.db'}"
    worker = search_process(study, storage, "tiny", n_trials)
    assert wait_for(lambda: len(running_trials(storage, "tiny")) == 1)
    return study, storage, worker


@pytest.mark.slow
def test_a_sigkilled_sqlite_search_reruns_to_the_exact_count_at_once(tmp_path):
    study, storage, first = _sqlite_search_in_a_trial(tmp_path, 3)
    first.send_signal(signal.SIGKILL)
    first.wait(timeout=30)
    rerun = subprocess.run([*CLI, "search", str(study), "--storage", storage, "--study-name", "tiny", "--n-trials", "3", "--threads", "1", "--no-progress", "--no-report"], env=ENV, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    trials = optuna.load_study(study_name="tiny", storage=storage).trials
    assert sum(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in trials) == 3
    assert TrialState.RUNNING not in [t.state for t in trials]
    dead = [t for t in trials if t.state == TrialState.FAIL]
    assert len(dead) == 1 and "worker died" in dead[0].user_attrs["reason"]


def test_ctrl_c_stops_a_search_with_one_line(tmp_path):
    _, _, worker = _sqlite_search_in_a_trial(tmp_path, 4)
    worker.send_signal(signal.SIGINT)
    code = worker.wait(timeout=120)
    stderr = worker.stderr.read()
    assert code == 130, (code, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines


def test_a_diverged_training_ends_with_one_line_and_keeps_the_last_good_checkpoint(tmp_path, monkeypatch):
    import lightseg_nas.train as train

    real_loss, calls = train.segmentation_loss, []

    def diverging(logits, masks, *args):
        calls.append(1)
        loss = real_loss(logits, masks, *args)
        return loss * float("nan") if len(calls) >= 3 else loss

    monkeypatch.setattr(train, "segmentation_loss", diverging)
    out = tmp_path / "run"
    args = ["train", "--preset", "sinet", "--data", "synthetic:count=16", "--size", "32", "--batch-size", "8", "--epochs", "3", "--no-progress", "--out", str(out)]
    result = runner.invoke(app, args)
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1, result.output
    assert "diverged" in result.stderr and "checkpoint.pt" in result.stderr
    assert not (out / "model.pt").exists()
    kept = torch.load(out / "checkpoint.pt", weights_only=True)
    assert len(kept["history"]) == 1 and all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


def test_a_second_training_on_a_locked_run_folder_is_refused(tmp_path):
    out = tmp_path / "run"
    with folder_lock(out, "training run"):
        result = runner.invoke(app, ["train", "--preset", "sinet", "--data", "synthetic:count=12", "--size", "32", "--epochs", "1", "--no-progress", "--out", str(out)])
    assert result.exit_code == 2 and "another training run is running" in result.stderr
    assert sorted(p.name for p in out.iterdir()) == [".lock"]


def test_a_study_where_no_trial_completed_gets_a_report_that_says_so(tmp_path, monkeypatch):
    import lightseg_nas.search.objective as objective

    def broken(*args, **kwargs):
        raise RuntimeError("broken candidate (simulated)")

    monkeypatch.setattr(objective, "fit", broken)
    path = write_study(tmp_path, fidelity="false")
    with pytest.raises(UserError, match="trials failed"):
        run_search(load_study_file(path), n_trials=1, progress=False)
    result = runner.invoke(app, ["report", str(path), "--no-png"])
    assert result.exit_code == 0, result.output
    summary = (tmp_path / "tiny-report" / "summary.md").read_text()
    assert "No trial has completed" in summary
    assert not list((tmp_path / "tiny-report").glob("*.html"))


def test_a_report_folder_is_replaced_as_a_whole(tmp_path, monkeypatch):
    import lightseg_nas.search.report as report

    path = write_study(tmp_path, fidelity="false")
    study = run_search(load_study_file(path), n_trials=2, storage="memory", progress=False)
    folder = tmp_path / "tiny-report"
    folder.mkdir()
    (folder / "stale.html").write_text("from an older report")
    (folder / "summary.md").write_text("an older report, from before reports were marked")
    written = write_report(study, folder, png=False)
    assert not (folder / "stale.html").exists() and set(written) | {folder / report.REPORT_MARK} == set(folder.iterdir())
    html = (folder / "pareto_params.html").read_text()
    # no shared plotly.js in the folder above: a copy beside the pages, and nothing from the network
    assert '<script src="plotly.min.js">' in html and "http" not in html.split("</head>")[0] and (folder / "plotly.min.js").stat().st_size > 1_000_000
    before = {p.name: p.read_bytes() for p in folder.iterdir()}

    def fail(*args, **kwargs):
        raise RuntimeError("disk full (simulated)")

    monkeypatch.setattr(report, "_summary", fail)
    with pytest.raises(RuntimeError):
        write_report(study, folder, png=False)
    assert {p.name: p.read_bytes() for p in folder.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.startswith(".")) == []


def test_two_study_files_with_one_name_get_their_own_report_folders(tmp_path):
    from lightseg_nas.search.study_file import derived_folder

    first = write_study(tmp_path)
    second = tmp_path / "other.toml"
    second.write_text(first.read_text())
    folders = {derived_folder(load_study_file(p), "report") for p in (first, second)}
    assert folders == {tmp_path / "tiny-report", tmp_path / "other-report"}
    assert derived_folder(load_study_file(first), "export", "b") == tmp_path / "tiny-b-export"


# -- images ------------------------------------------------------------------------------


def test_predict_applies_exif_orientation(tmp_path):
    photo = Image.new("RGB", (60, 40), (90, 120, 150))
    exif = photo.getexif()
    exif[0x0112] = 6  # displayed rotated by 90 degrees: 40 wide, 60 high
    photo.save(tmp_path / "turned.jpg", exif=exif)
    model = _tiny_model_file(tmp_path)
    result = runner.invoke(app, ["predict", str(model), str(tmp_path / "turned.jpg"), "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    with Image.open(tmp_path / "out" / "turned_mask.png") as mask:
        assert mask.size == (40, 60)
    with Image.open(tmp_path / "out" / "turned_preview.jpg") as preview:
        assert preview.size == (40, 60)


def test_sixteen_bit_photos_are_scaled_not_clipped(tmp_path):
    ramp = (np.linspace(0, 65535, 64 * 32).reshape(32, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "deep.png")
    values = np.asarray(read_photo(tmp_path / "deep.png"))[..., 0]
    assert values.min() == 0 and values.max() == 255 and 100 < values.mean() < 155


def test_a_mask_whose_person_is_only_in_alpha(tmp_path):
    rgba = np.zeros((20, 30, 4), np.uint8)
    rgba[5:15, 10:20, 3] = 255
    Image.fromarray(rgba, "RGBA").save(tmp_path / "alpha.png")
    mask = read_mask(tmp_path / "alpha.png")
    assert mask.sum() == 255 * 100 and mask[10, 15] == 255


def test_a_name_listed_twice_is_one_image(tmp_path):
    root = write_dataset(tmp_path / "eg", "extportraitseg")
    names = (root / "eg1800_train.txt").read_text().split()
    (root / "eg1800_train.txt").write_text("\n".join(names + names[:3]) + "\n")
    assert len(load_split(f"eg1800:{root}", "trainval", 32)) == len(names)


def test_large_jpegs_are_decoded_at_a_reduced_scale(tmp_path):
    Image.new("RGB", (4000, 3000), (10, 200, 30)).save(tmp_path / "big.jpg", quality=80)
    assert max(read_photo(tmp_path / "big.jpg", longest=224).size) <= 500
    assert read_photo(tmp_path / "big.jpg").size == (4000, 3000)


# -- first use ---------------------------------------------------------------------------


def _tiny_model_file(tmp_path, size=64):
    out = tmp_path / f"trained{size}"
    if not (out / "model.pt").exists():
        result = runner.invoke(app, ["train", "--preset", "sinet", "--data", "synthetic:count=12", "--size", str(size), "--batch-size", "8", "--epochs", "1", "--no-progress", "--out", str(out)])
        assert result.exit_code == 0, result.output
    return out / "model.pt"


def test_eval_predict_and_onnx_default_to_the_trained_size(tmp_path):
    model = _tiny_model_file(tmp_path, 64)
    result = runner.invoke(app, ["eval", str(model), "--data", "synthetic:count=12", "--json"])
    assert result.exit_code == 0, result.output
    assert '"size": 64' in result.stdout and "training size" in result.stdout
    Image.new("RGB", (50, 70)).save(tmp_path / "p.png")
    result = runner.invoke(app, ["predict", str(model), str(tmp_path / "p.png"), "--out", str(tmp_path / "o")])
    assert result.exit_code == 0 and "64x64" in result.stdout
    result = runner.invoke(app, ["onnx", str(model), "--out", str(tmp_path / "m.onnx")])
    assert result.exit_code == 0 and "64x64" in result.stdout
    # the model file can also be named with --checkpoint, as before
    assert runner.invoke(app, ["eval", "--checkpoint", str(model), "--data", "synthetic:count=12"]).exit_code == 0


def test_resume_with_other_settings_names_them(tmp_path):
    from tests.fixtures import stopping_after_one_epoch

    out = tmp_path / "run"
    base = ["train", "--preset", "sinet", "--data", "synthetic:count=12", "--size", "32", "--batch-size", "8", "--no-progress", "--out", str(out)]
    with stopping_after_one_epoch():
        assert runner.invoke(app, [*base, "--epochs", "3", "--lr", "0.001"]).exit_code == 130
    before = (out / "checkpoint.pt").read_bytes()
    result = runner.invoke(app, [*base, "--epochs", "3", "--resume", "--lr", "0.005"])  # given anyway, and not the checkpoint's
    assert result.exit_code == 2 and "lr 0.001 (now 0.005)" in result.stderr, result.stderr
    assert (out / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("command", ["train", "eval", "predict", "onnx", "compress", "search", "measure"])
def test_every_command_that_computes_takes_threads(command):
    result = runner.invoke(app, [command, "--help"])
    assert result.exit_code == 0 and "--threads" in result.stdout


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0 and re.match(r"lightseg-nas \S+", result.stdout)


def test_ci_runs_the_readme_test_command_in_a_fresh_virtualenv():
    readme = (REPO / "README.md").read_text()
    ci = (REPO / ".ci" / "run").read_text()
    command = re.search(r"Run the tests.*?```bash\n(.*?)\n```", readme, re.S).group(1).strip()
    assert command in ci.splitlines()
    assert "python3 -m venv" in ci and "mktemp -d" in ci


def _readme_commands() -> list[list[str]]:
    """Every `lightseg-nas ...` line of the bash blocks of the README and the docs pages (continuations joined,
    comments and [optional] parts dropped)."""
    import shlex

    commands = []
    from tests.test_readme_run import DOC_PAGES

    pages = "\n".join((REPO / page).read_text() for page in DOC_PAGES)
    for block in re.findall(r"```bash\n(.*?)```", pages, re.S):
        text = re.sub(r"\\\n\s*", " ", block)
        for line in text.splitlines():
            line = re.sub(r"\s+#.*$", "", re.sub(r"\[--[^\]]*\]", "", line)).strip()
            if line.startswith("lightseg-nas ") and "..." not in line:
                commands.append(shlex.split(line)[1:])
    return commands


@pytest.mark.parametrize("args", _readme_commands(), ids=lambda args: " ".join(args)[:60])
def test_every_readme_command_names_a_command_and_options_that_exist(args):
    # Parsing with --help added checks the command and every option name without running it.
    result = runner.invoke(app, [*args, "--help"])
    assert result.exit_code == 0, (args, result.output)


def test_the_readme_lists_its_commands():
    assert len(_readme_commands()) >= 20


def test_every_committed_plot_page_draws_in_a_clone_offline():
    """A committed page opened in a clone, offline, draws its plot: nothing comes from the
    network, and every script and image it loads is a tracked file (the one plotly.min.js git
    keeps in studies/, and the page's PNG, which it shows where that script is missing)."""
    import re

    from plotly.offline import get_plotlyjs

    from lightseg_nas.search.report import plotlyjs_version

    tracked = set(subprocess.run(["git", "ls-files", "studies"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split())
    pages = sorted(p for p in tracked if p.endswith(".html"))
    assert pages
    for page in pages:
        html = (REPO / page).read_text()
        images = re.findall(r'<img[^>]* src="([^"]+)"', html)
        scripts = re.findall(r'<script[^>]* src="([^"]+)"', html)
        assert images and scripts, (page, images, scripts)
        for source in images + scripts:
            assert not re.match(r"[a-z]+:|//", source), (page, source)
            assert str(((REPO / page).parent / source).resolve().relative_to(REPO)) in tracked, (page, source)
        for source in scripts:  # plotly's own bundle, not a stand-in
            assert plotlyjs_version(((REPO / page).parent / source).read_text()[:200]) == plotlyjs_version(get_plotlyjs()), (page, source)
        assert "document.write" not in html and "window.Plotly" in html, page  # the PNG shows without plotly.js


def test_pages_use_the_folder_above_s_plotly_js_when_it_is_this_plotly_s(tmp_path):
    from plotly.offline import get_plotlyjs

    from lightseg_nas.search.report import place_plotlyjs

    shared, other = tmp_path / "shared" / "a-report", tmp_path / "other" / "a-report"
    shared.mkdir(parents=True)
    other.mkdir(parents=True)
    (shared.parent / "plotly.min.js").write_text(get_plotlyjs())
    (other.parent / "plotly.min.js").write_text("/* another plotly.js version */")
    assert place_plotlyjs(shared) == "../plotly.min.js" and not (shared / "plotly.min.js").exists()
    assert place_plotlyjs(other) == "plotly.min.js" and (other / "plotly.min.js").read_text() == get_plotlyjs()    # git's partial (basic) bundle of the same version is used; one naming another version is not
    basic, older = tmp_path / "basic" / "a-report", tmp_path / "older" / "a-report"
    text = (REPO / "studies" / "plotly.min.js").read_text()
    for folder, bundle in ((basic, text), (older, "/**\n* plotly.js (basic - minified) v1.0.0\n*/" + text[text.index("*/") + 2:])):
        folder.mkdir(parents=True)
        (folder.parent / "plotly.min.js").write_text(bundle)
    assert place_plotlyjs(basic) == "../plotly.min.js" and not (basic / "plotly.min.js").exists()
    assert place_plotlyjs(older) == "plotly.min.js" and (older / "plotly.min.js").read_text() == get_plotlyjs()
