"""The CelebA bias study (``transferbench report bias``): the metrics of Iofinova, Peste & Alistarh, "Bias in Pruned
Vision Models" (CVPR 2023) for every run of a CelebA-style task (``celeba``, ``celeba-<attr>``,
``celeba-<attr>-grayscale|yellow_square``, the offline ``faces``), before and after the threshold countermeasure,
and the dense-only criteria that should predict where pruning increases bias.

Each run's ``predictions.npz`` (beside its record) holds the test logits and labels of its outputs, the ground truth
of every annotated attribute, the validation outputs and the train split's attribute co-occurrence counts
(:class:`transferbench.bias.RunOutputs`). Per run and per threshold setting — ``zero`` (p > 0.5) and ``fitted``
(each attribute's threshold fitted on validation, §3.1, the countermeasure) — :func:`transferbench.bias.attribute_table`
gives every §2 metric per attribute. From those tables:

- ``runs``: per run, the means over attributes (accuracy, uncertainty U, interdependence R², ECE, BA and
  equalized-odds gap per identity attribute, backdoor BA), attributes where a metric is undefined (BA's skip rules)
  left out of its mean;
- ``summary``: per (task, arch, mode, solver, method, sparsity, thresholds), the mean, std and n over seeds;
- ``criteria``: per (task, arch, mode, solver, thresholds, identity, method, sparsity), the Spearman ρ across
  attributes between a dense-only predictor (U_j, R²_j, ECE_j, AUC_j, r_j, the train base rate) and
  ΔBA_j = BA_sparse − BA_dense; each side is first averaged over its seeds per attribute (a seed where the BA is
  undefined is left out of that mean), and the attributes where either side is undefined are left out (``n``);
- ``flags``: the dense-only sample flag |p − 0.5| < 0.4 against the (sample, attribute) pairs whose prediction the
  sparse run flips, each sparse run against the dense run of its seed (flag rate, flip rate, AUROC of the dense
  uncertainty for a flip and the share of flips flagged, pooled over attributes; then the mean over seeds);
- ``pies``: pruning-identified exemplars per (sample, attribute), where both the sparse and the dense population
  have at least 2 seeds.

A run whose predictions are missing or unusable, or whose test list differs from its group's, is listed in
``skipped`` with the reason, never dropped silently.
"""

from __future__ import annotations

import logging
import math
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from .. import bias as bm
from ..errors import TransferbenchError
from ..store import PREDICTIONS_FILE
from .palette import DENSE, method_sort_key
from .render import MISSING, fmt_sparsity, markdown_table
from .select import OURS, filter_source, per_seed_runs

log = logging.getLogger("transferbench")

OUT_DIR = "bias"  # <results>/bias
THRESHOLD_KINDS = {"zero": "t = 0", "fitted": "fitted on validation"}  # the countermeasure: §3.1
GROUP_KEYS = ["task", "arch", "mode", "solver"]
CELL_KEYS = [*GROUP_KEYS, "method", "sparsity"]
RUN_KEYS = [*CELL_KEYS, "seed", "run_key"]
RUN_METRICS = ("accuracy", "uncertainty", "interdependence", "ece")
PREDICTORS = ("uncertainty", "interdependence", "ece", "auc", "rare_value_underprediction", "train_positive_rate")
FLAG_METRICS = ("flag_rate", "flip_rate", "flip_auroc", "flips_covered")
REQUIRED_KEYS = ("logits", "labels", "classes", "attributes", "attribute_names", "train_cooccurrence", "train_count")
SKIPPED_COLUMNS = [*RUN_KEYS, "reason"]
PIE_COLUMNS = [*CELL_KEYS, "thresholds", "sparse_seeds", "dense_seeds", "pies", "pie_fraction", "samples_with_pie",
               "samples"]
PIE_ATTRIBUTE_COLUMNS = [*CELL_KEYS, "thresholds", "sparse_seeds", "dense_seeds", "attribute", "pies"]
BIAS_TASKS = "celeba, celeba-<attr>, celeba-<attr>-grayscale|yellow_square, faces"


