"""Assembly: an option file or an experiment folder -> an ``SSRPipeline``, in one place.

The inference CLI (``ssr_app.inference``), the model export (``ssr_app.export``), training validation
(``SSRModel``) and the test tables (``SSRBenchmarkModel``) all build their pipeline here; the pipeline module
itself holds sampling only. Option files are read with the one reader (``ssr_utils.option_file``) and checked
for what building the networks needs (``check_options(..., networks_only=True)``); no training machinery is
imported. A model folder loads with ``SSRPipeline.from_pretrained`` (``load_pipeline(model_path=...)``).

    pipe = load_pipeline('options/test_ssr_demo.yml')            # an option file naming its checkpoints
    pipe = load_pipeline('experiments/train_SSR_x4_demo')         # its option file + models/net_g_latest.pth
    pipe = load_pipeline(model_path='models/ssr_demo_x4')         # a model folder
"""
import os
import os.path as osp
from copy import deepcopy

from ssr_utils import compat

compat.apply()

from basicsr.archs import build_network  # noqa: E402
from basicsr.utils import get_root_logger  # noqa: E402

import ssr_arch  # noqa: E402,F401  (registers the networks option files name)
from ssr_arch.ssr_unet_arch import SSRUNet, check_pretrained_folder  # noqa: E402
from ssr_data.degradations import kernel_distribution_options  # noqa: E402
from ssr_pipelines.pipeline_ssr import SSRPipeline  # noqa: E402
from ssr_utils.checkpoint import read_state_dict  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402
from ssr_utils.install import find_option_file, project_root  # noqa: E402
from ssr_utils.option_check import check_options  # noqa: E402
from ssr_utils.option_file import read_option_file  # noqa: E402

# the keys of an option file's ``diffusion`` block that are sampling defaults of the pipeline
SAMPLING_KEYS = ('sampler', 'num_inference_steps', 'strength', 'seed', 'color_fix', 'solver_order', 'vae_residual')
# the keys of a ``diffusion`` block that shape the training noise schedule (diffusers' DDPMScheduler)
SCHEDULE_KEYS = ('num_train_timesteps', 'beta_schedule', 'beta_start', 'beta_end', 'prediction_type',
                 'timestep_spacing', 'steps_offset', 'rescale_betas_zero_snr', 'clip_sample')

SVKR_WEIGHTS_HINT = ('the SVKR has no trained weights, and SSR would condition on the depth / kernel maps of a '
                     'random network; train it first (python basicsr/train.py -opt options/train_svkr.yml, after '
                     'train_dkenet.yml and train_nbsr.yml) and set path:pretrain_network_svkr to its '
                     'experiments/<name>/models/net_g_latest.pth')


# ------------------------------------------------------------------------------------------ option files
def load_options(source, key='-opt'):
    """``source``: a YAML option file, or an experiment folder (``experiments/<name>``) that holds the copy
    BasicSR saved of its option file and ``models/net_g_latest.pth`` (its EMA weights when saved). Returns the
    option dict; a missing or broken file is an ``OptionError`` naming ``key`` (the flag that gave it)."""
    if not osp.isdir(source):
        return read_option_file(source, key)
    ymls = sorted(f for f in os.listdir(source) if f.endswith(('.yml', '.yaml')))
    if not ymls:
        raise OptionError(key, source, 'an experiment folder must hold its option file (*.yml)')
    opt = read_option_file(osp.join(source, ymls[-1]), key)
    ckpt = osp.join(source, 'models', 'net_g_latest.pth')
    if not osp.isfile(ckpt):
        raise OptionError(key, source, 'no models/net_g_latest.pth in the experiment folder')
    opt.setdefault('path', {})
    opt['path']['pretrain_network_g'] = ckpt
    opt['path']['param_key_g'] = 'params_ema'  # the EMA weights when saved (else 'params' is used)
    opt['path'].pop('resume_state', None)
    return opt


def prepare_options(opt):
    """A copy of ``opt`` for building its networks outside BasicSR's launcher: its data sets dropped (inference
    reads its own images), what its networks need checked (types, paths, depth networks, scales; relative
    paths from the current directory, else from the repository root)."""
    opt = deepcopy(opt)
    opt.pop('datasets', None)
    opt['is_train'] = False
    opt['dist'] = False
    opt['rank'], opt['world_size'] = 0, 1
    opt.setdefault('path', {})
    check_options(opt, project_root(), networks_only=True)
    return opt


# ------------------------------------------------------------------------------------------ parts
def svkr_has_weights(net_opt, path_opt, path_key='pretrain_network_svkr'):
    """Whether an SVKR of an option file gets trained weights: its own checkpoint (``path:<path_key>``) or
    the checkpoints of both its sub-networks (``pretrain_network_kernel`` and ``pretrain_network_sr``)."""
    if (path_opt or {}).get(path_key):
        return True
    return bool(net_opt.get('pretrain_network_kernel')) and bool(net_opt.get('pretrain_network_sr'))


