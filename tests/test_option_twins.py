"""Twins that cannot drift: an option file that loads what another shipped file trains builds the networks
that file trained, and every full-size file parses and names only option keys its networks take.

The twin is found from the file itself, so a new option file is covered without editing this test:

* ``pretrain_network_<x>: experiments/<name>/models/net_<y>_*.pth`` anywhere in a file (``path:`` or inside a
  network, e.g. SVKR's ``pretrain_network_kernel``) loads the ``network_<y>`` of the training file whose
  ``name:`` is ``<name>`` into this file's ``network_<x>`` (top level) or ``<x>_opt`` (beside the key,
  inside a network). Both must build the same network: every option, the defaults of the registered
  class filled in, apart from those that say how weights are loaded or trained (``LOAD_KEYS``) and SVKR's
  loop length and mix (``LOOP_KEYS``: the Table 2 ablation rows run the stage 3 SVKR at T = 0).
* A ``test_*.yml`` file evaluates the ``network_g`` its twin trained, and that network was trained with
  the twin's other networks (an SSR network on the maps of the twin's SVKR): every ``network_*`` of the
  twin is in the test file, the same, the loop keys included.
* Any other value under ``experiments/<name>/`` (a depth network's ``model_path``, a diffusion prior's
  ``pretrained_path``) is a folder that the training file named ``<name>`` writes: the folder is the one
  its model writes (``PRETRAINED_FOLDER`` of the model's module), and a depth network's ``backend`` is
  the one it was trained as.
"""
import glob
import inspect
import os.path as osp
import re
import sys

import pytest
import yaml

from conftest import ROOT

OPTION_FILES = sorted(glob.glob(osp.join(ROOT, 'options', '*.yml')))
FULL_SIZE = [p for p in OPTION_FILES if not p.endswith(('_demo.yml', '_smoke.yml'))]
# how weights are loaded and whether they train; the built network is the same either way
LOAD_KEYS = ('pretrain_network_', 'param_key', 'strict_load', 'freeze_', 'gradient_checkpointing')
# options of a registered network that change how it runs, not which weights it has
LOOP_KEYS = {'SVKR': ('num_iter', 'gamma')}
CHECKPOINT = re.compile(r'^(?:\./)?experiments/([^/]+)/models/net_([a-z0-9]+)_[^/]+\.pth$')
EXPERIMENT = re.compile(r'^(?:\./)?experiments/([^/]+)/(.+)$')


def _read(path):
    with open(path) as f:
        return yaml.safe_load(f)


OPTIONS = {osp.basename(p): _read(p) for p in OPTION_FILES}
BY_NAME = {}
for _file, _opt in OPTIONS.items():
    BY_NAME.setdefault(_opt.get('name'), []).append(_file)


def _arch(type_name):
    import ssr_arch  # noqa: F401  (registers the archs)
    from basicsr.utils.registry import ARCH_REGISTRY
    return ARCH_REGISTRY.get(type_name) if type_name in ARCH_REGISTRY else None


def _parameters(cls):
    return {n: p for n, p in inspect.signature(cls.__init__).parameters.items()
            if n != 'self' and p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)}


def built(node, loop_keys=True):
    """The options a network is built from: the registered class's defaults filled in (SVKR's sub-networks
    as it resolves them), load keys dropped, loop keys dropped unless ``loop_keys``, recursively."""
    if isinstance(node, (list, tuple)):
        return [built(v, loop_keys) for v in node]
    if not isinstance(node, dict):
        return node
    node = dict(node)
    cls = _arch(node.get('type'))
    if cls is not None:
        if node['type'] == 'SVKR':
            node['depth_opt'], node['kernel_opt'], node['sr_opt'] = cls.network_options(
                node.get('use_depth', True), node.get('depth_opt'), node.get('kernel_opt'), node.get('sr_opt'),
                node.get('scale'), node.get('kernel_size'))
        for name, param in _parameters(cls).items():
            if name not in node and param.default is not inspect.Parameter.empty:
                node[name] = param.default
        if not loop_keys:
            node = {k: v for k, v in node.items() if k not in LOOP_KEYS.get(node['type'], ())}
    return {k: built(v, loop_keys) for k, v in node.items() if not (isinstance(k, str) and k.startswith(LOAD_KEYS))}