def is_bias_task(task: str) -> bool:
    """Whether ``task`` is one of the bias study's: CelebA and its variants, the offline ``faces``, or any task
    whose card names ``identity_attributes``."""
    if task in ("celeba", "faces") or task.startswith(("celeba-", "faces-")):
        return True
    from ..tasks import get_task

    try:
        return bool(get_task(task).extra.get("identity_attributes"))
    except TransferbenchError:  # a task no card names (any more)
        return False


def identity_attributes(task: str) -> tuple[str, ...]:
    """The task card's ``identity_attributes``; a variant without a card of its own (``celeba-smiling-grayscale``)
    takes its family's (``celeba``)."""
    from ..tasks import get_task

    for name in dict.fromkeys([task, task.split("-")[0]]):
        try:
            listed = get_task(name).extra.get("identity_attributes")
        except TransferbenchError:
            continue
        if listed:
            return tuple(str(a) for a in listed)
    raise TransferbenchError(f"task {task}: its task card names no identity_attributes, which the bias study needs; "
                             "add e.g. `identity_attributes: [Male, Young]` to the card, or pass --identity ATTRIBUTE")


@dataclass(frozen=True)
class BiasStudy:
    """Every table of the study (see the module docstring); ``identities``: the identity attributes per task."""

    attributes: pd.DataFrame  # per run, threshold setting and attribute: every §2 metric
    runs: pd.DataFrame  # per run and threshold setting: means over attributes
    summary: pd.DataFrame  # per cell and threshold setting: mean, std, n over seeds
    criteria: pd.DataFrame  # Spearman ρ of each dense predictor with ΔBA across attributes
    flags: pd.DataFrame  # dense-only sample flags against the sparse flips, per cell
    pies: pd.DataFrame  # pruning-identified exemplars per cell
    pie_attributes: pd.DataFrame  # the same per attribute
    skipped: pd.DataFrame  # runs left out, and why
    identities: dict[str, tuple[str, ...]]

    def describe(self) -> str:
        """One line: runs analysed, cells, runs skipped by reason."""
        cells = len(self.summary[CELL_KEYS].drop_duplicates())
        text = (f"{self.runs['run_key'].nunique()} run(s) of {self.runs['task'].nunique()} CelebA-style task(s) in "
                f"{cells} cell(s)")
        if len(self.skipped):
            reasons = self.skipped["reason"].str.split(":").str[0].value_counts()
            text += f"; {len(self.skipped)} run(s) skipped (" + "; ".join(
                f"{k}: {v}" for k, v in sorted(reasons.items())) + ")"
        return text


