"""The comparison report: ``DIR/report.html`` (self-contained) and ``DIR/report.md`` (figures beside it).

Both hold the same content: the table of every arm (mean ± std over seeds, the
best value per column in bold; failed arms marked, with their errors below), normal-shaded renders of every mesh and of the
ground truth from the same viewpoints, the meshes coloured by their distance to
the ground truth, close-ups of the ground truth's most detailed region (the same
camera for every arm), F-score against threshold and loss / PSNR against time,
and links to every mesh. The figures are PNGs in ``DIR/report_files/``; the HTML
embeds them as base64 so that it opens from ``file://`` with nothing beside it.
The documents are made of ``Section``s (``write_documents``), which the report across the scenes of
a sweep (``recon.sweep_report``) uses too.
"""

from __future__ import annotations

import base64
import html
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import trimesh

from recon.compare import is_ok, load_results, summarise
from recon.errors import InputError
from recon.io import atomic_path, write_text_atomic
from recon.mesh import load_mesh
from recon.optional import require
from recon.run import RunDir, arm_run_dir

FILES = "report_files"
RENDER_SIZE = 320
VIEW_AZIMUTHS = (35.0, 155.0, 275.0)
VIEW_ELEVATION = 25.0
DISTANCE_VMAX_REL = 0.01
"""Distance colour maps saturate at this fraction of the GT bounding-box diagonal."""
CLOSEUP_HALF_WIDTH_REL = 0.08
DISTANCE_CMAP = "turbo"


@dataclass
class Column:
    """One column of the table: a result key, its heading, how to print it, and which way is better."""

    key: str
    heading: str
    fmt: str
    better: str | None  # "low", "high" or None (no highlight)
    scale: float = 1.0


GT_COLUMNS = [
    Column("chamfer_l1", "Chamfer-L1", "{:.4g}", "low"),
    Column("chamfer_l1_rel", "Chamfer % diag", "{:.3f}", "low", 100.0),
    Column("fscore@0.005", "F@0.5%", "{:.1f}", "high", 100.0),
    Column("fscore@0.01", "F@1%", "{:.1f}", "high", 100.0),
    Column("fscore@0.02", "F@2%", "{:.1f}", "high", 100.0),
    Column("normal_consistency", "normal cons.", "{:.3f}", "high"),
    Column("detail_normal_consistency", "detail normal cons.", "{:.3f}", "high"),
    Column("detail_chamfer_l1_rel", "detail Chamfer % diag", "{:.3f}", "low", 100.0),
]
"""The mesh metrics' columns (when the scene has a ground truth)."""


def _columns(settings: dict[str, Any], results: list[dict[str, Any]]) -> list[Column]:
    has_gt = any(r.get("metrics") for r in results)
    holdout = any(r.get("holdout_psnr") is not None for r in results)
    cols = [
        Column("n_params_encoding", "encoding params", "{:,.0f}", None),
        Column("n_params_total", "total params", "{:,.0f}", None),
        Column("fit_seconds", "fit time (s)", "{:.0f}", "low"),
        Column("holdout_psnr" if holdout else "train_psnr", "held-out PSNR" if holdout else "train PSNR",
               "{:.2f}", "high"),
    ]
    if holdout and any(r.get("holdout_ssim") is not None for r in results):
        cols.append(Column("holdout_ssim", "held-out SSIM", "{:.3f}", "high"))
    if holdout and any(r.get("holdout_mask_iou") is not None for r in results):
        cols.append(Column("holdout_mask_iou", "mask IoU", "{:.3f}", "high"))
    if has_gt:
        cols += GT_COLUMNS
    return cols


def cell_text(stat: tuple[float, float] | None, col: Column, n_seeds: int) -> str:
    if stat is None:
        return "-"
    mean, std = stat[0] * col.scale, stat[1] * col.scale
    text = col.fmt.format(mean)
    return f"{text} ± {col.fmt.format(std)}" if n_seeds > 1 and col.better else text


