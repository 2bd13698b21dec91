"""Study -> DataFrame -> figures and tables. Plots are pure functions of the DataFrame;
``write_report`` decides where files go. Everything is read from trial attributes: the
space function is never re-run.

The Pareto front is taken over complete, non-duplicate trials that reached the last rung
(full fidelity): a candidate stopped early was scored with fewer epochs at a lower
resolution, and its accuracy is not comparable.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
import shutil
import tempfile
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.offline import get_plotlyjs

from lightseg_nas.search.pareto import hypervolume, non_dominated_ranks
from lightseg_nas.search.proxies import PROXIES
from lightseg_nas.search.record import TrialRecord
from lightseg_nas.search.study_file import COST_ATTRS as COST_COLUMNS  # objective -> trials.csv column

COST_LABELS = {"params": "parameters", "macs": "MACs (fvcore)", "latency": "latency ratio to the reference preset"}


TRIAL_COLUMNS = [
    "number", "state", "arch_id", "baseline", "val_fg_iou", "params", "macs", "latency_ratio", "latency_ms", "latency_backend", "fidelity",
    "epochs", "full_fidelity", "duplicate_of", "infeasible", "outcome", "reason", "train_seconds", "images_per_s", "seed", "code_version",
    "datetime_complete", *[f"proxy_{name}" for name in PROXIES],
]


def front_size(study: optuna.Study) -> int:
    """Members of the full-fidelity Pareto front: the one definition the progress bar and
    the report share."""
    return int(trials_dataframe(study).on_front.sum())


def trials_dataframe(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: state, objective values, costs, fidelity, flags, proxies."""
    rows = []
    last_rung = len(study.user_attrs.get("rungs", [None])) - 1
    for trial in study.get_trials(deepcopy=False):
        stored = TrialRecord.of(trial)
        row = {
            "number": trial.number,
            "state": trial.state.name,
            "arch_id": stored.arch_id,
            "baseline": stored.baseline,
            "val_fg_iou": trial.values[0] if trial.values else np.nan,
            "params": stored.params,
            "macs": stored.macs,
            "latency_ratio": stored.latency_ratio,
            "latency_ms": stored.latency_ms,
            # studies from before the backend choice measured eager torch, the only backend then
            "latency_backend": stored.latency_backend or ("torch" if stored.latency_ms is not None else None),
            "fidelity": stored.fidelity,
            "epochs": stored.epochs,
            "full_fidelity": stored.fidelity == last_rung,
            "duplicate_of": stored.duplicate_of,
            "infeasible": stored.infeasible,
            "outcome": stored.outcome,
            "reason": stored.reason,
            "train_seconds": stored.train_seconds,
            "images_per_s": stored.images_per_s,
            "seed": stored.seed,
            "code_version": stored.code_version,
            "datetime_complete": trial.datetime_complete,
        }
        for name in PROXIES:
            row[f"proxy_{name}"] = stored.proxies.get(name)
        rows.append(row)
    frame = pd.DataFrame(rows, columns=TRIAL_COLUMNS)
    frame["on_front"] = False
    if frame.empty:
        return frame
    objectives = study.user_attrs.get("objectives", ["val_fg_iou", "params"])[1:]
    eligible = frame[(frame.state == "COMPLETE") & frame.full_fidelity & frame.duplicate_of.isna()]
    if len(eligible):
        losses = np.column_stack([-eligible.val_fg_iou.to_numpy(float)] + [eligible[COST_COLUMNS[o]].to_numpy(float) for o in objectives])
        frame.loc[eligible.index[non_dominated_ranks(losses) == 0], "on_front"] = True
    return frame


