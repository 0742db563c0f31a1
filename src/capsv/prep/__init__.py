"""Corpus preparation: everything that builds a data set on disk before training reads it.

Each stage is idempotent (a finished stage leaves a marker and is skipped when run again):
download -> archive (extract / concatenate) -> convert (m4a -> wav) -> voxceleb (lists);
musan (augmentation data); synth/ (the procedural corpus of the demo and the tests).
"""
