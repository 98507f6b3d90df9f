"""ClinicalMRICommonLib: the one owner of what the extension's three modules share.

Packages and modules (import each where it is needed; this file imports nothing, so Slicer's
start-up does not load SimpleITK or pandas through it):

- ``errors``: :class:`~ClinicalMRICommonLib.errors.UserError` and ``run_cli``;
- ``cli``: the one command-line convention (parsers, --version, --json, --overwrite, exit codes);
- ``images``, ``masks``, ``grids``: image input with its checks, binary masks, voxel grids;
- ``dicom``: DICOM series folders (one series per folder); ``orientation``: the canonical voxel
  order (PIR: sagittal slices stay the slice axis);
- ``audit``: the one tamper-evident log (SHA-256 chain, site-key HMAC signature, signed head),
  signed documents, the site key;
- ``locks``: the one lock of the three tools and exclusive (exactly-one-wins) publication;
- ``files``: the atomic writer, SHA-256, strict JSON, JSON-lines logs;
- ``tables``: CSV tables with one-line errors;
- ``quality``: image-quality grades and SNR/CNR;
- ``agreement``: ICC, overlap/surface metrics and lesion matching, STAPLE/majority consensus;
- ``mrml_bridge``: SimpleITK images <-> Slicer nodes, layouts, the Segment Editor (needs Slicer).
"""

#: The extension's version (also pyproject.toml's; Testing/common checks they agree).
__version__ = "0.2.0"
