"""AMF (paper Eq. 3): the formula, the initialisation, resizing, options."""
import pytest
import torch
from torch import nn

from ssr_arch.amf_arch import AMF  # noqa: F401  (registers)
from ssr_utils.errors import OptionError


class _Const(nn.Module):
    """Stands in for an MLP: returns a fixed tensor, records its input."""

    def __init__(self, value):
        super().__init__()
        self.value = value
        self.seen = None

    def forward(self, x):
        self.seen = x
        return self.value


def _manual_bn(feat, bn):
    mean = feat.mean((0, 2, 3), keepdim=True)
    var = feat.var((0, 2, 3), unbiased=False, keepdim=True)
    w, b = bn.weight[None, :, None, None], bn.bias[None, :, None, None]
    return (feat - mean) / torch.sqrt(var + bn.eps) * w + b


def _amf_with_outputs(residual, alpha, beta, num_feat=6, cond=5):
    amf = AMF(num_feat, cond, hidden=128, residual=residual, zero_init=False)
    with torch.no_grad():
        amf.norm.weight.uniform_(0.5, 1.5)
        amf.norm.bias.uniform_(-0.5, 0.5)
    amf.mlp_alpha, amf.mlp_beta = _Const(alpha), _Const(beta)
    return amf


def test_eq3_for_given_submodule_outputs():
    torch.manual_seed(0)
    feat = torch.randn(3, 6, 5, 7) * 2 + 1
    cond = torch.randn(3, 5, 5, 7)
    alpha, beta = torch.randn(3, 6, 5, 7), torch.randn(3, 6, 5, 7)
    amf = _amf_with_outputs(False, alpha, beta).train()
    expected = (1 + alpha) * _manual_bn(feat, amf.norm) + beta
    torch.testing.assert_close(amf(feat, cond), expected, rtol=1e-5, atol=1e-5)
    assert amf.mlp_alpha.seen is cond and amf.mlp_beta.seen is cond

    amf_res = _amf_with_outputs(True, alpha, beta).train()
    expected_res = feat + alpha * _manual_bn(feat, amf_res.norm) + beta
    torch.testing.assert_close(amf_res(feat, cond), expected_res, rtol=1e-5, atol=1e-5)


def test_eval_mode_uses_running_statistics():
    torch.manual_seed(1)
    feat = torch.randn(2, 4, 6, 6)
    alpha, beta = torch.randn(2, 4, 6, 6), torch.randn(2, 4, 6, 6)
    amf = _amf_with_outputs(False, alpha, beta, num_feat=4)
    with torch.no_grad():
        amf.norm.running_mean.uniform_(-1, 1)
        amf.norm.running_var.uniform_(0.5, 2)
    amf.eval()
    bn = amf.norm
    normed = (feat - bn.running_mean[None, :, None, None]) / torch.sqrt(bn.running_var[None, :, None, None] + bn.eps)
    normed = normed * bn.weight[None, :, None, None] + bn.bias[None, :, None, None]
    torch.testing.assert_close(amf(feat, torch.randn(2, 5, 6, 6)), (1 + alpha) * normed + beta, rtol=1e-5, atol=1e-5)


def test_mlps_are_per_pixel_with_hidden_128_and_relu():
    amf = AMF(8, 3)
    for mlp in (amf.mlp_alpha, amf.mlp_beta):
        assert isinstance(mlp[0], nn.Conv2d) and mlp[0].kernel_size == (1, 1) and mlp[0].out_channels == 128
        assert isinstance(mlp[1], nn.ReLU)
        assert isinstance(mlp[2], nn.Conv2d) and mlp[2].kernel_size == (1, 1) and mlp[2].out_channels == 8
    assert isinstance(amf.norm, nn.BatchNorm2d)  # the paper's default


def test_zero_init_residual_form_is_exact_identity():
    torch.manual_seed(2)
    amf = AMF(6, 4).train()
    feat = torch.randn(2, 6, 8, 8) * 3 + 2
    assert torch.equal(amf(feat, torch.randn(2, 4, 8, 8)), feat)


def test_zero_init_paper_form_is_batch_norm_not_identity():
    torch.manual_seed(3)
    amf = AMF(6, 4, residual=False).train()
    feat = torch.randn(2, 6, 8, 8) * 3 + 2
    out = amf(feat, torch.randn(2, 4, 8, 8))
    torch.testing.assert_close(out, _manual_bn(feat, amf.norm), rtol=1e-5, atol=1e-5)
    assert (out - feat).abs().max() > 0.5  # why SSRUNet defaults to the residual form


def test_zero_init_still_trains_the_modulation():
    torch.manual_seed(4)
    amf = AMF(6, 4)
    out = amf(torch.randn(2, 6, 8, 8), torch.randn(2, 4, 8, 8))
    (out * torch.randn_like(out)).sum().backward()
    assert amf.mlp_alpha[2].weight.grad.abs().sum() > 0
    assert amf.mlp_beta[2].weight.grad.abs().sum() > 0


def test_condition_is_resized_to_the_feature():
    torch.manual_seed(5)
    amf = AMF(4, 3, zero_init=False).eval()
    feat = torch.randn(1, 4, 10, 12)
    cond = torch.randn(1, 3, 5, 6)
    up = torch.nn.functional.interpolate(cond, size=(10, 12), mode='bilinear', align_corners=False)
    torch.testing.assert_close(amf(feat, cond), amf(feat, up))
    alpha, beta = amf.modulation(cond, (10, 12))
    torch.testing.assert_close(amf.apply_modulation(feat, alpha, beta), amf(feat, cond))


def test_group_norm_option_and_bad_options():
    amf = AMF(8, 3, norm='group', num_groups=4)
    assert isinstance(amf.norm, nn.GroupNorm) and amf.norm.num_groups == 4
    assert amf(torch.randn(1, 8, 4, 4), torch.randn(1, 3, 4, 4)).shape == (1, 8, 4, 4)
    with pytest.raises(OptionError, match='norm'):
        AMF(8, 3, norm='layer')
    with pytest.raises(OptionError, match='hidden'):
        AMF(8, 3, hidden=0)
    with pytest.raises(ValueError, match='channels'):
        AMF(8, 3)(torch.randn(1, 8, 4, 4), torch.randn(1, 2, 4, 4))


def test_registered_and_usable_from_options():
    from basicsr.archs import build_network
    amf = build_network({'type': 'AMF', 'num_feat': 4, 'cond_channels': 2, 'hidden': 16})
    assert isinstance(amf, AMF) and amf.mlp_alpha[0].out_channels == 16
