"""Download, verify and unpack a public dataset into the layout recon reads (standard library only).

Each ``data/download_*.py`` script describes its archives (:class:`Archive`) and calls
:func:`main`. For every archive: download it (or take ``--from-file``), check its sha256,
then unpack it into a temporary folder beside the destination and move the folders recon
reads into place. A checksum that is known (in the script, or given with ``--sha256``) must
match, else nothing is unpacked and the exit code is 2; where no checksum is published the
computed one is printed, so that it can be checked later. Destinations that already exist
are left alone (rerunning skips finished archives).
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
import tarfile
import tempfile
import urllib.request
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

CHUNK = 1 << 20
EXIT_BAD_INPUT = 2


class FetchError(Exception):
    """A one-line reason the archive cannot be used (bad checksum, unsafe member, missing folder)."""


@dataclass(frozen=True)
class Archive:
    """One downloadable archive.

    Attributes:
        name: short name, used by ``--only`` and in messages.
        url: where it is published.
        filename: the archive's file name.
        sha256: its checksum when it is known, else None (the computed one is printed).
        moves: (path inside the archive, destination relative to ``--out``): the folders (or
            files) recon reads; a path may use one ``*`` to take every matching folder.
        inner: an archive inside the archive that holds the data (unpacked in turn), or "".
        note: how to get it when a plain download does not work (e.g. a Google Drive link).
    """

    name: str
    url: str
    filename: str
    sha256: str | None
    moves: tuple[tuple[str, str], ...]
    inner: str = ""
    note: str = ""


@dataclass
class Dataset:
    """A script's datasets: its archives, the default output folder, and what to print at the end."""

    title: str
    archives: tuple[Archive, ...]
    default_out: str
    after: list[str] = field(default_factory=list)


def sha256_of(path: Path) -> str:
    """Hex sha256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def verify(path: Path, expected: str | None) -> str:
    """The file's sha256; FetchError when ``expected`` is given and differs."""
    actual = sha256_of(path)
    if expected is not None and actual != expected.lower():
        raise FetchError(f"{path}: sha256 {actual} does not match the expected {expected.lower()}; not unpacked")
    return actual


def download(url: str, dest: Path) -> Path:
    """Stream ``url`` into ``dest`` (through ``dest.part``, renamed when complete)."""
    part = dest.with_name(dest.name + ".part")
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        with urllib.request.urlopen(url) as response, part.open("wb") as out:
            total = int(response.headers.get("Content-Length") or 0)
            done = 0
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                done += len(chunk)
                if total:
                    print(f"\r{dest.name}: {done / 2**20:.0f} / {total / 2**20:.0f} MiB", end="", file=sys.stderr)
        print(file=sys.stderr)
    except OSError as exc:
        part.unlink(missing_ok=True)
        raise FetchError(f"{url}: download failed ({type(exc).__name__}: {exc})") from None
    part.replace(dest)
    return dest


def _safe_member(name: str, archive: Path) -> PurePosixPath:
    path = PurePosixPath(name)
    if path.is_absolute() or ".." in path.parts:
        raise FetchError(f"{archive}: member {name!r} would be written outside the folder; not unpacked")
    return path


def extract(archive: Path, into: Path) -> None:
    """Unpack a .zip or .tar(.gz/.bz2/.xz) into ``into``, refusing members that escape it or links."""
    with archive.open("rb") as f:
        magic = f.read(4)
    if magic in (b"PK\x03\x04", b"PK\x05\x06"):  # not zipfile.is_zipfile: a tar ending in a .npz passes it
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                _safe_member(member, archive)
            zf.extractall(into)
        return
    if not tarfile.is_tarfile(archive):
        raise FetchError(f"{archive}: neither a zip nor a tar archive (an HTML page instead of the file?)")
    with tarfile.open(archive) as tf:
        members = tf.getmembers()
        for member in members:
            _safe_member(member.name, archive)
            if member.issym() or member.islnk() or member.isdev():
                raise FetchError(f"{archive}: member {member.name!r} is a link or a device; not unpacked")
        tf.extractall(into, members=members)