def differences(mine, twin, key=''):
    """``key: value here != value in the twin`` for every option that differs."""
    if isinstance(mine, dict) and isinstance(twin, dict):
        out = []
        for k in sorted(set(mine) | set(twin), key=str):
            sub = f'{key}:{k}' if key else str(k)
            out += differences(mine.get(k, '<absent>'), twin.get(k, '<absent>'), sub)
        return out
    same = mine == twin or (isinstance(mine, str) and isinstance(twin, str) and osp.normpath(mine) == osp.normpath(twin))
    return [] if same else [f'{key}: {mine!r} here, {twin!r} in the twin']


def _walk(node, key=''):
    """``(key path, the dict holding the key, key, value)`` of every leaf of an option tree."""
    if isinstance(node, dict):
        for k, v in node.items():
            sub = f'{key}:{k}' if key else str(k)
            if isinstance(v, (dict, list)):
                yield from _walk(v, sub)
            else:
                yield sub, node, k, v
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _walk(v, f'{key}:{i}')


def checkpoint_references(opt):
    """``(key path, receiving network's options, twin name, twin network key)`` of every checkpoint that a
    file loads from an experiment."""
    for key_path, holder, key, value in _walk(opt):
        if not (isinstance(key, str) and key.startswith('pretrain_network_') and isinstance(value, str)):
            continue
        match = CHECKPOINT.match(value)
        if match is None:
            continue
        x = key[len('pretrain_network_'):]
        receiver = holder[f'{x}_opt'] if f'{x}_opt' in holder else opt.get(f'network_{x}')
        yield key_path, receiver, match.group(1), f'network_{match.group(2)}'


def folder_references(opt):
    """``(key path, the dict holding it, twin name, folder inside the experiment)`` of every other value under
    ``experiments/<name>/``."""
    for key_path, holder, key, value in _walk(opt):
        if isinstance(value, str) and not (isinstance(key, str) and key.startswith('pretrain_network_')):
            match = EXPERIMENT.match(value)
            if match:
                yield key_path, holder, match.group(1), match.group(2)


def twin_of(name, what):
    files = BY_NAME.get(name, [])
    assert len(files) == 1, (f'{what} reads experiments/{name}/, which '
                             f'{"no shipped option file" if not files else "more than one option file (" + ", ".join(files) + ")"} '
                             'writes (name: ' + str(name) + ')')
    assert files[0].startswith('train_'), f'{what} reads experiments/{name}/, written by {files[0]}, not a training file'
    return files[0]


CHECKPOINT_CASES = [(f, key, receiver, name, net) for f, opt in OPTIONS.items()
                    for key, receiver, name, net in checkpoint_references(opt)]
FOLDER_CASES = [(f, key, holder, name, folder) for f, opt in OPTIONS.items()
                for key, holder, name, folder in folder_references(opt)]
TEST_FILES = [f for f in OPTIONS if f.startswith('test_')]


def test_the_twins_are_found():
    """Guards the finder: the shipped files load checkpoints and depth networks of the shipped stages."""
    found = {(f, key) for f, key, *_ in CHECKPOINT_CASES}
    assert ('test_svkr.yml', 'path:pretrain_network_g') in found
    assert ('train_svkr.yml', 'network_g:pretrain_network_sr') in found
    assert ('test_ssr_table3.yml', 'path:pretrain_network_svkr') in found
    assert ('test_svkr_demo.yml', 'network_g:depth_opt:model_path') in {(f, key) for f, key, *_ in FOLDER_CASES}
    for f in TEST_FILES:
        assert any(case[0] == f and case[1] == 'path:pretrain_network_g' for case in CHECKPOINT_CASES), \
            f'{f} loads no trained network_g from an experiment of a shipped training file'


@pytest.mark.parametrize('case', CHECKPOINT_CASES, ids=[f'{c[0]}:{c[1]}' for c in CHECKPOINT_CASES])
def test_a_loaded_checkpoint_fits_the_network_that_wrote_it(case):
    path, key, receiver, name, net_key = case
    twin = twin_of(name, f'{path} {key}')
    assert receiver is not None, f'{path} {key}: no network to load it into (network_* or *_opt beside the key)'
    assert net_key in OPTIONS[twin], f'{path} {key}: {twin} has no {net_key}'
    diff = differences(built(receiver, loop_keys=False), built(OPTIONS[twin][net_key], loop_keys=False))
    assert not diff, (f'{path} {key} loads the {net_key} of {twin}, but builds another network:\n  '
                      + '\n  '.join(diff))


