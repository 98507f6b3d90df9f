"""Radiomics: pyradiomics features of each sequence's ROI (``features``: crop + N4
preprocessing, selective and cached cohort extraction), the feature selection as
scikit-learn transformers (``selection``) and the radiomics models with their patient-wise
split and cross-validation (``model``). Imports nothing at package level."""
