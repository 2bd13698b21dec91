"""Every command block of the README and of the docs pages (DOC_PAGES, in that order), run
on synthetic data.

The sandbox mirrors a checkout: ``main/`` (the working folder, with the README's study
files) beside ``shared/data/eg1800`` (a small synthetic dataset in the EG1800 layout), so
the README's paths work unchanged. What the test changes, and only that:

- the study files are the shipped ones with fewer trials and tiny rungs (and a tiny supernet);
- training commands get ``--max-steps 2`` (supernet training also ``--recalibration-images 8``,
  final also ``--no-png``) and compress commands ``--max-steps-per-step 1``; train, supernet
  and compress also ``--size 64 --batch-size 4`` (the README's schedules and sizes are for
  real runs; options given twice take the last value);
- ``--threads N`` above this machine's cores runs with its cores (the page's 16 are for a
  16-core worker; 16 threads on 2 cores only oversubscribe them);
- the PostgreSQL host is a throwaway local server (skipped where PostgreSQL is absent);
- a ``--resume`` line after a run that finished must be refused with one line (resuming a
  stopped run is tested with real kills in tests/test_train.py and tests/test_compress.py);
- lines that need the released weights run only where ``../shared`` has them;
- ``net.json`` / ``winner.json`` (your own configs in the README) and the photos are made
  here. Lines that are not lightseg-nas commands (pip, pytest, createdb,
  optuna-dashboard) and the ``...`` template are not run.
"""

import re
import shlex
import shutil
import time
from pathlib import Path

import pytest
from PIL import Image
from typer.testing import CliRunner

from lightseg_nas.checks import usable_cores
from lightseg_nas.cli import app
from lightseg_nas.config import to_json
from lightseg_nas.presets import get_preset
from tests import pgserver
from tests.fixtures import write_dataset

REPO = Path(__file__).resolve().parents[1]
OFFICIAL = REPO.parent / "shared" / "reference" / "official"
NOT_OURS = ("pip ", "python -m pytest", "createdb ", "optuna-dashboard ")
TINY = ["--size", "64", "--batch-size", "4"]  # a smoke step at the README's 160-224 px takes seconds each
SMOKE = {
    "train": ["--max-steps", "2", *TINY], "compress": ["--max-steps-per-step", "1", *TINY],
    "supernet": ["--max-steps", "2", "--recalibration-images", "8", *TINY], "final": ["--max-steps", "2", "--no-png"],
}
runner = CliRunner()


# The README, then the docs pages in the order a reader follows them (later pages use what
# earlier ones made: the search page trains the winner the compress page's lines do not).
DOC_PAGES = ["README.md", "docs/concepts.md", "docs/usage.md", "docs/compress.md", "docs/search.md", "docs/supernet.md",
             "docs/scale-out.md", "docs/bad-input.md", "docs/networks.md", "benchmarks/results/README.md"]


def readme_blocks() -> list[tuple[str, str]]:
    """(language, text) of every fenced bash or python block of every page, in order."""
    return [block for page in DOC_PAGES for block in re.findall(r"```(bash|python)\n(.*?)```", (REPO / page).read_text(), re.S)]


def command_lines(block: str) -> list[str]:
    """The block's commands: continuations joined, comments and [optional] parts dropped,
    `a && b` split."""
    lines = []
    for line in re.sub(r"\\\n\s*", " ", block).splitlines():
        line = re.sub(r"\s+#.*$", "", re.sub(r"\[--[^\]]*\]", "", line)).strip()
        if line and not line.startswith("#"):
            lines.extend(part.strip() for part in line.split("&&"))
    return lines


def _tiny_study(text: str) -> str:
    """A shipped study file with 3 trials and tiny rungs (everything else as shipped)."""
    text, trials = re.subn(r"n_trials = \d+", "n_trials = 3", text)
    text = re.sub(r"timeout_s = \d+\n", "", text)
    text = re.sub(r"rungs = \[.*\]", "rungs = [{ size = 32, epochs = 1 }, { size = 64, epochs = 1 }]", text)
    text = re.sub(r"repeats = \d+", "repeats = 2", text)
    if "[supernet]" in text:  # a supernet trained for a few steps at 32 px
        text = re.sub(r"\[supernet\]\n(.*\n)*?(?=\n|\Z)", "[supernet]\nepochs = 1\nsize = 32\nbatch_size = 4\nrandom_subnets = 1\nrecalibration_images = 8\nmax_steps = 2\n", text)
    assert trials == 1
    return text


