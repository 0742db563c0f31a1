"""CAP as it trains: the low-cost form against the literal (Nq, Ns, Tq, Ts) form, train mode.

Values and gradients with respect to the frames and to every parameter must agree, so the
training objective optimised through the cheap form is the paper's.
"""
from __future__ import annotations

import torch

from capsv.models.pooling import CAP


def _pair(seed: int, d: int = 24, e: int = 16):
    torch.manual_seed(seed)
    cheap = CAP(d, e).double().train()
    literal = CAP(d, e, literal=True).double().train()
    literal.load_state_dict(cheap.state_dict())
    with torch.no_grad():   # non-trivial BatchNorm affine parameters
        cheap.att_bn.weight.uniform_(0.5, 1.5)
        cheap.att_bn.bias.uniform_(-0.2, 0.2)
        literal.load_state_dict(cheap.state_dict())
    return cheap, literal


def _run(module: CAP, support: torch.Tensor, query: torch.Tensor, weights: torch.Tensor):
    s = support.clone().requires_grad_(True)
    q = query.clone().requires_grad_(True)
    e_s, e_q = module(s, q)
    # A loss that mixes both outputs with random weights, so every gradient path is exercised.
    loss = (e_s * weights[0]).sum() + (e_q * weights[1]).sum() + (e_s * e_q).sum().tanh()
    loss.backward()
    grads = {name: p.grad.clone() for name, p in module.named_parameters()}
    return (e_s.detach(), e_q.detach()), (s.grad, q.grad), grads, module.att_bn.running_mean.clone()


def test_cheap_cap_equals_literal_in_values_and_gradients():
    cheap, literal = _pair(0)
    torch.manual_seed(1)
    support = torch.randn(5, 24, 9, dtype=torch.float64).relu()     # backbone frames are >= 0
    query = torch.randn(10, 24, 7, dtype=torch.float64).relu()
    weights = torch.randn(2, 10, 5, 16, dtype=torch.float64)

    out_c, frame_grads_c, grads_c, running_c = _run(cheap, support, query, weights)
    out_l, frame_grads_l, grads_l, running_l = _run(literal, support, query, weights)

    for a, b in zip(out_c, out_l):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    for a, b in zip(frame_grads_c, frame_grads_l):
        assert a.abs().max() > 0
        torch.testing.assert_close(a, b, rtol=1e-9, atol=1e-12)
    assert set(grads_c) == set(grads_l) == {"meta_learner.0.weight", "meta_learner.0.bias",
                                            "att_bn.weight", "att_bn.bias", "fc"}
    for name in grads_c:
        assert grads_c[name].abs().max() > 0, name
        torch.testing.assert_close(grads_c[name], grads_l[name], rtol=1e-9, atol=1e-12)
    # Train mode: BatchNorm statistics were taken over the pooled vectors, identically.
    torch.testing.assert_close(running_c, running_l, rtol=1e-12, atol=1e-14)


def test_cheap_cap_in_float32_is_as_accurate_as_literal():
    """The paper's frame counts (Ts = Tq = 51) in float32: both forms sit within float32
    round-off (relative 5e-5 on whole tensors) of the float64 result; neither is worse."""
    cheap64, _ = _pair(2, d=32, e=24)
    cheap32, literal32 = (m.float() for m in _pair(2, d=32, e=24))
    torch.manual_seed(3)
    support = torch.randn(4, 32, 51).relu()
    query = torch.randn(8, 32, 51).relu()
    weights = torch.randn(2, 8, 4, 24)

    def flat(run):
        outputs, frame_grads, grads, _ = run
        return list(outputs) + list(frame_grads) + [grads[k] for k in sorted(grads)]

    truth = flat(_run(cheap64, support.double(), query.double(), weights.double()))
    for form in (cheap32, literal32):
        for got, ref in zip(flat(_run(form, support, query, weights)), truth):
            assert (got.double() - ref).norm() <= 5e-5 * ref.norm()
