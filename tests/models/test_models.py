import pytest
import torch

from capsv.models import BACKBONES, SpeakerNet
from capsv.models.pooling import POOLINGS


@pytest.mark.parametrize("name, reduction", [("ResNetSE34L", 4), ("ResNetSE34", 8)])
def test_backbone_shapes(name, reduction):
    net = BACKBONES.build(name).eval()
    with torch.no_grad():
        out = net(torch.randn(2, 1, 64, 202))
    assert out.shape == (2, 128, -(-202 // reduction))


@pytest.mark.parametrize("encoder", ["TAP", "SAP"])
def test_instance_embedding_shape(encoder):
    net = SpeakerNet("ResNetSE34L", encoder, nOut=64).eval()
    with torch.no_grad():
        emb = net.embed(torch.randn(3, 16240) * 1000)
    assert emb.shape == (3, 64)


def test_cap_net_is_pairwise():
    net = SpeakerNet("ResNetSE34", "CAP", nOut=32).eval()
    assert net.pairwise
    with pytest.raises(TypeError):
        net.embed(torch.randn(1, 16240))
    with torch.no_grad():
        frames = net.frames(torch.randn(3, 16240) * 1000)
        e_s, e_q = net.pooling(frames[:2], frames[2:])
    assert e_s.shape == e_q.shape == (1, 2, 32)


def test_unknown_names_list_choices():
    with pytest.raises(KeyError, match="ResNetSE34L"):
        BACKBONES.build("ResNet999")
    with pytest.raises(KeyError, match="CAP"):
        POOLINGS.build("XYZ", in_dim=8, nOut=4)


def test_parameter_names_follow_reference(reference_dir):
    state = torch.load(reference_dir / "ResNetSE34L_CAP.model", weights_only=True)
    ours = SpeakerNet("ResNetSE34L", "CAP").state_dict()
    ref_names = {k.removeprefix("__S__.") for k in state
                 if not k.startswith(("__S__.torchfb", "__S__.global_w"))}
    our_names = {k.split(".", 1)[1] for k in ours}
    assert our_names == ref_names