@dataclass(frozen=True)
class Labels:
    """What the axes and titles say about the study: its data and its latency reference."""

    data: str = ""  # the data spec; "synthetic..." is said on every plot
    reference: str = "the reference preset"
    backend: str = ""

    @property
    def synthetic(self) -> bool:
        return self.data.startswith("synthetic")

    def cost(self, cost: str) -> str:
        if cost == "latency":
            return f"latency ratio to {self.reference}" + (f" ({self.backend}, timed side by side)" if self.backend else " (timed side by side)")
        return COST_LABELS[cost]

    @classmethod
    def of(cls, study_file) -> "Labels":
        if study_file is None:
            return cls()
        return cls(data=study_file.data.spec, reference=study_file.cost.reference, backend=study_file.cost.backend)


def _hover(frame: pd.DataFrame) -> tuple[np.ndarray, str]:
    """Per point: trial, arch id, params, latency ratio, fidelity (rung and epochs)."""
    data = np.column_stack([
        frame.number.astype(str), frame.arch_id.fillna("?").astype(str), frame.params.map(lambda v: f"{v:,.0f}" if pd.notna(v) else "?"),
        frame.latency_ratio.map(lambda v: f"{v:.2f}x" if pd.notna(v) else "not measured"),
        [f"rung {int(f)}, {int(e)} epochs" if pd.notna(f) and pd.notna(e) else "?" for f, e in zip(frame.fidelity, frame.epochs)],
    ]) if len(frame) else np.zeros((0, 5))
    template = (
        "trial %{customdata[0]}, arch %{customdata[1]}<br>val fg IoU %{y:.2f}%<br>%{customdata[2]} parameters<br>"
        "latency %{customdata[3]}<br>fidelity: %{customdata[4]}<extra></extra>"
    )
    return data, template


def _points(figure: go.Figure, frame: pd.DataFrame, column: str, name: str, marker: dict, mode: str = "markers", **extra) -> None:
    """A scatter trace, left out when it has no point (no legend entry that draws nothing)."""
    if frame.empty:
        return
    customdata, template = _hover(frame)
    figure.add_trace(go.Scatter(x=frame[column], y=100 * frame.val_fg_iou, mode=mode, name=name, marker=marker, customdata=customdata, hovertemplate=template, **extra))


def pareto_figure(frame: pd.DataFrame, cost: str, title: str = "", labels: Labels = Labels()) -> go.Figure:
    """Validation fg IoU against one cost; front in colour, dominated faded, trials stopped at
    a lower rung drawn apart (their accuracy is from fewer epochs and is not comparable),
    baselines marked."""
    column = COST_COLUMNS[cost]
    done = frame[(frame.state == "COMPLETE") & frame[column].notna()]
    figure = go.Figure()
    others = done[~done.on_front & done.baseline.isna()]
    lower = others[~others.full_fidelity.astype(bool)]
    _points(figure, lower, column, "stopped at a lower rung (fewer epochs: not comparable)", dict(color="lightgray", size=7, symbol="circle-open"))
    _points(figure, others[others.full_fidelity.astype(bool)], column, "full fidelity, dominated", dict(color="#9ecae1", size=8))
    _points(figure, done[done.on_front], column, "Pareto front, all objectives (full fidelity)", dict(color="#1f77b4", size=10))
    # The front of this panel's two objectives alone, as a line (the all-objective front
    # zigzags when drawn against a single cost).
    eligible = done[done.full_fidelity & done.duplicate_of.isna()]
    if len(eligible) > 1:
        ranks = non_dominated_ranks(np.column_stack([-eligible.val_fg_iou.to_numpy(float), eligible[column].to_numpy(float)]))
        line = eligible[ranks == 0].sort_values(column)
        if len(line) > 1:
            figure.add_trace(
                go.Scatter(x=line[column], y=100 * line.val_fg_iou, mode="lines", name=f"front of fg IoU and {cost}", line=dict(dash="dot", color="#1f77b4"), hoverinfo="skip")
            )
    for name, group in done[done.baseline.notna()].groupby("baseline"):
        _points(
            figure, group, column, f"published: {name}", dict(symbol="star", size=16, color="#d62728"), mode="markers+text",
            text=[name] * len(group), textposition="top center",
        )
    mixed = (~done.full_fidelity.astype(bool)).any() and done.full_fidelity.astype(bool).any()
    data = " (synthetic data)" if labels.synthetic else ""
    figure.update_layout(
        title=(title or f"validation fg IoU against {labels.cost(cost)}") + data,
        xaxis_title=labels.cost(cost),
        yaxis_title="validation foreground IoU (%)" + (", at the rung each trial reached" if mixed else ""),
        template="plotly_white", legend=dict(orientation="h", yanchor="top", y=-0.18, xanchor="left", x=0),
        margin=dict(b=140),
    )
    if cost in ("params", "macs"):
        figure.update_xaxes(type="log")
    return figure


