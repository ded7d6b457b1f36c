"""The diffusion prior stage (issue 21): DiffusionPriorModel through basicsr/train.py at tiny size, its folder in
Stable Diffusion's layout read by SSRUNet and by diffusers' own loaders, the prior kept bit-identical under SSR
training, its two phases, the evidence script, and bad options stopping with the key named."""
import copy
import json
import os.path as osp
import shutil
import uuid

import pytest
import torch
import yaml

from conftest import ROOT, run_python
import ssr_arch  # noqa: F401  (registers)
import ssr_data  # noqa: F401
import ssr_models  # noqa: F401
from ssr_arch.diffusion_prior_arch import LatentDiffusionPrior
from ssr_arch.ssr_unet_arch import SSRUNet, tiny_config
from ssr_data.hr_crop_dataset import HRCropDataset
from ssr_utils.errors import OptionError
from ssr_utils.option_check import check_options

TINY = tiny_config()
PHOTOS = dict(split='train', shared_dir=None, max_side=96)  # scikit-image's photographs only, small


def _prior_options(name, total=4, vae_iter=2):
    """options/train_prior_demo.yml at tiny size (scikit-image's photographs, 32-pixel crops)."""
    with open(osp.join(ROOT, 'options', 'train_prior_demo.yml')) as f:
        opt = yaml.safe_load(f)
    opt['name'] = name
    train = opt['datasets']['train']
    for key in ('dataroot_gt', 'repeat'):
        train.pop(key)
    train.update(photos=PHOTOS, gt_size=32, batch_size_per_gpu=2)
    opt['datasets']['val'].update(photos=dict(split='test', shared_dir=None, max_side=96), repeat=dict(photos=1),
                                  gt_size=32)
    opt['network_g'].update(unet=TINY['unet'], vae=TINY['vae'])
    opt['train'].update(total_iter=total, vae_iter=vae_iter)
    opt['train']['scheduler'].update(periods=[vae_iter, total - vae_iter])
    opt['val'].update(val_freq=total, num_samples=4, sample_steps=2)
    opt['logger'].update(save_checkpoint_freq=total, print_freq=1, use_tb_logger=False)
    return opt


@pytest.fixture(scope='module')
def prior_run(tmp_path_factory):
    """The prior stage run once through BasicSR's launcher: (experiment folder, prior folder, log text)."""
    name = f'pytest_prior_{uuid.uuid4().hex[:8]}'
    path = tmp_path_factory.mktemp('prior') / 'train_prior_tiny.yml'
    path.write_text(yaml.safe_dump(_prior_options(name)))
    try:
        proc = run_python(['basicsr/train.py', '-opt', str(path)])
        assert proc.returncode == 0, proc.stdout[-4000:]
        exp = osp.join(ROOT, 'experiments', name)
        yield exp, osp.join(exp, 'prior_model'), proc.stdout
    finally:
        for folder in ('experiments', 'tb_logger', 'results'):
            shutil.rmtree(osp.join(ROOT, folder, name), ignore_errors=True)


def _ckpt(exp):
    return torch.load(osp.join(exp, 'models', 'net_g_latest.pth'), map_location='cpu', weights_only=True)