def _sources(root: Path, pattern: str) -> list[Path]:
    """What ``pattern`` names in the unpacked archive (a ``*`` matches folders only), at its top
    or under one wrapping folder (archives made from a parent folder)."""
    for base in (root, *sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("__MACOSX"))):
        matches = [m for m in sorted(base.glob(pattern)) if m.is_dir()] if "*" in pattern else [base / pattern]
        found = [m for m in matches if m.exists()]
        if found:
            return found
    raise FetchError(f"the archive holds no {pattern!r} (has: {', '.join(p.name for p in root.iterdir())})")


def _destination(out: Path, source: Path, pattern: str, target: str) -> Path:
    """``target`` with ``*`` replaced by the part of ``source`` the pattern's ``*`` matched."""
    if "*" not in pattern:
        return out / target
    return out / target.replace("*", source.name)


def unpack(archive: Path, spec: Archive, out: Path) -> list[Path]:
    """Extract ``archive`` beside ``out`` and move ``spec.moves`` into ``out``; return what was placed."""
    out.mkdir(parents=True, exist_ok=True)
    placed = []
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", dir=out) as tmp:
        root = Path(tmp) / "outer"
        extract(archive, root)
        if spec.inner:
            nested = _sources(root, spec.inner)[0]
            root = Path(tmp) / "inner"
            extract(nested, root)
        plan = [(src, _destination(out, src, pattern, target)) for pattern, target in spec.moves
                for src in _sources(root, pattern)]  # every source is checked before anything moves
        for src, dest in plan:
            if dest.exists():
                print(f"{dest} exists; left as it is", file=sys.stderr)
                continue
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(src), dest)
            placed.append(dest)
    return placed


def fetch(spec: Archive, out: Path, from_file: Path | None, sha256: str | None, downloads: Path) -> list[Path]:
    """Get, verify and unpack one archive; return the folders placed."""
    if from_file is not None:
        if not from_file.is_file():
            raise FetchError(f"{from_file}: file does not exist")
        archive = from_file
    else:
        archive = downloads / spec.filename
        if not archive.is_file():
            print(f"downloading {spec.url}", file=sys.stderr)
            download(spec.url, archive)
    expected = sha256 or spec.sha256
    actual = verify(archive, expected)
    if expected is None:
        print(f"{archive.name}: sha256 {actual} (no published checksum to compare with; keep it to check later "
              "downloads with --sha256)", file=sys.stderr)
    else:
        print(f"{archive.name}: sha256 verified", file=sys.stderr)
    return unpack(archive, spec, out)


def parse_args(dataset: Dataset, argv: Sequence[str] | None) -> argparse.Namespace:
    names = [a.name for a in dataset.archives]
    epilog = "\n".join(f"  {a.name}: {a.url}" + (f"\n    {a.note}" if a.note else "")
                       for a in dataset.archives)
    parser = argparse.ArgumentParser(description=f"Download {dataset.title} and unpack it into the layout recon reads.",
                                     epilog="archives:\n" + epilog, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / dataset.default_out,
                        help=f"destination folder (default data/{dataset.default_out})")
    parser.add_argument("--only", choices=names, default=None if len(names) > 1 else names[0],
                        help="one archive of several" if len(names) > 1 else argparse.SUPPRESS)
    parser.add_argument("--from-file", type=Path, default=None,
                        help="an archive downloaded already (e.g. in a browser): verify and unpack it, no download")
    parser.add_argument("--sha256", default=None, help="the archive's expected sha256 (refuse to unpack on mismatch)")
    parser.add_argument("--downloads", type=Path, default=None,
                        help="where downloaded archives are kept (default: --out/.downloads)")
    args = parser.parse_args(argv)
    if args.from_file is not None and args.only is None:
        parser.error("--from-file needs --only to say which archive it is")
    return args


def main(dataset: Dataset, argv: Sequence[str] | None = None) -> int:
    """Command line of a download script; returns the exit code (2: bad input, bad checksum)."""
    args = parse_args(dataset, argv)
    chosen = [a for a in dataset.archives if args.only in (None, a.name)]
    downloads = args.downloads or args.out / ".downloads"
    try:
        for spec in chosen:
            for path in fetch(spec, args.out, args.from_file, args.sha256, downloads):
                print(f"wrote {path}")
    except FetchError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return EXIT_BAD_INPUT
    for line in dataset.after:
        print(line)
    return 0
