"""Input pipeline: random 2 s training crops per second from 8 s 16 kHz WAV files.

capsv reads only the crop: for a plain PCM16 WAV, the header is parsed once per file and a crop
is one os.pread (capsv.audio._open_pcm16); the baseline reads each whole file with soundfile
and crops in memory (what voxceleb_trainer's loader does). 0, 1 and 2 DataLoader workers.
"""
from __future__ import annotations

import os
import tempfile

import numpy as np
import soundfile as sf
import torch
from torch.utils.data import ConcatDataset, DataLoader, Dataset

from common import Timer, median, row

from capsv.audio import crop_samples, load_audio, load_random_crop

FRAMES = 200            # 2 s crops, as in the paper's training


class Crops(Dataset):
    def __init__(self, paths, whole_file: bool):
        self.paths, self.whole_file = paths, whole_file
        self.lengths = [sf.info(p).frames for p in paths]

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, index):
        rng = np.random.default_rng(index)
        if self.whole_file:
            audio = load_audio(self.paths[index])
            start = int(rng.random() * (len(audio) - crop_samples(FRAMES)))
            return torch.from_numpy(audio[start:start + crop_samples(FRAMES)].copy())
        return torch.from_numpy(load_random_crop(self.paths[index], FRAMES, rng, self.lengths[index]))


def main(n_files: int = 400, repeats: int = 3, passes: int = 1) -> None:
    """Readers alternate within each repeat; the median of the repeats is reported.
    ``passes`` > 1 reads every file that many times per run, so the workers' start-up is
    amortised over more crops."""
    rng = np.random.default_rng(0)
    with tempfile.TemporaryDirectory() as folder:
        paths = []
        for i in range(n_files):
            paths.append(os.path.join(folder, f"{i:04d}.wav"))
            sf.write(paths[-1], (rng.standard_normal(16000 * 8) * 3000).astype(np.int16), 16000)
        for workers in (0, 1, 2):
            rates = {True: [], False: []}
            for _ in range(repeats):
                for whole_file in (True, False):
                    data = ConcatDataset([Crops(paths, whole_file)] * passes)
                    loader = DataLoader(data, batch_size=20, num_workers=workers)
                    with Timer() as t:
                        n = sum(batch.shape[0] for batch in loader)
                    rates[whole_file].append(n / t.seconds)
            for whole_file in (True, False):
                row("input_pipeline", reader="whole file + crop (baseline)" if whole_file
                    else "cached-header pread crop (capsv)", workers=workers, crops=n,
                    repeats=repeats, crops_per_s=round(median(rates[whole_file]), 1),
                    all_rates=[round(r, 1) for r in rates[whole_file]],
                    **({} if whole_file else
                       {"speedup": round(median(rates[False]) / median(rates[True]), 2)}))


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--passes", type=int, default=1, help="reads of every file per run")
    main(passes=parser.parse_args().passes)