def test_prior_stage_writes_a_stable_diffusion_folder_that_diffusers_and_ssrunet_load(prior_run):
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    exp, folder, log = prior_run
    for part in ('model_index.json', 'unet/config.json', 'unet/diffusion_pytorch_model.safetensors', 'vae/config.json',
                 'vae/diffusion_pytorch_model.safetensors', 'scheduler/scheduler_config.json'):
        assert osp.isfile(osp.join(folder, part)), part
    assert 'autoencoder done (2 iterations)' in log and 'written in Stable Diffusion\'s layout' in log
    assert 'noise_mse_t100' in log and osp.isfile(osp.join(exp, 'visualization', 'samples', 'samples_4.png'))
    ema = _ckpt(exp)['params_ema']  # the folder holds the evaluation (EMA) weights
    unet = UNet2DConditionModel.from_pretrained(folder, subfolder='unet')
    vae = AutoencoderKL.from_pretrained(folder, subfolder='vae')
    for prefix, part in (('unet.', unet), ('vae.', vae)):
        state = part.state_dict()
        assert state and all(torch.equal(state[k], ema[prefix + k]) for k in state), prefix
    assert vae.config.scaling_factor == pytest.approx(float(ema['latent_scale'])) and vae.config.scaling_factor > 0
    sched = DDPMScheduler.from_pretrained(folder, subfolder='scheduler')
    assert sched.config.prediction_type == 'v_prediction' and not sched.config.clip_sample
    # SSRUNet loads it exactly as it loads SD 2.1: frozen, the same weights
    net = SSRUNet(pretrained_path=folder, modalities=['lr'], null_text_length=4)
    assert net.frozen == {'unet': True, 'vae': True} and net.referenced_parts == ('unet', 'vae')
    for prefix, part in (('unet.', unet), ('vae.', vae)):
        assert all(torch.equal(v, part.state_dict()[k]) for k, v in getattr(net, prefix[:-1]).state_dict().items())
    assert net.vae.config.scaling_factor == vae.config.scaling_factor
    # and diffusers' own Stable Diffusion pipeline (no text parts; the null text is a zero embedding)
    pipe = StableDiffusionPipeline.from_pretrained(folder, text_encoder=None, tokenizer=None, safety_checker=None,
                                                   feature_extractor=None)
    images = pipe(prompt_embeds=torch.zeros(1, 4, 32), guidance_scale=1.0, num_inference_steps=2, height=32,
                  width=32, output_type='pt').images
    assert images.shape == (1, 3, 32, 32) and torch.isfinite(images).all()


def test_the_prior_stays_bit_identical_through_ssr_training(prior_run, tmp_path, pca_path):
    from test_ssr_model import _batch, _build, _opt, _step
    _, folder, _ = prior_run
    files = {p: open(osp.join(folder, p), 'rb').read() for p in ('unet/diffusion_pytorch_model.safetensors',
                                                                 'vae/diffusion_pytorch_model.safetensors')}
    opt = _opt(tmp_path, pca_path, pretrained=folder)
    opt['diffusion'].pop('num_train_timesteps')  # the prior's schedule (scheduler/)
    model = _build(opt)
    assert model.noise_scheduler.config.prediction_type == 'v_prediction'
    net = model.bare_g
    before = {k: v.clone() for k, v in net.state_dict().items()}
    for it in range(3):
        _step(model, _batch(seed=it), it)
    after = net.state_dict()
    base = [k for k in before if k.startswith(('unet.', 'vae.'))]
    assert len(base) > 50 and all(torch.equal(before[k], after[k]) for k in base)
    for prefix in ('amf.', 'encoders.lr.', 'encoders.depth.', 'encoders.kernel.'):
        assert any(not torch.equal(before[k], after[k]) for k in before if k.startswith(prefix)
                   and before[k].is_floating_point()), f'no {prefix} weight changed'
    # the checkpoint holds the trained part only; the folder itself is untouched
    model.save(0, 3)
    saved = torch.load(osp.join(tmp_path, 'models', 'net_g_3.pth'), weights_only=True)['params']
    assert saved and not any(k.startswith(('unet.', 'vae.')) for k in saved)
    assert all(open(osp.join(folder, p), 'rb').read() == data for p, data in files.items())


