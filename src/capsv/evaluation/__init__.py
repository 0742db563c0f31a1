"""Evaluation: one pipeline (inputs -> per-file features -> pair scores -> metrics) used by
``capsv eval``, the trainer (single process and torchrun), ``capsv embed`` and the API.

Imports nothing from :mod:`capsv.train`.
"""
