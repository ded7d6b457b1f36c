"""Each fix of ssr_utils/compat.py against the basicsr 1.4.2 quirk it works around."""
import logging
import os
import os.path as osp

import numpy as np
import pytest
import torch

from ssr_utils import compat

compat.apply_training()  # the training side's patches (fixes 2, 3, 5, 6) are tested here too


def test_functional_tensor_shim_lets_basicsr_import():
    import basicsr  # noqa: F401  (fails on torchvision >= 0.17 without the shim)
    from basicsr.data.degradations import rgb_to_grayscale
    img = torch.rand(1, 3, 4, 4)
    gray = rgb_to_grayscale(img)
    expected = 0.2989 * img[:, 0] + 0.587 * img[:, 1] + 0.114 * img[:, 2]
    assert torch.allclose(gray[:, 0], expected, atol=1e-3)


def _fake_state(folder, iters):
    os.makedirs(osp.join(folder, 'training_states'), exist_ok=True)
    for it in iters:
        torch.save({'epoch': 0, 'iter': it, 'optimizers': [], 'schedulers': [], 'tensor': torch.ones(2)},
                   osp.join(folder, 'training_states', f'{it}.state'))


def test_resume_state_loads_on_cpu_and_from_any_directory(tmp_path, monkeypatch):
    import basicsr.train as bsr_train
    root = tmp_path / 'repo'
    _fake_state(str(root / 'experiments' / 'exp'), [4, 12, 8])
    elsewhere = tmp_path / 'elsewhere'
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    opt = {'name': 'exp', 'auto_resume': True, 'root_path': str(root), 'num_gpu': 0, 'network_g': {},
           'path': {'models': str(root / 'experiments' / 'exp' / 'models')}}
    # the function the training pipeline calls is the fixed one
    state = bsr_train.load_resume_state(opt)
    assert state['iter'] == 12
    assert state['tensor'].device.type == 'cpu'
    assert opt['path']['resume_state'].endswith(osp.join('training_states', '12.state'))
    # BasicSR's check_resume points the network at the checkpoint of that iteration
    assert opt['path']['pretrain_network_g'].endswith('net_g_12.pth')


def test_resume_without_states_starts_fresh(tmp_path):
    import basicsr.train as bsr_train
    opt = {'name': 'none', 'auto_resume': True, 'root_path': str(tmp_path), 'num_gpu': 0, 'path': {}}
    assert bsr_train.load_resume_state(opt) is None


def test_same_lmdb_opened_by_two_backends(tmp_path):
    from basicsr.utils import FileClient, imfrombytes
    from ssr_data.lmdb_util import LmdbWriter
    img = (np.arange(6 * 5 * 3) % 255).astype(np.uint8).reshape(6, 5, 3)
    path = str(tmp_path / 'x.lmdb')
    with LmdbWriter(path) as writer:
        writer.put('a', img)
    # train and val datasets each build their own client on the same path
    first = FileClient('lmdb', db_paths=[path], client_keys=['gt'])
    second = FileClient('lmdb', db_paths=[path, path], client_keys=['lq', 'gt'])
    for client, key in ((first, 'gt'), (second, 'lq'), (second, 'gt')):
        decoded = imfrombytes(client.get('a', key), float32=False)
        assert np.array_equal(decoded, img)


def test_jpeg_with_float_quality():
    from basicsr.data.degradations import add_jpg_compression, random_add_jpg_compression
    rng = np.random.default_rng(0)
    img = rng.random((16, 16, 3)).astype(np.float32)
    out = random_add_jpg_compression(img, quality_range=(30.2, 30.8))
    assert out.shape == img.shape and out.dtype == np.float32
    # the float is rounded, not truncated away: same result as the integer quality
    assert np.array_equal(add_jpg_compression(img, 30.6), add_jpg_compression(img, 31))
    assert not np.array_equal(add_jpg_compression(img, 31), img)


def test_ddp_wrapper_on_cpu_has_no_device_ids(monkeypatch):
    import torch.distributed as dist
    from basicsr.models.base_model import BaseModel
    captured = {}

    class FakeDDP(torch.nn.Module):

        def __init__(self, module, device_ids=None, find_unused_parameters=False):
            super().__init__()
            captured['device_ids'] = device_ids
            self.module = module

    monkeypatch.setattr('torch.nn.parallel.DistributedDataParallel', FakeDDP)
    model = BaseModel.__new__(BaseModel)
    model.opt = {'dist': True, 'num_gpu': 0}
    model.device = torch.device('cpu')
    wrapped = model.model_to_device(torch.nn.Linear(2, 2))
    assert isinstance(wrapped, FakeDDP) and captured['device_ids'] is None
    assert not dist.is_initialized()


def test_dist_backend_is_read_from_the_option_file(tmp_path):
    from ssr_utils.compat import dist_backend_from_argv
    opt_file = tmp_path / 'o.yml'
    opt_file.write_text('name: x\ndist_params:\n  backend: gloo\n')
    assert dist_backend_from_argv(['-opt', str(opt_file), '--launcher', 'pytorch']) == 'gloo'
    opt_file.write_text('name: x\n')
    expected = 'nccl' if torch.cuda.is_available() else 'gloo'
    assert dist_backend_from_argv(['-opt', str(opt_file)]) == expected


def test_apply_is_idempotent():
    import basicsr.data.degradations as degradations
    import basicsr.utils.file_client as file_client
    lmdb_init = file_client.LmdbBackend.__init__
    before = degradations.add_jpg_compression
    compat._APPLIED = compat._TRAINING_APPLIED = False
    try:
        compat.apply_training()
        compat.apply()
    finally:
        compat._APPLIED = compat._TRAINING_APPLIED = True
    # wrapping twice would round twice and hide the original; the wrapper is applied once
    assert degradations.add_jpg_compression is before and file_client.LmdbBackend.__init__ is lmdb_init


