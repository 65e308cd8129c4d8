"""The report across the scenes of a sweep: ``DIR/report.html`` (self-contained) and ``DIR/report.md``.

It shows each arm's mean ± std across scenes and seeds and its mean rank; the rank of every arm
on every scene; paired differences between arms (hash grid vs dense grid first, then every pair)
over matching (scene, seed) pairs, with 95% confidence intervals, as a table and a forest plot;
Chamfer and the detail measure per scene as bar charts with the seeds' spread; F-score against
threshold; each scene's table (its own report, with mesh pictures, is linked); and the failed arms
with their errors. ``write_report`` rebuilds it, and ``results.csv``, from what is on disk; for a
comparison folder it writes the one-scene report (``recon.report``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from recon.compare import is_ok, mean_std, result_value
from recon.errors import InputError
from recon.report import (
    DETAIL_NOTE, FILES, GT_COLUMNS, Column, Section, Table, best_arms, build_report, cell_text, failures_table, relative,
    save_figure, table_rows, write_documents,
)
from recon.stats import PairedDifference, arm_pairs, average_ranks, paired_difference
from recon.sweep import SweepResults, load_sweep, rewrite_results_csv

CONFIDENCE = 0.95
SCALE_FREE_COLUMNS = [c for c in GT_COLUMNS if c.key != "chamfer_l1"]
"""Scale-free measures (relative to each scene's GT diagonal), so that they average across scenes."""
PAIRED_KEYS = ("chamfer_l1_rel", "fscore@0.01", "detail_normal_consistency")
"""The measures compared pair by pair: Chamfer, F-score and the detail measure."""


def write_report(out_dir: str | Path, figures: bool = True, pictures: bool = True) -> tuple[Path, Path]:
    """Rebuild a sweep's (or a comparison's) report and ``results.csv`` from what is on disk.
    ``figures``: plots and mesh pictures; ``pictures``: the scenes' mesh pictures (the slow part)."""
    sweep = load_sweep(out_dir)
    rewrite_results_csv(sweep)
    if sweep.layout == "compare":
        return build_report(sweep.out_dir, figures, pictures)
    if not sweep.results:
        raise InputError(sweep.out_dir, "no finished arm yet: nothing to report")
    for scene in sweep.scenes:
        if scene.results:
            build_report(scene.folder, figures, pictures)
    return build_sweep_report(sweep, figures)


def build_sweep_report(sweep: SweepResults, figures: bool = True) -> tuple[Path, Path]:
    """Write the report across scenes (the scenes' own reports are written by ``write_report``)."""
    ok = [r for r in sweep.results if is_ok(r)]
    has_gt = any(r.get("metrics") for r in ok)
    columns = _columns(ok, has_gt)
    rank_col = columns[0] if has_gt else next(c for c in columns if c.key.endswith("psnr"))
    values = {c.key: _values(sweep, c.key) for c in columns}
    ranks = _scene_ranks(sweep, values[rank_col.key], rank_col)
    diffs = [paired_difference(values[k], k, a, b, _column(columns, k).better, CONFIDENCE)
             for a, b in arm_pairs(sweep.arms) for k in PAIRED_KEYS if k in values]
    files = sweep.out_dir / FILES
    shown: dict[str, str] = {}
    if figures and ok:
        shown = _figures(sweep, files, columns, values, diffs, has_gt)
    sections = [Section("Arms across scenes", table=_overview_table(sweep, columns, values, ranks)),
                Section(f"Rank per scene (by {rank_col.heading})", table=_rank_table(sweep, ranks))]
    if "bars" in shown:
        sections.append(Section("Per scene", figure=shown["bars"],
                                caption="Each scene's mean over seeds, the bars the seeds' standard deviation; "
                                        "x: an arm with no finished seed on that scene."))
    if diffs:
        sections.append(Section("Paired differences", paragraphs=[_interval_note(sweep)],
                                table=_differences_table(diffs, columns)))
    if "forest" in shown:
        sections.append(Section("", figure=shown["forest"], caption=f"Paired differences (first arm minus second) "
                                f"with their {100 * CONFIDENCE:.0f}% confidence intervals; green: the first arm is "
                                "better and the interval excludes 0, red: worse."))
    if "fscore" in shown:
        sections.append(Section("F-score against threshold", figure=shown["fscore"],
                                caption="Mean F-score across scenes and seeds, the band ± one standard deviation."))
    failures = failures_table(sweep.results, with_scene=True)
    if failures is not None:
        sections.append(Section("Failed arms", table=failures))
    sections.append(Section("Per-scene tables", paragraphs=["Each scene's own report (mesh renders, distance "
                                                            "maps, close-ups, training curves) is linked below its table."]))
    for scene in sweep.scenes:
        if scene.results:
            headings, rows = table_rows(scene.settings, scene.results)
            sections.append(Section(scene.name, table=Table(headings, rows), level=3,
                                    links=[(f"{scene.name}: report", relative(scene.folder / "report.html", sweep.out_dir))]))
        else:
            sections.append(Section(scene.name, paragraphs=["No arm recorded yet."], level=3))
    return write_documents(sweep.out_dir, f"recon sweep: {sweep.out_dir.name}", _notes(sweep), sections)


def _columns(ok: list[dict[str, Any]], has_gt: bool) -> list[Column]:
    cols = list(SCALE_FREE_COLUMNS) if has_gt else []
    if any(r.get("holdout_psnr") is not None for r in ok):
        cols.append(Column("holdout_psnr", "held-out PSNR", "{:.2f}", "high"))
    elif not has_gt:
        cols.append(Column("train_psnr", "train PSNR", "{:.2f}", "high"))
    cols.append(Column("fit_seconds", "fit time (s)", "{:.0f}", "low"))
    return cols


def _column(columns: list[Column], key: str) -> Column:
    return next(c for c in columns if c.key == key)


def _values(sweep: SweepResults, key: str) -> dict[tuple[str, str, int], float | None]:
    """(scene, arm, seed) -> the value (None for a failed or missing arm)."""
    by_key = {(r["scene"], r["arm"], r["seed"]): r for r in sweep.results}
    out = {}
    for k in sweep.keys():
        r = by_key.get(k)
        out[k] = result_value(r, key) if r is not None and is_ok(r) else None
    return out


def _scene_mean(values: dict[tuple[str, str, int], float | None], scene: str, arm: str) -> float | None:
    stat = mean_std([v for (s, a, _), v in values.items() if s == scene and a == arm])
    return None if stat is None else stat[0]


def _scene_ranks(sweep: SweepResults, values: dict, col: Column) -> dict[str, dict[str, float]]:
    """scene -> arm -> rank of its mean over seeds (scenes with no finished arm are left out)."""
    out = {}
    for scene in sweep.scenes:
        means = {arm: _scene_mean(values, scene.name, arm) for arm in sweep.arms}
        if any(m is not None for m in means.values()):
            out[scene.name] = average_ranks(means, col.better or "low")
    return out


def _mean_rank(ranks: dict[str, dict[str, float]], arm: str) -> float | None:
    got = [r[arm] for r in ranks.values()]
    return float(np.mean(got)) if got else None


def _overview_table(sweep: SweepResults, columns: list[Column], values: dict, ranks: dict) -> Table:
    n_planned = len(sweep.scenes) * sweep.seeds
    summary = {arm: {c.key: mean_std([v for (_, a, _), v in values[c.key].items() if a == arm]) for c in columns}
               for arm in sweep.arms}
    best = {c.key: best_arms(summary, c) for c in columns}
    mean_ranks = {arm: _mean_rank(ranks, arm) for arm in sweep.arms}
    best_rank = min((r for r in mean_ranks.values() if r is not None), default=None)
    rows = []
    for arm in sweep.arms:
        n_ok = sum(1 for r in sweep.results if r["arm"] == arm and is_ok(r))
        n_failed = sum(1 for r in sweep.results if r["arm"] == arm and not is_ok(r))
        finished = f"{n_ok}/{n_planned}" + (f" ({n_failed} failed)" if n_failed else "")
        rank = mean_ranks[arm]
        row = [(arm, False), (finished, False),
               ("-" if rank is None else f"{rank:.2f}", rank is not None and rank == best_rank and len(ranks) > 0)]
        row += [(cell_text(summary[arm][c.key], c, 2), arm in best[c.key]) for c in columns]
        rows.append(row)
    headings = ["arm", "finished", "mean rank"] + [c.heading for c in columns]
    return Table(headings, rows, "Mean ± standard deviation across scenes and seeds; best value per column in bold; "
                                 "mean rank: the arm's rank on each scene (table below), averaged.")


def _rank_table(sweep: SweepResults, ranks: dict[str, dict[str, float]]) -> Table:
    scenes = list(ranks)
    rows = []
    for arm in sweep.arms:
        mean = _mean_rank(ranks, arm)
        rows.append([(arm, False)] + [(f"{ranks[s][arm]:g}", ranks[s][arm] == 1) for s in scenes]
                    + [("-" if mean is None else f"{mean:.2f}", False)])
    return Table(["arm"] + scenes + ["mean rank"], rows,
                 "1 is the best; ties share the mean of their ranks; an arm with no finished seed on a scene ranks last there.")


def _differences_table(diffs: list[PairedDifference], columns: list[Column]) -> Table:
    rows = []
    for d in diffs:
        col = _column(columns, d.metric)
        pair = f"{d.a} − {d.b}"
        if d.interval is None:
            rows.append([(pair, False), (col.heading, False), ("no matching pairs", False), ("-", False), ("0", False),
                         ("-", False)])
            continue
        iv, fmt = d.interval, col.fmt
        ci = "n < 2: none" if iv.low is None else f"[{fmt.format(iv.low * col.scale)}, {fmt.format(iv.high * col.scale)}]"
        excludes = iv.low is not None and (iv.low > 0 or iv.high < 0)
        rows.append([(pair, False), (col.heading, False), (_signed(iv.mean * col.scale, fmt), excludes), (ci, excludes),
                     (f"{iv.n} {d.unit}", False), (f"{d.wins_a}/{iv.n}", False)])
    return Table(["pair (a − b)", "measure", "mean difference", f"{100 * CONFIDENCE:.0f}% interval", "over",
                  "a better in"], rows, "Bold: the interval excludes 0.")


def _signed(value: float, fmt: str) -> str:
    text = fmt.format(value)
    return text if text.startswith("-") else "+" + text


def _interval_note(sweep: SweepResults) -> str:
    n = len(sweep.scenes)
    text = (f"Differences a − b over the (scene, seed) pairs where both arms finished. The {100 * CONFIDENCE:.0f}% "
            "interval is a Student-t interval over scenes (each scene's mean difference over its seeds), with "
            "n − 1 degrees of freedom; with one scene it is over that scene's seeds and says nothing about other scenes.")
    if n < 5:
        text += (f" Only {n} scene(s): the intervals are wide and assume roughly normal differences; "
                 "read them as a rough guide.")
    return text


def _notes(sweep: SweepResults) -> list[str]:
    planned = len(sweep.scenes) * len(sweep.arms) * sweep.seeds
    n_ok = sum(is_ok(r) for r in sweep.results)
    n_failed = len(sweep.results) - n_ok
    cfg = sweep.scenes[0].settings["config"]
    notes = [
        f"{len(sweep.scenes)} scene(s) ({', '.join(s.name for s in sweep.scenes)}) x {len(sweep.arms)} arm(s) x "
        f"{sweep.seeds} seed(s): {n_ok} of {planned} arms finished, {n_failed} failed, {planned - len(sweep.results)} "
        "not run yet (results.csv: every arm's row).",
        f"{cfg['train']['iters']} steps of {cfg['train']['batch_rays']} rays (the first scene's settings; each "
        "scene's own are in its report).",
        "Chamfer and F-scores relative to each scene's ground-truth diagonal, so that they average across scenes.",
        DETAIL_NOTE,
    ]
    return notes


# ----------------------------------------------------------------------------- figures


def _figures(sweep: SweepResults, files: Path, columns: list[Column], values: dict,
             diffs: list[PairedDifference], has_gt: bool) -> dict[str, str]:
    import matplotlib

    matplotlib.use("Agg")
    out = {}
    bar_cols = [_column(columns, k) for k in ("chamfer_l1_rel", "detail_normal_consistency") if k in values]
    bar_cols = bar_cols or [columns[0]]
    save_figure(_bars(sweep, bar_cols, values), files / "scenes.png")
    out["bars"] = "scenes.png"
    with_ci = [d for d in diffs if d.interval is not None]
    if with_ci:
        save_figure(_forest(with_ci, columns), files / "differences.png")
        out["forest"] = "differences.png"
    if has_gt:
        save_figure(_fscore(sweep), files / "fscore_sweep.png")
        out["fscore"] = "fscore_sweep.png"
    return out


def _colours(arms: list[str]) -> dict[str, str]:
    return {arm: f"C{i}" for i, arm in enumerate(arms)}


def _bars(sweep: SweepResults, cols: list[Column], values: dict):
    import matplotlib.pyplot as plt

    scenes = [s.name for s in sweep.scenes]
    width = 0.8 / len(sweep.arms)
    fig, axes = plt.subplots(1, len(cols), figsize=(max(5.0, 1.1 * len(scenes) * len(cols) + 2), 3.8), squeeze=False)
    colours = _colours(sweep.arms)
    for ax, col in zip(axes[0], cols):
        for i, arm in enumerate(sweep.arms):
            x = np.arange(len(scenes)) + (i - (len(sweep.arms) - 1) / 2) * width
            stats = [mean_std([v for (s, a, _), v in values[col.key].items() if s == scene and a == arm])
                     for scene in scenes]
            heights = [st[0] * col.scale if st else 0.0 for st in stats]
            errors = [st[1] * col.scale if st else 0.0 for st in stats]
            ax.bar(x, heights, width, yerr=errors, capsize=2, color=colours[arm], label=arm)
            for xi, st in zip(x, stats):
                if st is None:
                    ax.plot(xi, 0, "x", color="#b3261e", ms=8, mew=2)
        ax.set_xticks(np.arange(len(scenes)), scenes, rotation=30 if len(scenes) > 4 else 0, ha="right" if len(scenes) > 4 else "center")
        ax.set(ylabel=col.heading, title=f"{col.heading} ({'lower' if col.better == 'low' else 'higher'} is better)")
        ax.grid(alpha=0.3, axis="y")
    axes[0][0].legend(fontsize=8)
    fig.tight_layout()
    return fig


def _forest(diffs: list[PairedDifference], columns: list[Column]):
    import matplotlib.pyplot as plt

    metrics = list(dict.fromkeys(d.metric for d in diffs))
    pairs = list(dict.fromkeys((d.a, d.b) for d in diffs))
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 0.45 * len(pairs) + 1.6), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        col = _column(columns, metric)
        for y, pair in enumerate(pairs):
            d = next((d for d in diffs if d.metric == metric and (d.a, d.b) == pair), None)
            if d is None or d.interval is None:
                continue
            iv = d.interval
            lo, hi = (iv.low, iv.high) if iv.low is not None and iv.high is not None else (iv.mean, iv.mean)
            colour = _verdict_colour(lo, hi, col.better) if iv.low is not None else "#455a64"
            ax.plot([lo * col.scale, hi * col.scale], [y, y], color=colour, lw=2)
            ax.plot(iv.mean * col.scale, y, "o", color=colour)
        ax.axvline(0.0, color="k", lw=0.8)
        ax.set_yticks(range(len(pairs)), [f"{a} − {b}" for a, b in pairs])
        ax.invert_yaxis()
        ax.set(xlabel=f"difference in {col.heading}", title=f"{col.heading} ({'lower' if col.better == 'low' else 'higher'} is better)")
        ax.grid(alpha=0.3, axis="x")
    fig.tight_layout()
    return fig


