"""Find the images in a user's folder for `labelloop init --images DIR` and `labelloop add DIR`.

A scan reports every file it passes over, so a user learns why a file was left out
(`SkippedFile`) rather than finding it missing later. Images are named by content
(`FoundImage.name`): the workspace's images are immutable and the same picture twice is
stored once. Labels the user already has come from class folders or a CSV.
"""

from __future__ import annotations

import csv
import hashlib
import logging
import os
import unicodedata
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kernel.errors import ConfigError
from pipelines.images import sniff_image

__all__ = [
    "IMAGE_SUFFIXES",
    "DownloadExaminer",
    "FoundImage",
    "SkippedFile",
    "classes_from_label_config",
    "count_candidates",
    "image_suffix",
    "parse_classes",
    "read_labels_csv",
    "scan_images",
]

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = frozenset({".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff", ".gif"})
# One spelling per format for stored copies, so names do not depend on the user's habits.
_STORED_SUFFIX = {".jpeg": ".jpg", ".tif": ".tiff"}


@dataclass(frozen=True)
class FoundImage:
    source: Path  # a local file holding the bytes: the user's file, or a download (see `origin`)
    sha256: str  # hex digest of the file's bytes
    suffix: str  # lower-case extension of the stored copy (".jpeg" -> ".jpg", ".tif" -> ".tiff")
    label: str | None  # a label the user already has (class folder or CSV), else None
    origin: str | None = None  # where a downloaded image lives ("s3://bucket/key", a task's URL)
    eval_eligible: bool = True  # False: never drawn into the evaluation set (it is labeled elsewhere)

    @property
    def name(self) -> str:
        """The workspace's image name: immutable and content-addressed."""
        return self.sha256[:20] + self.suffix

    @property
    def where(self) -> str:
        """Where the user keeps it: recorded in the pool shard, shown in reports."""
        return self.origin or str(self.source)


@dataclass(frozen=True)
class SkippedFile:
    source: Path | str  # a local path, or where a remote object lives ("s3://bucket/key")
    reason: str
    duplicate: bool = False  # the same content as a usable file found earlier in the scan


class DownloadExaminer:
    """Examines images fetched from elsewhere (an S3 object, a Label Studio task) one
    temporary file at a time, as `scan_images` examines local files: hashed, deduplicated
    within the scan, decoded in full (`sniff_image`). One examiner per scan."""

    def __init__(self) -> None:
        self._seen: dict[str, tuple[str, str | None]] = {}  # sha256 -> (first origin, its skip reason)

    def examine(self, path: Path, origin: str, *, suffix: str, label: str | None = None,
                eval_eligible: bool = True) -> FoundImage | SkippedFile:
        """`path`: the downloaded bytes (the caller deletes it once the item is consumed);
        `suffix`: the extension the origin names (".jpeg"...), else the format's own."""
        with path.open("rb") as fh:
            sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        if sha256 in self._seen:
            first, first_reason = self._seen[sha256]
            return SkippedFile(origin, first_reason or f"duplicate of {first}", duplicate=first_reason is None)
        reason = sniff_image(path)
        self._seen[sha256] = (origin, reason)
        if reason is not None:
            return SkippedFile(origin, reason)
        suffix = suffix.lower()
        return FoundImage(path, sha256, _STORED_SUFFIX.get(suffix, suffix), label, origin=origin,
                          eval_eligible=eval_eligible)


def image_suffix(name: str, path: Path) -> str:
    """The extension of a remote name when it is an image's, else the one Pillow's format
    implies (objects and URLs often carry no extension)."""
    suffix = PurePosixPath(name).suffix.lower()
    if suffix in IMAGE_SUFFIXES:
        return suffix
    from PIL import Image  # only for nameless downloads

    try:
        with Image.open(path) as image:
            fmt = (image.format or "").lower()
    except Exception:  # noqa: BLE001 - sniff_image reports what is wrong with it
        return ".bin"
    return {"jpeg": ".jpg", "tiff": ".tiff", "png": ".png", "webp": ".webp", "bmp": ".bmp",
            "gif": ".gif"}.get(fmt, ".bin")


def parse_classes(text: str) -> list[str]:
    """'cat, dog,bird' -> ['cat', 'dog', 'bird']; `ConfigError` says what is wrong."""
    return _checked_classes([name.strip() for name in text.split(",")], f"--classes {text!r}")


