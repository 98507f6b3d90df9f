"""Human-in-the-loop pre-annotation with active learning (the CNS-tumour annotation
consensus, section 7 "human-machine interactive annotation").

- ``store``: the loop folder (cases, standard set, reviews, status), numpy/SimpleITK only;
- ``audit``: the hash-chained audit trail and the folder lock (standard library);
- ``ranking``: uncertainty statistics and the diverse active-learning queue (numpy);
- ``model``: MONAI training and pre-labelling (torch and MONAI imported inside its
  functions); the model bundle, its loading and ``propose`` are
  ``ClinicalMRICommonLib.segmentation_model`` (shared with StrokeLesion);
- ``cli``: ``annotation-qc loop ...``;
- ``review_logic``: the Slicer panel's "Pre-annotation review" (MRML, no Qt).

This file imports nothing (Slicer start-up).
"""