def _verdict_colour(low: float, high: float, better: str | None) -> str:
    """Green when the interval says the first arm is better, red when worse, grey when it spans 0."""
    if (high < 0 and better == "low") or (low > 0 and better == "high"):
        return "#2e7d32"
    if (low > 0 and better == "low") or (high < 0 and better == "high"):
        return "#c62828"
    return "#455a64"


def _fscore(sweep: SweepResults):
    import matplotlib.pyplot as plt

    colours = _colours(sweep.arms)
    fig, ax = plt.subplots(figsize=(5.5, 3.8))
    for arm in sweep.arms:
        runs = [r["metrics"] for r in sweep.results if r["arm"] == arm and is_ok(r) and r.get("metrics")]
        if not runs:
            continue
        taus = sorted(float(k.split("@")[1]) for k in runs[0] if k.startswith("fscore@"))
        f = np.array([[100 * m[f"fscore@{t:g}"] for t in taus] for m in runs])
        x = [100 * t for t in taus]
        ax.plot(x, f.mean(axis=0), "o-", color=colours[arm], label=f"{arm} ({len(runs)} runs)", ms=3)
        if len(runs) > 1:
            ax.fill_between(x, f.mean(axis=0) - f.std(axis=0, ddof=1), f.mean(axis=0) + f.std(axis=0, ddof=1),
                            color=colours[arm], alpha=0.15)
    ax.set(xlabel="threshold tau (% of the GT diagonal)", ylabel="F-score (%)", title="F-score against threshold")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return fig
