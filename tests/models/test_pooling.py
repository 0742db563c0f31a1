import pytest
import torch

from capsv.models.pooling import CAP, SAP, TAP, cap_attention, cap_attention_literal


def _unit(shape, generator):
    return torch.nn.functional.normalize(torch.randn(*shape, generator=generator, dtype=torch.float64), dim=-1)


@pytest.mark.parametrize("g, ns, nq, ts, tq", [(1, 3, 5, 7, 11), (4, 10, 10, 88, 88), (2, 1, 1, 1, 9)])
def test_cheap_attention_equals_literal_float64(g, ns, nq, ts, tq):
    gen = torch.Generator().manual_seed(0)
    hs, hq = _unit((g, ns, ts, 16), gen), _unit((g, nq, tq, 16), gen)
    for cheap, literal in zip(cap_attention(hs, hq, 0.05), cap_attention_literal(hs, hq, 0.05)):
        assert (cheap - literal).abs().max().item() < 1e-12


def _pair_modules(d=32, e=24):
    torch.manual_seed(1)
    cheap = CAP(d, e)
    with torch.no_grad():
        cheap.att_bn.running_mean.uniform_(-0.5, 0.5)
        cheap.att_bn.running_var.uniform_(0.5, 2.0)
    literal = CAP(d, e, literal=True)
    literal.load_state_dict(cheap.state_dict())
    return cheap, literal


def test_cap_module_cheap_equals_literal_eval_and_train():
    cheap, literal = _pair_modules()
    support = torch.randn(4, 32, 13).relu()
    query = torch.randn(6, 32, 9).relu()
    for mode in (False, True):
        cheap.train(mode)
        literal.train(mode)
        for a, b in zip(cheap(support, query), literal(support, query)):
            assert a.shape == (6, 4, 24)
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_cap_is_symmetric():
    cheap, _ = _pair_modules()
    cheap.eval()
    a = torch.randn(3, 32, 10).relu()
    b = torch.randn(5, 32, 12).relu()
    e_s, e_q = cheap(a, b)          # a supports, b queries -> (5, 3, E)
    f_s, f_q = cheap(b, a)          # roles swapped -> (3, 5, E)
    torch.testing.assert_close(e_s.transpose(0, 1), f_q, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(e_q.transpose(0, 1), f_s, rtol=1e-5, atol=1e-5)


def test_grouped_equals_separate_groups():
    cheap, _ = _pair_modules()
    cheap.eval()
    s = torch.randn(3, 2, 32, 8).relu()
    q = torch.randn(3, 4, 32, 8).relu()
    g_s, g_q = cheap.forward_grouped(s, q)
    for k in range(3):
        e_s, e_q = cheap(s[k], q[k])
        torch.testing.assert_close(g_s[k], e_s)
        torch.testing.assert_close(g_q[k], e_q)


def test_cap_projection_is_initialised():
    cap = CAP(128, 512)
    assert torch.isfinite(cap.fc).all() and cap.fc.abs().max() < 1.0


def test_tap_and_sap_shapes_and_sap_weights_sum_to_one():
    x = torch.randn(2, 16, 7)
    assert TAP(16, 8)(x).shape == (2, 8)
    sap = SAP(16, 8)
    assert sap(x).shape == (2, 8)
    # a frame repeated over time pools to itself only if the softmax weights sum to one
    constant = torch.randn(2, 16, 1).expand(2, 16, 7)
    torch.testing.assert_close(sap(constant), sap.fc(constant[:, :, 0]))