@pytest.mark.parametrize('path', TEST_FILES)
def test_a_test_file_builds_every_network_of_its_training_twin(path):
    opt = OPTIONS[path]
    names = {name for _, key, _, name, net in (c for c in CHECKPOINT_CASES if c[0] == path)
             if key == 'path:pretrain_network_g' and net == 'network_g'}
    assert len(names) == 1, f'{path}: path:pretrain_network_g must load the network_g of one training file'
    twin = twin_of(names.pop(), path)
    mine = {k for k in opt if isinstance(k, str) and k.startswith('network_')}
    theirs = {k for k in OPTIONS[twin] if isinstance(k, str) and k.startswith('network_')}
    # a test file may add a network its twin trained without (an SVKR for blind conditions where training
    # read the samples' maps); that one's own twin is checked above
    assert theirs <= mine, f'{path} builds {sorted(mine)}, without {sorted(theirs - mine)} of its training twin {twin}'
    diff = [line for k in sorted(theirs) for line in differences(built(opt[k]), built(OPTIONS[twin][k]), k)]
    assert not diff, (f'{path} evaluates what {twin} trained, but builds other networks:\n  ' + '\n  '.join(diff))


@pytest.mark.parametrize('case', FOLDER_CASES, ids=[f'{c[0]}:{c[1]}' for c in FOLDER_CASES])
def test_a_folder_read_from_an_experiment_is_the_one_its_stage_writes(case):
    import ssr_models  # noqa: F401  (registers the models)
    from basicsr.utils.registry import MODEL_REGISTRY
    path, key, holder, name, folder = case
    twin = twin_of(name, f'{path} {key}')
    twin_opt = OPTIONS[twin]
    model = MODEL_REGISTRY.get(twin_opt['model_type'])
    written = getattr(sys.modules[model.__module__], 'PRETRAINED_FOLDER', None)
    assert written is not None, f'{path} {key} reads a folder of experiments/{name}/, but {twin} writes none'
    assert osp.normpath(folder) == written, f'{path} {key}: {twin} writes experiments/{name}/{written}, not {folder}'
    trained_as = (twin_opt.get('network_g') or {}).get('backend')
    if 'backend' in holder and trained_as is not None:
        assert holder['backend'] == trained_as, (f'{path} {key[:key.rfind(":")]}:backend is {holder["backend"]!r}, '
                                                 f'but {twin} trains a {trained_as!r} network')


def _unknown_keys(node, key=''):
    """Options of a registered network that its class does not take, anywhere in ``node``."""
    out = []
    if isinstance(node, dict):
        cls = _arch(node.get('type'))
        if cls is not None:
            params = inspect.signature(cls.__init__).parameters
            if not any(p.kind == p.VAR_KEYWORD for p in params.values()):
                out += [f'{key}:{k}' for k in node if k != 'type' and k not in params]
        for k, v in node.items():
            out += _unknown_keys(v, f'{key}:{k}' if key else str(k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _unknown_keys(v, f'{key}:{i}')
    return out


@pytest.mark.parametrize('path', FULL_SIZE, ids=[osp.basename(p) for p in FULL_SIZE])
def test_a_full_size_file_parses_and_names_only_keys_its_networks_take(path, monkeypatch):
    """As the launchers parse it (BasicSR's parse_options); its data and weights are not here, so paths are
    not checked (tests/test_option_files.py runs the whole start-up check on fixture data)."""
    from basicsr.utils.options import parse_options
    monkeypatch.setattr(sys, 'argv', ['basicsr', '-opt', path])
    opt, _ = parse_options(ROOT, is_train=osp.basename(path).startswith('train_'))
    networks = {k: v for k, v in opt.items() if isinstance(k, str) and k.startswith('network_')}
    assert networks, f'{path}: no network_* block'
    for key, net in networks.items():
        assert _arch(net.get('type')) is not None, f'{path} {key}:type = {net.get("type")!r}: not a registered network'
    unknown = [k for key, net in networks.items() for k in _unknown_keys(net, key)]
    assert not unknown, f'{path}: options that no network takes: {unknown}'
