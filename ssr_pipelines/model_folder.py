"""SSR model folders (``SSRPipeline.save_pretrained`` / ``from_pretrained``), in the manner of diffusers'::

    model_index.json          the pipeline config (scale, sampling defaults, components)
    ssr_unet/                 SSRUNet: config.json + diffusion_pytorch_model.safetensors
    scheduler/                the training noise schedule (diffusers' scheduler_config.json)
    svkr/                     SVKR: config.json + model.safetensors
    depth_network/            the SVKR's depth network (a transformers save_pretrained folder), when copied
    kernel_pca.pth            the kernel PCA basis the conditions are coded with (KernelPCA.load)

Frozen parts that load from folders of their own travel with the model folder or are referenced by their
absolute path (``copy_parts``): a frozen Stable Diffusion base (``network_g: pretrained_path``) or the
project's own trained prior, whose weights then go into ``ssr_unet/``'s safetensors (the config carries the
UNet / VAE configs instead of the path), and the SVKR's depth network (``depth_opt: model_path``), copied to
``depth_network/`` and named by that relative path in ``svkr/config.json`` (relative paths are read from the
model folder). ``auto`` copies each part whose weights are at most ``COPY_PARTS_MAX_MB``, so a folder of small
parts (the demo's) can be moved and the experiments deleted; a multi-GB base stays referenced. Where a
referenced path is missing, loading stops with an ``OptionError`` naming the file that holds it.
"""
import json
import os
import os.path as osp
import shutil
from contextlib import contextmanager
from copy import deepcopy

import torch

from ssr_utils import compat

compat.apply()

from basicsr.archs import build_network  # noqa: E402

from ssr_arch.ssr_unet_arch import WEIGHTS_NAME as UNET_WEIGHTS, SSRUNet  # noqa: E402
from ssr_utils.atomic_file import atomic_write  # noqa: E402
from ssr_utils.errors import OptionError  # noqa: E402

PIPELINE_CONFIG = 'model_index.json'
UNET_FOLDER = 'ssr_unet'
SCHEDULER_FOLDER = 'scheduler'
SVKR_FOLDER = 'svkr'
SVKR_WEIGHTS = 'model.safetensors'
KERNEL_PCA_FILE = 'kernel_pca.pth'
DEPTH_FOLDER = 'depth_network'
COPY_PARTS = ('auto', 'all', 'none')
# ``copy_parts='auto'``: a referenced part this small travels with the model folder (the demo's depth network is
# 2 MB, its prior's UNet and VAE a few MB; a Stable Diffusion 2.1 base is about 3.5 GB and stays referenced)
COPY_PARTS_MAX_MB = 200
# the SVKR's depth estimator is frozen and loads from its own model_path (referenced or copied as a
# folder), never from the SVKR's weights
_SVKR_REFERENCED = ('depth_net.', )


@contextmanager
def _referenced_path(config_file, what, prefix='', model_folder=None):
    """A model folder references a frozen part by an absolute path (module doc); when that path is gone (a
    folder moved to another machine) the error names the file that holds it and what to do."""
    try:
        yield
    except OptionError as err:
        if err.key not in ('model_path', 'pretrained_path'):
            raise
        inside = model_folder is not None and isinstance(err.value, str) and \
            osp.abspath(err.value).startswith(osp.abspath(model_folder) + os.sep)
        what = what[0].upper() + what[1:]
        hint = (f'{what} was copied into the model folder and its copy is incomplete: export the folder again'
                if inside else f'{what} is referenced by this path, not copied into the model folder: copy it along '
                'and set the path in that file (or export with --copy-parts)')
        raise OptionError(f'{config_file}: {prefix}{err.key}', err.value, f'{err.problem}. {hint}') from None


# ------------------------------------------------------------------------------------------ writing
def _folder_bytes(path):
    return sum(osp.getsize(osp.join(d, f)) for d, _, files in os.walk(path) for f in files)