def load_outputs(path: Path) -> bm.RunOutputs | str:
    """A run's ``predictions.npz`` as :class:`~transferbench.bias.RunOutputs`, or why it cannot be used."""
    try:
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in REQUIRED_KEYS if k not in npz.files]
            if missing:
                return (f"unusable predictions: {path} lacks {', '.join(missing)}, which the bias study needs; rerun "
                        "the run with a runner that saves them")
            arrays = {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        return f"no predictions: {path} does not exist"
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        return f"unreadable predictions: {path}: {' '.join(str(exc).split())}"
    outputs = bm.RunOutputs(
        logits=arrays["logits"], labels=arrays["labels"], classes=tuple(str(c) for c in arrays["classes"]),
        attributes=arrays["attributes"], attribute_names=tuple(str(a) for a in arrays["attribute_names"]),
        train_cooccurrence=arrays["train_cooccurrence"], train_count=int(arrays["train_count"]),
        validation_logits=arrays.get("validation_logits"), validation_labels=arrays.get("validation_labels"),
        backdoored=arrays["backdoored"].astype(bool) if "backdoored" in arrays else None, ids=arrays.get("ids"))
    problem = _shape_problem(outputs)
    return f"unusable predictions: {path}: {problem}" if problem else outputs


def _shape_problem(o: bm.RunOutputs) -> str | None:
    """Why the arrays of ``o`` do not fit together, or None."""
    n, k = o.logits.shape if o.logits.ndim == 2 else (0, 0)
    a = len(o.attribute_names)
    checks = [
        (o.logits.ndim == 2 and n > 0, f"logits {o.logits.shape} are not [N, K]"),
        (o.labels.shape == o.logits.shape, f"labels {o.labels.shape} differ from logits {o.logits.shape}"),
        (len(o.classes) == k, f"{len(o.classes)} classes for {k} outputs"),
        (o.attributes.shape == (n, a), f"attributes {o.attributes.shape} are not [N={n}, A={a}]"),
        (_validation_fits(o), f"validation logits and labels are not both [Nv, {k}] (or both absent)"),
        (o.train_cooccurrence.shape == (a, a), f"train_cooccurrence {o.train_cooccurrence.shape} is not [{a}, {a}]"),
        (o.train_count > 0, "train_count is not positive"),
        (set(o.classes) <= set(o.attribute_names), "some classes are not among attribute_names"),
        (o.backdoored is None or o.backdoored.shape == (n,), f"backdoored is not [N={n}]"),
        (o.ids is None or o.ids.shape == (n,), f"ids are not [N={n}]"),
    ]
    return next((why for ok, why in checks if not ok), None)


def _validation_fits(o: bm.RunOutputs) -> bool:
    """Both validation arrays absent (no fitted thresholds for the run), or both [Nv, K]."""
    z, y = o.validation_logits, o.validation_labels
    if z is None or y is None:
        return z is None and y is None
    return z.ndim == 2 and len(z) > 0 and z.shape[1] == o.logits.shape[1] and y.shape == z.shape


@dataclass(frozen=True)
class _Run:
    """One usable run: its row of the runs table, its outputs and its thresholds per setting (no ``fitted`` ones
    without validation outputs)."""

    row: Any
    outputs: bm.RunOutputs
    thresholds: dict[str, np.ndarray]

    def predictions(self, kind: str) -> np.ndarray:
        return bm.predictions(self.outputs.logits, self.thresholds[kind])


def _shared_kinds(runs: list[_Run]) -> list[str]:
    """The threshold settings every one of ``runs`` has, in THRESHOLD_KINDS' order."""
    return [kind for kind in THRESHOLD_KINDS if all(kind in r.thresholds for r in runs)]


def _ident(row: Any) -> dict[str, Any]:
    return {k: getattr(row, k) for k in RUN_KEYS}


def _test_list(o: bm.RunOutputs) -> tuple[np.ndarray, ...]:
    """What must be equal for two runs to have seen the same test samples in the same order."""
    return (o.ids if o.ids is not None else o.labels, o.attributes)


def _load_group(group: pd.DataFrame, identities: Sequence[str], skipped: list[dict]) -> list[_Run]:
    """The usable runs of one (task, arch, mode, solver): readable, with the identity attributes, and on the test
    list of the group's first dense run (else its first run); the others go to ``skipped``."""
    loaded, reference = [], None
    dense_first = pd.concat([group[group["method"] == DENSE], group[group["method"] != DENSE]])
    for row in dense_first.itertuples():
        path = Path(row.path).parent / PREDICTIONS_FILE
        outputs = load_outputs(path)
        reason = outputs if isinstance(outputs, str) else None
        if reason is None and not set(identities) <= set(outputs.attribute_names):
            absent = sorted(set(identities) - set(outputs.attribute_names))
            reason = (f"no identity attribute: {', '.join(absent)} not among the attribute_names of {path}; pass "
                      "--identity with attributes it has, or fix the task card's identity_attributes")
        if reason is None and reference is not None and not _same_list(_test_list(outputs), reference[1]):
            reason = f"test list differs: the test samples differ from run {reference[0]}'s"
        if reason is not None:
            skipped.append({**_ident(row), "reason": reason})
            continue
        reference = reference or (row.run_key, _test_list(outputs))
        thresholds = {"zero": np.zeros(outputs.logits.shape[1])}
        if outputs.validation_logits is not None:
            thresholds["fitted"] = bm.fitted_thresholds(outputs.validation_logits, outputs.validation_labels)
        loaded.append(_Run(row, outputs, thresholds))
    return loaded


def _same_list(a: tuple[np.ndarray, ...], b: tuple[np.ndarray, ...]) -> bool:
    return all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b, strict=True))


def _attribute_rows(run: _Run, identities: Sequence[str]) -> list[pd.DataFrame]:
    """The run's attribute tables, one per threshold setting."""
    return [pd.DataFrame(bm.attribute_table(run.outputs, identities, t)).assign(**_ident(run.row), thresholds=kind)
            for kind, t in run.thresholds.items()]


