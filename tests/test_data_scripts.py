"""data/: the download scripts' checksum and unpack logic on archives made here (no network), and
that what they unpack is a capture recon reads."""

from __future__ import annotations

import hashlib
import io
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from conftest import REPO_ROOT
from recon.datasets import load_scene

DATA = REPO_ROOT / "data"
sys.path.insert(0, str(DATA))
import fetch  # noqa: E402  (data/fetch.py: the scripts' shared helper)


def run_script(name: str, *args: str | Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(DATA / name), *map(str, args)], capture_output=True, text=True,
                          timeout=300)


def _zip_tree(src: Path, archive: Path, prefix: str) -> Path:
    """Zip every file under ``src`` as ``prefix/<relative path>`` (plus the clutter real archives carry)."""
    with zipfile.ZipFile(archive, "w") as zf:
        for path in sorted(src.rglob("*")):
            if path.is_file():
                zf.write(path, f"{prefix}/{path.relative_to(src).as_posix()}")
        zf.writestr("__MACOSX/._junk", b"")
    return archive


def _tar_tree(src: Path, archive: Path, prefix: str) -> Path:
    with tarfile.open(archive, "w") as tf:
        tf.add(src, arcname=prefix)
    return archive


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_sha256_is_computed_in_chunks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = bytes(range(256)) * 5000
    path = tmp_path / "blob"
    path.write_bytes(data)
    monkeypatch.setattr(fetch, "CHUNK", 1000)  # many chunks, a short last one
    assert fetch.sha256_of(path) == hashlib.sha256(data).hexdigest()
    assert fetch.verify(path, hashlib.sha256(data).hexdigest().upper()) == hashlib.sha256(data).hexdigest()
    with pytest.raises(fetch.FetchError, match="does not match"):
        fetch.verify(path, "0" * 64)


def test_dtu_archive_is_verified_and_unpacked_to_a_dtu_capture(tiny_scene_dir: Path, tmp_path: Path) -> None:
    archive = _zip_tree(tiny_scene_dir, tmp_path / "DTU.zip", "DTU/scan24")
    out = tmp_path / "data"
    wrong = run_script("download_dtu.py", "--only", "idr", "--from-file", archive, "--out", out, "--sha256", "ab" * 32)
    assert wrong.returncode == 2 and "does not match" in wrong.stderr
    assert not out.exists()  # nothing written
    result = run_script("download_dtu.py", "--only", "idr", "--from-file", archive, "--out", out, "--sha256", _sha(archive))
    assert result.returncode == 0, result.stderr
    assert "sha256 verified" in result.stderr and f"wrote {out / 'scan24'}" in result.stdout
    assert sorted(p.name for p in out.iterdir()) == ["scan24"]  # no temporary folder left behind
    scene = load_scene(out / "scan24")
    assert scene.format == "dtu" and scene.n_images == 8
    again = run_script("download_dtu.py", "--only", "idr", "--from-file", archive, "--out", out)
    assert again.returncode == 0 and "exists; left as it is" in again.stderr
    assert f"sha256 {_sha(archive)} (no published checksum" in again.stderr  # unknown upstream: printed


def test_nested_neus_archive(tiny_scene_dir: Path, tmp_path: Path) -> None:
    inner = _zip_tree(tiny_scene_dir, tmp_path / "data_DTU.zip", "dtu_scan24")
    outer = tmp_path / "folder.zip"
    with zipfile.ZipFile(outer, "w") as zf:
        zf.write(inner, "public_data/data_DTU.zip")
    result = run_script("download_dtu.py", "--only", "neus", "--from-file", outer, "--out", tmp_path / "out")
    assert result.returncode == 0, result.stderr
    assert load_scene(tmp_path / "out" / "dtu_scan24").n_images == 8