def classes_from_label_config(xml_text: str) -> list[str]:
    """The `<Choice value=...>` names of a Label Studio config with one `<Image>` and one
    `<Choices>` over it. The config is the user's own file, so the standard library's
    parser is enough (no untrusted XML)."""
    try:
        root = ET.fromstring(xml_text)
    except ET.ParseError as exc:
        raise ConfigError(f"the labeling config is not valid XML: {exc}") from exc
    images = list(root.iter("Image"))
    choices = list(root.iter("Choices"))
    if len(images) != 1:
        raise ConfigError(f"the labeling config needs exactly one <Image> tag, it has {len(images)}")
    if len(choices) != 1:
        raise ConfigError(f"the labeling config needs exactly one <Choices> tag, it has {len(choices)}")
    image_name, to_name = images[0].get("name", ""), choices[0].get("toName", "")
    if image_name not in to_name.split(","):
        raise ConfigError(
            f'the labeling config\'s <Choices toName="{to_name}"> must name the <Image name="{image_name}">'
        )
    values = [choice.get("value") for choice in choices[0].iter("Choice")]
    if not values:
        raise ConfigError("the labeling config's <Choices> holds no <Choice> tag")
    if None in values:
        raise ConfigError(f'<Choice> number {values.index(None) + 1} in the labeling config has no value="..."')
    return _checked_classes([v.strip() for v in values if v is not None], "the labeling config's <Choice> values")


def read_labels_csv(path: Path, classes: Sequence[str]) -> dict[str, str]:
    """`image,label` rows -> {image: label}. An image is a path relative to the scanned
    folder (posix separators) or a bare file name; a row with an empty label leaves that
    image unlabeled."""
    try:
        with path.open(newline="", encoding="utf-8-sig") as fh:  # -sig: Excel writes a BOM
            reader = csv.DictReader(fh)
            # Spreadsheets write "Image, Label" as readily as "image,label".
            header = reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
            if "image" not in header or "label" not in header:
                raise ConfigError(
                    f"{path}: the first line must be the header 'image,label' (found {','.join(header)!r})"
                )
            known = set(classes)
            labels: dict[str, str] = {}
            first_line: dict[str, int] = {}
            problems: list[str] = []
            for row in reader:
                line = reader.line_num
                image, label = (row["image"] or "").strip(), (row["label"] or "").strip()
                if not image:
                    problems.append(f"line {line}: no image")
                    continue
                if not label:
                    continue
                key = PurePosixPath(image.replace("\\", "/")).as_posix()
                if label not in known:
                    problems.append(f"line {line}: label {label!r} ({image}) is not a class")
                elif labels.get(key, label) != label:
                    problems.append(f"line {line}: {image} is labelled {labels[key]!r} on line "
                                    f"{first_line[key]} and {label!r} here")
                else:
                    labels.setdefault(key, label)
                    first_line.setdefault(key, line)
    except FileNotFoundError as exc:
        raise ConfigError(f"labels CSV {path} does not exist") from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(f"labels CSV {path} is not UTF-8 text: {exc}") from exc
    except csv.Error as exc:
        raise ConfigError(f"labels CSV {path} is not valid CSV: {exc}") from exc
    if problems:
        more = f" (and {len(problems) - 5} more)" if len(problems) > 5 else ""
        raise ConfigError(
            f"{path}: {'; '.join(problems[:5])}{more}. The classes are: {', '.join(classes)}"
        )
    return labels


def count_candidates(root: Path) -> int:
    """Files with an image suffix under root, walked as `scan_images` walks (a progress total)."""
    _check_root(root)
    if root.is_file():
        return 1
    return sum(1 for path, problem in _walk(root) if problem is None and _is_candidate(path))


def scan_images(
    root: Path,
    *,
    classes: Sequence[str],
    labels: Mapping[str, str] | None = None,
    labels_from_folders: bool = False,
    on_file: Callable[[Path], None] | None = None,
    labels_file: Path | None = None,
    unchanged: Callable[[Path], bool] | None = None,
) -> Iterator[FoundImage | SkippedFile]:
    """Every file under root, in sorted order, as a `FoundImage` or a `SkippedFile` with
    its reason. Hidden names (".x") are passed over silently, and so is `labels_file`
    (the CSV `labels` came from) when it lies under root; symlinked folders are not
    followed. A label comes from `labels` (relative posix path, else bare file name),
    else, with `labels_from_folders`, from a top-level folder named after a class.
    `on_file` is called once per file with an image suffix (`count_candidates`' total).
    `unchanged(path)` True: a file read before (a watched folder's last sync), passed over
    unread. `root` may also be one image file. Streams: one file's bytes in memory at a time."""
    _check_root(root)
    if labels and (unknown := sorted(set(labels.values()) - set(classes))):
        raise ConfigError(f"labels {unknown} are not among the classes {list(classes)}")
    skip = labels_file.resolve() if labels_file is not None else None
    return _scan(root, set(classes), dict(labels or {}), labels_from_folders, on_file, skip, unchanged)


