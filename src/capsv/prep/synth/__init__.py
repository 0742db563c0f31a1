"""The procedural corpus: speakers drawn from a voice model (voice), heard through a random
channel (channel), written as a VoxCeleb-shaped tree with lists (corpus)."""