def test_phases_autoencoder_then_unet_and_the_latent_scale(tmp_path):
    from basicsr.models import build_model
    opt = _prior_options('pytest_prior_phases', total=4, vae_iter=2)
    for sub in ('models', 'training_states', 'visualization'):
        (tmp_path / sub).mkdir()
    opt.update(is_train=True, dist=False, rank=0, world_size=1,
               path=dict(experiments_root=str(tmp_path), models=str(tmp_path / 'models'),
                         training_states=str(tmp_path / 'training_states'),
                         visualization=str(tmp_path / 'visualization')))
    model = build_model(copy.deepcopy(opt))
    net = model.bare_g
    data = HRCropDataset(dict(photos=PHOTOS, gt_size=32, aug_seed=1))
    batch = {'gt': torch.stack([data[i]['gt'] for i in range(2)])}

    def snapshot(prefix):
        return {k: v.clone() for k, v in net.state_dict().items() if k.startswith(prefix)}

    unet0, vae0 = snapshot('unet.'), snapshot('vae.')
    for it in (1, 2):
        model.feed_data(batch)
        model.optimize_parameters(it)
    assert 'l_rec' in model.log_dict and not net.has_latent_scale
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in unet0.items())  # the UNet waits
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in vae0.items())
    vae_ema = {k: v.clone() for k, v in model.ema.items() if k.startswith('vae.')}
    model.feed_data(batch)
    model.optimize_parameters(3)  # the switch: the VAE's EMA becomes its weights, frozen; the scale is set
    assert 'l_diff' in model.log_dict
    params = dict(net.named_parameters())
    assert all(torch.equal(params[k], v) for k, v in vae_ema.items())
    assert not any(p.requires_grad for p in net.vae.parameters()) and not any(k.startswith('vae.') for k in model.ema)
    with torch.no_grad():
        z = net.vae.encode(batch['gt'] * 2 - 1).latent_dist.mode()
    assert float(net.latent_scale) == pytest.approx(1 / float(z.std(unbiased=False)), rel=1e-4)
    vae1, scale = snapshot('vae.'), float(net.latent_scale)
    model.feed_data({'gt': batch['gt'].flip(-1)})
    model.optimize_parameters(4)
    assert all(torch.equal(v, net.state_dict()[k]) for k, v in vae1.items())
    assert any(not torch.equal(v, net.state_dict()[k]) for k, v in unet0.items())
    # a model resumed after the switch keeps the checkpoint's scale (it does not re-estimate it on another batch)
    model.save(0, 4)
    opt['path']['pretrain_network_g'] = str(tmp_path / 'models' / 'net_g_4.pth')
    resumed = build_model(copy.deepcopy(opt))
    resumed.feed_data({'gt': torch.rand(2, 3, 32, 32)})
    resumed.optimize_parameters(5)
    assert float(resumed.bare_g.latent_scale) == scale
    assert all(torch.equal(v, resumed.bare_g.state_dict()[k]) for k, v in vae1.items())


def test_prior_evidence_script_tables_and_defects(prior_run, tmp_path):
    from ssr_app.experiments import prior_evidence
    _, folder, _ = prior_run
    result, grid = prior_evidence.run(folder, size=32, crops=1, timesteps=(200, 800), samples=4, steps=2,
                                      output=str(tmp_path / 'ev'), shared_dir=None)
    assert result['images'] == 2 and set(result['errors']) == set(prior_evidence.ROWS)
    assert all(len(v) == 2 and all(x > 0 for x in v) for v in result['errors'].values())
    assert result['errors']['trained'] != result['errors']['untrained']
    # two iterations of UNet training are no prior: the script must say so
    assert any(line.startswith('DEFECT') for line in result['defects'])
    md = open(tmp_path / 'ev' / 'prior_evidence.md').read()
    assert '| 200 |' in md and 'DEFECT' in md and grid.shape == (2 * 32 + 2, 2 * 32 + 2, 3)
    assert osp.isfile(tmp_path / 'ev' / 'samples.png')


