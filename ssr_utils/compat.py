"""The one compatibility layer between ``basicsr==1.4.2`` (and the other third-party packages) and today's stack.

Two entry points, both idempotent:

* ``apply()``: the fixes every use needs (Fixes 1, 4, 8, 10); every SSR package calls it on import, and it must
  run before ``basicsr`` is first imported (Fixes 1 and 10 are needed by the import itself). It imports none
  of BasicSR's training machinery: ``import ssr_pipelines`` does not import ``basicsr.train``.
* ``apply_training()``: ``apply()`` plus the patches of BasicSR's training and test machinery (Fixes 2, 3, 5,
  6: its pipelines, ``BaseModel``, degradations, distributed start); the training side calls it (``ssr_models``
  on import, the launchers).

Each fix names the quirk it works around and the version it is for; drop a fix once BasicSR releases its
own. Fixes of other packages that callers use directly (not patches) are plain functions here too (Fix 7).
"""
import functools
import importlib.util
import logging
import os
import os.path as osp
import sys
import threading
import types

import torch

from ssr_utils.atomic_file import atomic_torch_save
from ssr_utils.errors import OptionError

_APPLIED = False
_TRAINING_APPLIED = False
_LOCK = threading.Lock()


# ----------------------------------------------------------------------------------------------
# Fix 10 (basicsr 1.4.2 ``basicsr/__init__.py``): importing any part of basicsr runs the package's
# __init__, which star-imports every subpackage and ``basicsr.train`` / ``basicsr.test``: all of
# BasicSR's models, datasets, losses and its training pipeline, for a network registry or a logger.
# Register the package without running its __init__; each subpackage then loads when it is imported
# (the launchers import ``basicsr.train``, which loads the rest as BasicSR does).
# ----------------------------------------------------------------------------------------------
def _lazy_basicsr_package():
    if 'basicsr' in sys.modules:
        return
    spec = importlib.util.find_spec('basicsr')
    if spec is None or not spec.submodule_search_locations or spec.origin is None:
        return  # not installed (or only the launchers' folder): the import says so where it is used
    sys.modules['basicsr'] = importlib.util.module_from_spec(spec)


# ----------------------------------------------------------------------------------------------
# Fix 1 (torchvision >= 0.17): basicsr 1.4.2 imports `torchvision.transforms.functional_tensor`,
# which was removed. Its only use is `rgb_to_grayscale`, which lives in `functional` now.
# ----------------------------------------------------------------------------------------------
def _fix_functional_tensor():
    name = 'torchvision.transforms.functional_tensor'
    if name in sys.modules:
        return
    try:
        __import__(name)
        return
    except ImportError:
        pass
    from torchvision.transforms import functional
    shim = types.ModuleType(name)
    shim.rgb_to_grayscale = functional.rgb_to_grayscale
    sys.modules[name] = shim


# ----------------------------------------------------------------------------------------------
# Fix 2 (basicsr 1.4.2 `train.load_resume_state`): it maps the state onto
# `torch.cuda.current_device()`, which crashes on CPU, and `--auto_resume` looks for
# `experiments/<name>/training_states` relative to the current directory instead of the root path
# the launcher hands over. Also torch >= 2.6 loads with `weights_only=True`, which refuses the
# scheduler state (a `collections.Counter`); training states are our own files, so load them fully.
# ----------------------------------------------------------------------------------------------
def latest_training_state(experiments_root):
    """Path of the newest ``<iter>.state`` under ``experiments_root/training_states``, or None."""
    state_dir = osp.join(experiments_root, 'training_states')
    if not osp.isdir(state_dir):
        return None
    iters = []
    for entry in os.listdir(state_dir):
        stem, ext = osp.splitext(entry)
        if ext == '.state' and stem.isdigit():
            iters.append(int(stem))
    if not iters:
        return None
    return osp.join(state_dir, f'{max(iters)}.state')


def _state_map_location(opt):
    if opt.get('num_gpu', 0) != 0 and torch.cuda.is_available():
        device = torch.device('cuda', torch.cuda.current_device())
    else:
        device = torch.device('cpu')
    return device


def load_resume_state(opt):
    from basicsr.utils import check_resume
    resume_state_path = None
    if opt.get('auto_resume'):
        root = opt.get('root_path') or os.getcwd()
        resume_state_path = latest_training_state(osp.join(root, 'experiments', opt['name']))
        if resume_state_path is not None:
            opt['path']['resume_state'] = resume_state_path
    elif opt['path'].get('resume_state'):
        resume_state_path = opt['path']['resume_state']
    if resume_state_path is None:
        return None
    if not osp.isfile(resume_state_path):
        raise OptionError('path:resume_state', resume_state_path, 'file does not exist')
    resume_state = torch.load(resume_state_path, map_location=_state_map_location(opt), weights_only=False)
    check_resume(opt, resume_state['iter'])
    return resume_state