def test_a_saved_scheduler_converts_to_the_same_sampler(tmp_path):
    from diffusers import DDPMScheduler, DPMSolverMultistepScheduler
    from ssr_utils.compat import save_scheduler
    train = DDPMScheduler(num_train_timesteps=1000, beta_schedule='scaled_linear', clip_sample=False)
    save_scheduler(train, str(tmp_path))
    loaded = DDPMScheduler.from_pretrained(str(tmp_path))
    samplers = [DPMSolverMultistepScheduler.from_config(s.config) for s in (train, loaded)]
    for s in samplers:
        s.set_timesteps(4)
    # DPM-Solver++ uses its own timestep spacing for a key the DDPM schedule left at its default
    assert samplers[0].config.timestep_spacing != train.config.timestep_spacing
    assert torch.equal(samplers[0].timesteps, samplers[1].timesteps)
    # what diffusers' own save_pretrained gives (the quirk): another spacing, other timesteps
    train.save_pretrained(str(tmp_path / 'plain'))
    plain = DPMSolverMultistepScheduler.from_config(DDPMScheduler.from_pretrained(str(tmp_path / 'plain')).config)
    plain.set_timesteps(4)
    assert not torch.equal(plain.timesteps, samplers[0].timesteps)


def test_release_free_heap_returns_fragmented_heap_pages():
    """glibc keeps memory freed inside its heap resident (tensors below the mmap threshold live there);
    ``release_free_heap`` gives it back. Every other one of 600 tensors of 100 KB freed: the holes cannot
    be returned by ordinary trimming of the heap top."""
    import ctypes
    import gc

    from ssr_utils.compat import release_free_heap
    try:
        ctypes.CDLL('libc.so.6').malloc_trim
    except (OSError, AttributeError):
        pytest.skip('not glibc: no malloc_trim (release_free_heap does nothing there)')
    if not osp.exists('/proc/self/statm'):
        pytest.skip('no /proc/self/statm to read the resident size')

    def rss_mb():
        with open('/proc/self/statm') as f:
            return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') / 2**20

    release_free_heap()
    blocks = [torch.ones(25_000) for _ in range(600)]  # 100 KB each, touched
    del blocks[::2]
    gc.collect()
    before = rss_mb()
    assert release_free_heap() is True
    assert before - rss_mb() > 0.5 * 300 * 0.1  # at least half of the 30 MB freed went back
    del blocks


def test_a_dtype_cast_warns_only_for_modules_that_must_stay_float32():
    # diffusers 0.42 warns on every dtype cast, even with no module to keep in float32 (Fix 8)
    from conftest import logger_messages
    from ssr_arch.ssr_unet_arch import SSRUNet, tiny_config
    net = SSRUNet(**tiny_config())
    with logger_messages('diffusers.models.modeling_utils', logging.WARNING) as messages:
        net.to(torch.bfloat16)
        assert not any('should be kept in float32' in m for m in messages), messages
        net._keep_in_fp32_modules = ['vae']
        net.to(torch.float32)
        assert any("should be kept in float32: ['vae']" in m for m in messages), messages


def _owns_aligned_memory(module):
    return all(t.data_ptr() % 64 == 0 for t in list(module.parameters()) + list(module.buffers()) if t.numel())


def test_a_loaded_depth_folder_computes_exactly_as_the_saved_network(tmp_path):
    # transformers >= 5 leaves the weights as unaligned views into the memory-mapped file (fix 9), where the
    # CPU kernels round differently: the folder gave the saved network's depth to within ~4e-6, not exactly
    pytest.importorskip('transformers')
    from ssr_arch.depth_arch import MonocularDepth, TransformersDepthNet
    torch.manual_seed(0)
    config = dict(hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                  patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8,
                  reassemble_factors=[2, 1, 0.5, 0.25], backbone_out_indices=[0, 1, 2, 3], head_hidden_size=8)
    net = TransformersDepthNet('dpt', config=config).eval()
    with torch.no_grad():  # a prediction of small range, as early in training: min-max normalisation magnifies
        for p in net.parameters():
            p.add_(0.05 * torch.randn_like(p))
    folder = net.save_pretrained(str(tmp_path / 'depth'))
    loaded = MonocularDepth('dpt', model_path=folder)
    assert _owns_aligned_memory(loaded)
    img = torch.rand(2, 3, 48, 40)
    assert torch.equal(loaded(img), net.predict(img))


def test_a_pretrained_diffusion_base_is_loaded_into_aligned_memory(tmp_path):
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from ssr_arch.ssr_unet_arch import SSRUNet, tiny_config
    cfg = tiny_config()
    torch.manual_seed(0)
    unet, vae = UNet2DConditionModel(**cfg['unet']), AutoencoderKL(**cfg['vae'])
    unet.save_pretrained(str(tmp_path / 'unet'))
    vae.save_pretrained(str(tmp_path / 'vae'))
    net = SSRUNet(pretrained_path=str(tmp_path), null_text_length=4, lr_encoder=cfg['lr_encoder'],
                  map_encoder=cfg['map_encoder'], amf=cfg['amf'])
    assert _owns_aligned_memory(net.unet) and _owns_aligned_memory(net.vae)
    x, t, emb = torch.randn(1, 4, 8, 8), torch.tensor([10]), torch.zeros(1, 4, 32)
    with torch.no_grad():
        assert torch.equal(net.unet(x, t, encoder_hidden_states=emb).sample, unet(x, t, encoder_hidden_states=emb).sample)
