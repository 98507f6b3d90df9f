"""Judging models: the statistics checked against published reference values (``stats``:
AUC with DeLong, Youden, calibration, decision curves), the evaluation of a bundle's models
on its own split and on other cohorts (``evaluate``) and the offline HTML report
(``report``). Imports nothing at package level."""
