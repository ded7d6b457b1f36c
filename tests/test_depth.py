"""MonocularDepth: the weight-free prior and transformers backends loaded from a local folder."""
import logging

import pytest
import torch

from conftest import basicsr_messages
from ssr_arch import depth_arch
from ssr_arch.depth_arch import MonocularDepth
from ssr_utils.errors import OptionError


def _check_depth(depth, shape):
    assert depth.shape == shape
    assert not depth.requires_grad
    flat = depth.flatten(1)
    assert torch.allclose(flat.min(1).values, torch.zeros(shape[0]))  # per-image min-max normalised
    assert torch.allclose(flat.max(1).values, torch.ones(shape[0]))


def test_prior_is_deterministic_normalised_and_logged_once(monkeypatch):
    monkeypatch.setattr(depth_arch, '_PRIOR_LOGGED', False)
    with basicsr_messages() as records:
        net = MonocularDepth()  # the default backend is the prior
        img = torch.rand(2, 3, 40, 56, generator=torch.Generator().manual_seed(0))
        a = net(img)
        b = net(img)
        net(torch.rand(1, 3, 300, 20))  # larger than the working size: resized back to the input's H×W
    _check_depth(a, (2, 1, 40, 56))
    assert torch.equal(a, b)
    assert sum('PRIOR' in m for m in records) == 1
    assert net(torch.rand(1, 3, 300, 20)).shape == (1, 1, 300, 20)


def test_prior_cues():
    # flat texture: the vertical cue alone, lower rows nearer
    flat = torch.full((1, 3, 32, 32), 0.5)
    d = MonocularDepth()(flat)[0, 0]
    assert d[-1].mean() > d[0].mean() + 0.5
    # a sharp textured band on a blank image is nearer than the blank rows just above it
    img = torch.full((1, 3, 64, 64), 0.5)
    img[:, :, 8:24] = torch.rand(1, 3, 16, 64, generator=torch.Generator().manual_seed(1))
    d2 = MonocularDepth()(img)[0, 0]
    assert d2[12:20].mean() > d2[36:44].mean() - 0.2 and d2[12:20].mean() > d[12:20].mean()


def test_frozen_and_registered():
    from basicsr.archs import build_network
    net = build_network({'type': 'MonocularDepth', 'backend': 'prior'})
    assert isinstance(net, MonocularDepth)
    net.train()
    assert not net.training
    with pytest.raises(OptionError, match='backend'):
        MonocularDepth('midas_v9')
    with pytest.raises(OptionError, match='model_path'):
        MonocularDepth('dpt')
    with pytest.raises(OptionError, match='model_path'):
        MonocularDepth('dpt', model_path='/nonexistent/dpt')


def _tiny_dpt(path):
    from transformers import DPTConfig, DPTForDepthEstimation
    torch.manual_seed(0)
    cfg = DPTConfig(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                    patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                    backbone_out_indices=[0, 1, 2, 3], head_hidden_size=8)
    model = DPTForDepthEstimation(cfg).eval()
    model.save_pretrained(str(path))
    return model


def test_dpt_backend_from_local_folder(tmp_path):
    pytest.importorskip('transformers')
    model = _tiny_dpt(tmp_path / 'dpt')
    net = MonocularDepth('dpt', model_path=str(tmp_path / 'dpt'), input_size=32)
    assert all(not p.requires_grad for p in net.parameters())
    img = torch.rand(2, 3, 24, 40, generator=torch.Generator().manual_seed(0))
    depth = net(img)
    _check_depth(depth, (2, 1, 24, 40))
    # the loaded weights are the saved ones: same prediction as the original model on the same input
    # resized as transformers' image processors resize (PIL bicubic: antialiased when it shrinks)
    x = torch.nn.functional.interpolate(img, size=(32, 32), mode='bicubic', align_corners=False, antialias=True)
    with torch.no_grad():
        pred = model(pixel_values=(x.clamp(0, 1) - 0.5) / 0.5).predicted_depth[:, None]
    pred = torch.nn.functional.interpolate(pred, size=(24, 40), mode='bicubic', align_corners=False)
    assert torch.allclose(depth, depth_arch.minmax_normalise(pred), atol=1e-5)
    with pytest.raises(OptionError, match='backend'):  # a DPT folder is not a Depth Anything model
        MonocularDepth('depth_anything', model_path=str(tmp_path / 'dpt'))


def test_depth_anything_backend_from_local_folder(tmp_path):
    transformers = pytest.importorskip('transformers')
    torch.manual_seed(0)
    backbone = transformers.Dinov2Config(hidden_size=16, num_hidden_layers=4, num_attention_heads=2,
                                         intermediate_size=32, image_size=28, patch_size=14,
                                         out_features=['stage1', 'stage2', 'stage3', 'stage4'],
                                         reshape_hidden_states=False)
    cfg = transformers.DepthAnythingConfig(backbone_config=backbone, neck_hidden_sizes=[8, 8, 16, 16],
                                           fusion_hidden_size=8, head_hidden_size=8, reassemble_hidden_size=16)
    transformers.DepthAnythingForDepthEstimation(cfg).save_pretrained(str(tmp_path / 'da'))
    net = MonocularDepth('depth_anything', model_path=str(tmp_path / 'da'), input_size=28)
    _check_depth(net(torch.rand(1, 3, 30, 45, generator=torch.Generator().manual_seed(2))), (1, 1, 30, 45))