# ----------------------------------------------------------------------------------------------
# Fix 3 (basicsr 1.4.2 `BaseModel.save_network` / `save_training_state`): `torch.save` straight
# onto the final name, so a kill during a save leaves a truncated latest checkpoint that
# `--auto_resume` then picks. Write to a temporary file in the same folder, fsync, rename.
# ----------------------------------------------------------------------------------------------
def _save_network(self, net, net_label, current_iter, param_key='params'):
    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] != 0:
        return
    label = 'latest' if current_iter == -1 else current_iter
    save_path = osp.join(self.opt['path']['models'], f'{net_label}_{label}.pth')
    nets = net if isinstance(net, list) else [net]
    keys = param_key if isinstance(param_key, list) else [param_key]
    if len(nets) != len(keys):
        raise ValueError('save_network: the lengths of net and param_key differ.')
    save_dict = {}
    for net_, key_ in zip(nets, keys):
        state_dict = self.get_bare_model(net_).state_dict()
        save_dict[key_] = {(k[7:] if k.startswith('module.') else k): v.detach().cpu() for k, v in state_dict.items()}
    atomic_torch_save(save_dict, save_path)


def _save_training_state(self, epoch, current_iter):
    from basicsr.utils.dist_util import get_dist_info
    if get_dist_info()[0] != 0 or current_iter == -1:
        return
    state = {
        'epoch': epoch,
        'iter': current_iter,
        'optimizers': [o.state_dict() for o in self.optimizers],
        'schedulers': [s.state_dict() for s in self.schedulers],
    }
    extra = getattr(self, 'extra_training_state', None)
    if callable(extra):  # e.g. EMA / AMP scaler states of SSR models
        state.update(extra())
    atomic_torch_save(state, osp.join(self.opt['path']['training_states'], f'{current_iter}.state'))


# ----------------------------------------------------------------------------------------------
# Fix 4 (lmdb >= 1.5 / 3.x with basicsr 1.4.2 `LmdbBackend`): one environment per dataset, but
# lmdb refuses to open the same path twice in one process (train and val reading one LMDB).
# Share one read-only environment per (process, path); a forked worker opens its own.
# ----------------------------------------------------------------------------------------------
_LMDB_ENVS = {}


def shared_lmdb_env(path, **kwargs):
    import lmdb
    key = (os.getpid(), osp.realpath(path))
    with _LOCK:
        env = _LMDB_ENVS.get(key)
        if env is None:
            if not osp.isdir(path):
                raise FileNotFoundError(f'LMDB folder does not exist: {path}')
            env = lmdb.open(path, readonly=True, lock=False, readahead=kwargs.get('readahead', False),
                            max_readers=kwargs.get('max_readers', 126))
            _LMDB_ENVS[key] = env
    return env


def _lmdb_backend_init(self, db_paths, client_keys='default', readonly=True, lock=False, readahead=False, **kwargs):
    if isinstance(client_keys, str):
        client_keys = [client_keys]
    self.db_paths = [str(v) for v in db_paths] if isinstance(db_paths, (list, tuple)) else [str(db_paths)]
    if len(client_keys) != len(self.db_paths):
        raise ValueError('client_keys and db_paths should have the same length, '
                         f'but received {len(client_keys)} and {len(self.db_paths)}.')
    self._client = {key: shared_lmdb_env(path, readahead=readahead) for key, path in zip(client_keys, self.db_paths)}


# ----------------------------------------------------------------------------------------------
# Fix 5 (OpenCV >= 4.14 with basicsr 1.4.2 `random_add_jpg_compression`): the quality is drawn
# with `np.random.uniform` and passed as a float, which `cv2.imencode` now rejects.
# ----------------------------------------------------------------------------------------------
def _wrap_jpg_quality(add_jpg_compression):

    @functools.wraps(add_jpg_compression)
    def add_jpg_compression_int_quality(img, quality=90):
        return add_jpg_compression(img, int(round(float(quality))))

    add_jpg_compression_int_quality.__ssr_compat__ = True
    return add_jpg_compression_int_quality


