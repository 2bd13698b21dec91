"""Multi-objective architecture search on top of Optuna studies."""

from lightseg_nas.search.export import choose_trials, export_trials
from lightseg_nas.search.report import trials_dataframe, write_report
from lightseg_nas.search.runner import open_study, run_search
from lightseg_nas.search.study_file import StudyFile, load_study_file

__all__ = ["StudyFile", "load_study_file", "run_search", "open_study", "write_report", "trials_dataframe", "choose_trials", "export_trials"]