def test_bad_prior_options_stop_with_the_key(prior_run, tmp_path, pca_path):
    from test_ssr_model import _opt
    from ssr_models.diffusion_prior_model import DiffusionPriorModel
    from ssr_models.ssr_model import SSRModel
    _, folder, _ = prior_run
    # SSR: a missing prior folder, an incomplete one, a prediction type the frozen UNet was not trained for
    opt = _opt(tmp_path, pca_path, pretrained=str(tmp_path / 'no_prior_here'))
    with pytest.raises(OptionError) as err:
        check_options(copy.deepcopy(opt), ROOT)
    assert err.value.key == 'network_g:pretrained_path' and 'does not exist' in err.value.problem
    broken = tmp_path / 'prior_without_vae_weights'
    shutil.copytree(folder, broken)
    (broken / 'vae' / 'diffusion_pytorch_model.safetensors').unlink()
    with pytest.raises(OptionError) as err:
        SSRModel.check_options(_opt(tmp_path, pca_path, pretrained=str(broken)))
    assert err.value.key == 'network_g:pretrained_path' and 'no weights in vae/' in err.value.problem
    wrong = _opt(tmp_path, pca_path, pretrained=folder)
    wrong['diffusion']['prediction_type'] = 'epsilon'
    with pytest.raises(OptionError) as err:
        SSRModel.check_options(wrong)
    assert err.value.key == 'diffusion:prediction_type' and 'v_prediction' in err.value.problem
    wrong['network_g']['freeze_unet'] = False  # a UNet that trains may learn another target
    SSRModel.check_options(wrong)
    # the prior stage: no autoencoder to start from, more autoencoder iterations than iterations, DDP without
    # find_unused_parameters, a network that is not a prior, an incomplete folder to continue from
    prior = _prior_options('x')
    for edit, key in ((lambda o: o['train'].update(vae_iter=0), 'train:vae_iter'),
                      (lambda o: o['train'].update(vae_iter=10), 'train:vae_iter'),
                      (lambda o: o.update(dist=True), 'find_unused_parameters'),
                      (lambda o: o['network_g'].update(type='SSRUNet'), 'network_g:type')):
        bad = copy.deepcopy(prior)
        edit(bad)
        with pytest.raises(OptionError) as err:
            DiffusionPriorModel.check_options(bad)
        assert err.value.key == key
    with pytest.raises(OptionError) as err:
        LatentDiffusionPrior(pretrained_path=str(tmp_path))
    assert err.value.key == 'network_g:pretrained_path' and 'unet/config.json' in err.value.problem
    with pytest.raises(OptionError) as err:
        HRCropDataset(dict(gt_size=32))
    assert 'at least one source' in err.value.problem
    with pytest.raises(OptionError) as err:
        HRCropDataset(dict(photos=PHOTOS, gt_size=32, repeat=dict(dataroot_gt=2)))
    assert err.value.key == 'repeat:dataroot_gt'


def test_hr_crop_dataset_mixes_sources_with_repeats_and_fixed_crops(tmp_path):
    import cv2
    import numpy as np
    folder = tmp_path / 'hr'
    folder.mkdir()
    rng = np.random.default_rng(0)
    for i in range(3):
        cv2.imwrite(str(folder / f'im{i}.png'), rng.integers(0, 256, (40 + 8 * i, 56, 3), dtype=np.uint8))
    photos = HRCropDataset(dict(photos=PHOTOS, gt_size=32))
    opt = dict(dataroot_gt=str(folder), photos=PHOTOS, scenes=dict(num=2, seed=3, size=48, shared_dir=None),
               repeat=dict(gt=2, photos=3), gt_size=32, scale_range=[1, 1.5], aug_seed=7)
    data = HRCropDataset(opt)
    assert len(data) == 3 * 2 + 3 * len(photos) + 2
    names = [data.entries[i][2] for i in range(len(data))]
    assert len(set(names)) == len(names) and names[:2] == ['im0_000', 'im0_001']
    for i in (0, 1, 6, len(data) - 1):  # an image, its repeat, a photograph, a scene
        s = data[i]
        assert s['gt'].shape == (3, 32, 32) and 0 <= float(s['gt'].min()) and float(s['gt'].max()) <= 1
        assert s['gt_path'] == s['lq_path'] == names[i]
        assert torch.equal(s['gt'], data[i]['gt'])  # aug_seed: entry i is always the same crop
    assert not torch.equal(data[0]['gt'], data[1]['gt'])  # a repeat is another crop of the same image
    # the image itself, in RGB: a whole-image crop of a 32-pixel square image is the image
    cv2.imwrite(str(folder / 'im0.png'), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    whole = HRCropDataset(dict(dataroot_gt=str(folder), gt_size=32, use_hflip=False, use_rot=False))[0]['gt']
    bgr = cv2.imread(str(folder / 'im0.png'))
    assert torch.equal(whole, torch.from_numpy(bgr[:, :, ::-1].transpose(2, 0, 1).copy()).float() / 255)
    with pytest.raises(ValueError, match='smaller than gt_size'):
        HRCropDataset(dict(dataroot_gt=str(folder), gt_size=48))[0]  # im0 is 32×32 now
