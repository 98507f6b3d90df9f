"""Table-driven bad-input rows for the shared readers and writers themselves
(ClinicalMRICommonLib.images/masks/tables/files through errors.run_cli, as every tool calls
them): each bad input class is refused with exit 2, one ``error:`` line naming the user's
file, no traceback, and nothing changed or left behind."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

import faultlib as fl
from faultlib import full_disk, read_only_dir  # noqa: F401  (pytest fixtures)

from ClinicalMRICommonLib.files import (check_output_path, write_image_atomic, write_json_atomic,
                                        write_text_atomic)
from ClinicalMRICommonLib.images import read_grid, read_image
from ClinicalMRICommonLib.masks import read_mask
from ClinicalMRICommonLib.tables import read_csv_table

# what read_grid (header only) cannot see: voxel values and a truncated compressed stream
_VOXEL_ONLY = {"NaN voxels", "truncated .nii.gz"}


@pytest.mark.parametrize("kind", fl.IMAGE_FAULTS + fl.DICOM_FAULTS)
def test_read_image_refuses(tmp_path, kind):
    bad = fl.make(kind, tmp_path)
    res = fl.run_in_process(read_image, bad, "T2 image")
    fl.assert_refused(res, inputs=[bad] if bad.exists() else [], mentions=[str(bad)])


@pytest.mark.parametrize("kind", [k for k in fl.IMAGE_FAULTS + fl.DICOM_FAULTS if k not in _VOXEL_ONLY])
def test_read_grid_refuses(tmp_path, kind):
    bad = fl.make(kind, tmp_path)
    res = fl.run_in_process(read_grid, bad, "source image")
    fl.assert_refused(res, inputs=[bad] if bad.exists() else [], mentions=[str(bad)])


@pytest.mark.parametrize("kind", fl.MASK_FAULTS + fl.IMAGE_FAULTS)
def test_read_mask_refuses(tmp_path, kind):
    image = fl.good_image(tmp_path)
    reference = read_image(image)
    bad = fl.make(kind, tmp_path)
    res = fl.run_in_process(read_mask, bad, reference, what="ROI", watch=[image])
    fl.assert_refused(res, inputs=[image] + ([bad] if bad.exists() else []), mentions=[str(bad)])


@pytest.mark.parametrize("kind", fl.CSV_FAULTS + ["missing file", "folder instead of file", "empty file"])
def test_read_csv_table_refuses(tmp_path, kind):
    bad = fl.make(kind, tmp_path)
    res = fl.run_in_process(read_csv_table, bad, "feature table")
    fl.assert_refused(res, inputs=[bad] if bad.exists() else [], mentions=[str(bad)])


def _image():
    return sitk.GetImageFromArray(np.arange(40 * 50 * 60, dtype=np.float32).reshape(40, 50, 60))


WRITERS = {
    "image .nii.gz": (lambda p: write_image_atomic(_image(), p), "out.nii.gz"),
    "image .nrrd": (lambda p: write_image_atomic(_image(), p, compress=False), "out.nrrd"),
    "json": (lambda p: write_json_atomic(p, {"values": list(range(100000))}), "out.json"),
    "text": (lambda p: write_text_atomic(p, "x" * 300000), "out.txt"),
}


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writer_on_full_disk_publishes_nothing(full_disk, writer):
    write, name = WRITERS[writer]
    existing = full_disk.path / ("old_" + name)
    existing.write_bytes(b"an earlier result\n")
    target = full_disk.path / name
    full_disk.fill(leave=8192)
    res = fl.run_in_process(write, target, watch=[existing])
    fl.assert_refused(res, existing=[existing], absent=[target], no_temps_in=[full_disk.path], mentions=[str(target)])


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writer_on_full_disk_keeps_the_existing_file(full_disk, writer):
    write, name = WRITERS[writer]
    target = full_disk.path / name
    target.write_bytes(b"the earlier version\n")
    full_disk.fill(leave=8192)
    res = fl.run_in_process(write, target)
    fl.assert_refused(res, existing=[target], no_temps_in=[full_disk.path], mentions=[str(target)])


@pytest.mark.parametrize("writer", list(WRITERS))
def test_writer_in_read_only_folder(read_only_dir, writer):
    write, name = WRITERS[writer]
    (read_only_dir.path / name).write_bytes(b"kept\n")
    folder = read_only_dir.seal()
    res = fl.run_in_process(write, folder / name)
    fl.assert_refused(res, existing=[folder / name], no_temps_in=[folder], mentions=[str(folder / name)])


@pytest.mark.parametrize("writer", list(WRITERS))
@pytest.mark.parametrize("case", ["name too long", "parent is a file", "target is a folder"])
def test_writer_bad_output_path(tmp_path, writer, case):
    write, name = WRITERS[writer]
    blocker = tmp_path / "a_file.txt"
    blocker.write_text("I am a file\n")
    if case == "name too long":
        target = tmp_path / ("x" * 300 + name)
    elif case == "parent is a file":
        target = blocker / "sub" / name
    else:
        target = tmp_path / name
        target.mkdir()
        (target / "inside.txt").write_text("keep me\n")
    res = fl.run_in_process(write, target, watch=[blocker, target])
    fl.assert_refused(res, existing=[blocker] + ([target] if case == "target is a folder" else []), no_temps_in=[tmp_path],
                      mentions=[str(target)])


@pytest.mark.parametrize("case", ["exists", "is an input", "two outputs", "folder for a file", "file for a folder"])
def test_check_output_path_refuses(tmp_path, case):
    out = tmp_path / "result.csv"
    out.write_text("earlier result\n")
    image = fl.good_image(tmp_path)
    kwargs = {"exists": {}, "is an input": {"inputs": [image], "overwrite": True},
              "two outputs": {"others": [out], "overwrite": True}, "folder for a file": {},
              "file for a folder": {"folder": True}}[case]
    target = {"exists": out, "is an input": image, "two outputs": out, "folder for a file": tmp_path,
              "file for a folder": out}[case]
    res = fl.run_in_process(check_output_path, target, what="output", watch=[out, image], **kwargs)
    fl.assert_refused(res, existing=[out, image], mentions=[str(target)])


def test_run_tool_runs_the_installed_commands(tmp_path):
    res = fl.run_tool(["annotation-qc", "--version"])
    assert res.rc == 0 and res.stdout.startswith("annotation-qc ")
    good = fl.good_mask(tmp_path)
    bad = fl.make("truncated .nii.gz", tmp_path)
    res = fl.run_tool(["annotation-qc", "compare", "--reference", good, "--test", bad])
    fl.assert_refused(res, inputs=[good, bad], mentions=[str(bad), "truncated"])