# ----------------------------------------------------------------------------------------------
# Fix 6 (basicsr 1.4.2 DDP under `torchrun ... --launcher pytorch`): `init_dist` ignores
# `dist_params` for the pytorch launcher and `_init_dist_pytorch` divides by the GPU count
# (crash on CPU); `model_to_device` passes `device_ids=[cuda device]` to DDP even on CPU.
# The backend comes from `dist_params.backend` in the option file (default: nccl with GPUs,
# gloo without). The option file is read here because `parse_options` reads it only after.
# ----------------------------------------------------------------------------------------------
def dist_backend_from_argv(argv):
    from ssr_utils.option_file import option_file_argument, read_option_file
    path = option_file_argument(argv)
    backend = None
    if path and osp.isfile(path):
        backend = (read_option_file(path).get('dist_params') or {}).get('backend')
    if backend is None:
        backend = 'nccl' if torch.cuda.is_available() else 'gloo'
    return backend


def _init_dist(launcher, backend=None, **kwargs):
    import torch.distributed as dist
    import torch.multiprocessing as mp
    from basicsr.utils import dist_util
    if mp.get_start_method(allow_none=True) is None:
        mp.set_start_method('spawn')
    backend = dist_backend_from_argv(sys.argv[1:]) if backend in (None, 'nccl') else backend
    if launcher == 'pytorch':
        if backend == 'nccl':
            if not torch.cuda.is_available():
                raise OptionError('dist_params:backend', backend, 'nccl needs CUDA GPUs; use gloo on CPU')
            torch.cuda.set_device(int(os.environ.get('LOCAL_RANK', os.environ['RANK'])) % torch.cuda.device_count())
        dist.init_process_group(backend=backend, **kwargs)
    elif launcher == 'slurm':
        dist_util._init_dist_slurm(backend, **kwargs)
    else:
        raise OptionError('--launcher', launcher, 'expected none, pytorch or slurm')


def _model_to_device(self, net):
    from torch.nn.parallel import DataParallel, DistributedDataParallel
    net = net.to(self.device)
    if self.opt['dist']:
        find_unused = self.opt.get('find_unused_parameters', False)
        device_ids = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == 'cuda' else None
        net = DistributedDataParallel(net, device_ids=device_ids, find_unused_parameters=find_unused)
    elif self.opt['num_gpu'] > 1:
        net = DataParallel(net)
    return net


# ----------------------------------------------------------------------------------------------
# Fix 7 (diffusers 0.42 ``ConfigMixin.save_config``): a scheduler's config records which keys were left
# at their defaults (``_use_default_values``), and ``from_config`` uses that list to give another
# scheduler class its own defaults for them (e.g. DPM-Solver++'s ``timestep_spacing``), but the saved
# JSON drops the list. A schedule saved and loaded again then converts to a different sampler (other
# timesteps, another image). Save the list with the config; ``from_pretrained`` honours it on load.
# ----------------------------------------------------------------------------------------------
def save_scheduler(scheduler, folder):
    """``scheduler.save_pretrained(folder)`` that keeps ``_use_default_values`` in scheduler_config.json."""
    import json
    from ssr_utils.atomic_file import atomic_write
    scheduler.save_pretrained(folder)
    path = osp.join(folder, scheduler.config_name)
    with open(path) as f:
        config = json.load(f)
    defaults = sorted(scheduler.config.get('_use_default_values') or [])
    if defaults:
        config['_use_default_values'] = defaults
    with atomic_write(path, 'w') as f:
        json.dump(config, f, indent=2, sort_keys=True)


# ----------------------------------------------------------------------------------------------
# Fix 8 (diffusers 0.42 ``ModelMixin.to``): it reads ``fp32_modules = self._keep_in_fp32_modules or []``
# and then warns whenever ``fp32_modules is not None``, i.e. on every dtype cast of every model, also one
# with no module to keep in float32 ("... should be kept in float32: []"). Drop that one empty-list
# warning; a model that does name modules still warns.
# ----------------------------------------------------------------------------------------------
class _EmptyFp32ModulesWarning(logging.Filter):
    def filter(self, record):
        return 'should be kept in float32: []' not in record.getMessage()


def _fix_empty_fp32_modules_warning():
    logger = logging.getLogger('diffusers.models.modeling_utils')  # the logger diffusers' get_logger returns
    if not any(isinstance(f, _EmptyFp32ModulesWarning) for f in logger.filters):
        logger.addFilter(_EmptyFp32ModulesWarning())


