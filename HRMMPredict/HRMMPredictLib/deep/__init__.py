"""The deep model: the paper's 2.5D crops of T1WI, T2WI and FS-T2WI (``input``), a
cohort's stacks with their cache (``cohort``) and MONAI's DenseNet169 with its training,
inference and safetensors files (``model``). Imports nothing at package level (torch is
heavy: only ``model`` imports it)."""
