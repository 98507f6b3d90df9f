"""Small helpers every panel uses between its widgets and its logic (no Qt at import time).

- Path fields: a ``pathlib.Path`` parameter-node field is never None: its default is
  ``Path()``, which the serializer writes and the ``ctkPathLineEdit`` connector shows as "."
  (parameterNodeWrapper/serializers.py ``PathSerializer.default``/``write``,
  guiConnectors.py ``ctkPathLineEditToPathConnector.write``: ``str(value)``), and an emptied
  field reads back as ``Path("")`` == ``Path(".")``. :func:`path_is_set` /
  :func:`path_or_none` treat ``None``, "" and "." as "not chosen", so no panel looks for
  files in Slicer's working directory or remembers "." as a folder.
- Path history: a ``ctkPathLineEdit`` with a ``settingKey`` keeps its drop-down history in the
  application settings, but only when ``addCurrentPathToHistory()`` is called (CTK
  ctkPathLineEdit.cpp; nothing calls it for you). :func:`remember_path` calls it after a path
  was used successfully, and never for an unset path.
- Actions: ``slicer.util.tryWithErrorDisplay`` shows the error dialog and then re-raises
  (Base/Python/slicer/util.py, v5.10.0 and v5.12.0). :func:`run_action` keeps a button's
  contract: the error is shown once and the action returns ``(False, None)``, so the panel
  can update its buttons and clean up instead of the exception escaping the Qt slot.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

__all__ = ["path_is_set", "path_or_none", "remember_path", "run_action"]


def path_is_set(value) -> bool:
    """False for None, "" and "." (an unset ``pathlib.Path`` parameter)."""
    return value is not None and str(value).strip() not in ("", ".")


def path_or_none(value) -> Path | None:
    """The path, or None when it is unset (see :func:`path_is_set`)."""
    return Path(os.fspath(value)) if path_is_set(value) else None


def remember_path(line_edit) -> bool:
    """Add a ``ctkPathLineEdit``'s current path to its history (kept under its
    ``settingKey``); nothing for an unset path. Returns whether it was added."""
    if not path_is_set(line_edit.currentPath):
        return False
    line_edit.addCurrentPathToHistory()
    return True


def run_action(title: str, function, *args, wait_cursor: bool = True, **kwargs) -> tuple[bool, object]:
    """Run ``function(*args, **kwargs)`` for a button: ``(True, result)``, or ``(False, None)``
    after Slicer's error dialog (``title`` and the error) when it raised."""
    import slicer

    try:
        with slicer.util.tryWithErrorDisplay(title, waitCursor=wait_cursor):
            return True, function(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - shown by tryWithErrorDisplay, which re-raises
        app = getattr(slicer, "app", None)
        if app is not None and app.testingEnabled():  # no dialog in testing mode: keep it in the log
            logging.error("%s %s", title, exc)
        return False, None