def _scan(
    root: Path,
    classes: set[str],
    labels: dict[str, str],
    labels_from_folders: bool,
    on_file: Callable[[Path], None] | None,
    skip: Path | None,
    unchanged: Callable[[Path], bool] | None = None,
) -> Iterator[FoundImage | SkippedFile]:
    seen: dict[str, tuple[str, str | None]] = {}  # sha256 -> (first path, its skip reason)
    key_owner: dict[str, str] = {}  # labels key -> the file it labelled
    other_folders: set[str] = set()
    single = root.is_file()
    base = root.parent if single else root
    for path, problem in ([(root, None)] if single else _walk(root)):
        if problem is not None:
            yield SkippedFile(path, problem)
            continue
        if not _is_candidate(path):
            if skip is None or path.resolve() != skip:
                yield SkippedFile(path, f"not an image file ({_describe_suffix(path)})")
            continue
        if on_file is not None:
            on_file(path)
        if unchanged is not None and unchanged(path):
            continue
        rel = path.relative_to(base).as_posix()
        if not path.is_file():  # a FIFO would block the read; a dangling link cannot be read
            yield SkippedFile(path, "broken symbolic link" if path.is_symlink() else "not a regular file")
            continue
        try:
            with path.open("rb") as fh:
                sha256 = hashlib.file_digest(fh, "sha256").hexdigest()
        except OSError as exc:
            yield SkippedFile(path, f"unreadable file: {exc.strerror or exc}")
            continue
        if sha256 in seen:
            first, first_reason = seen[sha256]
            yield SkippedFile(path, first_reason or f"duplicate of {first}", duplicate=first_reason is None)
            continue
        reason = sniff_image(path)
        seen[sha256] = (rel, reason)
        if reason is not None:
            yield SkippedFile(path, reason)
            continue
        key = rel if rel in labels else path.name if path.name in labels else None
        if key is not None:
            if key in key_owner:
                raise ConfigError(
                    f"the labels CSV names {key!r}, which matches both {key_owner[key]} and {rel} "
                    f"under {root}: write each image's path relative to {root}"
                )
            key_owner[key] = rel
            label: str | None = labels[key]
        else:
            label = None
            top = rel.split("/")[0] if "/" in rel else None
            if labels_from_folders and top is not None:
                if top in classes:
                    label = top
                else:
                    other_folders.add(top)
        suffix = path.suffix.lower()
        yield FoundImage(path, sha256, _STORED_SUFFIX.get(suffix, suffix), label)
    if unmatched := sorted(set(labels) - set(key_owner)):
        log.warning("%d row(s) of the labels CSV name no image found under %s: %s%s", len(unmatched), root,
                    ", ".join(unmatched[:5]), " ..." if len(unmatched) > 5 else "")
    if other_folders:
        log.warning("folders under %s not named after a class, their images are unlabeled: %s",
                    root, ", ".join(sorted(other_folders)))


def _walk(folder: Path) -> Iterator[tuple[Path, str | None]]:
    """(path, None) for each non-folder entry, depth first in name order (deterministic);
    (path, reason) for a folder not walked into. One folder's listing in memory at a time."""
    try:
        with os.scandir(folder) as it:
            entries = sorted((e for e in it if not e.name.startswith(".")), key=lambda e: e.name)
    except OSError as exc:
        yield folder, f"cannot list folder: {exc.strerror or exc}"
        return
    for entry in entries:
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                yield from _walk(path)
            elif entry.is_dir():
                # A link could lead out of root or back into it (a loop).
                yield path, "symbolic link to a folder: not followed"
            else:
                yield path, None
        except OSError as exc:
            yield path, f"unreadable: {exc.strerror or exc}"


def _is_candidate(path: Path) -> bool:
    return path.suffix.lower() in IMAGE_SUFFIXES


def _describe_suffix(path: Path) -> str:
    return f"suffix {path.suffix}" if path.suffix else "no suffix"


def _check_root(root: Path) -> None:
    if root.is_file() and _is_candidate(root):
        return
    if not root.is_dir():
        raise ConfigError(f"{root} is not a folder or an image file: pass the folder that holds your images")


def _checked_classes(names: list[str], where: str) -> list[str]:
    """Class names become CSV cells, folder names and Label Studio choices: no empty
    names, no repeats, no control characters (a newline would split a CSV row)."""
    for i, name in enumerate(names, start=1):
        if not name:
            raise ConfigError(f"class {i} is empty in {where}")
        if any(unicodedata.category(c).startswith("C") for c in name):
            raise ConfigError(f"class {name!r} in {where} contains a control character (newline, tab...)")
    repeated = sorted({name for name in names if names.count(name) > 1})
    if repeated:
        raise ConfigError(f"class {repeated[0]!r} is given more than once in {where}")
    if len(names) < 2:
        raise ConfigError(f"at least 2 classes are needed, {where} gives {len(names)}")
    return names