def _copies(copy_parts, nbytes):
    return copy_parts == 'all' or (copy_parts == 'auto' and nbytes <= COPY_PARTS_MAX_MB * 2**20)


def save_model_folder(pipe, folder, copy_parts='auto'):
    """Write ``pipe`` (an ``SSRPipeline``) as a model folder; ``model_index.json`` last, so a folder that has it
    is complete. ``copy_parts`` (``auto`` | ``all`` | ``none``): which frozen parts with folders of their own
    travel inside it (module doc). Returns ``{'copied': [...], 'referenced': [...]}``: those parts, by name and
    source path."""
    if copy_parts not in COPY_PARTS:
        raise OptionError('copy_parts', copy_parts, f'expected one of {list(COPY_PARTS)}')
    os.makedirs(folder, exist_ok=True)
    report = dict(copied=[], referenced=[])
    components = {}
    if pipe.unet is not None:
        base = pipe.unet.config['pretrained_path']
        copy_base = bool(pipe.unet.referenced_parts) and _copies(copy_parts, pipe.unet.referenced_bytes())
        if pipe.unet.referenced_parts:
            report['copied' if copy_base else 'referenced'].append(f'diffusion base {base}')
        pipe.unet.save_pretrained(osp.join(folder, UNET_FOLDER), include_referenced=copy_base)
        compat.save_scheduler(pipe.scheduler, osp.join(folder, SCHEDULER_FOLDER))
        components.update(ssr_unet=['ssr_arch', 'SSRUNet'], scheduler=['diffusers', type(pipe.scheduler).__name__])
    pca = pipe.kernel_pca()
    if pca is not None:
        pca.save(osp.join(folder, KERNEL_PCA_FILE))
    if pipe.svkr is not None:
        _save_svkr(pipe.svkr, folder, pca, copy_parts, report)
        components['svkr'] = ['ssr_arch', type(pipe.svkr).__name__]
    config = dict(_class_name=type(pipe).__name__, components=components, **pipe.config)
    with atomic_write(osp.join(folder, PIPELINE_CONFIG), 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)
    return report


def _save_svkr(svkr, model_folder, pca, copy_parts, report):
    from safetensors.torch import save as safetensors_bytes
    folder = osp.join(model_folder, SVKR_FOLDER)
    os.makedirs(folder, exist_ok=True)
    config = deepcopy(svkr.config)
    depth_opt = config.get('depth_opt') or {}
    source = depth_opt.get('model_path')
    if source:
        source = osp.abspath(source)
        if _copies(copy_parts, _folder_bytes(source)):
            shutil.copytree(source, osp.join(model_folder, DEPTH_FOLDER), symlinks=False)
            depth_opt['model_path'] = DEPTH_FOLDER  # relative: read from the model folder
            report['copied'].append(f'depth network {source}')
        else:
            depth_opt['model_path'] = source
            report['referenced'].append(f'depth network {source}')
    sr_opt = dict(config.get('sr_opt') or {'type': 'NBSR'})
    nbsr_pca = getattr(svkr.sr_net, 'pca', None)
    same = pca is not None and nbsr_pca is not None and pca.components.shape == nbsr_pca.components.shape and \
        torch.equal(pca.components.cpu(), nbsr_pca.components.cpu()) and \
        torch.equal(pca.mean.cpu(), nbsr_pca.mean.cpu())
    # the folder's kernel_pca.pth builds the NBSR's basis (the weights hold it too)
    sr_opt['pca_path'] = KERNEL_PCA_FILE if same else None
    if nbsr_pca is not None:
        sr_opt['pca_dim'] = int(nbsr_pca.dim)
    config['sr_opt'] = sr_opt
    with atomic_write(osp.join(folder, 'config.json'), 'w') as f:
        json.dump(dict(type=type(svkr).__name__, **config), f, indent=2, sort_keys=True)
    tensors = {k: v.detach().cpu().contiguous() for k, v in svkr.state_dict().items()
               if not k.startswith(_SVKR_REFERENCED)}
    with atomic_write(osp.join(folder, SVKR_WEIGHTS)) as f:
        f.write(safetensors_bytes(tensors, metadata={'format': 'pt'}))


