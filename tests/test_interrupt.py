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
    out = tmp_path / "run"
    args = [*CLI, "train", "--preset", "extremec3net", "--data", "synthetic:count=16", "--out", str(out), "--epochs", "500", "--size", "32", "--batch-size", "4", "--threads", "1", "--no-progress"]
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
