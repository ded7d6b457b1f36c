"""Reading BasicSR checkpoints (``{'params': ..., 'params_ema': ...}`` or a bare state dict) the one way."""
import os.path as osp

import torch

from ssr_utils.errors import OptionError


def read_state_dict(path, param_key='params_ema', key='path:pretrain_network_g'):
    """``(state dict, the key read)`` of a BasicSR checkpoint. ``param_key`` falls back to ``params`` when it is
    absent (as BasicSR's ``load_network``); a bare state dict is returned as it is. DDP's ``module.`` prefixes
    are removed. A missing file stops with an ``OptionError`` naming ``key``."""
    if not osp.isfile(path):
        raise OptionError(key, path, 'file does not exist')
    ckpt = torch.load(path, map_location='cpu', weights_only=True)
    used = None
    if isinstance(ckpt, dict) and param_key in ckpt and isinstance(ckpt[param_key], dict):
        used = param_key
    elif isinstance(ckpt, dict) and isinstance(ckpt.get('params'), dict):
        used = 'params'
    state = ckpt[used] if used is not None else ckpt
    return {(k[7:] if k.startswith('module.') else k): v for k, v in state.items()}, used
