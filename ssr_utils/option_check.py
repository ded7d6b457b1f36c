"""Start-up checks of a parsed option file: every ``type`` is registered, every input path exists, every
depth network (``MonocularDepth`` / ``TransformersDepthNet`` with a network backend) has its local folder,
the scales agree, and the model type's own ``check_options`` passes.

A failure raises :class:`ssr_utils.errors.OptionError` (a ``ValueError``) naming the option key (``a:b:c``)
and the value; the launchers stop with that one line.
"""
import os
import os.path as osp

from ssr_utils.errors import OptionError

# old option keys and the key that replaced each
RENAMED_KEYS = {
    ('train', 'use_amp'): 'train:amp (none | fp16 | bf16)',
    ('train', 'amp_dtype'): 'train:amp (none | fp16 | bf16)',
    ('train', 'max_nonfinite'): 'train:max_nonfinite_steps',
    ('diffusion', 'amp'): 'train:amp for training; --fp16 / --bf16 or SSRPipeline(dtype=) for inference',
}
# keys whose values are files or folders that must exist before training starts
_PATH_KEY_PREFIXES = ('dataroot', 'meta_info', 'pca_path')
_OPTIONAL_PATH_KEYS = ('pretrain_network', 'pretrained_model_path', 'pretrained_path')


def _registries(networks_only=False):
    """BasicSR's registries with BasicSR's own components in them (its package __init__, which imported them
    all, is not run: ``compat`` Fix 10); with ``networks_only`` only the networks, so that no training
    machinery is imported."""
    import basicsr.archs  # noqa: F401
    if not networks_only:
        import basicsr.data  # noqa: F401
        import basicsr.losses  # noqa: F401
        import basicsr.metrics  # noqa: F401
        import basicsr.models  # noqa: F401
    from basicsr.utils.registry import ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY
    return ARCH_REGISTRY, DATASET_REGISTRY, LOSS_REGISTRY, METRIC_REGISTRY, MODEL_REGISTRY


def check_renamed_keys(opt):
    """An old option key stops with the name of the key that replaced it (``RENAMED_KEYS``)."""
    for (section, key), new in RENAMED_KEYS.items():
        block = opt.get(section)
        if isinstance(block, dict) and key in block:
            raise OptionError(f'{section}:{key}', block[key], f'this key was replaced by {new}')


def _require_registered(registry, key, value):
    if value not in registry:
        known = ', '.join(sorted(name for name, _ in registry))
        raise OptionError(key, value, f'no such {registry._name} type registered (known: {known})')


def _resolve_path(value, root_path):
    """A relative path is taken from the current directory, else from the repository root."""
    if osp.isabs(value) or osp.exists(value) or root_path is None:
        return value
    rooted = osp.join(root_path, value)
    return rooted if osp.exists(rooted) else value


def _check_paths(node, key_path, root_path):
    for key, value in list(node.items()):
        full_key = f'{key_path}:{key}' if key_path else key
        if isinstance(value, dict):
            _check_paths(value, full_key, root_path)
            continue
        if not isinstance(key, str) or value is None:
            continue
        is_required = key.startswith(_PATH_KEY_PREFIXES)
        is_optional = key.startswith(_OPTIONAL_PATH_KEYS)
        if not (is_required or is_optional):
            continue
        values = value if isinstance(value, (list, tuple)) else [value]
        resolved = []
        for item in values:
            if not isinstance(item, str):
                raise OptionError(full_key, item, 'expected a path')
            item = _resolve_path(os.path.expanduser(item), root_path)
            if not osp.exists(item):
                raise OptionError(full_key, item, 'path does not exist')
            resolved.append(item)
        node[key] = resolved if isinstance(value, (list, tuple)) else resolved[0]


# registered types that load a depth network from a local save_pretrained folder (``model_path``)
_DEPTH_TYPES = ('MonocularDepth', 'TransformersDepthNet')
_DEPTH_BACKENDS = ('prior', 'dpt', 'depth_anything')


