"""A folder of images as in-memory uint8 tensors, decoded once on every core and cached on disk.

Layouts: ``PATH/<class>/*`` (cifarlab holds out 10% of each class, at least one image, as the test set: drawn
with a fixed seed from the sorted file list, so every run on the folder shares one test set), or
``PATH/train/<class>/*`` with ``PATH/test/<class>/*`` (preferred) or ``PATH/val/<class>/*`` as the held-out set.
Class names are the sorted folder names, or readable names from ``PATH/classes.txt`` / ``PATH/classes.json``.
Names starting with a dot (hidden files, ``.cifarlab-*``) are ignored; so are files whose extension is not an
accepted image format's. Symbolic links that lead out of the dataset folder are not followed, and FIFOs, sockets
and devices are never opened: each is left out and counted in one line. Every image is decoded by
:mod:`cifarlab.data.images` (shorter side to S, centre crop, RGB), in worker processes; a worker that dies (the OOM
killer) stops the load with one line, never a hang.

The decoded tensor is cached under ``$CIFARLAB_CACHE_DIR`` (else ``$XDG_CACHE_HOME/cifarlab``, else
``~/.cache/cifarlab``) as a ``.npy`` array and a small JSON (no pickle), keyed by the file list (names, sizes,
modification times), each file's content (a SHA-256 of its first and last 64 KiB, so two folders with the same
names, sizes and times but other pixels never share an entry), the size and the decoder's version. An entry is
used only if its ``.npy`` header (read first) holds the expected shape and fits the file; temporary files that a
killed writer left are removed at the next load. The dataset folder itself is only read.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import signal
import stat
import time
from concurrent.futures import ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.base.cores import usable_cores
from cifarlab.base.errors import DataError, escape
from cifarlab.base.progress import log, progress
from cifarlab.base.records import loads_json
from cifarlab.data.cifar10 import ImageData
from cifarlab.data.folder_cache import (
    CACHE_FORMAT,
    CACHE_SUBDIR,
    cache_dir,
    cache_paths,
    content_digest,
    read_cache,
    remove_stale_temporaries,
    write_cache,
)
from cifarlab.data.images import DECODER_VERSION, check_fits, decode_file, image_suffixes

CLASSES_TXT, CLASSES_JSON = "classes.txt", "classes.json"
HELD_OUT = ("test", "val")  # held-out folders beside train/, in order of preference
TEST_SHARE = 0.1  # of each class, held out as the test set when the folder has no test/ or val/
SPLIT_SEED = 0  # fixed: every run on a folder, whatever its seed, shares one test set
MAX_NAME = 100  # characters in a class name (as checkpoints allow)
SHOWN = 5  # unreadable files named in a message
POOL_MIN = 256  # fewer images are decoded in this process: starting workers would cost more than it saves
CHUNK = 64  # images per task sent to a worker (and per step of the progress bar)


@dataclass(frozen=True)
class Entry:
    """One image file: its path relative to the dataset folder, class index, size, mtime, and which split."""

    rel: str
    label: int
    size: int
    mtime_ns: int
    test: bool


@dataclass
class LeftOut:
    """Files in class folders that are not decoded, by reason (paths relative to the dataset folder)."""

    not_images: list[str] = field(default_factory=list)  # extension not an accepted image format's
    outside: list[str] = field(default_factory=list)  # symbolic links out of the dataset folder: not followed
    special: list[str] = field(default_factory=list)  # FIFOs, sockets, devices: never opened (a FIFO would hang)


@dataclass
class Scan:
    """What a dataset folder holds, before any image is decoded."""

    root: Path
    layout: str  # "split", "train/test" or "train/val"
    folders: list[str]  # class folder names, sorted: label c is folders[c]
    classes: list[str]  # their readable names
    entries: list[Entry]  # training images, then test images; by class, then by file name
    left_out: LeftOut  # files in class folders that are not decoded, and why


def visible(name: str) -> bool:
    """Hidden names (a leading dot, which covers cifarlab's own ``.cifarlab-*``) are ignored."""
    return not name.startswith(".")


def class_folders(folder: Path) -> list[str]:
    """The sorted names of the visible sub-folders of ``folder``."""
    try:
        return sorted(e.name for e in os.scandir(folder) if visible(e.name) and e.is_dir())
    except OSError as exc:
        raise DataError(f"{folder}: cannot list the folder ({exc.strerror or exc})") from None


def inside(path: Path, root: Path) -> bool:
    """True if ``path``, links resolved, lies in the (resolved) dataset folder ``root``."""
    try:
        return path.resolve().is_relative_to(root)
    except (OSError, RuntimeError):  # a link loop
        return False


def list_files(folder: Path, root: Path, suffixes: set[str], left_out: LeftOut) -> list[tuple[str, int, int]]:
    """(relative path, size, mtime in ns) of every image file below ``folder``, sorted; the files left out are
    added to ``left_out`` (other extensions, links out of ``root``, FIFOs and devices)."""
    found: list[tuple[str, int, int]] = []
    if not inside(folder, root):  # a class folder that is a link out of the dataset
        left_out.outside.append(folder.relative_to(root).as_posix())
        return found
    for dirpath, dirnames, filenames in os.walk(folder):
        links_out = [d for d in dirnames if visible(d) and not inside(Path(dirpath, d), root)]
        left_out.outside.extend(Path(dirpath, d).relative_to(root).as_posix() for d in links_out)
        dirnames[:] = sorted(d for d in dirnames if visible(d) and d not in links_out)
        for name in filenames:
            if not visible(name):
                continue
            path = Path(dirpath, name)
            rel = path.relative_to(root).as_posix()
            if path.suffix.lower() not in suffixes:
                left_out.not_images.append(rel)
                continue
            if path.is_symlink() and not inside(path, root):
                left_out.outside.append(rel)
                continue
            try:
                info = path.stat()
            except OSError:  # a dangling link: listed, then reported as unreadable when decoded
                found.append((rel, -1, 0))
                continue
            if not stat.S_ISREG(info.st_mode):
                left_out.special.append(rel)
                continue
            found.append((rel, info.st_size, info.st_mtime_ns))
    return sorted(found)


def find_layout(root: Path) -> tuple[str, Path, Path | None]:
    """The layout, the folder of training classes and the held-out folder (None: cifarlab splits)."""
    if not root.is_dir():
        raise DataError(f"{root}: no such folder of images")
    subfolders = class_folders(root)
    if "train" in subfolders:
        held = next((name for name in HELD_OUT if name in subfolders), None)
        if held is not None:
            return f"train/{held}", root / "train", root / held
        if class_folders(root / "train"):
            raise DataError(
                f"{root}: has train/<class>/ folders but no test/ or val/ beside it; add the held-out images as "
                f"test/<class>/, or give {root / 'train'} to let cifarlab hold out 10% of each class"
            )
    return "split", root, None


def check_classes(folder: Path, folders: list[str]) -> None:
    """At least two class folders."""
    if len(folders) < 2:
        found = f" ({', '.join(map(escape, folders))})" if folders else ""
        raise DataError(
            f"{folder}: found {len(folders)} class folder{'s' * (len(folders) != 1)}{found}; a dataset needs at "
            "least 2 (one sub-folder of images per class)"
        )


def check_same_classes(train_dir: Path, test_dir: Path, train: list[str], test: list[str]) -> None:
    """The held-out folder has exactly the training classes."""
    if train != test:
        only_train = ", ".join(escape(c) for c in train if c not in test) or "none"
        only_test = ", ".join(escape(c) for c in test if c not in train) or "none"
        raise DataError(
            f"{test_dir}: its classes differ from {train_dir.name}/'s (only in {train_dir.name}/: {only_train}; "
            f"only in {test_dir.name}/: {only_test})"
        )


def class_files(
    folder: Path, root: Path, folders: list[str], suffixes: set[str], left_out: LeftOut
) -> list[list[tuple[str, int, int]]]:
    """The image files of each class folder (an empty one is refused); the others are added to ``left_out``."""
    per_class = []
    for name in folders:
        found = list_files(folder / name, root, suffixes, left_out)
        if not found:
            raise DataError(f"{folder / name}: no image files (every class folder needs at least one image)")
        per_class.append(found)
    return per_class


def held_out(count: int, rng: np.random.Generator) -> set[int]:
    """Indices of the files of one class (sorted) held out for testing: 10%, at least one."""
    return set(rng.permutation(count)[: max(1, int(count * TEST_SHARE))].tolist())


def scan_folder(path: str | os.PathLike) -> Scan:
    """List a dataset folder's classes and image files, and decide the test set; nothing is decoded."""
    root = Path(path).resolve()
    layout, train_dir, test_dir = find_layout(root)
    suffixes = image_suffixes()
    folders = class_folders(train_dir)
    check_classes(train_dir, folders)
    left_out = LeftOut()
    train_files = class_files(train_dir, root, folders, suffixes, left_out)
    train: list[Entry] = []
    test: list[Entry] = []
    if test_dir is None:
        rng = np.random.default_rng(SPLIT_SEED)
        for label, files in enumerate(train_files):
            if len(files) < 2:
                raise DataError(
                    f"{train_dir / folders[label]}: only 1 image; each class needs at least 2 (one is held out "
                    "for testing)"
                )
            chosen = held_out(len(files), rng)
            for i, (rel, size, mtime) in enumerate(files):
                (test if i in chosen else train).append(Entry(rel, label, size, mtime, i in chosen))
    else:
        check_same_classes(train_dir, test_dir, folders, class_folders(test_dir))
        test_files = class_files(test_dir, root, folders, suffixes, left_out)
        for split, per_class, is_test in ((train, train_files, False), (test, test_files, True)):
            for label, files in enumerate(per_class):
                split.extend(Entry(rel, label, size, mtime, is_test) for rel, size, mtime in files)
    return Scan(root, layout, folders, class_names(root, folders), train + test, left_out)


# --- class names -----------------------------------------------------------------------------------------------


def names_from_txt(path: Path, folders: list[str]) -> dict[str, str]:
    """classes.txt: one readable name per line in sorted folder order, or lines "folder name"."""
    lines = [line.strip() for line in read_text(path).splitlines() if line.strip()]
    pairs = [line.split(maxsplit=1) for line in lines]
    if pairs and all(len(p) == 2 and p[0] in folders for p in pairs) and len({p[0] for p in pairs}) == len(pairs):
        return {folder: name.strip() for folder, name in pairs}
    if len(lines) != len(folders):
        raise DataError(
            f"{path}: {len(lines)} names for {len(folders)} class folders (give one readable name per line, in "
            "sorted folder order, or lines 'folder name')"
        )
    return dict(zip(folders, lines, strict=True))


def names_from_json(path: Path, folders: list[str]) -> dict[str, str]:
    """classes.json: {"folder": "readable name"} for some or all of the class folders."""
    mapping = loads_json(read_text(path), escape(str(path)), DataError)  # bounded: size, depth, integers
    if not isinstance(mapping, dict) or not all(isinstance(v, str) for v in mapping.values()):
        raise DataError(f'{path}: expected an object {{"folder": "readable name", ...}}')
    unknown = [k for k in mapping if k not in folders]
    if unknown:
        raise DataError(f"{path}: {escape(unknown[0])!r} is not one of the class folders")
    return {k: v.strip() for k, v in mapping.items()}


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"{path}: cannot read it as UTF-8 text ({getattr(exc, 'strerror', None) or exc})") from None


