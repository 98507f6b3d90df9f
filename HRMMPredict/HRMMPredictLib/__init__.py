"""HRMMPredict library: the GUI-free science behind the HRMMPredict Slicer module and ``hrmm``.

Top level: ``sequences``, ``roi``, ``cohort`` (the cohort manifest CSV), ``bundle`` (model
bundles and their manifest.json), ``training``, ``predict``, ``fusion``, ``synthetic``;
packages ``radiomics``, ``deep``, ``evaluation``, ``slicer`` (the panel's non-Qt support) and
``cli`` (see docs/hrmm_method.md, "Layout of HRMMPredictLib"). Imports nothing here.
"""