def _flag_rows(runs: list[_Run]) -> list[dict]:
    """Each sparse run against the dense run of its seed: the flag statistics pooled over attributes."""
    dense = {r.row.seed: r for r in runs if r.row.method == DENSE}
    rows = []
    for run in runs:
        partner = dense.get(run.row.seed)
        if run.row.method == DENSE or partner is None:
            continue
        for kind in _shared_kinds([run, partner]):
            stats = bm.flag_statistics(partner.outputs.logits, run.outputs.logits, partner.thresholds[kind],
                                       run.thresholds[kind], pooled=True)
            rows.append({**_ident(run.row), "thresholds": kind, **{k: float(v[0]) for k, v in stats.items()}})
    return rows


def _pie_rows(runs: list[_Run]) -> tuple[list[dict], list[dict]]:
    """Per sparse cell with ≥ 2 seeds, against the ≥ 2 dense seeds of its group: (PIE counts per cell, per cell
    and attribute)."""
    dense = [r for r in runs if r.row.method == DENSE]
    cells: dict[tuple, list[_Run]] = {}
    for run in runs:
        if run.row.method != DENSE:
            cells.setdefault((run.row.method, run.row.sparsity), []).append(run)
    totals, per_attribute = [], []
    for sparse in cells.values():
        if len(sparse) < 2 or len(dense) < 2:
            continue
        ident = {k: getattr(sparse[0].row, k) for k in CELL_KEYS}
        for kind in _shared_kinds([*sparse, *dense]):
            pies = bm.pruning_identified_exemplars(np.stack([r.predictions(kind) for r in sparse]),
                                                   np.stack([r.predictions(kind) for r in dense]))
            base = {**ident, "thresholds": kind, "sparse_seeds": len(sparse), "dense_seeds": len(dense)}
            totals.append({**base, "pies": int(pies.sum()), "pie_fraction": float(pies.mean()),
                           "samples_with_pie": int(pies.any(axis=1).sum()), "samples": len(pies)})
            per_attribute += [{**base, "attribute": name, "pies": int(count)}
                              for name, count in zip(sparse[0].outputs.classes, pies.sum(axis=0), strict=True)]
    return totals, per_attribute


def _bias_columns(frame: pd.DataFrame) -> list[str]:
    """The metric columns averaged per run: RUN_METRICS, then BA, EO gap per identity and backdoor BA."""
    extra = [c for c in frame.columns if c.startswith(("ba_", "eo_gap_")) or c == "backdoor_ba"]
    return [*RUN_METRICS, *extra]


def _run_means(attributes: pd.DataFrame) -> pd.DataFrame:
    """Per run and threshold setting, the mean of each metric over the attributes where it is defined."""
    columns = _bias_columns(attributes)
    return attributes.groupby([*RUN_KEYS, "thresholds"], sort=False, dropna=False)[columns].mean().reset_index()


def _summary(run_means: pd.DataFrame) -> pd.DataFrame:
    """Per cell and threshold setting: mean and std over seeds of every run mean, and n (seeds)."""
    columns = _bias_columns(run_means)
    grouped = run_means.groupby([*CELL_KEYS, "thresholds"], sort=False, dropna=False)
    stats = grouped[columns].agg(["mean", "std"])
    stats.columns = [f"{metric}_{stat}" for metric, stat in stats.columns]
    return stats.assign(n=grouped.size()).reset_index()


def spearman(x: pd.Series, y: pd.Series) -> tuple[float, float, int]:
    """(ρ, p-value, n) of scipy's Spearman correlation over the entries (aligned by index) where both are finite;
    NaN when fewer than 3 remain or either side is constant."""
    from scipy.stats import spearmanr

    both = pd.concat([x, y], axis=1, join="inner").astype(float)
    both = both[np.isfinite(both).all(axis=1)]
    n = len(both)
    if n < 3 or both.iloc[:, 0].nunique() < 2 or both.iloc[:, 1].nunique() < 2:
        return math.nan, math.nan, n
    result = spearmanr(both.iloc[:, 0], both.iloc[:, 1])
    return float(result.statistic), float(result.pvalue), n


