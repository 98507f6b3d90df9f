"""The process the HRMMPredict panel runs a prediction in (so Slicer never freezes and
Cancel can kill it), and the files it exchanges with the panel.

The panel (main thread) reads the case from MRML nodes, writes it with
:func:`write_request` into a job folder, and starts::

    PythonSlicer .../HRMMPredictLib/slicer/predict_worker.py --module-path <common> --request <job>/request.json

(``<common>``: the ClinicalMRICommon module folder, which holds ``ClinicalMRICommonLib``.)

The worker reads the images back, calls :func:`HRMMPredictLib.predict.predict_case` (the
function ``hrmm predict`` calls), writes ``result.json`` atomically and reports through
``@@job`` lines (:mod:`ClinicalMRICommonLib.process_runner`): ``progress`` messages while it
works, then one ``result`` message, or one ``error`` message (a one-line user error, exit status 2;
an unexpected failure, exit status 1, traceback on stderr). ``--probe-device`` reports what
PyTorch finds (the panel's Device line) without loading a model.

Images travel as uncompressed MetaImage (``.mha``): it stores spacing, origin and direction as
full-precision text, so the worker predicts from exactly the voxels and geometry the panel
read (NIfTI would round the geometry to float32), and the numbers are those of
:func:`HRMMPredictLib.slicer.panel_logic.predict_from_nodes` in Slicer's own process.

Run as a script by path, the file puts its module folder (the one holding
``HRMMPredictLib``, and each ``--module-path``) on ``sys.path`` itself, so it needs no
environment set up by the caller.
"""

from __future__ import annotations

import argparse
import os
import sys
import traceback
from pathlib import Path

if __name__ == "__main__":  # run by path: import the package, not sibling files, and find ClinicalMRICommonLib
    _here = os.path.dirname(os.path.abspath(__file__))                 # .../HRMMPredictLib/slicer
    sys.path[:] = [p for p in sys.path if os.path.abspath(p or os.curdir) != _here]
    sys.path.insert(0, os.path.dirname(os.path.dirname(_here)))       # the HRMMPredict module folder
    for _i, _arg in enumerate(sys.argv[:-1]):
        if _arg == "--module-path":
            sys.path.insert(0, sys.argv[_i + 1])

REQUEST_FORMAT = "hrmm-predict-request"
REQUEST_VERSION = 1
REQUEST_NAME = "request.json"
RESULT_NAME = "result.json"

__all__ = [
    "REQUEST_NAME",
    "RESULT_NAME",
    "add_case_info",
    "main",
    "probe_device",
    "read_request",
    "run_request",
    "worker_command",
    "write_request",
]


def add_case_info(result: dict, warnings: list[str], roi_resampled: dict[str, bool]) -> dict:
    """Put what reading the case from Slicer found (the ROI resampled onto a series' grid)
    in front of the library's own warnings, and record which grids were resampled."""
    result["warnings"] = list(warnings) + list(result.get("warnings", []))
    result["roi_resampled"] = dict(roi_resampled)
    return result


def write_request(folder: str | os.PathLike, images: dict, roi, model_dir: str | os.PathLike, *,
                  device: str = "auto", warnings: list[str] | None = None,
                  roi_resampled: dict[str, bool] | None = None) -> Path:
    """Write a case (``images``: sequence -> SimpleITK image; ``roi``: one mask on their shared
    grid, or sequence -> mask) and what to do with it into ``folder``; returns the request
    file. The files are written atomically; the folder is the panel's temporary job folder."""
    from ClinicalMRICommonLib.files import write_image_atomic, write_json_atomic

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    image_files = {}
    for key, image in images.items():
        name = f"{key}.mha"
        write_image_atomic(image, folder / name, compress=False)
        image_files[key] = name
    if isinstance(roi, dict):
        roi_files: str | dict = {}
        for key, mask in roi.items():
            name = f"roi_{key}.mha"
            write_image_atomic(mask, folder / name, compress=False)
            roi_files[key] = name
    else:
        roi_files = "roi.mha"
        write_image_atomic(roi, folder / roi_files, compress=False)
    request = {"format": REQUEST_FORMAT, "version": REQUEST_VERSION, "images": image_files, "roi": roi_files,
               "model_dir": str(Path(model_dir).resolve()), "device": device,
               "warnings": list(warnings or []), "roi_resampled": dict(roi_resampled or {}),
               "result": RESULT_NAME}
    path = folder / REQUEST_NAME
    write_json_atomic(path, request)
    return path