def class_names(root: Path, folders: list[str]) -> list[str]:
    """The readable name of each class folder: from classes.txt or classes.json at ``root``, else the folder's."""
    txt, js = root / CLASSES_TXT, root / CLASSES_JSON
    if txt.is_file() and js.is_file():
        raise DataError(f"{root}: has both {CLASSES_TXT} and {CLASSES_JSON}; keep one")
    mapping = names_from_txt(txt, folders) if txt.is_file() else names_from_json(js, folders) if js.is_file() else {}
    names = [mapping.get(folder, folder) for folder in folders]
    where = txt if txt.is_file() else js if js.is_file() else root
    for name in names:
        if not name or len(name) > MAX_NAME or not name.isprintable():
            raise DataError(
                f"{where}: class name {escape(name)!r} is empty, longer than {MAX_NAME} characters or not "
                f"printable (give readable names in {CLASSES_JSON})"
            )
    if len(set(names)) != len(names):
        twice = next(n for n in names if names.count(n) > 1)
        raise DataError(f"{where}: two classes are named {escape(twice)!r}")
    return names


# --- fingerprints ----------------------------------------------------------------------------------------------


def file_list_fingerprint(entries: list[Entry]) -> str:
    """16 hex digits of the sha256 of the sorted relative paths and sizes: the same files, the same value,
    wherever the folder lies and whenever it was copied."""
    digest = hashlib.sha256()
    for rel, size in sorted((e.rel, e.size) for e in entries):
        digest.update(f"{rel}\0{size}\n".encode("utf-8", "surrogateescape"))
    return digest.hexdigest()[:16]