def criteria(attributes: pd.DataFrame, identities: dict[str, tuple[str, ...]]) -> pd.DataFrame:
    """Per (group, thresholds, identity, sparse method, sparsity) and dense predictor: Spearman ρ across attributes
    between the dense predictor and ΔBA_j = BA_sparse − BA_dense, each averaged over its seeds per attribute."""
    per_attribute = attributes.groupby([*CELL_KEYS, "thresholds", "attribute"], sort=False, dropna=False)[
        list(dict.fromkeys([*PREDICTORS, *_bias_columns(attributes)]))].mean().reset_index()
    rows = []
    for key, frame in per_attribute.groupby([*GROUP_KEYS, "thresholds"], sort=False, dropna=False):
        dense = frame[frame["method"] == DENSE].set_index("attribute")
        if dense.empty:
            continue
        for (method, sparsity), sparse in frame[frame["method"] != DENSE].groupby(["method", "sparsity"],
                                                                                   sort=False):
            sparse = sparse.set_index("attribute")
            for identity in identities[key[0]]:
                delta = sparse[bm.ba_column(identity)] - dense[bm.ba_column(identity)]
                ident = dict(zip([*GROUP_KEYS, "thresholds"], key, strict=True))
                ident |= {"identity": identity, "method": method, "sparsity": sparsity,
                          "mean_delta_ba": float(delta.mean())}
                for predictor in PREDICTORS:
                    rho, p_value, n = spearman(dense[predictor], delta)
                    rows.append({**ident, "predictor": predictor, "rho": rho, "p_value": p_value, "n": n})
    return pd.DataFrame(rows, columns=[*GROUP_KEYS, "thresholds", "identity", "method", "sparsity",
                                       "mean_delta_ba", "predictor", "rho", "p_value", "n"])


def _flag_summary(flag_rows: list[dict]) -> pd.DataFrame:
    """The flag statistics per cell and threshold setting: means over the paired seeds, and their number."""
    frame = pd.DataFrame(flag_rows, columns=[*RUN_KEYS, "thresholds", *FLAG_METRICS])
    grouped = frame.groupby([*CELL_KEYS, "thresholds"], sort=False, dropna=False)
    return grouped[list(FLAG_METRICS)].mean().assign(seeds=grouped.size()).reset_index()


def select_bias_runs(runs: pd.DataFrame) -> pd.DataFrame:
    """Our runs of the bias study's tasks, one per seed of a cell (``select.per_seed_runs``)."""
    runs = filter_source(runs, OURS) if "source" in runs.columns else runs
    runs = runs[runs["task"].map({t: is_bias_task(t) for t in runs["task"].unique()}).astype(bool)]
    return per_seed_runs(runs) if len(runs) else runs


def bias_study(runs: pd.DataFrame, identities: Sequence[str] | None = None, *, where: str = "") -> BiasStudy:
    """The study of every CelebA-style run of ``runs`` (collect's table; predictions are read beside each record's
    ``path``). ``identities``: the identity attributes of every task (default: each task card's
    ``identity_attributes``). No CelebA-style run, or none usable, is a TransferbenchError (``where`` names the
    results folder in it)."""
    selected = select_bias_runs(runs)
    if selected.empty:
        raise TransferbenchError(f"no runs of the bias study's tasks ({BIAS_TASKS}) {where}: run some first, or "
                                 "point --results at the results root that holds them")
    tables, flags, pies, pie_attributes, skipped = [], [], [], [], []
    chosen = {task: tuple(identities) if identities else identity_attributes(task)
              for task in selected["task"].unique()}
    for (task, *_), group in selected.groupby(GROUP_KEYS, sort=True):
        loaded = _load_group(group, chosen[task], skipped)
        tables += [t for run in loaded for t in _attribute_rows(run, chosen[task])]
        flags += _flag_rows(loaded)
        totals, per_attribute = _pie_rows(loaded)
        pies, pie_attributes = pies + totals, pie_attributes + per_attribute
    skipped_frame = pd.DataFrame(skipped, columns=SKIPPED_COLUMNS)
    if not tables:
        raise TransferbenchError(f"none of the {len(selected)} run(s) of the bias study's tasks {where} can be "
                                 f"used; the first: {skipped_frame['reason'].iloc[0]}")
    attributes = pd.concat(tables, ignore_index=True)
    attributes = attributes[[*RUN_KEYS, "thresholds", *[c for c in attributes.columns
                                                        if c not in (*RUN_KEYS, "thresholds")]]]
    run_means = _run_means(attributes)
    study = BiasStudy(attributes, run_means, _summary(run_means), criteria(attributes, chosen),
                      _flag_summary(flags), pd.DataFrame(pies, columns=PIE_COLUMNS),
                      pd.DataFrame(pie_attributes, columns=PIE_ATTRIBUTE_COLUMNS), skipped_frame, chosen)
    (log.warning if len(skipped_frame) else log.info)("bias study: %s", study.describe())
    return study


