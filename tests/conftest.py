import contextlib
import logging
import os
import os.path as osp
import subprocess
import sys

import pytest

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
SHARED_DATA = osp.abspath(osp.join(ROOT, osp.pardir, 'shared', 'data'))

if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()


@pytest.fixture(scope='session')
def pca_path(tmp_path_factory):
    """A 10-component kernel PCA of 21×21 random kernels saved to disk (the SSR tests' ``pca_path``)."""
    from ssr_data.kernels import KernelPCA, random_kernels
    path = tmp_path_factory.mktemp('pca') / 'pca.pth'
    KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(str(path))
    return str(path)


def tiny_svkr_opt(use_depth=True, pca_path=None):
    """Options of a tiny SVKR (x4, 21x21 kernels, T = 2, the weight-free depth prior)."""
    sr_opt = dict(type='NBSR', num_feat=8, num_block=1, num_grow_ch=4, num_cond=8)
    if pca_path:
        sr_opt['pca_path'] = pca_path
    return dict(type='SVKR', num_iter=2, gamma=0.9, use_depth=use_depth, scale=4, kernel_size=21,
                depth_opt=dict(type='MonocularDepth', backend='prior'),
                kernel_opt=dict(type='DKENet', num_feat=[8, 16], num_depth_feat=[4, 8], reduction=2), sr_opt=sr_opt)


@pytest.fixture(scope='session')
def tiny_models(tmp_path_factory):
    """Option files (``svkr``, ``ssr``) of a tiny random SVKR and a tiny random SSR model that uses it, with
    their checkpoints (``svkr_ckpt``, ``ssr_ckpt``) as training saves them. The AMF output layers are made
    non-zero, so the conditions change the result as in a trained model."""
    import torch
    import yaml
    import ssr_arch  # noqa: F401  (registers)
    from basicsr.archs import build_network
    from ssr_arch.ssr_unet_arch import tiny_config
    from ssr_data.kernels import KernelPCA, random_kernels
    root = tmp_path_factory.mktemp('tiny_models')
    pca_path = str(root / 'pca.pth')
    KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(pca_path)
    torch.manual_seed(0)
    svkr = build_network(tiny_svkr_opt(pca_path=pca_path))
    svkr_ckpt = str(root / 'svkr.pth')
    torch.save({'params': svkr.state_dict(), 'params_ema': svkr.state_dict()}, svkr_ckpt)
    svkr_opt = dict(name='svkr_t', model_type='SVKRModel', scale=4, num_gpu=0, network_g=tiny_svkr_opt(),
                    path=dict(pretrain_network_g=svkr_ckpt, param_key_g='params_ema'),
                    datasets=dict(test_1=dict(name='x', type='SSRPairedDataset', dataroot='/does/not/exist')))
    net = dict(type='SSRUNet', pca_path=pca_path, **tiny_config())
    unet = build_network(net)
    with torch.no_grad():
        for amf in unet.amf.values():
            for mlp in (amf.mlp_alpha, amf.mlp_beta):
                mlp[-1].weight.normal_(0, 0.05)
    ssr_ckpt = str(root / 'ssr.pth')
    torch.save({'params': unet.state_dict(), 'params_ema': unet.state_dict()}, ssr_ckpt)
    ssr_opt = dict(name='ssr_t', model_type='SSRModel', scale=4, num_gpu=0, manual_seed=0, network_g=net,
                   network_svkr=tiny_svkr_opt(), conditions=dict(source='svkr'),
                   diffusion=dict(num_train_timesteps=100, sampler='ddim', num_inference_steps=2, seed=0,
                                  color_fix='wavelet'),
                   path=dict(pretrain_network_g=ssr_ckpt, param_key_g='params_ema', pretrain_network_svkr=svkr_ckpt,
                             param_key_svkr='params_ema'))
    paths = dict(root=str(root), pca=pca_path, svkr_ckpt=svkr_ckpt, ssr_ckpt=ssr_ckpt)
    for name, opt in (('svkr', svkr_opt), ('ssr', ssr_opt)):
        paths[name] = str(root / f'{name}.yml')
        with open(paths[name], 'w') as f:
            yaml.safe_dump(opt, f)
    return paths


@pytest.fixture
def shared_data():
    """``../shared/data`` (real images); the test is skipped where it is absent."""
    if not osp.isdir(SHARED_DATA):
        pytest.skip('../shared/data is not present')
    return SHARED_DATA


def subprocess_env(**extra):
    env = dict(os.environ)
    env.setdefault('OMP_NUM_THREADS', '1')
    env['PYTHONPATH'] = ROOT + (os.pathsep + env['PYTHONPATH'] if env.get('PYTHONPATH') else '')
    env.update(extra)
    return env


def run_python(args, cwd=None, timeout=300, **popen_kwargs):
    """Run ``python <args>`` and return the CompletedProcess (stdout and stderr merged)."""
    return subprocess.run([sys.executable] + list(args), cwd=cwd or ROOT, env=subprocess_env(), timeout=timeout,
                          stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **popen_kwargs)


@contextlib.contextmanager
def logger_messages(name, level=None, handler_level=logging.NOTSET):
    """The messages the logger ``name`` handles inside the block, read at the logger itself (BasicSR's and
    diffusers' loggers do not propagate to the root logger, so pytest's caplog misses them, and a stream
    handler may hold a stream an earlier test captured). ``level`` sets the logger's own level for the
    block; ``handler_level`` keeps only records at or above it."""
    messages = []

    class Collect(logging.Handler):

        def emit(self, record):
            messages.append(record.getMessage())

    logger = logging.getLogger(name)
    old_level = logger.level
    handler = Collect(level=handler_level)
    logger.addHandler(handler)
    if level is not None:
        logger.setLevel(level)
    try:
        yield messages
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


def basicsr_messages(level=None, handler_level=logging.NOTSET):
    """The messages BasicSR's logger handles inside the block (:func:`logger_messages`)."""
    return logger_messages('basicsr', level, handler_level)