def hypervolume_history(frame: pd.DataFrame, objectives: list[str]) -> pd.DataFrame:
    """Hypervolume of the full-fidelity front after each trial, in normalised objectives.

    Accuracy is taken as 1 - fg IoU; each cost is divided by the largest value seen; the
    reference point is 1.1 in every normalised objective.
    """
    done = frame[(frame.state == "COMPLETE") & frame.full_fidelity & frame.duplicate_of.isna()].sort_values("number")
    columns = [COST_COLUMNS[o] for o in objectives[1:]]
    scale = [float(done[c].max()) if len(done) else 1.0 for c in columns]
    history, points = [], []
    for number in frame.sort_values("number").number:
        row = done[done.number == number]
        if len(row):
            points.append([1 - float(row.val_fg_iou.iloc[0])] + [float(row[c].iloc[0]) / s for c, s in zip(columns, scale)])
        volume = hypervolume(np.array(points), 1.1)
        history.append({"number": number, "hypervolume": volume})
    return pd.DataFrame(history)


def hypervolume_figure(history: pd.DataFrame, labels: Labels = Labels()) -> go.Figure:
    figure = go.Figure(go.Scatter(x=history.number, y=history.hypervolume, mode="lines+markers", name="hypervolume"))
    values = history.hypervolume.to_numpy(float)
    low, high = (float(values.min()), float(values.max())) if len(values) else (0.0, 1.0)
    pad = max(1e-3, 0.05 * (high - low))
    figure.update_layout(
        title="hypervolume of the full-fidelity front over trials (normalised objectives)" + (" (synthetic data)" if labels.synthetic else ""),
        xaxis_title="trial", yaxis_title="hypervolume", template="plotly_white", yaxis_range=[low - pad, high + pad],
    )
    return figure


def proxy_correlations(frame: pd.DataFrame) -> pd.DataFrame:
    """Spearman correlation of each proxy with validation fg IoU on trained trials, per fidelity."""
    trained = frame[(frame.state == "COMPLETE") & frame.duplicate_of.isna()]
    rows = []
    for name in PROXIES:
        column = f"proxy_{name}"
        for label, subset in (("full fidelity", trained[trained.full_fidelity]), ("all trained", trained)):
            usable = subset[[column, "val_fg_iou"]].replace([np.inf, -np.inf], np.nan).dropna()
            if len(usable) >= 3:
                rows.append({"proxy": name, "trials": label, "n": len(usable), "spearman": round(float(usable[column].corr(usable.val_fg_iou, method="spearman")), 3)})
    return pd.DataFrame(rows)


