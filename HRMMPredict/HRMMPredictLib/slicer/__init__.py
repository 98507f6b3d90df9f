"""What the HRMMPredict panel needs besides Qt: one case read from MRML nodes and the
prediction from them (``panel_logic``), the result as the panel shows and exports it
(``panel_results``), the guess of which series is which sequence (``series_guess``), the
Python packages this panel needs (``packages``), and the process the prediction runs in
(``predict_worker``, watched by :mod:`ClinicalMRICommonLib.process_runner`). Nothing here
imports Qt; only ``panel_logic`` needs MRML. Imports nothing at package level (Slicer's
start-up rule)."""