# ------------------------------------------------------------------------------------------------ Markdown


def _num(x: float, scale: float = 100.0, sign: bool = False, digits: int = 2) -> str:
    if x is None or pd.isna(x):
        return MISSING
    return f"{x * scale:+.{digits}f}" if sign else f"{x * scale:.{digits}f}"


def _mode(row: dict) -> str:
    return row["mode"] if row["solver"] == "sgd" else f"{row['mode']} ({row['solver']})"


def _ordered(frame: pd.DataFrame, kind: str | None = None) -> list[dict]:
    """The rows (of one threshold setting) in the report's order: group, the method order (dense first),
    sparsity, then the rest as they come."""
    if kind is not None:
        frame = frame[frame["thresholds"] == kind]
    rows = frame.to_dict("records")
    return sorted(rows, key=lambda r: (r["task"], r["arch"], r["mode"], r["solver"], method_sort_key(r["method"]),
                                       r["sparsity"]))


def _cell(row: dict) -> tuple:
    return tuple(row[k] for k in CELL_KEYS)


def _cell_head(row: dict) -> list:
    return [row["task"], row["arch"], _mode(row), row["method"], fmt_sparsity(row["sparsity"])]


CELL_HEAD = ["task", "arch", "mode", "method", "sparsity"]
LEFT = ("task", "arch", "mode", "method", "identity", "predictor", "run", "reason")


def _summary_markdown(study: BiasStudy) -> str:
    """Per cell: seeds, accuracy, U, R², ECE (t = 0), and each identity's mean BA at t = 0 → fitted thresholds."""
    identities = list(dict.fromkeys(i for ids in study.identities.values() for i in ids))
    fitted = {_cell(r): r for r in _ordered(study.summary, "fitted")}
    backdoor = "backdoor_ba_mean" in study.summary and study.summary["backdoor_ba_mean"].notna().any()
    rows = []
    for r in _ordered(study.summary, "zero"):
        after = fitted.get(_cell(r), {})
        ba = [f"{_num(r.get(f'{bm.ba_column(i)}_mean'), sign=True)} → "
              f"{_num(after.get(f'{bm.ba_column(i)}_mean'), sign=True)}" for i in identities]
        rows.append([*_cell_head(r), r["n"], _num(r["accuracy_mean"]), _num(r["uncertainty_mean"]),
                     _num(r["interdependence_mean"], 1, digits=3), _num(r["ece_mean"]), *ba,
                     *([_num(r["backdoor_ba_mean"], sign=True)] if backdoor else [])])
    return markdown_table([*CELL_HEAD, "seeds", "accuracy (%)", "U (%)", "R²", "ECE (%)",
                           *[f"BA {i} (pp), t=0 → fitted" for i in identities],
                           *(["backdoor BA (pp), t=0"] if backdoor else [])], rows, left=LEFT)


def _criteria_markdown(study: BiasStudy) -> str:
    """ρ (n) of each dense predictor with ΔBA, per identity and sparse cell, at t = 0."""
    table = study.criteria[study.criteria["thresholds"] == "zero"]
    found = {(*_cell(r), r["identity"], r["predictor"]): r for r in table.to_dict("records")}
    rows = []
    for first in _ordered(table[table["predictor"] == PREDICTORS[0]]):
        entries = [found[(*_cell(first), first["identity"], p)] for p in PREDICTORS]
        rows.append([*_cell_head(first), first["identity"], _num(first["mean_delta_ba"], sign=True),
                     *[f"{_num(e['rho'], 1, sign=True)} ({e['n']})" for e in entries]])
    return markdown_table([*CELL_HEAD, "identity", "mean ΔBA (pp)", *PREDICTOR_LABELS.values()], rows, left=LEFT)


