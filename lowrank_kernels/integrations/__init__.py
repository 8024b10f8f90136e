"""Integrations with training frameworks, each importing its framework only when used.

* :mod:`lowrank_kernels.integrations.hf` — Hugging Face ``transformers.Trainer``.
* :mod:`lowrank_kernels.integrations.lightning` — Lightning ``Callback``.
"""