# ----------------------------------------------------------------------------------------------
# Fix 9 (transformers >= 5, diffusers 0.42, safetensors 0.8 on the CPU): ``from_pretrained`` memory-maps
# the safetensors file and leaves every weight a view into it, at an address 8 (or 56, 32...) bytes past
# a 64-byte boundary, where PyTorch's own allocations are 64-byte aligned. The CPU kernels (oneDNN
# convolutions, vectorised reductions) split their loops by alignment, so the same weights at another
# alignment round differently: a DPT loaded from its folder differed from the network it was saved from
# by ~1e-7 per layer, 3.7e-6 after min-max normalisation (transformers 5.25.0; 4.x copied the weights).
# Copy them into PyTorch's own memory once after loading: the folder then gives the network that was
# saved, bit for bit, and the model no longer holds the file open.
# ----------------------------------------------------------------------------------------------
def own_weights(module):
    """Give every CPU parameter and buffer of ``module`` (loaded by a ``from_pretrained``) memory of its own,
    aligned as PyTorch allocates it (one tensor at a time, so the peak grows by the largest). Returns
    ``module``."""
    with torch.no_grad():
        for tensor in list(module.parameters()) + list(module.buffers()):
            if tensor.device.type == 'cpu' and tensor.numel():
                tensor.data = tensor.data.clone(memory_format=torch.contiguous_format)
    return module


def apply():
    """The fixes every use needs (idempotent; imports no training machinery). Must run before the first
    ``import basicsr``."""
    global _APPLIED
    if _APPLIED:
        return
    with _LOCK:
        if _APPLIED:
            return
        _lazy_basicsr_package()
        _fix_functional_tensor()
        _fix_empty_fp32_modules_warning()
        import basicsr.utils.file_client as file_client
        file_client.LmdbBackend.__init__ = _lmdb_backend_init
        _APPLIED = True


def apply_training():
    """``apply()`` and the patches of BasicSR's training and test machinery (idempotent); the training side
    (``ssr_models``, the launchers) calls it."""
    global _TRAINING_APPLIED
    apply()
    if _TRAINING_APPLIED:
        return
    with _LOCK:
        if _TRAINING_APPLIED:
            return
        import basicsr.data.degradations as degradations
        import basicsr.models.base_model as base_model
        import basicsr.train as bsr_train
        import basicsr.utils.dist_util as dist_util
        import basicsr.utils.options as bsr_options

        bsr_train.load_resume_state = load_resume_state
        base_model.BaseModel.save_network = _save_network
        base_model.BaseModel.save_training_state = _save_training_state
        base_model.BaseModel.model_to_device = _model_to_device
        if not getattr(degradations.add_jpg_compression, '__ssr_compat__', False):
            degradations.add_jpg_compression = _wrap_jpg_quality(degradations.add_jpg_compression)
        dist_util.init_dist = _init_dist
        bsr_options.init_dist = _init_dist
        _TRAINING_APPLIED = True


def end_distributed():
    """basicsr 1.4.2's train/test pipelines never destroy the process group. Under torchrun with gloo
    (torch 2.14) a rank then sometimes aborts at interpreter exit ("terminate called without an active
    exception", SIGABRT) while its gloo threads are torn down, failing a finished run. Meet the other
    ranks, then destroy the group, before exiting."""
    import torch.distributed as dist
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
        dist.destroy_process_group()


# ----------------------------------------------------------------------------------------------
# glibc malloc (all versions; measured with 2.36): memory freed into the heap stays resident, only
# the top of the heap goes back to the system. Tensors below glibc's mmap threshold (dynamic, up to
# 32 MB) live in that heap, so a long CPU run of differently shaped windows leaves it fragmented:
# in tiled SVKR 65-135 MB stayed resident that no tensor used (docs/inference.md, Speed and memory;
# `bench_inference.py --trace`). malloc_trim(0) hands the free pages back; elsewhere there is no
# such call and nothing is done.
# ----------------------------------------------------------------------------------------------
@functools.lru_cache(maxsize=None)
def _malloc_trim():
    import ctypes
    try:
        fn = ctypes.CDLL('libc.so.6').malloc_trim
    except (OSError, AttributeError):
        return None
    fn.argtypes, fn.restype = [ctypes.c_size_t], ctypes.c_int
    return fn


def release_free_heap():
    """Return the C heap's free pages to the system (glibc's ``malloc_trim``). True if memory was released;
    False where nothing was free or the C library has no such call. Costs about a millisecond."""
    fn = _malloc_trim()
    return bool(fn(0)) if fn is not None else False
