"""--eval_short auto: whole utterances when most files are shorter than one crop, but only
when every file is long enough to be scored whole (else the paper's padding is the only way;
a 0.05 s file through the API once failed with "too short for whole-utterance scoring")."""
from __future__ import annotations

from capsv.evaluation.policy import choose_eval_frames
from capsv.protocol import MIN_WHOLE_SAMPLES, crop_samples


def test_mostly_short_files_are_scored_whole():
    lengths = [crop_samples(100)] * 3 + [crop_samples(400)]
    frames, note = choose_eval_frames(lengths, 350)
    assert frames == 0 and "75% of the test files" in note


def test_a_file_too_short_to_score_whole_keeps_the_crops():
    lengths = [MIN_WHOLE_SAMPLES - 1] + [crop_samples(100)] * 3
    assert choose_eval_frames(lengths, 350) == (350, None)
    assert choose_eval_frames([MIN_WHOLE_SAMPLES] * 4, 350)[0] == 0


def test_pad_and_long_files_keep_the_crops():
    assert choose_eval_frames([crop_samples(100)] * 4, 350, "pad") == (350, None)
    assert choose_eval_frames([crop_samples(400)] * 4, 350) == (350, None)
