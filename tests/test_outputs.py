"""Outputs written whole or not at all, proven writable before any run."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from sdvram.errors import InputError, WriteError
from sdvram.outputs import PendingFile, image_format, reserve


def test_reserving_creates_the_temporary_beside_the_target(tmp_path: Path) -> None:
    pending = reserve(tmp_path / "r.json", "JSON record", "json")
    assert pending is not None and pending.tmp is not None and pending.tmp.parent == tmp_path
    pending.commit_text('{"a": 1}\n')
    assert (tmp_path / "r.json").read_text() == '{"a": 1}\n'
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]


def test_stdout_and_no_path_reserve_nothing() -> None:
    assert reserve(None, "x", "json") is None
    assert reserve("-", "x", "json") is None


def test_a_write_that_fails_at_the_end_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    folder = tmp_path / "out"
    folder.mkdir()
    target = folder / "keep.json"
    target.write_text("old")
    pending = PendingFile(target, "JSON record", "json")
    with pytest.raises(TypeError):
        pending.commit_with(lambda handle: handle.write("not bytes"))  # a bug in the writer
    assert target.read_text() == "old" and sorted(p.name for p in folder.iterdir()) == ["keep.json"]
    pending = PendingFile(folder / "new.json", "JSON record", "json")
    shutil.rmtree(folder)  # the folder disappears during the run: the final rename cannot happen
    with pytest.raises(WriteError, match=r"Could not write the JSON record to .*new.json \(No such file"):
        pending.commit_text("{}")


def test_discard_removes_the_reservation(tmp_path: Path) -> None:
    pending = PendingFile(tmp_path / "x.json", "JSON record", "json")
    pending.discard()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(("path", "message"), [
    ("/proc/x.json", r"json: cannot write in /proc \("),  # os.access says yes to root there; creating says no
    ("/no/such/folder/x.json", r"json: /no/such/folder does not exist"),
])
def test_unwritable_places_are_refused_up_front(path: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        PendingFile(Path(path), "JSON record", "json")


def test_a_folder_is_not_a_file_name(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"is a folder; give a file name for the output image"):
        PendingFile(tmp_path, "output image", "save_image")


def test_new_files_get_the_umask_s_permissions(tmp_path: Path) -> None:
    old = os.umask(0o027)
    try:
        reserve(tmp_path / "r.json", "JSON record", "json").commit_text("{}")
    finally:
        os.umask(old)
    assert (tmp_path / "r.json").stat().st_mode & 0o777 == 0o640


@pytest.mark.parametrize(("name", "fmt"), [("a.png", "PNG"), ("a.JPG", "JPEG"), ("a.webp", "WEBP")])
def test_image_formats_from_the_extension(name: str, fmt: str) -> None:
    assert image_format(name, "save_image") == fmt


@pytest.mark.parametrize(("name", "message"), [("a.xbm", r"XBM cannot hold an RGB image"),
                                               ("a", r"cannot write 'no extension' files")])
def test_image_formats_that_cannot_hold_rgb_are_refused(name: str, message: str) -> None:
    with pytest.raises(InputError, match=message):
        image_format(name, "save_image")