def _summary(
    study: optuna.Study, frame: pd.DataFrame, correlations: pd.DataFrame, png_note: str, figures: list[str], labels: Labels = Labels(), pngs: list[str] = ()
) -> str:
    objectives = study.user_attrs.get("objectives", [])
    counts = frame.state.value_counts().to_dict() if len(frame) else {}
    front = frame[frame.on_front].sort_values("params")
    columns = ["number", "arch_id", "val_fg_iou", "params", "macs", "latency_ratio", "epochs", "baseline"]
    table = front[[c for c in columns if c in front and front[c].notna().any()]].copy()
    baselines = frame[frame.baseline.notna()][[c for c in columns if c in frame and frame[c].notna().any()]].copy()
    # trials.csv and --json hold fractions; the tables here show percentages, and say so
    for part in (table, baselines):
        if "val_fg_iou" in part:
            part["val_fg_iou"] = (100 * part.val_fg_iou.astype(float)).round(2)
    table = table.rename(columns={"val_fg_iou": "val fg IoU (%)"})
    baselines = baselines.rename(columns={"val_fg_iou": "val fg IoU (%)"})
    if "baseline" in table:
        table["baseline"] = table.baseline.fillna("")
    supernet = study.user_attrs.get("fidelity_mode") == "supernet"
    lines = [
        f"# Study `{study.study_name}`",
        "",
        f"Space `{study.user_attrs.get('space')}`, objectives: maximise {objectives[0] if objectives else 'val_fg_iou'}"
        f" (validation foreground IoU per image, averaged), minimise {', '.join(objectives[1:])}.",
        *([f"Data: `{labels.data}`" + (" (**synthetic** portraits: these figures say nothing about real photos)." if labels.synthetic else ".")] if labels.data else []),
        *([f"Latency: ratio to {labels.reference} timed side by side" + (f" on {labels.backend}" if labels.backend else "") + " (latency_ratio)."] if "latency" in objectives else []),
        f"Trials: {len(frame)} ({', '.join(f'{v} {k.lower()}' for k, v in sorted(counts.items()))}); "
        f"{int(frame.infeasible.sum())} over budget (not trained), {int(frame.duplicate_of.notna().sum())} duplicates (not trained again), "
        f"{int((frame.state == 'COMPLETE').sum() - frame.full_fidelity.sum())} stopped at a lower rung.",
        *([
            "",
            "Fidelity: **supernet**. Every trial was scored with the weights of the study's weight-sharing supernet and batch "
            "norm recalibrated on training images, untrained (epochs 0): these figures rank networks; train the chosen ones "
            "stand-alone (export, then lightseg-nas train) before comparing them with anything else.",
        ] if supernet else []),
        "",
        *([
            "**No trial has completed yet** (all over budget, failed or still running): there is nothing to plot. "
            "The table of trials and their reasons is in trials.csv.",
            "",
        ] if not (frame.state == "COMPLETE").any() else []),
        *(["## Plots", "", *[f"![{name}]({name}.png)" for name in pngs], ""] if pngs else []),
        "## Pareto front (complete, full-fidelity trials)",
        "",
        table.to_markdown(index=False) if len(table) else "(no full-fidelity trial yet)",
        "",
        f"## Published networks ({'scored with the supernet' if supernet else 'trained with this study' + chr(39) + 's protocol'})",
        "",
        baselines.to_markdown(index=False) if len(baselines) else "(none in this study)",
        "",
        "## Zero-cost proxies: Spearman correlation with validation fg IoU",
        "",
        correlations.to_markdown(index=False) if len(correlations) else "(no proxies computed, or fewer than 3 trained trials)",
        "",
        *([
            "## Training the chosen networks to the end",
            "",
            f"This study names the recipe `{study.user_attrs['final_recipe']}`: export a network (lightseg-nas export), then "
            f"`lightseg-nas train ARCH_ID.json --recipe {study.user_attrs['final_recipe']} --data SPEC --out DIR`, and compare "
            "only networks trained with it and the same seed.",
            "",
        ] if study.user_attrs.get("final_recipe") else []),
        "## Files",
        "",
        ", ".join(figures) + " (.html" + ("" if png_note else ", .png") + "), trials.csv, hypervolume.csv, front.json.",
    ]
    if png_note:
        lines += ["", png_note]
    return "\n".join(lines) + "\n"


