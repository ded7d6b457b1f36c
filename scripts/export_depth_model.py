"""Write a depth network checkpoint of ``DepthModel`` as a ``save_pretrained`` folder for ``MonocularDepth``.

    python scripts/export_depth_model.py -opt options/train_depth.yml \
        --checkpoint experiments/train_Depth_scenes/models/net_g_20000.pth --output weights/depth_scenes_20k

Training writes ``experiments/<name>/depth_model/`` itself at every checkpoint and at the end (the EMA
weights when ``train.ema_decay`` > 0); this script exports any other checkpoint. The folder holds
``config.json``, ``model.safetensors`` and ``preprocessor_config.json`` and loads with
``MonocularDepth(backend: <the option file's network_g.backend>, model_path: <folder>)``.
"""
import argparse
import os.path as osp
import sys
from copy import deepcopy

ROOT = osp.abspath(osp.join(osp.dirname(__file__), osp.pardir))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

from ssr_utils import compat  # noqa: E402

compat.apply()

import torch  # noqa: E402
import yaml  # noqa: E402

import ssr_arch  # noqa: E402,F401
from basicsr.archs import build_network  # noqa: E402
from ssr_utils.errors import OptionError, exit_on_option_error  # noqa: E402


def export_depth_model(network_opt, checkpoint, output, param_key='auto'):
    """Build ``network_opt`` (a ``TransformersDepthNet`` dict), load ``checkpoint`` (``param_key``: ``params``,
    ``params_ema`` or ``auto`` = EMA when present) and write the folder; returns its path."""
    if network_opt.get('type') != 'TransformersDepthNet':
        raise OptionError('network_g:type', network_opt.get('type'), 'expected TransformersDepthNet')
    if not osp.isfile(checkpoint):
        raise OptionError('--checkpoint', checkpoint, 'file does not exist')
    state = torch.load(checkpoint, map_location='cpu', weights_only=True)
    if param_key == 'auto':
        param_key = 'params_ema' if 'params_ema' in state else 'params'
    if param_key not in state:
        raise OptionError('--param-key', param_key, f'not in {checkpoint} (has {sorted(state)})')
    net = build_network(deepcopy(network_opt))
    net.load_state_dict(state[param_key], strict=True)
    return net.save_pretrained(output)


@exit_on_option_error()
def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('-opt', required=True, help='the training option file (its network_g block)')
    parser.add_argument('--checkpoint', required=True, help='net_g_<iter>.pth of that training')
    parser.add_argument('--output', required=True, help='folder to write (replaced if it exists)')
    parser.add_argument('--param-key', default='auto', help='params | params_ema | auto (EMA when present)')
    args = parser.parse_args(argv)
    with open(args.opt) as f:
        opt = yaml.safe_load(f)
    if 'network_g' not in opt:
        raise OptionError('network_g', None, f'missing in {args.opt}')
    folder = export_depth_model(opt['network_g'], args.checkpoint, args.output, args.param_key)
    print(f'wrote {folder} (MonocularDepth backend: {opt["network_g"].get("backend", "dpt")}, model_path: {folder})')


if __name__ == '__main__':
    main()