def best_arms(summary: dict[str, dict[str, Any]], col: Column) -> set[str]:
    """The arms holding the column's best value (none when all are equal or it is not ranked)."""
    values = {arm: s[col.key][0] for arm, s in summary.items() if s[col.key] is not None}
    if col.better is None or len(set(values.values())) < 2:
        return set()
    best = min(values.values()) if col.better == "low" else max(values.values())
    return {arm for arm, v in values.items() if v == best}


def table_rows(settings: dict[str, Any], results: list[dict[str, Any]]) -> tuple[list[str], list[list[tuple[str, bool]]]]:
    """Headings and rows of (text, is_best) cells: one row per arm, over its finished seeds; an arm
    none of whose seeds finished reads "failed"; a "finished" column when some seed failed."""
    ok = [r for r in results if is_ok(r)]
    cols = _columns(settings, ok)
    summary = summarise(ok, [c.key for c in cols])
    best = {c.key: best_arms(summary, c) for c in cols}
    arms = list(dict.fromkeys(r["arm"] for r in results))
    some_failed = len(ok) < len(results)
    rows = []
    for arm in arms:
        n_ok, n_all = sum(r["arm"] == arm for r in ok), sum(r["arm"] == arm for r in results)
        row = [(arm, False)] + ([(f"{n_ok}/{n_all}", False)] if some_failed else [])
        if arm in summary:
            row += [(cell_text(summary[arm][c.key], c, n_ok), arm in best[c.key]) for c in cols]
        else:
            row += [("failed", False)] * len(cols)
        rows.append(row)
    return ["arm"] + (["finished"] if some_failed else []) + [c.heading for c in cols], rows


# ----------------------------------------------------------------------------- figures


def _save_png(path: Path, image: np.ndarray) -> None:
    import imageio.v3 as iio

    with atomic_path(path) as tmp:
        iio.imwrite(tmp, image)


def save_figure(fig, path: Path) -> None:
    import matplotlib.pyplot as plt

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, bbox_inches="tight")
    plt.close(fig)