# ------------------------------------------------------------------------------------------ reading
def check_model_folder(folder):
    """Stop with a ``FileNotFoundError`` naming the first file a model folder lacks."""
    if not osp.isdir(folder):
        raise FileNotFoundError(f'{folder}: model folder does not exist (make one with scripts/export_model.py)')
    index = osp.join(folder, PIPELINE_CONFIG)
    if not osp.isfile(index):
        raise FileNotFoundError(f'{folder}: not a complete SSR model folder (no {PIPELINE_CONFIG}; make one with '
                                'scripts/export_model.py)')
    with open(index) as f:
        components = json.load(f).get('components') or {}
    needed = {'ssr_unet': (osp.join(UNET_FOLDER, SSRUNet.config_name), osp.join(UNET_FOLDER, UNET_WEIGHTS)),
              'scheduler': (osp.join(SCHEDULER_FOLDER, 'scheduler_config.json'), ),
              'svkr': (osp.join(SVKR_FOLDER, 'config.json'), osp.join(SVKR_FOLDER, SVKR_WEIGHTS))}
    for name in components:
        for rel in needed.get(name, ()):
            if not osp.isfile(osp.join(folder, rel)):
                raise FileNotFoundError(f'{folder}: incomplete model folder, no {rel}')


def load_model_folder(folder):
    """The parts of a model folder (local paths only): ``(unet, scheduler, svkr, config)``, the networks frozen
    on the CPU (None where the folder has no such part), ``config`` the ``SSRPipeline`` keyword arguments."""
    from diffusers import DDPMScheduler
    check_model_folder(folder)
    with open(osp.join(folder, PIPELINE_CONFIG)) as f:
        config = json.load(f)
    components = config.pop('components', {}) or {}
    config = {k: v for k, v in config.items() if not k.startswith('_')}
    unet = scheduler = svkr = None
    if 'ssr_unet' in components:
        with _referenced_path(osp.join(folder, UNET_FOLDER, 'config.json'), 'the Stable Diffusion base'):
            unet = SSRUNet.from_pretrained(osp.join(folder, UNET_FOLDER)).requires_grad_(False).eval()
        scheduler = DDPMScheduler.from_pretrained(osp.join(folder, SCHEDULER_FOLDER))
    if 'svkr' in components:
        with _referenced_path(osp.join(folder, SVKR_FOLDER, 'config.json'), 'the depth network', 'depth_opt:',
                              folder):
            svkr = _load_svkr(osp.join(folder, SVKR_FOLDER), folder)
    return unet, scheduler, svkr, config


def _load_svkr(folder, model_folder):
    from safetensors.torch import load_file
    with open(osp.join(folder, 'config.json')) as f:
        config = json.load(f)
    sr_opt = config.get('sr_opt') or {}
    if sr_opt.get('pca_path') == KERNEL_PCA_FILE:
        sr_opt['pca_path'] = osp.join(model_folder, KERNEL_PCA_FILE)
    depth_opt = config.get('depth_opt') or {}
    if depth_opt.get('model_path') and not osp.isabs(depth_opt['model_path']):  # a copied part, in the folder
        depth_opt['model_path'] = osp.join(model_folder, depth_opt['model_path'])
    net = build_network(config)
    weights = osp.join(folder, SVKR_WEIGHTS)
    missing, unexpected = net.load_state_dict(load_file(weights), strict=False)
    missing = [k for k in missing if not k.startswith(_SVKR_REFERENCED)]
    if missing or unexpected:
        raise KeyError(f'{weights} does not fit {config.get("type")}: missing {missing[:5]}, '
                       f'unexpected {unexpected[:5]}')
    return net.requires_grad_(False).eval()