def cache_key(entries: list[Entry], image_size: int, root: Path) -> str:
    """The decoded tensor's key: the files in their order (path, size, mtime and content), the size and the
    decoder; the content makes two folders whose names, sizes and times agree but whose pixels differ two keys."""
    digest = hashlib.sha256(f"cifarlab {CACHE_FORMAT} {DECODER_VERSION} {image_size}\n".encode())
    for e in entries:
        digest.update(f"{e.rel}\0{e.size}\0{e.mtime_ns}\0".encode("utf-8", "surrogateescape"))
        digest.update(f"{content_digest(root / e.rel, e.size)}\n".encode())
    return digest.hexdigest()[:32]


# --- decoding --------------------------------------------------------------------------------------------------


def workers_for(count: int) -> int:
    """Processes that decode ``count`` images: every core, or just this process for a few images."""
    return 1 if count < POOL_MIN else usable_cores()


def ignore_interrupts() -> None:
    """In workers: Ctrl-C is the main process's to handle (it stops the pool), not a traceback per worker."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)


def decode_chunk(job: tuple[list[str], int]) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode some files: the readable ones as one (k, 3, S, S) array, and (position, reason) for the others."""
    paths, image_size = job
    arrays, failures = [], []
    for i, path in enumerate(paths):
        try:
            arrays.append(decode_file(Path(path), image_size))
        except ValueError as exc:
            failures.append((i, str(exc)))
    if not arrays:
        return np.empty((0, 3, image_size, image_size), np.uint8), failures
    return np.stack(arrays), failures