def detail_spots(gt: trimesh.Trimesh, count: int = 2, n_points: int = 60_000, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Centres ``(3,)`` and mean outward normals ``(3,)`` of the GT's ``count`` most detailed neighbourhoods.

    A sample's score is its :func:`recon.metrics.surface_variation` at the detail
    measure's scale; a spot is a candidate sample whose ball of radius
    ``CLOSEUP_HALF_WIDTH_REL / 2`` x diagonal has the largest mean score, each
    spot at least two such radii from the ones before it.
    """
    o3d = require("open3d")

    from recon.metrics import DETAIL_RADIUS_REL, sample_surface, surface_variation

    diag = float(np.linalg.norm(gt.extents))
    points, normals = sample_surface(gt, n_points, seed)
    score = surface_variation(points, DETAIL_RADIUS_REL * diag)
    radius = 0.5 * CLOSEUP_HALF_WIDTH_REL * diag
    nns = o3d.core.nns.NearestNeighborSearch(o3d.core.Tensor(points))
    nns.hybrid_index(radius)
    candidates = np.random.default_rng(seed).choice(len(points), size=min(3000, len(points)), replace=False)
    idx = nns.hybrid_search(o3d.core.Tensor(points[candidates]), radius, 400)[0].numpy().astype(np.int64)
    valid = idx >= 0
    local = (score[np.where(valid, idx, 0)] * valid).sum(1) / np.maximum(valid.sum(1), 1)
    spots: list[tuple[np.ndarray, np.ndarray]] = []
    for best in np.argsort(-local):
        centre = points[candidates[best]]
        if all(np.linalg.norm(centre - c) > 2 * radius for c, _ in spots):
            normal = normals[idx[best][valid[best]]].mean(axis=0)
            spots.append((centre, normal / max(np.linalg.norm(normal), 1e-12)))
        if len(spots) == count:
            break
    return spots


def _grid_figure(rows: list[tuple[str, list[np.ndarray]]], col_titles: list[str], colorbar: tuple | None = None):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    n_rows, n_cols = len(rows), len(rows[0][1])
    fig, axes = plt.subplots(n_rows, n_cols, figsize=(2.6 * n_cols + (0.8 if colorbar else 0), 2.6 * n_rows),
                             squeeze=False)
    for r, (label, images) in enumerate(rows):
        for c, image in enumerate(images):
            ax = axes[r][c]
            ax.imshow(image)
            ax.set_xticks([])
            ax.set_yticks([])
            for spine in ax.spines.values():
                spine.set_visible(False)
            if c == 0:
                ax.set_ylabel(label, fontsize=12)
            if r == 0 and col_titles:
                ax.set_title(col_titles[c], fontsize=10)
    if colorbar is not None:
        cmap, vmax, label = colorbar
        mappable = plt.cm.ScalarMappable(norm=matplotlib.colors.Normalize(0.0, vmax), cmap=cmap)
        fig.colorbar(mappable, ax=axes, fraction=0.025, pad=0.02, label=label)
    else:
        fig.tight_layout()
    return fig


@dataclass
class Arm:
    """One mesh shown in the report."""

    label: str
    mesh: trimesh.Trimesh
    path: Path


def _arms(out_dir: Path, settings: dict[str, Any], ok: list[dict[str, Any]]) -> list[Arm]:
    """The lowest finished seed of every arm (seed 0 unless it failed)."""
    arms = []
    for arm in settings["arms"]:
        seeds = sorted(r["seed"] for r in ok if r["arm"] == arm)
        path = RunDir(arm_run_dir(out_dir, arm, seeds[0])).mesh if seeds else None
        if path is not None and path.is_file():
            arms.append(Arm(arm if seeds[0] == 0 else f"{arm} (seed {seeds[0]})", load_mesh(path), path))
    return arms


def render_figures(out_dir: Path, arms: list[Arm], gt: trimesh.Trimesh | None, up: np.ndarray) -> dict[str, str]:
    """Write the mesh pictures into ``out_dir/report_files``; return {figure name: file name}."""
    from recon.mesh_pictures import closeup_camera, distance_image, normal_image, orbit_camera

    files = out_dir / FILES
    reference = gt if gt is not None else arms[0].mesh
    lo, hi = reference.bounds
    centre, diag = (lo + hi) / 2.0, float(np.linalg.norm(hi - lo))
    radius = float(np.linalg.norm(np.asarray(reference.vertices) - centre, axis=1).max())  # bounding sphere
    cams = [orbit_camera(centre, radius, az, VIEW_ELEVATION, RENDER_SIZE, up) for az in VIEW_AZIMUTHS]
    titles = [f"view {i + 1}" for i in range(len(cams))]
    shown = ([Arm("ground truth", gt, Path())] if gt is not None else []) + arms
    out = {}
    rows = [(a.label, [normal_image(a.mesh, cam) for cam in cams]) for a in shown]
    save_figure(_grid_figure(rows, titles), files / "normals.png")
    out["normals"] = "normals.png"
    if gt is None:
        return out
    vmax = DISTANCE_VMAX_REL * diag
    cbar = (DISTANCE_CMAP, vmax, f"distance to GT (world units), clipped at {vmax:.3g}")
    rows = [(a.label, [distance_image(a.mesh, gt, cam, vmax, DISTANCE_CMAP) for cam in cams]) for a in arms]
    save_figure(_grid_figure(rows, titles, cbar), files / "distance.png")
    out["distance"] = "distance.png"
    rows = []
    for number, (point, normal) in enumerate(detail_spots(gt), start=1):
        cam = closeup_camera(point, normal, CLOSEUP_HALF_WIDTH_REL * diag, RENDER_SIZE, up)
        closeups = [normal_image(a.mesh, cam) for a in shown]
        blank = np.full_like(closeups[0], 255)
        rows += [(f"spot {number}: normals", closeups),
                 (f"spot {number}: distance", [blank] + [distance_image(a.mesh, gt, cam, vmax, DISTANCE_CMAP) for a in arms])]
    save_figure(_grid_figure(rows, [a.label for a in shown], cbar), files / "closeup.png")
    out["closeup"] = "closeup.png"
    return out


def plot_figures(out_dir: Path, results: list[dict[str, Any]]) -> dict[str, str]:
    """F-score against threshold and loss / PSNR against time; return {figure name: file name}."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files, out = out_dir / FILES, {}
    with_metrics = [r for r in results if r.get("metrics")]
    colours = {arm: f"C{i}" for i, arm in enumerate(dict.fromkeys(r["arm"] for r in results))}
    if with_metrics:
        fig, ax = plt.subplots(figsize=(5.5, 3.8))
        for r in with_metrics:
            taus = sorted(float(k.split("@")[1]) for k in r["metrics"] if k.startswith("fscore@"))
            ax.plot([100 * t for t in taus], [100 * r["metrics"][f"fscore@{t:g}"] for t in taus], "o-",
                    color=colours[r["arm"]], label=_run_label(r), ms=3, alpha=0.9)
        ax.set(xlabel="threshold tau (% of the GT diagonal)", ylabel="F-score (%)", title="F-score against threshold")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
        save_figure(fig, files / "fscore.png")
        out["fscore"] = "fscore.png"
    fig, (ax_loss, ax_psnr) = plt.subplots(1, 2, figsize=(10, 3.8))
    for r in results:
        log = RunDir(arm_run_dir(out_dir, r["arm"], r["seed"])).training_log()
        if not log:
            continue
        t = [x["elapsed_s"] for x in log]
        ax_loss.plot(t, [x["loss"] for x in log], color=colours[r["arm"]], label=_run_label(r), alpha=0.85)
        ax_psnr.plot(t, [x["psnr"] for x in log], color=colours[r["arm"]], label=_run_label(r), alpha=0.85)
    ax_loss.set(xlabel="fit time (s)", ylabel="loss", yscale="log", title="training loss")
    ax_psnr.set(xlabel="fit time (s)", ylabel="PSNR (dB)", title="training PSNR (batch)")
    for ax in (ax_loss, ax_psnr):
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    save_figure(fig, files / "training.png")
    out["training"] = "training.png"
    return out


def _run_label(result: dict[str, Any]) -> str:
    return f"{result['arm']} (seed {result['seed']})" if result["seed"] else result["arm"]


# ----------------------------------------------------------------------------- documents


CAPTIONS = {
    "normals": "Normal-shaded renders of the ground truth and every mesh (seed 0), same viewpoints.",
    "distance": "Every mesh coloured by the distance of its surface to the ground truth.",
    "closeup": "Close-ups of the ground truth's two most curved neighbourhoods (where the detail measure looks), "
               "the same cameras for every mesh.",
    "fscore": "F-score against the distance threshold.",
    "training": "Training loss and PSNR against fit time (from each run's metrics.jsonl).",
}
TITLES = {"normals": "Renders", "distance": "Distance to the ground truth", "closeup": "Close-ups of the finest detail",
          "fscore": "F-score", "training": "Training curves"}


@dataclass
class Table:
    """A table of (text, highlighted) cells; a cell "mean ± std" shows the std smaller, below."""

    headings: list[str]
    rows: list[list[tuple[str, bool]]]
    note: str = ""


@dataclass
class Section:
    """A part of a report: a heading, paragraphs, a table, a figure (a file in ``report_files``), links."""

    title: str
    paragraphs: list[str] = field(default_factory=list)
    table: Table | None = None
    figure: str | None = None
    caption: str = ""
    links: list[tuple[str, str]] = field(default_factory=list)  # (label, path relative to the report)
    level: int = 2


def write_markdown(path: Path, title: str, notes: list[str], sections: list[Section]) -> None:
    """The report as Markdown, its figures linked from ``report_files/``."""
    lines = [f"# {title}", ""] + [f"- {n}" for n in notes] + [""]
    for sec in sections:
        if sec.title:
            lines += ["#" * sec.level + f" {sec.title}", ""]
        for paragraph in sec.paragraphs:
            lines += [paragraph, ""]
        if sec.table is not None:
            lines.append("| " + " | ".join(sec.table.headings) + " |")
            lines.append("|" + "---|" * len(sec.table.headings))
            for row in sec.table.rows:
                lines.append("| " + " | ".join(f"**{t}**" if best else t for t, best in row) + " |")
            lines += ["", sec.table.note, ""] if sec.table.note else [""]
        if sec.figure is not None:
            lines += [sec.caption, "", f"![{Path(sec.figure).stem}]({FILES}/{sec.figure})", ""]
        lines += [f"- [{label}]({target})" for label, target in sec.links] + ([""] if sec.links else [])
    write_text_atomic(path, "\n".join(lines).rstrip("\n") + "\n")


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Helvetica,Arial,sans-serif;margin:24px auto;max-width:1280px;
color:#1d232a;padding:0 16px}
h1{font-size:26px;margin-bottom:4px}h2{font-size:19px;margin-top:32px;border-bottom:1px solid #dde1e6;padding-bottom:4px}
h3{font-size:16px;margin-top:22px}
ul.notes{color:#4a5560;font-size:14px}p.notes{color:#4a5560;font-size:13px}
table{border-collapse:collapse;font-size:14px;margin:12px 0}
th,td{padding:5px 8px;border-bottom:1px solid #e3e7eb;text-align:right;white-space:nowrap}
th{background:#f3f5f7;font-weight:600;white-space:normal;vertical-align:bottom;max-width:90px}td:first-child,th:first-child{text-align:left;font-weight:600}
td.best{background:#d9f2df;font-weight:700}td.failed{background:#fbe3e1;color:#8a1c12}
span.sd{font-size:11px;color:#5b6670;font-weight:400}
div.scroll{overflow-x:auto}
figure{margin:12px 0}figure img{max-width:100%;border:1px solid #e3e7eb}
figcaption{color:#4a5560;font-size:13px;margin-top:4px}
"""


def _html_cell(text: str) -> str:
    """A table cell, the standard deviation (or the interval) on a second, smaller line."""
    if " ± " not in text:
        return html.escape(text)
    mean, std = text.split(" ± ", 1)
    return f"{html.escape(mean)}<br><span class='sd'>± {html.escape(std)}</span>"


def _html_class(text: str, best: bool) -> str:
    if best:
        return " class=best"
    return " class=failed" if text.startswith("failed") else ""


def write_html(path: Path, title: str, notes: list[str], sections: list[Section], files_dir: Path) -> None:
    """The report as one self-contained HTML page (figures embedded as base64)."""
    esc = html.escape
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{esc(title)}</title>",
             f"<style>{STYLE}</style></head><body>", f"<h1>{esc(title)}</h1>", "<ul class='notes'>"]
    parts += [f"<li>{esc(n)}</li>" for n in notes] + ["</ul>"]
    for sec in sections:
        if sec.title:
            parts.append(f"<h{sec.level}>{esc(sec.title)}</h{sec.level}>")
        parts += [f"<p>{esc(p)}</p>" for p in sec.paragraphs]
        if sec.table is not None:
            parts.append("<div class='scroll'><table><thead><tr>")
            parts += [f"<th>{esc(h)}</th>" for h in sec.table.headings] + ["</tr></thead><tbody>"]
            for row in sec.table.rows:
                parts.append("<tr>" + "".join(f"<td{_html_class(t, best)}>{_html_cell(t)}</td>" for t, best in row)
                             + "</tr>")
            parts.append("</tbody></table></div>")
            if sec.table.note:
                parts.append(f"<p class='notes'>{esc(sec.table.note)}</p>")
        if sec.figure is not None:
            encoded = base64.b64encode((files_dir / sec.figure).read_bytes()).decode("ascii")
            parts.append(f"<figure><img alt='{esc(Path(sec.figure).stem)}' src='data:image/png;base64,{encoded}'>"
                         f"<figcaption>{esc(sec.caption)}</figcaption></figure>")
        if sec.links:
            parts.append("<ul>" + "".join(f"<li><a href='{esc(t)}'>{esc(label)}</a></li>" for label, t in sec.links)
                         + "</ul>")
    parts.append("</body></html>")
    write_text_atomic(path, "\n".join(parts) + "\n")


def write_documents(out_dir: Path, title: str, notes: list[str], sections: list[Section]) -> tuple[Path, Path]:
    """``out_dir/report.html`` and ``out_dir/report.md``: the same content; return their paths."""
    html_path, md_path = out_dir / "report.html", out_dir / "report.md"
    write_markdown(md_path, title, notes, sections)
    write_html(html_path, title, notes, sections, out_dir / FILES)
    return html_path, md_path


def relative(path: Path, out_dir: Path) -> str:
    """``path`` as a link from a document in ``out_dir``."""
    return Path(os.path.relpath(path.resolve(), out_dir.resolve())).as_posix()


def _notes(settings: dict[str, Any]) -> list[str]:
    cfg = settings["config"]
    notes = [
        f"Scene: {settings['data_dir']}; {settings['seeds']} seed(s); "
        f"{cfg['train']['iters']} steps of {cfg['train']['batch_rays']} rays, sampler {cfg['render']['sampler']}; "
        f"meshes at {settings['resolution']}^3.",
        "Mesh metrics on samples culled to what the training cameras see." if settings["cull"]
        else "Mesh metrics on the whole surfaces (no culling).",
        DETAIL_NOTE,
    ]
    if settings["seeds"] > 1:
        notes.append("Values are mean ± standard deviation over seeds.")
    return notes


DETAIL_NOTE = ("Detail normal consistency / Chamfer: the same measures restricted to the ground truth's detail region "
               "(the surface within 1% of its diagonal of its most curved tenth, curvature at that scale): normal "
               "consistency there falls when bumps, grooves and creases are smoothed away, and barely moves under a "
               "small global offset.")


def failures_table(results: list[dict[str, Any]], with_scene: bool = False) -> Table | None:
    """The failed arms, each with its error (None when none failed)."""
    failed = [r for r in results if not is_ok(r)]
    if not failed:
        return None
    headings = (["scene"] if with_scene else []) + ["arm", "seed", "error type", "error"]
    rows = [[(t, False) for t in ([r["scene"]] if with_scene else []) + [r["arm"], str(r["seed"]), r["error_type"],
                                                                        r["error"]]] for r in failed]
    return Table(headings, rows, "Rerun the same command to retry them; each run folder's error.txt holds the traceback.")


def build_report(out_dir: str | Path, figures: bool = True, pictures: bool = True) -> tuple[Path, Path]:
    """Write ``report.html`` and ``report.md`` for the comparison in ``out_dir``; return their paths.
    ``figures``: the plots and mesh pictures; ``pictures``: the mesh pictures (the slow part)."""
    out_dir = Path(out_dir)
    settings, results = load_results(out_dir)
    if not results:
        raise InputError(out_dir, "no finished arm yet: nothing to report")
    ok = [r for r in results if is_ok(r)]
    headings, rows = table_rows(settings, results)
    gt_path = Path(settings["gt_mesh"]) if settings.get("gt_mesh") else None
    gt = load_mesh(gt_path) if gt_path is not None and gt_path.is_file() else None
    sections = [Section("", table=Table(headings, rows, "Best value per column in bold."))]
    failures = failures_table(results)
    if failures is not None:
        sections.append(Section("Failed arms", table=failures))
    shown = {}
    arms = _arms(out_dir, settings, ok)
    if figures and pictures and arms:
        shown.update(render_figures(out_dir, arms, gt, np.asarray(settings.get("up", (0.0, 0.0, 1.0)))))
    if figures and ok:
        shown.update(plot_figures(out_dir, ok))
    sections += [Section(TITLES[name], figure=file, caption=CAPTIONS[name]) for name, file in shown.items()]
    meshes = [(f"{r['arm']} seed {r['seed']}", relative(RunDir(arm_run_dir(out_dir, r["arm"], r["seed"])).mesh, out_dir))
              for r in ok]
    if gt is not None and gt_path is not None:
        meshes.append(("ground truth", relative(gt_path, out_dir)))
    sections.append(Section("Meshes", links=meshes))
    title = f"recon compare: {settings.get('name') or Path(settings['data_dir']).name}"
    return write_documents(out_dir, title, _notes(settings), sections)
