"""Every option file in options/ parses like BasicSR's launcher parses it and passes the project's option
check, with its data paths pointed at small fixture data of the right kind; its datasets then build and
give a sample. The full-size files read only data that a command in docs/benchmarks.md makes."""
import glob
import os.path as osp
import re
import shlex
import sys

import cv2
import numpy as np
import pytest

from conftest import ROOT

OPTION_FILES = sorted(glob.glob(osp.join(ROOT, 'options', '*.yml')))
FULL_SIZE = [p for p in OPTION_FILES if not p.endswith(('_demo.yml', '_smoke.yml'))]
BENCHMARKS_DOC = osp.join(ROOT, 'docs', 'benchmarks.md')


class FixtureData:
    """Small data of every kind an option file can point at, made on first use."""

    def __init__(self, root, pca_path):
        self.root, self.pca_path = root, pca_path
        self.made = {}

    def _once(self, key, make):
        if key not in self.made:
            self.made[key] = make()
        return self.made[key]

    def _photo(self, size, seed):
        rng = np.random.default_rng(seed)
        img = rng.integers(0, 256, (size // 8, size // 8, 3), dtype=np.uint8)
        return cv2.resize(img, (size, size), interpolation=cv2.INTER_CUBIC)

    def hr_lmdb(self):
        def make():
            from ssr_data.lmdb_util import LmdbWriter
            from ssr_data.ssr_degradation_dataset import depth_to_uint16
            hr, depth = str(self.root / 'hr.lmdb'), str(self.root / 'hr_depth.lmdb')
            with LmdbWriter(hr) as w_hr, LmdbWriter(depth, compress_level=0) as w_depth:
                for i in range(2):  # large enough for the biggest training crop (512)
                    w_hr.put(f'im{i}', self._photo(528, i))
                    ramp = np.linspace(0, 1, 528, dtype=np.float32)[:, None].repeat(528, 1)
                    w_depth.put(f'im{i}', depth_to_uint16(ramp))
            return hr, depth
        return self._once('hr', make)

    def lq_lmdb(self, scale):
        def make():
            from ssr_data.lmdb_util import LmdbWriter
            path = str(self.root / f'lq_x{scale}.lmdb')
            with LmdbWriter(path) as writer:
                for i in range(2):
                    writer.put(f'im{i}', cv2.resize(self._photo(528, i), (528 // scale, 528 // scale),
                                                    interpolation=cv2.INTER_AREA))
            return path
        return self._once(('lq', scale), make)

    def sv_set(self, scale):
        def make():
            sys.path.insert(0, osp.join(ROOT, 'scripts'))
            from make_sv_testset import make_sv_testset
            path = str(self.root / f'sv_x{scale}')
            make_sv_testset([(f'v{i}', self._photo(64, 10 + i)) for i in range(2)], path, scale=scale, kernel_size=21,
                            show_progress=False, report=None, noise_range=(1, 30), jpeg_range=(30, 95))
            return path
        return self._once(('sv', scale), make)

    def weights_file(self):
        """Stand-in for a user's checkpoint: the option check only requires that it exists (loading is
        tested with real checkpoints in test_ssr_model.py and test_svkr_models.py)."""
        def make():
            path = self.root / 'weights.pth'
            path.write_bytes(b'')
            return str(path)
        return self._once('weights', make)

    def weights_folder(self):
        """Stand-in for a Stable Diffusion folder with the files the start-up check requires (loading a real
        diffusers folder is tested in test_ssr_unet.py and test_pipeline.py)."""
        def make():
            path = self.root / 'sd_folder'
            for sub in ('unet', 'vae', 'scheduler'):
                (path / sub).mkdir(parents=True, exist_ok=True)
            for sub in ('unet', 'vae'):
                (path / sub / 'config.json').write_text('{}')
                (path / sub / 'diffusion_pytorch_model.safetensors').write_bytes(b'')
            return str(path)
        return self._once('folder', make)

    def depth_model_folder(self):
        """A depth network's save_pretrained folder (a tiny DPT with random weights), as a user's download."""
        def make():
            from ssr_arch.depth_arch import TransformersDepthNet
            net = TransformersDepthNet('dpt', config=dict(
                hidden_size=16, num_hidden_layers=4, num_attention_heads=2, intermediate_size=32, image_size=32,
                patch_size=8, neck_hidden_sizes=[8, 8, 16, 16], fusion_hidden_size=8, head_hidden_size=8,
                reassemble_factors=[2, 1, 0.5, 0.25], backbone_out_indices=[0, 1, 2, 3]))
            return net.save_pretrained(str(self.root / 'depth_model'))
        return self._once('depth_model', make)

    def value_for(self, full_key, key, value, dataset):
        scale = int((dataset or {}).get('scale', 4))
        lmdb = isinstance(value, str) and value.rstrip('/').endswith('.lmdb')
        if key == 'dataroot':
            return self.sv_set(scale)
        if key == 'dataroot_gt':
            return self.hr_lmdb()[0] if lmdb else osp.join(self.sv_set(scale), 'gt')
        if key == 'dataroot_lq':
            return self.lq_lmdb(scale) if lmdb else osp.join(self.sv_set(scale), 'lq')
        if key == 'dataroot_depth':
            return self.hr_lmdb()[1] if lmdb else osp.join(self.sv_set(scale), 'depth')
        if key == 'dataroot_kernel':
            return osp.join(self.sv_set(scale), 'kernel')
        if key.startswith('meta_info'):
            return osp.join(self.hr_lmdb()[0], 'meta_info.txt')
        if key == 'pca_path':
            return self.pca_path
        if key.startswith('pretrain_network') or key == 'pretrained_model_path':
            return self.weights_file()
        if key == 'pretrained_path':
            return self.weights_folder()
        if key == 'model_path':
            return self.depth_model_folder()
        raise AssertionError(f'{full_key} = {value!r}: a path key this test does not know how to fill; '
                             'add its kind to FixtureData')


PATH_PREFIXES = ('dataroot', 'meta_info', 'pca_path', 'pretrain_network', 'pretrained_model_path',
                 'pretrained_path', 'model_path')


def fill_paths(node, data, key_path='', dataset=None):
    """Point every path-valued key (those ssr_utils.option_check checks) at fixture data; returns them."""
    filled = {}
    for key, value in list(node.items()):
        full = f'{key_path}:{key}' if key_path else str(key)
        if isinstance(value, dict):
            inner = value if key_path == 'datasets' else dataset
            filled.update(fill_paths(value, data, full, inner))
        elif isinstance(key, str) and key.startswith(PATH_PREFIXES) and value is not None:
            node[key] = data.value_for(full, key, value, dataset)
            filled[full] = value
    return filled


def parse(path, monkeypatch):
    """BasicSR's parse_options on ``path``, as basicsr/train.py / test.py call it."""
    from basicsr.utils.options import parse_options
    monkeypatch.setattr(sys, 'argv', ['basicsr', '-opt', path])
    is_train = osp.basename(path).startswith('train_')
    opt, _ = parse_options(ROOT, is_train=is_train)
    return opt


@pytest.fixture(scope='module')
def fixture_data(tmp_path_factory, request):
    from ssr_data.kernels import KernelPCA, random_kernels
    root = tmp_path_factory.mktemp('option_data')
    pca = root / 'pca.pth'
    KernelPCA.fit(random_kernels(300, kernel_size=21, seed=0).reshape(300, -1), 10).save(str(pca))
    return FixtureData(root, str(pca))


def test_there_are_option_files():
    names = {osp.basename(p) for p in OPTION_FILES}
    for required in ('train_dkenet.yml', 'train_nbsr.yml', 'train_svkr.yml', 'train_ssr.yml', 'test_ssr.yml',
                     'test_svkr.yml', 'test_ssr_table3.yml', 'test_ssr_ablation_kernel_only.yml',
                     'test_ssr_ablation_depth_only.yml', 'test_ssr_ablation_no_svkr.yml'):
        assert required in names


@pytest.mark.parametrize('path', OPTION_FILES, ids=[osp.basename(p) for p in OPTION_FILES])
def test_option_file_parses_checks_and_builds_its_datasets(path, fixture_data, monkeypatch):
    import ssr_arch  # noqa: F401  (registers the archs, as the launchers do)
    import ssr_data  # noqa: F401
    import ssr_models  # noqa: F401
    from basicsr.data import build_dataset
    from ssr_utils.option_check import check_options
    opt = parse(path, monkeypatch)
    filled = fill_paths(opt, fixture_data)
    # SceneDepthDataset renders its own scenes; HRCropDataset may read the project's photographs only
    generated = [d for d in opt['datasets'].values() if d.get('scenes') or d.get('photos')]
    assert generated or any(k.startswith('datasets:') for k in filled), 'no dataset path in the file'
    check_options(opt, ROOT)
    for phase, dataset_opt in opt['datasets'].items():
        if dataset_opt.get('scenes'):
            dataset_opt['scenes'] = dict(dataset_opt['scenes'], size=64)  # a small scene is enough here
        dataset = build_dataset(dataset_opt)
        sample = dataset[0]
        if dataset_opt['type'] == 'SceneDepthDataset':
            assert sample['img'].shape[0] == 3 and sample['depth'].shape[0] == 1, phase
            continue
        if dataset_opt['type'] == 'HRCropDataset':  # clean HR crops (the diffusion prior): no LR
            assert sample['gt'].shape == (3, dataset_opt['gt_size'], dataset_opt['gt_size']), phase
            continue
        assert sample['lq'].shape[0] == 3 and sample['gt'].shape[0] == 3, phase
        if dataset_opt['type'] == 'SSRPairedDataset' and dataset_opt.get('dataroot'):
            assert 'kernel' in sample and sample['kernel'].shape[0] == 21 * 21


def _documented_outputs():
    """Every path a command in docs/benchmarks.md writes (``-o`` / ``--output``)."""
    text = open(BENCHMARKS_DOC).read()
    commands = re.findall(r'```bash\n(.*?)```', text, re.S)
    outputs = set()
    for block in commands:
        for cmd in block.replace('\\\n', ' ').splitlines():
            words = shlex.split(cmd, comments=True)
            for flag, value in zip(words, words[1:]):
                if flag in ('-o', '--output'):
                    outputs.add(value)
    return outputs


@pytest.mark.parametrize('path', FULL_SIZE, ids=[osp.basename(p) for p in FULL_SIZE])
def test_full_size_files_read_documented_data_only(path, monkeypatch):
    opt = parse(path, monkeypatch)
    outputs = _documented_outputs()
    recorder = FixtureData(None, None)
    recorder.value_for = lambda full, key, value, dataset: value
    filled = fill_paths(opt, recorder)
    data_keys = {k: v for k, v in filled.items() if k.startswith('datasets:') or k.endswith('pca_path')}
    if osp.basename(path) == 'train_rrdb_sv_baseline.yml':  # the BasicSR mixing example: its own data paths
        data_keys = {k: v for k, v in data_keys.items() if k.endswith(':dataroot')}
    generated = [d for d in (opt.get('datasets') or {}).values() if d.get('scenes') or d.get('photos')]  # nothing to read
    assert data_keys or generated
    for key, value in data_keys.items():
        assert 'datasets/demo' not in value, f'{key} = {value}: a full-size file must not use the demo data'
        assert value in outputs, f'{key} = {value}: no command in docs/benchmarks.md writes it'


def test_paper_tables_are_covered(monkeypatch):
    paper_columns = ['psnr', 'ssim', 'lpips', 'musiq', 'clipiqa', 'niqe']
    t1 = parse(osp.join(ROOT, 'options', 'test_ssr.yml'), monkeypatch)
    assert [d['dataroot'] for d in t1['datasets'].values()] == [
        'datasets/benchmarks/DIV2K_valid_sv_x4', 'datasets/benchmarks/BSDS100_sv_x4',
        'datasets/benchmarks/Urban100_sv_x4']
    assert list(t1['val']['metrics'])[:6] == paper_columns
    t3 = parse(osp.join(ROOT, 'options', 'test_ssr_table3.yml'), monkeypatch)
    assert list(t3['val']['metrics']) == paper_columns
    assert [d['name'] for d in t3['datasets'].values()] == [
        'DIV2K_valid_sv_x4_wo_noise', 'DIV2K_valid_sv_x4_wo_jpeg', 'DIV2K_valid_sv_x4_noise_jpeg']
    for row in ('kernel_only', 'depth_only', 'no_svkr'):
        t2 = parse(osp.join(ROOT, 'options', f'test_ssr_ablation_{row}.yml'), monkeypatch)
        train = parse(osp.join(ROOT, 'options', f'train_ssr_ablation_{row}.yml'), monkeypatch)
        assert list(t2['val']['metrics']) == ['psnr', 'ssim', 'lpips']
        # the test file builds the network its training file trains
        assert t2['network_g']['modalities'] == train['network_g']['modalities']
        assert t2['network_svkr']['num_iter'] == train['network_svkr']['num_iter'] == 0
        assert train['name'] in t2['path']['pretrain_network_g']
