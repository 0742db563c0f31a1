import os
import pickle

import pytest
import torch

from capsv.models.checkpoint import CheckpointError, load_model, read_checkpoint, save_checkpoint
from capsv.models import SpeakerNet


def test_capsv_roundtrip_needs_no_model_flags(tmp_path):
    net = SpeakerNet("ResNetSE34", "SAP", nOut=64)
    path = tmp_path / "m.model"
    save_checkpoint(str(path), net, meta={"epoch": 3, "train_list_sha256": "abc"})
    loaded, ckpt = load_model(str(path))
    assert loaded.config == {"model": "ResNetSE34", "encoder_type": "SAP", "nOut": 64}
    assert ckpt["meta"]["epoch"] == 3
    for k, v in net.state_dict().items():
        torch.testing.assert_close(loaded.state_dict()[k], v)


def test_capsv_checkpoint_rejects_contradicting_flag(tmp_path):
    path = tmp_path / "m.model"
    save_checkpoint(str(path), SpeakerNet("ResNetSE34L", "TAP", nOut=32))
    with pytest.raises(CheckpointError, match="encoder_type"):
        load_model(str(path), encoder_type="CAP")


def test_reference_state_with_module_prefix_and_any_global_w(reference_dir, tmp_path):
    state = torch.load(reference_dir / "ResNetSE34L_CAP.model", weights_only=True)
    state = {"module." + k: v for k, v in state.items()}
    state["module.__S__.global_w"] = torch.zeros(7, 3)        # training-only: any shape is fine
    path = tmp_path / "dp.model"
    torch.save(state, path)
    net, _ = load_model(str(path), model="ResNetSE34L")
    assert net.config == {"model": "ResNetSE34L", "encoder_type": "CAP", "nOut": 512}


def test_mismatch_lists_keys_and_shapes(reference_dir):
    with pytest.raises(CheckpointError) as info:
        load_model(str(reference_dir / "ResNetSE34L_TAP.model"), model="ResNetSE34L",
                   encoder_type="SAP", nOut=256)
    text = str(info.value)
    assert "missing" in text and "pooling.sap_linear.weight" in text
    assert "shape mismatch" in text and "pooling.fc.weight" in text and "(512, 128)" in text


def test_reference_state_needs_backbone_name(reference_dir):
    with pytest.raises(CheckpointError, match="--model"):
        load_model(str(reference_dir / "ResNetSE34L_TAP.model"))


class _Exploit:
    def __reduce__(self):
        return (os.system, ("echo pwned > /dev/null",))


def test_code_running_pickle_is_refused(tmp_path):
    path = tmp_path / "evil.model"
    with open(path, "wb") as f:
        pickle.dump({"__S__.conv1.weight": _Exploit()}, f)
    with pytest.raises(CheckpointError, match="refused"):
        read_checkpoint(str(path))


@pytest.mark.parametrize("content", [b"", b"not a checkpoint at all"])
def test_garbage_files_give_clear_errors(tmp_path, content):
    path = tmp_path / "junk.model"
    path.write_bytes(content)
    with pytest.raises(CheckpointError, match="junk.model"):
        read_checkpoint(str(path))


def test_non_dict_checkpoint_is_unknown_format(tmp_path):
    path = tmp_path / "t.model"
    torch.save(torch.zeros(3), path)
    with pytest.raises(CheckpointError, match="unknown checkpoint format"):
        read_checkpoint(str(path))