def build_svkr_from_options(net_opt, path_opt, path_key='pretrain_network_svkr', param_key='param_key_svkr'):
    """The frozen SVKR of an option file's ``net_opt`` with its checkpoint ``path:<path_key>`` (``<param_key>``,
    default ``params_ema``; ``strict_load_*``), in eval mode. With a whole-SVKR checkpoint its sub-network
    checkpoints are not read (the checkpoint replaces them)."""
    net_opt = deepcopy(net_opt)
    ckpt = (path_opt or {}).get(path_key)
    if ckpt:
        for sub in ('pretrain_network_kernel', 'pretrain_network_sr'):
            net_opt.pop(sub, None)
    net = build_network(net_opt)
    if ckpt:
        state, key = read_state_dict(ckpt, path_opt.get(param_key, 'params_ema'), f'path:{path_key}')
        try:
            net.load_state_dict(state, strict=path_opt.get(param_key.replace('param_key', 'strict_load'), True))
        except RuntimeError as err:
            raise RuntimeError(f'{ckpt} [{key}] does not fit {net_opt.get("type")}: {err}') from None
        get_root_logger().info(f'SVKR weights from {ckpt} [{key}]')
    return net.requires_grad_(False).eval()


def scheduler_from_options(diffusion_opt=None, pretrained_path=None):
    """The training noise schedule (a diffusers ``DDPMScheduler``) of an option file's ``diffusion`` block:
    ``<pretrained_path>/scheduler`` when the base folder has one, with the block's keys on top."""
    from diffusers import DDPMScheduler
    d = dict(diffusion_opt or {})
    overrides = {k: d[k] for k in SCHEDULE_KEYS if k in d}
    if pretrained_path is not None and osp.isdir(osp.join(pretrained_path, 'scheduler')):
        sched = DDPMScheduler.from_pretrained(osp.join(pretrained_path, 'scheduler'), **overrides)
    else:
        # latents are not images in [-1, 1]: no x0 clipping (diffusers' DDPMScheduler defaults to
        # clip_sample=True, which DDIM sampling inherits; Stable Diffusion's scheduler sets it false)
        overrides.setdefault('clip_sample', False)
        sched = DDPMScheduler(**overrides)
    if sched.config.prediction_type not in ('epsilon', 'v_prediction'):
        raise OptionError('diffusion:prediction_type', sched.config.prediction_type, 'expected epsilon or v_prediction')
    return sched


def prediction_target(scheduler, z0, noise, t):
    """What the network is trained to predict for the clean latent ``z0`` noised by ``noise`` at ``t``: the
    velocity for a ``v_prediction`` schedule, else the noise."""
    if scheduler.config.prediction_type == 'v_prediction':
        return scheduler.get_velocity(z0, noise, t)
    return noise


def sampling_options(diffusion_opt=None):
    """The sampling defaults of an option file's ``diffusion`` block, as ``SSRPipeline`` keyword arguments."""
    d = diffusion_opt or {}
    return {k: d[k] for k in SAMPLING_KEYS if k in d}


def adopt_svkr_kernel_pca(unet, svkr):
    """An SSRUNet conditioned on kernels without a basis of its own takes the SVKR's (its NBSR's)."""
    if unet is None or 'kernel' not in unet.modalities or unet.has_pca:
        return
    sr_net = getattr(svkr, 'sr_net', None)
    svkr_pca = getattr(sr_net, 'pca', None)
    if svkr_pca is not None and bool(svkr_pca.components.abs().sum() > 0):
        unet.set_kernel_pca(svkr_pca, getattr(sr_net, 'code_scale', None))
        get_root_logger().info('SSR: kernel PCA basis (and its code spread) taken from the SVKR')
        return
    raise OptionError('network_g:pca_path', None, 'the kernel modality needs a KernelPCA file '
                      '(or a network_svkr / pretrain_network_g that holds one)')


def ssr_unet_options(opt):
    """``network_g`` of an SSR option dict with what the file leaves to the rest of it: ``scale`` (the file's) and
    ``kernel_distribution`` (the kernel keys of ``datasets:train``), which the kernel code's standardisation is
    computed for (``SSRUNet.code_scale``)."""
    net_opt = deepcopy(opt['network_g'])
    if net_opt.get('scale') is None and opt.get('scale') is not None:
        net_opt['scale'] = int(opt['scale'])
    train_set = (opt.get('datasets') or {}).get('train')
    if net_opt.get('kernel_distribution') is None and train_set:
        net_opt['kernel_distribution'] = kernel_distribution_options(train_set, 'datasets:train')
    return net_opt


