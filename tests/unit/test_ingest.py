"""Scanning a user's image folder: real files written with Pillow, no mocks."""

from __future__ import annotations

import hashlib
import io
import logging
import os
from pathlib import Path

import pytest
from PIL import Image

from kernel.errors import ConfigError
from loop.ingest import (
    IMAGE_SUFFIXES,
    FoundImage,
    SkippedFile,
    classes_from_label_config,
    count_candidates,
    parse_classes,
    read_labels_csv,
    scan_images,
)

CLASSES = ["cat", "dog"]


def _image_bytes(fmt: str, size: tuple[int, int], mode: str, colour) -> bytes:
    buf = io.BytesIO()
    Image.new(mode, size, colour).save(buf, format=fmt)
    return buf.getvalue()


def _write(path: Path, data: bytes) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


@pytest.fixture
def folder(tmp_path) -> Path:
    """cat/ and dog/ class folders, a non-class folder, files at the top, every format,
    and the usual debris: empty, corrupt, text, a duplicate, hidden files."""
    root = tmp_path / "photos"
    _write(root / "cat" / "chat noir é.png", _image_bytes("PNG", (40, 30), "RGBA", (10, 10, 10, 255)))
    _write(root / "cat" / "Tabby.JPEG", _image_bytes("JPEG", (300, 200), "RGB", (200, 120, 40)))
    _write(root / "cat" / "kitten.webp", _image_bytes("WEBP", (17, 23), "RGB", (90, 90, 90)))
    _write(root / "dog" / "deep" / "er" / "pup.bmp", _image_bytes("BMP", (8, 8), "L", 77))
    _write(root / "dog" / "scan.tif", _image_bytes("TIFF", (64, 48), "CMYK", (0, 100, 0, 0)))
    _write(root / "dog" / "wag.gif", _image_bytes("GIF", (12, 12), "P", 3))
    _write(root / "misc" / "same as chat.png", (root / "cat" / "chat noir é.png").read_bytes())
    _write(root / "top level.png", _image_bytes("PNG", (5, 5), "I;16", 30000))
    _write(root / "empty.jpg", b"")
    noise = Image.frombytes("L", (64, 64), bytes(range(256)) * 16).rotate(30)
    buf = io.BytesIO()
    noise.save(buf, format="PNG")
    _write(root / "corrupt.png", buf.getvalue()[: len(buf.getvalue()) // 2])
    _write(root / "misc" / "other.png", _image_bytes("PNG", (9, 9), "1", 1))
    _write(root / "notes.txt", b"shot on my phone\n")
    _write(root / ".DS_Store", b"\0\0\0\1Bud1")
    _write(root / ".thumbs" / "x.png", _image_bytes("PNG", (5, 5), "L", 1))
    return root


def _results(root: Path, **kwargs):
    found = list(scan_images(root, classes=kwargs.pop("classes", CLASSES), **kwargs))
    images = {f.source.relative_to(root).as_posix(): f for f in found if isinstance(f, FoundImage)}
    skipped = {f.source.relative_to(root).as_posix(): f.reason for f in found if isinstance(f, SkippedFile)}
    assert len(images) + len(skipped) == len(found)
    return images, skipped


def test_a_mixed_folder_yields_every_image_once_and_says_why_others_are_skipped(folder):
    calls: list[Path] = []
    images, skipped = _results(folder, on_file=calls.append)
    assert sorted(images) == [
        "cat/Tabby.JPEG", "cat/chat noir é.png", "cat/kitten.webp",
        "dog/deep/er/pup.bmp", "dog/scan.tif", "dog/wag.gif", "misc/other.png", "top level.png",
    ]
    assert skipped["empty.jpg"] == "zero-byte file"
    assert skipped["corrupt.png"].startswith("corrupt or truncated image")
    assert skipped["notes.txt"] == "not an image file (suffix .txt)"
    assert skipped["misc/same as chat.png"] == "duplicate of cat/chat noir é.png"
    assert len(skipped) == 4  # hidden files and folders are passed over silently
    for rel, found in images.items():
        digest = hashlib.sha256((folder / rel).read_bytes()).hexdigest()
        assert found.sha256 == digest and found.name == digest[:20] + found.suffix
        assert found.label is None  # no labels asked for
    assert images["cat/Tabby.JPEG"].suffix == ".jpg"
    assert images["dog/scan.tif"].suffix == ".tiff"
    assert images["cat/kitten.webp"].suffix == ".webp"
    # progress: once per file with an image suffix, matching the total
    assert len(calls) == count_candidates(folder) == 11
    assert all(p.suffix.lower() in IMAGE_SUFFIXES for p in calls)


def test_the_scan_order_is_deterministic(folder):
    first = [(r.source, type(r)) for r in scan_images(folder, classes=CLASSES)]
    assert first == [(r.source, type(r)) for r in scan_images(folder, classes=CLASSES)]
    assert [s for s, _ in first] == sorted(s for s, _ in first)  # depth first in name order here


def test_labels_from_class_folders(folder, caplog):
    with caplog.at_level(logging.WARNING, logger="loop.ingest"):
        images, _ = _results(folder, labels_from_folders=True)
    labels = {rel: f.label for rel, f in images.items()}
    assert labels == {
        "cat/Tabby.JPEG": "cat", "cat/chat noir é.png": "cat", "cat/kitten.webp": "cat",
        "dog/deep/er/pup.bmp": "dog", "dog/scan.tif": "dog", "dog/wag.gif": "dog",
        "misc/other.png": None, "top level.png": None,
    }
    assert "misc" in caplog.text  # a folder that is not a class is named, its images unlabeled


def test_labels_from_a_csv_under_the_folder(folder, caplog):
    csv_path = folder / "labels.csv"
    csv_path.write_text(
        "image,label\n"
        "cat/chat noir é.png,dog\n"  # the CSV wins over the folder
        "pup.bmp,cat\n"  # a bare file name
        "top level.png,dog\n"
        "cat/kitten.webp,\n"  # empty label: unlabeled
        "gone.png,cat\n",
        encoding="utf-8",
    )
    labels = read_labels_csv(csv_path, CLASSES)
    assert labels == {"cat/chat noir é.png": "dog", "pup.bmp": "cat", "top level.png": "dog", "gone.png": "cat"}
    with caplog.at_level(logging.WARNING, logger="loop.ingest"):
        images, skipped = _results(folder, labels=labels, labels_from_folders=True, labels_file=csv_path)
    assert "labels.csv" not in skipped
    assert images["cat/chat noir é.png"].label == "dog"
    assert images["dog/deep/er/pup.bmp"].label == "cat"
    assert images["top level.png"].label == "dog"
    assert images["cat/kitten.webp"].label == "cat"  # from its folder
    assert "gone.png" in caplog.text  # a row naming no file is reported
    # without labels_file the CSV is reported like any other non-image file
    _, skipped = _results(folder, labels=labels)
    assert skipped["labels.csv"] == "not an image file (suffix .csv)"


def test_a_bare_name_matching_two_images_is_an_error(folder):
    _write(folder / "dog" / "chat noir é.png", _image_bytes("PNG", (3, 3), "L", 9))
    with pytest.raises(ConfigError, match="relative to"):
        list(scan_images(folder, classes=CLASSES, labels={"chat noir é.png": "cat"}))


def test_symlinked_folders_are_not_followed(folder):
    os.symlink(folder / "cat", folder / "again")
    _, skipped = _results(folder)
    assert skipped["again"] == "symbolic link to a folder: not followed"


def test_root_must_be_a_folder(tmp_path):
    with pytest.raises(ConfigError, match="not a folder"):
        scan_images(tmp_path / "nope", classes=CLASSES)
    with pytest.raises(ConfigError, match="not a folder"):
        count_candidates(tmp_path / "nope")


def test_parse_classes():
    assert parse_classes("cat, dog,bird") == ["cat", "dog", "bird"]
    assert parse_classes("chat noir,chien") == ["chat noir", "chien"]


@pytest.mark.parametrize("text, message", [
    ("cat,,dog", "class 2 is empty"),
    ("cat,dog,", "class 3 is empty"),
    ("cat,cat", "'cat' is given more than once"),
    ("cat", "at least 2 classes"),
    ("cat,do\ng", "control character"),
])
def test_parse_classes_errors(text, message):
    with pytest.raises(ConfigError, match=message):
        parse_classes(text)


def _config(choices: str, image: str = '<Image name="img" value="$image"/>', to_name: str = "img") -> str:
    return f'<View>{image}<Choices name="label" toName="{to_name}" choice="single">{choices}</Choices></View>'


def test_classes_from_label_config():
    xml = _config('<Choice value="cat"/><Choice value="dog"/><Choice value="bird"/>')
    assert classes_from_label_config(xml) == ["cat", "dog", "bird"]


@pytest.mark.parametrize("xml, message", [
    ("<View><Image", "not valid XML"),
    (_config('<Choice value="cat"/><Choice value="dog"/>', image=""), "exactly one <Image>"),
    ('<View><Image name="img" value="$image"/></View>', "exactly one <Choices>"),
    (_config('<Choice value="a"/><Choice value="b"/>').replace("</View>", '<Choices name="x" toName="img"/></View>'),
     "exactly one <Choices>"),
    (_config(""), "no <Choice>"),
    (_config('<Choice value="cat"/><Choice/>'), "no value"),
    (_config('<Choice value="cat"/><Choice value="cat"/>'), "more than once"),
    (_config('<Choice value="cat"/>'), "at least 2"),
    (_config('<Choice value="cat"/><Choice value="dog"/>', to_name="other"), "toName"),
])
def test_classes_from_label_config_errors(xml, message):
    with pytest.raises(ConfigError, match=message):
        classes_from_label_config(xml)


def test_read_labels_csv_names_the_bad_rows(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text("image,label\na.png,cat\nb.png,cta\nc.png,dog\nd.png,Dog\n", encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        read_labels_csv(path, CLASSES)
    message = str(info.value)
    assert "line 3" in message and "'cta'" in message and "line 5" in message and "'Dog'" in message
    assert "line 2" not in message and "cat, dog" in message


@pytest.mark.parametrize("text, message", [
    ("file,class\na.png,cat\n", "header 'image,label'"),
    ("image\na.png\n", "header 'image,label'"),
    ("", "header 'image,label'"),
    ("image,label\na.png,cat\na.png,dog\n", "labelled 'cat' on line 2 and 'dog' here"),
])
def test_read_labels_csv_errors(tmp_path, text, message):
    path = tmp_path / "labels.csv"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match=message):
        read_labels_csv(path, CLASSES)


def test_read_labels_csv_accepts_a_spreadsheet_export(tmp_path):
    path = tmp_path / "labels.csv"
    path.write_bytes("\ufeffImage, Label\r\nsub\\a.png,cat\r\n./b.png,dog\r\n".encode())
    assert read_labels_csv(path, CLASSES) == {"sub/a.png": "cat", "b.png": "dog"}
