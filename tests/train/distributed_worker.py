"""Run by tests/test_distributed.py under torchrun: ``capsv train <argv>`` in this process,
then save this rank's trained parameters to ``$CAPSV_TEST_OUT/rank<RANK>.pt``.

The network and objective classes are subclassed only to keep a handle on the instances
train() builds (rank 1 writes no checkpoint, and the test must see its weights too)."""
import os
import sys

import torch

import capsv.train.state as train_module   # where the run's network and objective are built
from capsv.cli import main

made = {}


class KeptNet(train_module.SpeakerNet):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made["net"] = self


class KeptObjective(train_module.Objective):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        made["objective"] = self


train_module.SpeakerNet = KeptNet
train_module.Objective = KeptObjective

if __name__ == "__main__":
    torch.set_num_threads(1)
    rc = main(sys.argv[1:])
    params = {f"net.{k}": v.detach().clone() for k, v in made["net"].named_parameters()}
    params.update({f"objective.{k}": v.detach().clone()
                   for k, v in made["objective"].named_parameters()})
    torch.save(params, os.path.join(os.environ["CAPSV_TEST_OUT"], f"rank{os.environ['RANK']}.pt"))
    sys.exit(rc)