def load_ssr_unet(net_opt, path_opt):
    """The trained, frozen SSRUNet of an SSR option file (``network_g``, e.g. ``ssr_unet_options(opt)``; weights
    ``path:pretrain_network_g``, ``param_key_g``, default ``params_ema``)."""
    net_opt = deepcopy(net_opt)
    net_opt.pop('type')
    if net_opt.get('pretrained_path') is not None:
        check_pretrained_folder(net_opt['pretrained_path'], 'network_g:pretrained_path')
    ckpt = path_opt.get('pretrain_network_g')
    if not ckpt:
        raise OptionError('path:pretrain_network_g', None, 'the trained SSR weights are needed (e.g. '
                          'experiments/<name>/models/net_g_latest.pth)')
    unet = SSRUNet(**net_opt)
    state, key = read_state_dict(ckpt, path_opt.get('param_key_g', 'params_ema'))
    unet.load_saved_state_dict(state, source=f'{ckpt} [{key}]')
    return unet.requires_grad_(False).eval()


# ------------------------------------------------------------------------------------------ pipelines
def assemble_pipeline(opt, unet, svkr=None, dtype=None):
    """The ``SSRPipeline`` of an SSR option dict around the given networks: ``unet`` (an SSRUNet: trained and
    loaded, or the one being trained) and ``svkr``; the noise schedule and the sampling defaults from the
    ``diffusion`` block, the SVKR's kernel basis where the SSRUNet has none, ``scale``."""
    adopt_svkr_kernel_pca(unet, svkr)
    scheduler = scheduler_from_options(opt.get('diffusion'), unet.config['pretrained_path'])
    return SSRPipeline(unet, scheduler, svkr, scale=opt.get('scale'), dtype=dtype,
                       **sampling_options(opt.get('diffusion')))


def pipeline_from_options(opt, device=None, dtype=None):
    """The ``SSRPipeline`` of a parsed option dict with resolved paths (``prepare_options``): an SSR one
    (``network_g: SSRUNet`` with ``path:pretrain_network_g``; ``network_svkr`` with
    ``path:pretrain_network_svkr``; the ``diffusion`` block) or an SVKR one (``network_g: SVKR`` with
    ``path:pretrain_network_g``). Weights are the EMA ones where the checkpoint has them (``param_key_*``,
    default ``params_ema``). No weights: an ``OptionError``."""
    path_opt = opt.get('path') or {}
    net_opt = opt.get('network_g') or {}
    if net_opt.get('type') == 'SVKR':
        if not svkr_has_weights(net_opt, path_opt, 'pretrain_network_g'):
            raise OptionError('path:pretrain_network_g', None, 'the SVKR has no trained weights (e.g. '
                              'experiments/<name>/models/net_g_latest.pth of options/train_svkr.yml)')
        svkr = build_svkr_from_options(net_opt, path_opt, 'pretrain_network_g', 'param_key_g')
        return SSRPipeline(None, None, svkr, scale=opt.get('scale'), dtype=dtype).to(device or 'cpu')
    if net_opt.get('type') != 'SSRUNet':
        raise OptionError('network_g:type', net_opt.get('type'), 'expected SSRUNet (an SSR option file) or SVKR')
    svkr = None
    if opt.get('network_svkr') is not None:
        if not svkr_has_weights(opt['network_svkr'], path_opt):
            raise OptionError('path:pretrain_network_svkr', None, SVKR_WEIGHTS_HINT)
        svkr = build_svkr_from_options(opt['network_svkr'], path_opt, 'pretrain_network_svkr', 'param_key_svkr')
    return assemble_pipeline(opt, load_ssr_unet(ssr_unet_options(opt), path_opt), svkr, dtype).to(device or 'cpu')


def load_pipeline(opt_source=None, model_path=None, device=None, dtype=None, torch_dtype=None):
    """The ``SSRPipeline`` of a model folder (``model_path``) or of an option file / experiment folder
    (``opt_source``; a relative path is also looked up in the repository root and the shipped option files).
    ``torch_dtype``: half-precision weights (``SSRPipeline.to(dtype)``), cast before the move to ``device``;
    ``dtype``: the autocast precision over float32 weights."""
    if (opt_source is None) == (model_path is None):
        raise ValueError('load_pipeline: give exactly one of opt_source and model_path')
    if model_path is not None:
        return SSRPipeline.from_pretrained(model_path, device=device, dtype=dtype, torch_dtype=torch_dtype)
    opt = prepare_options(load_options(find_option_file(opt_source)))
    pipe = pipeline_from_options(opt, device='cpu' if torch_dtype is not None else device, dtype=dtype)
    if torch_dtype is not None:
        pipe.to(dtype=torch_dtype).to(device or 'cpu')
    return pipe
