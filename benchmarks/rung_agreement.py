"""How well a study's first rung ranks the trials it promotes: Kendall's tau between each
promoted trial's first-rung and second-rung validation fg IoU, next to the parameter count's
tau with the second rung (the baseline a cheap signal must beat). Only promoted trials have
both values, so this covers the top of each study, a narrower range than the fidelity audit.

    python benchmarks/rung_agreement.py [STUDY ...]

Defaults to the two committed EG1800 rung studies (64 px then 128 px rungs, and 128 px
rungs). Reads their databases only (skips when their EG1800 folder is absent); writes benchmarks/results/rung_agreement.md.
"""

from __future__ import annotations

from pathlib import Path

import pandas as pd
from scipy.stats import kendalltau

from lightseg_nas.errors import DatasetMissing, UserError
from lightseg_nas.scripts import Parser, existing_file, fail
from lightseg_nas.search import load_study_file, open_study
from lightseg_nas.search.record import TrialRecord

REPO = Path(__file__).resolve().parents[1]
OUT = Path(__file__).parent / "results"


def agreement(records: list[TrialRecord]) -> dict:
    both = [r for r in records if r.rung_val_fg_iou.get(0) is not None and r.rung_val_fg_iou.get(1) is not None]
    first, second, params = ([r.rung_val_fg_iou[0] for r in both], [r.rung_val_fg_iou[1] for r in both], [r.params for r in both])
    return {
        "promoted_trials": len(both),
        "tau_rung0_vs_rung1": kendalltau(first, second)[0] if len(both) > 1 else None,
        "tau_params_vs_rung1": kendalltau(params, second)[0] if len(both) > 1 else None,
    }


def main() -> None:
    parser = Parser(__doc__)
    parser.add_argument("studies", nargs="*", type=existing_file,
                        default=[REPO / "studies" / "eg1800_extremec3.toml", REPO / "studies" / "eg1800_extremec3_r128.toml"])
    args = parser.parse_args()
    rows = []
    for path in args.studies:
        try:
            study_file = load_study_file(path, needs_data=False)  # it reads the storage only
        except DatasetMissing as error:  # the study files name their EG1800 folder
            print(f"skipped: {error}")
            return
        except UserError as error:
            fail(str(error))
        if study_file.fidelity.mode != "rungs" or len(study_file.fidelity.rungs) < 2:
            fail(f"{path}: has no second rung to agree with (fidelity mode {study_file.fidelity.mode!r}, {len(study_file.fidelity.rungs)} rung(s)); give rung studies")
        try:
            study = open_study(study_file, create=False)
        except UserError as error:
            fail(str(error))
        rungs = " then ".join(f"{r.epochs} ep at {r.size} px" for r in study_file.fidelity.rungs)
        rows.append({"study": study.study_name, "rungs": rungs, **agreement([TrialRecord.of(t) for t in study.trials])})
    frame = pd.DataFrame(rows)
    OUT.mkdir(exist_ok=True)
    text = "\n".join([
        "# First-rung agreement", "",
        "Kendall's tau, over the trials each study promoted to its second rung, between their first-rung and second-rung "
        "validation fg IoU, and between their parameter count and the second-rung value. Written by `python benchmarks/rung_agreement.py`.", "",
        frame.to_markdown(index=False, floatfmt=".2f"), "",
    ])
    (OUT / "rung_agreement.md").write_text(text)
    print(text)


if __name__ == "__main__":
    main()
