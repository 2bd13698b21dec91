"""The supernet fidelity of a study ([fidelity] mode = "supernet"): the study's supernet is
trained first when its file does not exist (with [supernet], on the study's data and its
training split only), then every trial is scored with the supernet's weights and batch norm
recalibrated on training images, on the study's validation split, untrained."""

from __future__ import annotations

from lightseg_nas.data import split_fingerprint
from lightseg_nas.errors import UserError
from lightseg_nas.search.study_file import StudyFile

__all__ = ["ensure_supernet", "open_supernet"]


def ensure_supernet(study_file: StudyFile, progress: bool = True) -> None:
    """Train the study's supernet if its file does not exist yet; then check it is the
    study's (before the study's storage is touched)."""
    from lightseg_nas.supernet import train_supernet

    path = study_file.supernet_path()
    if not path.exists():
        checkpoint = path.parent / "checkpoint.pt"
        if path.name != "supernet.pt":
            raise UserError(f"{path}: no such supernet file (a supernet the study trains itself is called supernet.pt)")
        train_supernet(
            study_file.study.space, study_file.study.num_classes, study_file.data_spec(), path.parent, study_file.supernet_settings(),
            resume=checkpoint.exists(), progress=progress,
        )
    _checked(study_file)


def open_supernet(study_file: StudyFile):
    """(supernet, recalibration images, validation split), checked against the study."""
    from lightseg_nas.supernet import recalibration_split

    supernet, record = _checked(study_file)
    recalibration, val = recalibration_split(record, study_file.data_spec())
    return supernet, recalibration, val


def _checked(study_file: StudyFile):
    from lightseg_nas.supernet import load_supernet

    path = study_file.supernet_path()
    supernet, record = load_supernet(path)
    study = study_file.study
    data = study_file.data
    problems = []
    if record["space"] != study.space or record["num_classes"] != study.num_classes:
        problems.append(f"it holds space {record['space']!r} with {record['num_classes']} class(es), the study {study.space!r} with {study.num_classes}")
    settings = record["settings"]
    if "fingerprint" in record["data"]:  # the same images, wherever the dataset lies on this machine
        other = record["data"]["fingerprint"] != split_fingerprint(study_file.data_spec(), data.val_fraction, data.val_seed)
    else:  # files from before fingerprints: the same dataset path
        other = record["data"]["spec"] != study_file.data_spec()
    if other or (settings["val_fraction"], settings["val_seed"]) != (data.val_fraction, data.val_seed):
        # trained on another split, it may have seen this study's validation images
        problems.append("it was trained on other data or another validation split than the study's")
    if problems:
        raise UserError(f"{path}: not this study's supernet: {'; '.join(problems)}")
    return supernet, record