def decode_files(paths: list[Path], image_size: int, desc: str) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """Decode every file into one (N - skipped, 3, S, S) uint8 array, on every core, with a progress bar;
    returns it and (index, reason) for each file that could not be read."""
    workers = workers_for(len(paths))
    chunk = max(1, min(CHUNK, math.ceil(len(paths) / (4 * workers))))
    jobs = [([str(p) for p in paths[i : i + chunk]], image_size) for i in range(0, len(paths), chunk)]
    out = np.empty((len(paths), 3, image_size, image_size), np.uint8)
    failures: list[tuple[int, str]] = []
    filled = 0

    def collect(results: Any) -> None:
        nonlocal filled
        starts = range(0, len(paths), chunk)
        for start, (arrays, failed) in zip(starts, progress(results, len(jobs), desc), strict=True):
            out[filled : filled + len(arrays)] = arrays
            filled += len(arrays)
            failures.extend((start + i, reason) for i, reason in failed)

    if workers == 1:
        collect(map(decode_chunk, jobs))
        return out[:filled], failures
    # concurrent.futures, not multiprocessing.Pool: a worker that dies (the OOM killer, SIGKILL) breaks the pool
    # and raises here, where Pool would wait for its task forever
    pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context(), initializer=ignore_interrupts)
    try:
        collect(pool.map(decode_chunk, jobs))
    except BrokenProcessPool:
        raise DataError(
            f"a process decoding images died (killed, perhaps by the system for lack of memory); nothing was "
            f"cached: try again, or a smaller --image-size ({len(paths):,} images at {image_size} x {image_size})"
        ) from None
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return out[:filled], failures


# --- loading ---------------------------------------------------------------------------------------------------


def decoded_images(scan: Scan, image_size: int) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """The folder's images at this size, from the cache or decoded now (and cached)."""
    check_fits(len(scan.entries), image_size, str(scan.root))
    remove_stale_temporaries(cache_dir() / CACHE_SUBDIR)
    key = cache_key(scan.entries, image_size, scan.root)
    cached = read_cache(key, len(scan.entries), image_size)
    where = f"{len(scan.entries):,} images of {scan.root} at {image_size} x {image_size}"
    if cached is not None:
        log(f"read {where} from the cache ({cache_paths(key)[0]})")
        return cached
    start = time.perf_counter()
    workers = workers_for(len(scan.entries))
    log(f"decoding {where} in {workers} process{'es' * (workers > 1)} (once: the result is cached)")
    images, failures = decode_files([scan.root / e.rel for e in scan.entries], image_size, "decoding images")
    log(f"decoded in {time.perf_counter() - start:.1f} s")
    write_cache(key, images, failures, len(scan.entries), image_size)
    return images, failures


