"""The engine behind ``scripts/export_model.py``: training results -> one model folder.

The networks are built from the option file the experiment saved (or the one given), with their trained
weights (the EMA ones when saved), by the builder ``scripts/inference_ssr.py -opt`` uses
(``ssr_pipelines.builder``), and written with ``SSRPipeline.save_pretrained``; so ``--model_path <folder>``
gives the same images as ``-opt``. Frozen parts with folders of their own (a depth network, a diffusion base
or prior) are copied into the model folder when small (``--copy-parts`` always, ``--reference-parts`` never).
"""
import os.path as osp
from copy import deepcopy

from ssr_pipelines.builder import load_options, pipeline_from_options, prepare_options
from ssr_utils.atomic_file import atomic_directory
from ssr_utils.errors import OptionError

_SUBNETWORK_CHECKPOINTS = ('pretrain_network_kernel', 'pretrain_network_sr')


def _svkr_part(source):
    """``(network options, checkpoint, param key)`` of the SVKR of an experiment folder or option file."""
    opt = load_options(source, '--svkr')
    path = opt.get('path') or {}
    if (opt.get('network_g') or {}).get('type') == 'SVKR':
        return opt['network_g'], path.get('pretrain_network_g'), path.get('param_key_g', 'params_ema')
    if opt.get('network_svkr') is not None:
        return opt['network_svkr'], path.get('pretrain_network_svkr'), path.get('param_key_svkr', 'params_ema')
    raise OptionError('--svkr', source, 'holds no SVKR (network_g of type SVKR, or network_svkr)')


def export_options(source, svkr_source=None):
    """The option dict of ``source`` (an SSR or SVKR experiment folder / option file), with the SVKR of
    ``svkr_source`` added. A whole-SVKR checkpoint makes its sub-network checkpoints unnecessary."""
    opt = load_options(source, '-i')
    path = opt.setdefault('path', {})
    if svkr_source is not None:
        if (opt.get('network_g') or {}).get('type') != 'SSRUNet':
            raise OptionError('--svkr', svkr_source, f'{source} is not an SSR model (network_g: SSRUNet) to add it to')
        net, ckpt, key = _svkr_part(svkr_source)
        opt['network_svkr'] = deepcopy(net)
        path['pretrain_network_svkr'], path['param_key_svkr'] = ckpt, key
    for net_key, path_key in (('network_g', 'pretrain_network_g'), ('network_svkr', 'pretrain_network_svkr')):
        net = opt.get(net_key)
        if isinstance(net, dict) and net.get('type') == 'SVKR' and path.get(path_key):
            for sub in _SUBNETWORK_CHECKPOINTS:
                net.pop(sub, None)
    return opt


def export_model(source, output, svkr_source=None, overwrite=False, copy_parts='auto'):
    """Write the model folder ``output``; returns ``(pipeline, report)`` (``report``: the frozen parts copied into
    the folder and those referenced by path, ``model_folder.save_model_folder``). The folder appears complete or
    not at all (``atomic_directory``: an existing one is replaced only with ``overwrite``, once the new one is
    written). ``copy_parts``: ``auto`` (parts up to ``COPY_PARTS_MAX_MB``), ``all`` or ``none``."""
    with atomic_directory(output, overwrite=overwrite) as tmp:
        pipe = pipeline_from_options(prepare_options(export_options(source, svkr_source)))
        report = pipe.save_pretrained(tmp, copy_parts=copy_parts)
    return pipe, report


def run(args):
    """Run the CLI; returns the exit status (0: written, 2: bad arguments)."""
    try:
        pipe, report = export_model(args.input, args.output, args.svkr, args.overwrite, args.copy_parts)
    except (OptionError, FileNotFoundError, FileExistsError, ValueError, KeyError, RuntimeError) as err:
        msg = str(err) if isinstance(err, OptionError) else f'{type(err).__name__}: {err}'
        print(f'export_model: {msg}', flush=True)
        return 2
    parts = []
    if pipe.unet is not None:
        parts.append(f'SSR (×{pipe.scale}, {pipe.num_inference_steps} {pipe.sampler} step(s), strength '
                     f'{pipe.strength:g}, colour fix {pipe.color_fix}'
                     + (', VAE residual' if pipe.vae_residual else '') + ')')
    if pipe.svkr is not None:
        parts.append(f'SVKR (T = {pipe.svkr.num_iter})')
    lines = [f'Exported {osp.abspath(args.output)}: {"; ".join(parts)}']
    lines += [f'  copied into the folder: {part}' for part in report['copied']]
    lines += [f'  referenced by absolute path (not moved with the folder; --copy-parts copies it): {part}'
              for part in report['referenced']]
    lines.append(f'  python scripts/inference_ssr.py --model_path {args.output} -i <image or folder> -o <output folder>')
    print('\n'.join(lines), flush=True)
    return 0
