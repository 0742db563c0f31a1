"""Data: lists, sampler, datasets, VoxCeleb preparation, augmentation, synthetic corpus."""