def test_monosdf_tar_unpacks_every_scan(tiny_scene_dir: Path, tmp_path: Path) -> None:
    scans = tmp_path / "DTU"
    for scan in ("scan24", "scan37"):
        (scans / scan).mkdir(parents=True)
        shutil.copy(tiny_scene_dir / "cameras_sphere.npz", scans / scan / "cameras.npz")
        for i, image in enumerate(sorted((tiny_scene_dir / "image").iterdir())):
            shutil.copy(image, scans / scan / f"{i:06d}_rgb.png")
    archive = _tar_tree(scans, tmp_path / "DTU.tar", "DTU")
    out = tmp_path / "out"
    result = run_script("download_monosdf.py", "--only", "dtu", "--from-file", archive, "--out", out)
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in (out / "dtu").iterdir()) == ["scan24", "scan37"]
    assert load_scene(out / "dtu" / "scan37").format == "monosdf"


def test_dtu_eval_keeps_the_evaluation_folders(tmp_path: Path) -> None:
    sample = tmp_path / "sample.zip"
    with zipfile.ZipFile(sample, "w") as zf:
        zf.writestr("SampleSet/MVS Data/ObsMask/ObsMask24_10.mat", b"mask")
        zf.writestr("SampleSet/MVS Data/ObsMask/Plane24.mat", b"plane")
        zf.writestr("SampleSet/MVS Data/Points/furu/furu024_l3_surf_11_trim_8.ply", b"sample reconstruction")
    points = tmp_path / "points.zip"
    with zipfile.ZipFile(points, "w") as zf:
        zf.writestr("Points/stl/stl024_total.ply", b"ply")
    out = tmp_path / "eval"
    assert run_script("download_dtu_eval.py", "--only", "masks", "--from-file", sample, "--out", out).returncode == 0
    assert run_script("download_dtu_eval.py", "--only", "points", "--from-file", points, "--out", out).returncode == 0
    found = sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file())
    assert found == ["ObsMask/ObsMask24_10.mat", "ObsMask/Plane24.mat", "Points/stl/stl024_total.ply"]


def test_unsafe_or_wrong_archives_are_refused(tmp_path: Path) -> None:
    evil = tmp_path / "evil.tar"
    with tarfile.open(evil, "w") as tf:
        info = tarfile.TarInfo("../outside.txt")
        info.size = 3
        tf.addfile(info, io.BytesIO(b"bad"))
    result = run_script("download_monosdf.py", "--only", "dtu", "--from-file", evil, "--out", tmp_path / "out")
    assert result.returncode == 2 and "outside the folder" in result.stderr
    assert not (tmp_path / "outside.txt").exists()
    page = tmp_path / "nerf_synthetic.zip"
    page.write_text("<html>Google Drive can't scan this file for viruses</html>")
    result = run_script("download_nerf_synthetic.py", "--from-file", page, "--out", tmp_path / "ns")
    assert result.returncode == 2 and "neither a zip nor a tar" in result.stderr
    empty = tmp_path / "empty.zip"
    with zipfile.ZipFile(empty, "w") as zf:
        zf.writestr("unrelated/readme.txt", b"")
    result = run_script("download_monosdf.py", "--only", "replica", "--from-file", empty, "--out", tmp_path / "r")
    assert result.returncode == 2 and "holds no 'Replica/scan*'" in result.stderr, result.stderr
    result = run_script("download_monosdf.py", "--from-file", empty)
    assert result.returncode == 2 and "--from-file needs --only" in result.stderr


def test_download_goes_through_a_part_file(tmp_path: Path) -> None:
    """The download path itself, on a file:// URL (no network here)."""
    source = tmp_path / "remote.bin"
    source.write_bytes(b"x" * 3_000_000)
    dest = fetch.download(source.as_uri(), tmp_path / "downloads" / "archive.bin")
    assert dest.read_bytes() == source.read_bytes() and not list(dest.parent.glob("*.part"))
    with pytest.raises(fetch.FetchError, match="download failed"):
        fetch.download((tmp_path / "missing.bin").as_uri(), tmp_path / "downloads" / "x.bin")
    assert not list((tmp_path / "downloads").glob("*.part"))


def test_every_script_has_help_with_its_urls() -> None:
    for script in sorted(DATA.glob("download_*.py")):
        result = run_script(script.name, "--help")
        assert result.returncode == 0, result.stderr
        assert "--from-file" in result.stdout and "http" in result.stdout