def report_unreadable(scan: Scan, failures: list[tuple[int, str]], strict: bool) -> None:
    """Refuse unreadable files with ``strict``; else say how many were skipped, naming the first few."""
    if not failures:
        return
    shown = "; ".join(escape(f"{scan.entries[i].rel}: {reason}") for i, reason in failures[:SHOWN])
    more = f"; and {len(failures) - SHOWN} more" if len(failures) > SHOWN else ""
    if strict:
        raise DataError(
            f"{scan.root}: {len(failures)} image files cannot be read (refused with --strict): {shown}{more}"
        )
    log(
        f"cifarlab: warning: skipped {len(failures)} of {len(scan.entries):,} image files that cannot be read "
        f"(--strict refuses them): {shown}{more}"
    )


def report_ignored(scan: Scan) -> None:
    """Say which files in class folders were left out, one line per reason, with a count."""
    reasons = (
        (scan.left_out.not_images, "files that are not images by their extension"),
        (scan.left_out.outside, "symbolic links out of the dataset folder (not followed)"),
        (scan.left_out.special, "FIFOs, sockets or devices (never opened)"),
    )
    for paths, what in reasons:
        if paths:
            shown = ", ".join(escape(rel) for rel in paths[:SHOWN])
            more = f" and {len(paths) - SHOWN} more" if len(paths) > SHOWN else ""
            log(f"cifarlab: ignored {len(paths)} {what}: {shown}{more}")


def split_tensors(scan: Scan, images: np.ndarray, failures: list[tuple[int, str]]) -> dict[str, torch.Tensor]:
    """Train and test images and labels from the decoded array (whose rows are the readable entries, in order)."""
    failed = {i for i, _ in failures}
    kept = [e for i, e in enumerate(scan.entries) if i not in failed]
    is_test = torch.tensor([e.test for e in kept], dtype=torch.bool)
    labels = torch.tensor([e.label for e in kept], dtype=torch.int64)
    tensor = torch.from_numpy(images)
    n_train = int((~is_test).sum())  # training entries come first
    for split, part in (("training", labels[:n_train]), ("test", labels[n_train:])):
        counts = torch.bincount(part, minlength=len(scan.folders))
        if bool((counts == 0).any()):
            empty = scan.folders[int(torch.nonzero(counts == 0)[0])]
            raise DataError(f"{scan.root}: class {escape(empty)!r} has no readable {split} images left")
    return {
        "train_images": tensor[:n_train],
        "train_labels": labels[:n_train],
        "test_images": tensor[n_train:],
        "test_labels": labels[n_train:],
    }


def folder_record(scan: Scan, image_size: int, failures: list[tuple[int, str]]) -> dict[str, Any]:
    """What a run saves about the folder (see :class:`cifarlab.data.cifar10.ImageData`)."""
    record: dict[str, Any] = {
        "kind": "folder",
        "path": str(scan.root),
        "classes": scan.classes,
        "image_size": image_size,
        "fingerprint": file_list_fingerprint(scan.entries),
        "layout": scan.layout,
        "skipped": len(failures),
    }
    if scan.layout == "split":
        failed = {i for i, _ in failures}
        record["test"] = f"{TEST_SHARE:.0%} of each class of {scan.root}, held out by cifarlab (seed {SPLIT_SEED})"
        record["test_files"] = [e.rel for i, e in enumerate(scan.entries) if e.test and i not in failed]
    else:
        held = scan.layout.split("/")[1]
        record["test"] = f"the held-out folder {held}/ ({scan.root / held})"
    return record


def load_folder(path: str | os.PathLike, image_size: int = 64, strict: bool = False) -> ImageData:
    """Read a dataset folder at ``image_size``: from the cache when its files are unchanged, else decoded now."""
    scan = scan_folder(path)
    report_ignored(scan)
    images, failures = decoded_images(scan, image_size)
    report_unreadable(scan, failures, strict)
    return ImageData(
        **split_tensors(scan, images, failures),
        classes=scan.classes,
        root=scan.root,
        record=folder_record(scan, image_size, failures),
    )