PREDICTOR_LABELS = {"uncertainty": "U", "interdependence": "R²", "ece": "ECE", "auc": "AUC",
                    "rare_value_underprediction": "r", "train_positive_rate": "π train"}


def _flags_markdown(study: BiasStudy) -> str:
    rows = [[*_cell_head(r), THRESHOLD_KINDS[r["thresholds"]], r["seeds"], _num(r["flag_rate"]), _num(r["flip_rate"]),
             _num(r["flip_auroc"], 1, digits=3), _num(r["flips_covered"])]
            for kind in THRESHOLD_KINDS for r in _ordered(study.flags, kind)]
    return markdown_table([*CELL_HEAD, "thresholds", "seeds", "flagged (%)", "flipped (%)", "AUROC",
                           "flips flagged (%)"], rows, left=(*LEFT, "thresholds"))


def _pies_markdown(study: BiasStudy) -> str:
    if study.pies.empty:
        return "No cell has at least 2 sparse and 2 dense seeds."
    rows = [[*_cell_head(r), THRESHOLD_KINDS[r["thresholds"]], f"{r['sparse_seeds']}/{r['dense_seeds']}", r["pies"],
             _num(r["pie_fraction"]), f"{r['samples_with_pie']}/{r['samples']}"]
            for kind in THRESHOLD_KINDS for r in _ordered(study.pies, kind)]
    return markdown_table([*CELL_HEAD, "thresholds", "seeds sparse/dense", "PIEs", "PIEs (% of pairs)",
                           "samples with a PIE"], rows, left=(*LEFT, "thresholds"))


def to_markdown(study: BiasStudy) -> str:
    """``bias.md``: the summary, the criteria, the sample flags and the PIEs, each with its definitions."""
    parts = [
        "## Bias per cell\n", _summary_markdown(study),
        "\n_Means over seeds of each run's mean over attributes; U = share of test predictions with |p − 0.5| < 0.4; "
        "R² = each attribute's predictions regressed on the others'; ECE: 10 bins of p; BA = P(g = a* | ŷ = 1) − "
        "P(g = a* | y = 1), a* the identity value the attribute co-occurs with in training, attributes with fewer "
        "than 10 test positives in a group or a weak train correlation left out; t=0 → fitted: before and after "
        "the countermeasure, each attribute's threshold fitted on validation (K-th largest validation logit)._\n",
        "## Dense-only criteria (Spearman ρ across attributes with ΔBA, t = 0)\n", _criteria_markdown(study),
        "\n_ΔBA_j = BA_j of the sparse cell − BA_j of dense, each first averaged over its seeds; ρ (n attributes) "
        "with the dense model's per-attribute U, R², ECE, AUC, rare-value ratio r and train base rate. "
        "criteria.csv also has the fitted thresholds and p-values._\n",
        "## Dense-only sample flags\n", _flags_markdown(study),
        "\n_flagged: dense |p − 0.5| < 0.4; flipped: the sparse prediction differs from the dense one of the same "
        "seed; AUROC of the dense 1 − 2|p − 0.5| for a flip; all over every (sample, attribute) pair, then "
        "averaged over seeds._\n",
        "## Pruning-identified exemplars\n", _pies_markdown(study),
        "\n_(sample, attribute) pairs whose majority prediction over the sparse seeds differs from the majority "
        "over the dense seeds (a tie counts as 0)._\n",
        f"\n{study.describe()}.\n",
    ]
    if len(study.skipped):
        parts += ["\n## Skipped runs\n", markdown_table(["run", "reason"], ([r.run_key, r.reason] for r in
                                                                              study.skipped.itertuples()), left=LEFT)]
    return "\n".join(parts) + "\n"


__all__ = ["BiasStudy", "bias_study", "criteria", "identity_attributes", "is_bias_task", "load_outputs",
           "select_bias_runs", "spearman", "to_markdown"]
