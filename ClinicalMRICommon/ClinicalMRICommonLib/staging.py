"""All-or-nothing output folders (the BIDS export, a de-identified DICOM folder).

:func:`staged_folder` yields a hidden folder beside the output (``.<name>.partial-<pid>-<random>``);
when the block ends without error it is renamed onto the output in one step (an earlier
output, when the caller allows replacing it, is moved aside first and removed after), so a
refused input, a full disk or a killed process never leaves a half-written output folder.
Staging folders of earlier runs whose process is gone are removed when the next run starts.
An OSError is reported as one UserError naming the output, never the hidden folder.

The folder counterpart of :func:`ClinicalMRICommonLib.files.atomic_path` (one owner for every
module: the stroke BIDS export and de-identification use it).
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import shutil
from pathlib import Path
from typing import Iterator

from .errors import UserError, os_error_message
from .locks import pid_alive


def _stage_pattern(out: Path) -> re.Pattern:
    return re.compile(re.escape(f".{out.name}.") + r"(partial|old)-(\d+)-[0-9a-f]+$")


def clean_stale_stages(out: str | os.PathLike) -> list[Path]:
    """Remove the hidden staging folders of earlier runs into ``out`` whose process is gone."""
    out = Path(out)
    pat = _stage_pattern(out)
    removed = []
    if not out.parent.is_dir():
        return removed
    for p in out.parent.iterdir():
        m = pat.match(p.name)
        if m and p.is_dir() and int(m.group(2)) != os.getpid() and not pid_alive(int(m.group(2))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


@contextlib.contextmanager
def staged_folder(out: str | os.PathLike, what: str = "output folder") -> Iterator[Path]:
    """Yield a hidden staging folder for ``out``; publish it onto ``out`` when the block ends
    without error (see the module docstring). The caller checks beforehand whether ``out``
    may be replaced."""
    out = Path(out)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        clean_stale_stages(out)
        stage = out.parent / f".{out.name}.partial-{os.getpid()}-{secrets.token_hex(4)}"
        stage.mkdir()
    except OSError as exc:
        raise UserError(os_error_message(exc, out, f"could not write the {what}")) from None
    try:
        yield stage
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}-{secrets.token_hex(4)}"
            os.rename(out, old)
            os.rename(stage, out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(stage, out)
    except UserError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise UserError(str(exc).replace(str(stage), str(out)) + "; nothing was written") from None
    except OSError as exc:
        shutil.rmtree(stage, ignore_errors=True)
        raise UserError(os_error_message(exc, out, f"could not write the {what}") + "; nothing was written") from None
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