def _png_available() -> str:
    """Empty when kaleido can drive a browser; otherwise how to enable PNG export."""
    try:
        import kaleido  # noqa: F401
    except ImportError:
        return "PNG export skipped: install kaleido (pip install 'lightseg-nas[png]') and a Chromium (apt-get install chromium)."
    if not (shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")):
        return "PNG export skipped: kaleido needs a Chromium browser (apt-get install chromium); the HTML files are complete."
    return ""


def write_pngs(figures: dict, folder: Path, width: int, height: int) -> str:
    """Write each figure as ``folder/NAME.png`` in one browser session (kaleido starts
    Chromium once per call, so one call for all plots rather than one each).
    Returns "" or, where the browser fails, a note saying why; then no PNG of this call is
    left behind."""
    paths = [Path(folder) / f"{name}.png" for name in figures]
    if not paths:  # nothing to draw: no browser started
        return ""
    try:
        pio.write_images(list(figures.values()), paths, format="png", width=width, height=height)
        return ""
    except Exception as error:  # a browser that fails to start: keep the HTML, say why
        for path in paths:
            path.unlink(missing_ok=True)
        return f"PNG export failed ({error.__class__.__name__}: {str(error)[:120]}); the HTML files are complete."


class Report(list):
    """The files written (a list), and ``note``: a line for the terminal (PNG skipped, ...)."""

    note: str = ""


def figure_html(figure: go.Figure, name: str, static: bool, plotlyjs: str = "plotly.min.js") -> str:
    """A page that draws the interactive plot with the plotly.js at ``plotlyjs`` (a path
    relative to the page, from ``place_plotlyjs``), and shows the static NAME.png instead
    where that script does not load (the page copied away alone)."""
    plot = figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"plot-{name}", default_width="900px", default_height="650px")
    fallback = (
        f'<div id="static-{name}"><img src="{name}.png" alt="{name}" style="max-width:100%">'
        f"<p><small>Static image: the interactive plot needs {plotlyjs} (relative to this page).</small></p></div>"
    ) if static else ""
    swap = (
        f'<script>if (window.Plotly) {{ document.getElementById("static-{name}").remove(); }} '
        f'else {{ document.getElementById("plot-{name}").remove(); }}</script>'
    ) if static else ""
    return (
        f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{name}</title>'
        f'<script src="{plotlyjs}"></script></head><body>\n{fallback}\n{plot}\n{swap}\n</body></html>\n'
    )


PLOTLYJS = "plotly.min.js"


def plotlyjs_version(text: str) -> str | None:
    """The version a plotly.js bundle names in its header (full or partial bundle), else None."""
    found = re.match(r"/\*\*\s*\*\s*plotly\.js (?:\([a-z -]+\) )?v(\d+\.\d+\.\d+)\b", text[:200])
    return found.group(1) if found else None


def place_plotlyjs(folder: Path) -> str:
    """Where the pages of ``folder`` load plotly.js from, offline: the folder above's
    plotly.min.js when it is a plotly.js bundle of this plotly's version (git keeps
    plotly.js's basic bundle, scatter traces only, 1.2 MB, in studies/ for every report and
    final folder beside the study files; every plot here is a scatter), else a copy of the
    full bundle written beside the pages (4.8 MB). Returns the path relative to the pages."""
    bundle = get_plotlyjs()
    shared = Path(folder).parent / PLOTLYJS
    if shared.is_file() and plotlyjs_version(shared.read_text(errors="replace")[:200]) == plotlyjs_version(bundle):
        return f"../{PLOTLYJS}"
    (Path(folder) / PLOTLYJS).write_text(bundle)
    return PLOTLYJS


