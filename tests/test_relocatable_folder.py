"""Relocatable model folders: the frozen parts that load from folders of their own (the SVKR's depth network, a
Stable Diffusion base or the project's prior) travel inside the model folder with relative paths, so a folder
moved elsewhere, with the experiments it came from deleted, loads and gives the same image."""
import json
import os
import os.path as osp
import shutil
import sys

import pytest
import torch
import yaml

from conftest import ROOT, tiny_svkr_opt
from ssr_pipelines import SSRPipeline
from ssr_pipelines.builder import load_pipeline
from ssr_utils.errors import OptionError

sys.path.insert(0, osp.join(ROOT, 'scripts'))
import export_model  # noqa: E402

TINY_DPT = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                reassemble_factors=[2, 1, 0.5, 0.25], backbone_out_indices=[0, 1, 2, 3], head_hidden_size=8)


def _experiments(root, pca_path):
    """``root/experiments`` as training leaves it: a depth network folder, a frozen diffusion base (``unet/``,
    ``vae/``), the SVKR and SSR checkpoints, and the SSR option file that names them all by absolute path."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    import ssr_arch  # noqa: F401  (registers)
    from basicsr.archs import build_network
    from ssr_arch.depth_arch import TransformersDepthNet
    from ssr_arch.ssr_unet_arch import tiny_config
    exp = root / 'experiments'
    torch.manual_seed(0)
    depth = TransformersDepthNet('dpt', config=TINY_DPT).eval()
    with torch.no_grad():
        for p in depth.parameters():
            p.add_(0.05 * torch.randn_like(p))
    depth_folder = depth.save_pretrained(str(exp / 'train_Depth' / 'depth_model'))
    cfg = tiny_config()
    UNet2DConditionModel(**cfg['unet']).save_pretrained(str(exp / 'prior' / 'unet'))
    AutoencoderKL(**cfg['vae']).save_pretrained(str(exp / 'prior' / 'vae'))
    svkr_opt = tiny_svkr_opt(pca_path=pca_path)
    svkr_opt['depth_opt'] = dict(type='MonocularDepth', backend='dpt', model_path=depth_folder, input_size=32)
    svkr = build_network(svkr_opt)
    net = dict(type='SSRUNet', pca_path=pca_path, pretrained_path=str(exp / 'prior'), null_text_length=4,
               lr_encoder=cfg['lr_encoder'], map_encoder=cfg['map_encoder'], amf=cfg['amf'])
    unet = build_network(net)
    with torch.no_grad():
        for amf in unet.amf.values():
            for mlp in (amf.mlp_alpha, amf.mlp_beta):
                mlp[-1].weight.normal_(0, 0.05)
    (exp / 'ckpt').mkdir()
    torch.save({'params': svkr.state_dict()}, exp / 'ckpt' / 'svkr.pth')
    torch.save({'params': unet.state_dict()}, exp / 'ckpt' / 'ssr.pth')
    opt = dict(name='ssr_t', model_type='SSRModel', scale=4, num_gpu=0, network_g=net, network_svkr=svkr_opt,
               conditions=dict(source='svkr'),
               diffusion=dict(num_train_timesteps=100, sampler='ddim', num_inference_steps=2, seed=0, color_fix='none'),
               path=dict(pretrain_network_g=str(exp / 'ckpt' / 'ssr.pth'), param_key_g='params',
                         pretrain_network_svkr=str(exp / 'ckpt' / 'svkr.pth'), param_key_svkr='params'))
    opt_file = root / 'ssr.yml'
    opt_file.write_text(yaml.safe_dump(opt))
    return str(exp), str(opt_file)


def _json_texts(folder):
    texts = {}
    for d, _, files in os.walk(folder):
        for f in files:
            if f.endswith('.json'):
                with open(osp.join(d, f)) as fh:
                    texts[osp.relpath(osp.join(d, f), folder)] = fh.read()
    return texts


@torch.no_grad()
def test_an_exported_folder_moved_with_the_experiments_deleted_gives_the_same_image(tmp_path, pca_path):
    pca = str(tmp_path / 'pca.pth')
    shutil.copy(pca_path, pca)  # the PCA goes with the experiments too
    exp, opt_file = _experiments(tmp_path, pca)
    lr = torch.rand(1, 3, 12, 16, generator=torch.Generator().manual_seed(0))
    expected = load_pipeline(opt_file, device='cpu')(lr, seed=3, return_maps=True)
    assert expected.depth.std() > 0  # the depth network is used (not the flat prior)
    model = str(tmp_path / 'models' / 'ssr_t')
    referenced = str(tmp_path / 'models' / 'ssr_ref')
    assert export_model.main(['-i', opt_file, '-o', model]) == 0  # default: small parts are copied
    assert export_model.main(['-i', opt_file, '-o', referenced, '--reference-parts']) == 0
    assert osp.isfile(osp.join(model, 'depth_network', 'config.json'))
    texts = _json_texts(model)
    assert not any(str(tmp_path) in text for text in texts.values()), 'an absolute path is left in the folder'
    assert json.loads(texts['svkr/config.json'])['depth_opt']['model_path'] == 'depth_network'
    assert json.loads(texts['ssr_unet/config.json'])['pretrained_path'] is None
    assert any(exp in text for text in _json_texts(referenced).values())
    # moved elsewhere, the experiments and the PCA deleted
    moved = str(tmp_path / 'elsewhere' / 'ssr_t')
    shutil.move(model, moved)
    shutil.rmtree(exp)
    os.remove(pca)
    got = SSRPipeline.from_pretrained(moved)(lr, seed=3, return_maps=True)
    assert torch.equal(got.images, expected.images) and torch.equal(got.depth, expected.depth)
    # the folder that references them stops, naming the file that holds the path
    with pytest.raises(OptionError, match='copy-parts'):
        SSRPipeline.from_pretrained(referenced)


def test_copy_parts_is_checked(tiny_models, tmp_path):
    pipe = load_pipeline(tiny_models['ssr'], device='cpu')
    with pytest.raises(OptionError, match='copy_parts'):
        pipe.save_pretrained(str(tmp_path / 'm'), copy_parts='some')
    # nothing to copy (no part with a folder of its own): the report says so
    assert pipe.save_pretrained(str(tmp_path / 'm')) == dict(copied=[], referenced=[])