def _sandbox(root: Path) -> Path:
    main = root / "main"
    (main / "studies").mkdir(parents=True)
    for study in (REPO / "studies").glob("*.toml"):
        (main / "studies" / study.name).write_text(_tiny_study(study.read_text()))
    write_dataset(root / "shared" / "data" / "eg1800", "extportraitseg", count=24)
    if (OFFICIAL / "SINet.pth").exists():
        (root / "shared" / "reference" / "official").mkdir(parents=True)
        shutil.copy(OFFICIAL / "SINet.pth", root / "shared" / "reference" / "official" / "SINet.pth")
        shutil.copy(OFFICIAL / "SINet.pth", main / "SINet.pth")
    config = to_json(get_preset("extremec3net").model_copy(update={"num_classes": 1}))
    (main / "net.json").write_text(config)
    (main / "winner.json").write_text(config)
    Image.new("RGB", (80, 60), (180, 120, 90)).save(main / "photo1.jpg")
    Image.new("RGB", (60, 80), (90, 120, 180)).save(main / "photo2.png")
    Image.new("RGB", (64, 64), (120, 180, 90)).save(main / "photo.jpg")
    return main


@pytest.mark.slow
def test_every_readme_command_block_runs_on_synthetic_data(tmp_path, monkeypatch, request):
    main = _sandbox(tmp_path)
    monkeypatch.chdir(main)
    postgres = None
    ran, skipped, seconds = [], [], {}
    for language, block in readme_blocks():
        if language == "python":  # runs with or without the released weights
            exec(compile(block, "README.md", "exec"), {})
            ran.append("python block")
            continue
        for line in command_lines(block):
            if line.startswith(NOT_OURS):
                skipped.append((line, "not a lightseg-nas command"))
                continue
            assert line.startswith("lightseg-nas "), f"a README command this test does not know how to run: {line}"
            if "..." in line:
                skipped.append((line, "a template"))
                continue
            if "SINet.pth" in line and not (main / "SINet.pth").exists():
                skipped.append((line, "no released weights"))
                continue
            if "postgresql://" in line:
                reason = pgserver.available()
                if reason:
                    skipped.append((line, reason))
                    continue
                postgres = postgres or request.getfixturevalue("postgres_url")
                line = re.sub(r"postgresql://\S+", postgres, line)
            if "ARCH_ID" in line:
                exported = sorted((main / "studies" / "eg1800_extremec3-export").glob("*.json"))
                assert len(exported) == 1, exported
                line = line.replace("ARCH_ID", exported[0].stem)
            line = re.sub(r"--threads (\d+)", lambda m: f"--threads {min(int(m.group(1)), usable_cores())}", line)
            args = shlex.split(line)[1:]
            args += SMOKE.get(args[0], [])
            started = time.perf_counter()
            result = runner.invoke(app, args)
            seconds[line] = seconds.get(line, 0.0) + time.perf_counter() - started
            if "--resume" in args and result.exit_code == 2 and "already holds a finished" in result.stderr:
                ran.append(line)  # the run above finished, so there is nothing to continue: the right answer
                continue
            assert result.exit_code == 0, (line, result.output)
            assert "Traceback" not in result.output
            ran.append(line)
    assert len(ran) >= 20, ran
    # the walk-through's products exist
    for path in ["studies/quickstart-report/summary.md", "studies/eg1800_extremec3-report/summary.md", "runs/winner/model.pt",
                 "runs/winner-small.pt", "winner-small.onnx", "runs/net/model.pt", "net.onnx", "previews/photo_mask.png"]:
        assert (main / path).exists(), path
    print(f"ran {len(ran)} README commands; not run: {skipped}")
    print("slowest:", *[f"{s:6.1f}s {line}" for line, s in sorted(seconds.items(), key=lambda item: -item[1])[:15]], sep="\n")


def test_every_docs_page_is_run():
    pages = {str(path.relative_to(REPO)) for path in (REPO / "docs").glob("*.md")} | {"README.md", "benchmarks/results/README.md"}
    assert pages == set(DOC_PAGES)


def test_the_readme_is_short_and_links_only_pages_that_exist():
    readme = (REPO / "README.md").read_text()
    assert len(readme.splitlines()) <= 200
    for target in re.findall(r"\]\(([^)#]+)(?:#[^)]*)?\)", readme):
        assert (REPO / target).exists(), target


def test_the_readme_lists_no_command_the_runner_cannot_classify():
    for language, block in readme_blocks():
        if language == "bash":
            for line in command_lines(block):
                assert line.startswith(("lightseg-nas ", *NOT_OURS)), line