def write_report(study: optuna.Study, out: Path, png: bool = True, study_file=None) -> Report:
    """Write the report folder as a whole: built beside it, then swapped in, so a reader
    never sees old and new files mixed and a failure leaves the old report as it was.
    ``study_file`` (optional) names the data and the latency reference on the plots."""
    out = check_report_folder(Path(out))
    labels = Labels.of(study_file)
    frame = trials_dataframe(study)
    objectives = study.user_attrs.get("objectives", ["val_fg_iou", "params"])
    completed = frame[frame.state == "COMPLETE"]
    figures = {
        f"pareto_{cost}": pareto_figure(frame, cost, labels=labels) for cost in COST_COLUMNS if completed[COST_COLUMNS[cost]].notna().any()
    }
    history = hypervolume_history(frame, objectives)
    if len(completed):
        figures["hypervolume"] = hypervolume_figure(history, labels)
    png_note = (_png_available() if png else "PNG export not asked for (--no-png).") if figures else ""
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        names = []
        plotlyjs = place_plotlyjs(staging) if figures else PLOTLYJS
        if plotlyjs == PLOTLYJS and figures:
            names.append(PLOTLYJS)
        if not png_note:
            png_note = write_pngs(figures, staging, width=900, height=650)
            names += [] if png_note else [f"{name}.png" for name in figures]
        for name, figure in figures.items():
            (staging / f"{name}.html").write_text(figure_html(figure, name, (staging / f"{name}.png").exists(), plotlyjs))
            names.append(f"{name}.html")
        correlations = proxy_correlations(frame)
        frame.to_csv(staging / "trials.csv", index=False)
        history.to_csv(staging / "hypervolume.csv", index=False)
        pngs = [name for name in figures if (staging / f"{name}.png").exists()]
        (staging / "summary.md").write_text(_summary(study, frame, correlations, png_note, list(figures), labels, pngs))
        (staging / "front.json").write_text(json.dumps(frame[frame.on_front].number.tolist()) + "\n")
        (staging / REPORT_MARK).write_text("written by lightseg-nas report; the next report replaces this folder whole\n")
        names += ["trials.csv", "hypervolume.csv", "summary.md", "front.json"]
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(staging, 0o777 & ~umask)
        _swap_in(staging, out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    report = Report(out / name for name in names)
    report.note = png_note
    return report


# Written into every report folder: only a folder that holds it (or, from before the mark,
# only report files) is ever replaced by a new report.
REPORT_MARK = ".lightseg-nas-report"
_REPORT_FILES = {"summary.md", "trials.csv", "hypervolume.csv", "front.json", PLOTLYJS, REPORT_MARK}
_REPORT_SUFFIXES = (".html", ".png", ".svg")


def is_report_folder(folder: Path) -> bool:
    folder = Path(folder)
    if (folder / REPORT_MARK).is_file():
        return True
    entries = list(folder.iterdir())
    legacy = all(e.is_file() and (e.name in _REPORT_FILES or e.name.endswith(_REPORT_SUFFIXES)) for e in entries)
    return legacy and (folder / "summary.md").is_file()


def check_report_folder(out: Path, flag: str = "out") -> Path:
    """The folder a report will replace: nothing yet, or a report folder this tool wrote.
    Anything else (the study's own folder, a supernet's folder, ".") is refused before any
    work, so a report never deletes what it did not make."""
    from lightseg_nas.checks import check_output_dir
    from lightseg_nas.errors import FieldError

    out = Path(out)
    if out.name in ("", ".", "..") or out.resolve() == Path.cwd().resolve():
        raise FieldError(flag, f"{{0}} {out}: give the report folder by a name of its own (a report replaces its folder whole)")
    if out.exists() and not out.is_dir():
        raise FieldError(flag, f"{{0}} {out}: is a file, not a report folder")
    check_output_dir(out, flag)
    if out.is_dir() and not is_report_folder(out):
        raise FieldError(flag, f"{{0}} {out}: is a folder that lightseg-nas did not write as a report (a report replaces its folder whole); choose another {{0}}")
    return out


def _swap_in(staging: Path, out: Path) -> None:
    """Replace the folder ``out`` by ``staging`` with two renames (the old one is removed last)."""
    check_report_folder(out)
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".old", dir=out.parent))
        os.rmdir(old)
        os.replace(out, old)
    os.replace(staging, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
