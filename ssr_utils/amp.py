"""Mixed precision, named once: ``none | fp16 | bf16`` -> a torch dtype, an autocast context, a grad scaler.

Used by the training base (``train: amp``) and by ``SSRPipeline`` (``dtype=``), so both mean the same
thing by a precision name. Autocast runs on every device torch supports it on, the CPU included (bf16
and fp16 there too), so the mixed-precision code paths run in the CPU tests, not first on a user's GPU.
"""
from contextlib import nullcontext

import torch

from ssr_utils.errors import OptionError

AMP_MODES = ('none', 'fp16', 'bf16')
_DTYPES = {'fp16': torch.float16, 'bf16': torch.bfloat16}
_ALIASES = {'float16': 'fp16', 'half': 'fp16', 'bfloat16': 'bf16', 'float32': 'none', 'fp32': 'none'}


def amp_dtype(mode, key='train:amp'):
    """``none`` / None / ``fp32`` -> None; ``fp16`` -> torch.float16; ``bf16`` -> torch.bfloat16. A torch
    dtype is accepted as well (float32 -> None). Anything else: ``OptionError`` naming ``key``."""
    if mode is None or mode is torch.float32:
        return None
    if isinstance(mode, torch.dtype):
        if mode in _DTYPES.values():
            return mode
        raise OptionError(key, str(mode), f'expected one of {", ".join(AMP_MODES)}')
    name = _ALIASES.get(str(mode).lower(), str(mode).lower())
    if name == 'none':
        return None
    if name not in _DTYPES:
        raise OptionError(key, mode, f'expected one of {", ".join(AMP_MODES)}')
    return _DTYPES[name]


def amp_name(dtype):
    """The precision name of an autocast dtype (None -> ``none``)."""
    for name, value in _DTYPES.items():
        if dtype is value:
            return name
    return 'none'


def autocast(device, dtype):
    """``torch.autocast`` on ``device`` with ``dtype``; a no-op context for None."""
    if dtype is None:
        return nullcontext()
    device_type = torch.device(device).type
    return torch.autocast(device_type=device_type, dtype=dtype)


def grad_scaler(device, dtype):
    """A ``torch.amp.GradScaler`` for fp16 training on ``device`` (None for bf16 / float32, which need none).

    torch >= 2.3 supports the scaler on the CPU as well; on an older torch a CPU fp16 run stops with the
    reason instead of training without loss scaling."""
    if dtype is not torch.float16:
        return None
    device_type = torch.device(device).type
    try:
        return torch.amp.GradScaler(device_type)
    except (AttributeError, RuntimeError, TypeError) as err:
        raise OptionError('train:amp', 'fp16', f'this torch ({torch.__version__}) has no gradient scaler on '
                          f'{device_type} ({err}); use bf16 or none there') from None