def read_request(path: str | os.PathLike) -> dict:
    """The request with its file names made absolute; UserError when it is not one."""
    from ClinicalMRICommonLib.errors import UserError
    from HRMMPredictLib.slicer.panel_results import read_json_file

    path = Path(path)
    request = read_json_file(path, "prediction request")
    if not isinstance(request, dict) or request.get("format") != REQUEST_FORMAT:
        raise UserError(f"{path} is not an HRMMPredict prediction request")
    if request.get("version") != REQUEST_VERSION:
        raise UserError(f"prediction request {path} has version {request.get('version')}; this worker reads "
                        f"version {REQUEST_VERSION}")
    folder = path.parent
    request["images"] = {k: str(folder / v) for k, v in request["images"].items()}
    roi = request["roi"]
    request["roi"] = {k: str(folder / v) for k, v in roi.items()} if isinstance(roi, dict) else str(folder / roi)
    request["result"] = str(folder / request.get("result", RESULT_NAME))
    return request


def _progress(message: str) -> None:
    from ClinicalMRICommonLib.process_runner import emit_message

    emit_message("progress", message=str(message))


def run_request(request_path: str | os.PathLike) -> dict:
    """Predict the case of a request; writes its result file and returns the result."""
    from ClinicalMRICommonLib.files import write_json_atomic
    from ClinicalMRICommonLib.images import read_image
    from HRMMPredictLib.predict import predict_case
    from HRMMPredictLib.sequences import sequence_label

    request = read_request(request_path)
    _progress("reading the case")
    images = {k: read_image(p, f"{sequence_label(k)} image") for k, p in request["images"].items()}
    roi = request["roi"]
    roi = ({k: read_image(p, f"ROI on {sequence_label(k)}") for k, p in roi.items()}
           if isinstance(roi, dict) else read_image(roi, "ROI"))
    result = predict_case(images, roi, request["model_dir"], device=request.get("device", "auto"),
                          progress=_progress)
    add_case_info(result, request.get("warnings", []), request.get("roi_resampled", {}))
    write_json_atomic(request["result"], result)
    return result


def probe_device() -> dict:
    """What the deep model could run on: PyTorch's version and build, the CUDA device
    ``auto`` would pick (its description from ``deep.model.select_device``), and why a GPU
    cannot be used when it cannot."""
    from ClinicalMRICommonLib.errors import UserError

    info: dict = {"torch": None, "cuda_build": None, "auto": None, "gpu": None, "gpu_unavailable": None}
    try:
        import torch
    except ImportError as exc:
        info["gpu_unavailable"] = f"PyTorch is not installed ({exc.name or 'torch'} missing)"
        info["auto"] = "cpu"
        return info
    info["torch"] = torch.__version__
    info["cuda_build"] = torch.version.cuda
    from HRMMPredictLib.deep.model import select_device

    info["auto"] = select_device("auto")[1]
    try:
        info["gpu"] = select_device("cuda")[1]
    except UserError as exc:
        info["gpu_unavailable"] = str(exc)
    return info


def worker_command(request_path: str | os.PathLike | None = None, *, probe: bool = False,
                   python: str | None = None) -> list[str]:
    """The command line that runs this worker by path (what the panel starts)."""
    from ClinicalMRICommonLib.process_runner import worker_python

    common = Path(__import__("ClinicalMRICommonLib").__file__).resolve().parent.parent
    args = [python or worker_python(), str(Path(__file__).resolve()), "--module-path", str(common)]
    if probe:
        return args + ["--probe-device"]
    return args + ["--request", str(request_path)]


def _main(argv: list[str] | None) -> int:
    from ClinicalMRICommonLib.process_runner import emit_message

    parser = argparse.ArgumentParser(prog="predict_worker", description=__doc__.splitlines()[0])
    parser.add_argument("--module-path", action="append", default=[],
                        help="folder to put on sys.path (e.g. the ClinicalMRICommon module folder)")
    group = parser.add_mutually_exclusive_group(required=True)
    group.add_argument("--request", help="request.json written by write_request")
    group.add_argument("--probe-device", action="store_true", help="report what PyTorch finds, then exit")
    args = parser.parse_args(argv)
    if args.probe_device:
        emit_message("device", **probe_device())
        return 0
    result = run_request(args.request)
    emit_message("result", path=str(read_request(args.request)["result"]), model=result.get("model"),
                 probability=result.get("probability"), **{"class": result.get("class")})
    return 0


def main(argv: list[str] | None = None) -> int:
    """Entry point: user errors are one ``error`` message + ``error: ...`` on stderr, exit 2;
    anything else a traceback on stderr + an ``error`` message, exit 1."""
    from ClinicalMRICommonLib.errors import UserError
    from ClinicalMRICommonLib.process_runner import emit_message

    os.environ.setdefault("PYTHONWARNINGS", "ignore")
    try:
        return _main(argv)
    except UserError as exc:
        emit_message("error", message=str(exc))
        print(f"error: {exc}", file=sys.stderr, flush=True)
        return 2
    except MemoryError:
        emit_message("error", message="out of memory while predicting; close other programs or use the CPU device")
        return 1
    except Exception as exc:  # the panel shows one line; the traceback goes to the log
        traceback.print_exc()
        emit_message("error", message=f"unexpected {exc.__class__.__name__}: {exc}".splitlines()[0])
        return 1


if __name__ == "__main__":
    sys.exit(main())
