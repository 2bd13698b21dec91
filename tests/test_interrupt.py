"""Ctrl-C and SIGTERM end every command with exit code 130 and one line, wherever they land."""

import signal
import subprocess
import sys
import textwrap
import time

import pytest

from tests.test_scaleout import CLI, ENV, wait_for


@pytest.mark.parametrize("stop", [signal.SIGINT, signal.SIGTERM])
def test_an_interrupt_inside_a_string_exec_still_exits_130_under_python_m(tmp_path, stop):
    # CPython marks a process killed by Ctrl-C when exactly KeyboardInterrupt ends a string
    # exec/eval, and `python -m` then exits by SIGINT (-2) whatever sys.exit said; the
    # handlers raise a subclass, which is caught the same way and leaves no such mark
    (tmp_path / "stopper.py").write_text(textwrap.dedent(f"""
        import sys
        from lightseg_nas.errors import install_stop_handlers
        install_stop_handlers()
        try:
            exec("import os, signal; os.kill(os.getpid(), {int(stop)}); sum(range(10))")
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(1)
    """))
    code = subprocess.run([sys.executable, "-m", "stopper"], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path)}, timeout=120).returncode
    assert code == 130


def test_sigterm_stops_a_training_with_one_line_and_no_model_file(tmp_path):
    # --no-compile: 500 epochs would cross the automatic torch.compile threshold, and a minute of
    # compiling has nothing to do with how a stop ends
    out = tmp_path / "run"
    args = [*CLI, "train", "--preset", "extremec3net", "--data", "synthetic:count=16", "--out", str(out), "--epochs", "500", "--size", "32", "--batch-size", "4", "--threads", "1", "--no-progress", "--no-compile"]
    worker = subprocess.Popen(args, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert wait_for(lambda: (out / "checkpoint.pt").exists(), timeout=300)
    time.sleep(0.5)
    worker.send_signal(signal.SIGTERM)
    code = worker.wait(timeout=60)
    stderr = worker.stderr.read()
    assert code == 130, (code, stderr[-3000:])
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("interrupted"), lines
    assert not (out / "model.pt").exists() and (out / "checkpoint.pt").exists()


def test_a_stop_whose_exception_a_finalizer_dropped_still_stops_quietly(tmp_path):
    # the signal lands inside a __del__, where Python drops the exception: the stop flag
    # still ends the run at its next check, and no "Exception ignored" noise is printed
    (tmp_path / "dropper.py").write_text(textwrap.dedent("""
        import gc, os, signal, sys
        from lightseg_nas.errors import install_stop_handlers, stop_requested
        install_stop_handlers()

        class Finalised:
            def __del__(self):
                os.kill(os.getpid(), signal.SIGTERM)
                sum(range(1000))  # the handler runs here, inside the finalizer

        Finalised()
        gc.collect()
        print("still running")
        try:
            stop_requested()
        except KeyboardInterrupt:
            sys.exit(130)
        sys.exit(1)
    """))
    result = subprocess.run([sys.executable, "-m", "dropper"], cwd=tmp_path, env={**ENV, "PYTHONPATH": str(tmp_path)}, capture_output=True, text=True, timeout=120)
    assert result.returncode == 130 and "still running" in result.stdout
    assert result.stderr == ""


def test_training_stops_at_the_next_step_once_a_stop_was_requested(tmp_path):
    from lightseg_nas.data import load_split
    from lightseg_nas.data.transforms import get_preprocessing
    from lightseg_nas.errors import STOP, Interrupted
    from lightseg_nas.families import build_model
    from lightseg_nas.presets import get_preset
    from lightseg_nas.train import fit, settings_from

    data = load_split("synthetic:count=8", "train", 32)
    settings = settings_from(epochs=1, size=32, batch_size=4, augment=False)
    STOP.set()
    try:
        with pytest.raises(Interrupted):
            fit(build_model(get_preset("extremec3net")), data, data, settings, get_preprocessing("default"), progress=False)
    finally:
        STOP.clear()