def _check_depth_networks(node, key_path, root_path):
    """Every ``type: MonocularDepth`` / ``TransformersDepthNet`` block anywhere in the options: a known backend,
    and for a network backend a ``model_path`` that is an existing save_pretrained folder (resolved like the
    other input paths). The prior needs nothing (``backend: prior``)."""
    if isinstance(node, list):
        for i, item in enumerate(node):
            _check_depth_networks(item, f'{key_path}:{i}', root_path)
        return
    if not isinstance(node, dict):
        return
    if node.get('type') in _DEPTH_TYPES:
        default = 'prior' if node['type'] == 'MonocularDepth' else 'dpt'
        backend = node.get('backend', default)
        prefix = f'{key_path}:' if key_path else ''
        if backend not in _DEPTH_BACKENDS or (node['type'] == 'TransformersDepthNet' and backend == 'prior'):
            raise OptionError(f'{prefix}backend', backend, f'expected one of {", ".join(_DEPTH_BACKENDS)} '
                              '(TransformersDepthNet: dpt or depth_anything)')
        model_path = node.get('model_path')
        if backend != 'prior' and (node['type'] == 'MonocularDepth' or model_path is not None):
            if not isinstance(model_path, str) or not model_path:
                raise OptionError(f'{prefix}model_path', model_path, f'backend {backend} needs the local '
                                  'save_pretrained folder of a depth network (MiDaS / DPT / Depth Anything, or one '
                                  'trained by options/train_depth.yml); backend: prior is the weight-free heuristic')
            resolved = _resolve_path(os.path.expanduser(model_path), root_path)
            if not osp.isdir(resolved):
                raise OptionError(f'{prefix}model_path', resolved, 'depth network folder does not exist (weights '
                                  'are never downloaded at run time: save_pretrained it there, or train one with '
                                  'options/train_depth.yml)')
            if not osp.isfile(osp.join(resolved, 'config.json')):
                raise OptionError(f'{prefix}model_path', resolved, 'no config.json in the folder (not a '
                                  'save_pretrained folder)')
            node['model_path'] = resolved
    for key, value in node.items():
        if isinstance(value, (dict, list)) and key != 'config':
            _check_depth_networks(value, f'{key_path}:{key}' if key_path else str(key), root_path)


def _scale_keys(node, key_path):
    for key, value in node.items():
        full_key = f'{key_path}:{key}'
        if isinstance(value, dict):
            yield from _scale_keys(value, full_key)
        elif key in ('scale', 'upscale') and isinstance(value, int) and not isinstance(value, bool):
            yield full_key, value


def check_scales(opt):
    """The top-level ``scale`` and every ``scale`` / ``upscale`` inside a ``network_*`` block agree: a network
    that super-resolves by another factor than the one the data and the outputs are made for would write
    outputs of the wrong size without a word."""
    top = opt.get('scale')
    if top is None:
        return
    for key, value in opt.items():
        if isinstance(key, str) and key.startswith('network_') and isinstance(value, dict):
            for scale_key, scale in _scale_keys(value, key):
                if scale != top:
                    raise OptionError(scale_key, scale, f'disagrees with the top-level scale = {top!r}; set both '
                                      'to the factor the network super-resolves')


def _model_checks(opt, model_reg):
    """The model type's own start-up checks (``check_options`` of the SSR models), before any folder is made."""
    model_cls = model_reg.get(opt.get('model_type', 'SRModel'))
    check = getattr(model_cls, 'check_options', None)
    if callable(check):
        check(opt)


def check_options(opt, root_path=None, networks_only=False):
    """Validate ``opt`` in place (relative input paths are resolved against the root path). With
    ``networks_only``, what building its networks needs only (old keys, ``network_*`` types and paths, the
    ``path`` block, depth networks, scales): for a pipeline built from an option file outside training
    (``ssr_pipelines.builder``); the model type, data, losses and metrics are not looked at."""
    arch_reg, dataset_reg, loss_reg, metric_reg, model_reg = _registries(networks_only)
    check_renamed_keys(opt)
    if not networks_only:
        _require_registered(model_reg, 'model_type', opt.get('model_type', 'SRModel'))
    for key, value in opt.items():
        if isinstance(key, str) and key.startswith('network_') and isinstance(value, dict):
            if 'type' not in value:
                raise OptionError(f'{key}:type', None, 'missing')
            _require_registered(arch_reg, f'{key}:type', value['type'])
    if not networks_only:
        _check_data_losses_metrics(opt, root_path, dataset_reg, loss_reg, metric_reg)
    _check_paths(opt.get('path') or {}, 'path', root_path)
    for key, value in opt.items():
        if isinstance(key, str) and key.startswith('network_') and isinstance(value, dict):
            _check_paths(value, key, root_path)
    _check_depth_networks(opt, '', root_path)
    check_scales(opt)
    if not networks_only:
        _model_checks(opt, model_reg)


def _check_data_losses_metrics(opt, root_path, dataset_reg, loss_reg, metric_reg):
    for phase, dataset_opt in (opt.get('datasets') or {}).items():
        if 'type' not in dataset_opt:
            raise OptionError(f'datasets:{phase}:type', None, 'missing')
        _require_registered(dataset_reg, f'datasets:{phase}:type', dataset_opt['type'])
    for key, value in (opt.get('train') or {}).items():
        if isinstance(value, dict) and key.endswith('_opt') and 'type' in value and key not in ('optim_g', 'optim_d'):
            _require_registered(loss_reg, f'train:{key}:type', value['type'])
    for name, metric in ((opt.get('val') or {}).get('metrics') or {}).items():
        if isinstance(metric, dict) and 'type' in metric:
            _require_registered(metric_reg, f'val:metrics:{name}:type', metric['type'])
    _check_paths(opt.get('datasets') or {}, 'datasets', root_path)
