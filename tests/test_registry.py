"""Importing the SSR packages registers their classes in BasicSR's registries (BasicSR's file convention)."""
import importlib
import inspect
import sys

import pytest


@pytest.mark.parametrize('package, registry_name, suffix', [
    ('ssr_arch', 'ARCH_REGISTRY', '_arch'),
    ('ssr_data', 'DATASET_REGISTRY', '_dataset'),
    ('ssr_models', 'MODEL_REGISTRY', '_model'),
])
def test_every_scanned_module_is_imported_and_registered(package, registry_name, suffix):
    import basicsr.utils.registry as registry_module
    registry = getattr(registry_module, registry_name)
    pkg = importlib.import_module(package)
    for module in pkg._modules:
        assert module.__name__.split('.')[-1].endswith(suffix)
        for name, obj in vars(module).items():
            if inspect.isclass(obj) and obj.__module__ == module.__name__ and name in registry:
                # the registered object is ours, not a BasicSR class of the same name
                assert registry.get(name) is obj


def test_scan_imports_only_matching_files(tmp_path, monkeypatch):
    from basicsr.utils.registry import ARCH_REGISTRY
    pkg = tmp_path / 'scanpkg_demo'
    pkg.mkdir()
    (pkg / '__init__.py').write_text(
        'from ssr_utils.registry_scan import import_modules_with_suffix\n'
        "_modules = import_modules_with_suffix(__name__, __file__, '_arch')\n")
    (pkg / 'toy_arch.py').write_text(
        'import torch\nfrom basicsr.utils.registry import ARCH_REGISTRY\n\n\n'
        '@ARCH_REGISTRY.register()\nclass ScanToyNet(torch.nn.Module):\n    pass\n')
    (pkg / 'helper.py').write_text("raise RuntimeError('helpers are not scanned')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        module = importlib.import_module('scanpkg_demo')
        assert [m.__name__ for m in module._modules] == ['scanpkg_demo.toy_arch']
        assert ARCH_REGISTRY.get('ScanToyNet').__module__ == 'scanpkg_demo.toy_arch'
    finally:
        ARCH_REGISTRY._obj_map.pop('ScanToyNet', None)
        for name in [n for n in sys.modules if n.startswith('scanpkg_demo')]:
            del sys.modules[name]


def test_a_name_clash_with_basicsr_is_refused():
    from basicsr.utils.registry import ARCH_REGISTRY
    with pytest.raises(AssertionError, match='RRDBNet'):

        @ARCH_REGISTRY.register()
        class RRDBNet:  # noqa: F811  (BasicSR already registers this name)
            pass


def test_losses_and_metrics_register_through_the_scan():
    # a fresh process: importing ssr_models alone registers every loss / metric of ssr_utils/*_loss.py and
    # ssr_utils/*_metrics.py, and each registered name is the object its scanned module defines
    from conftest import run_python
    code = '''
import inspect
import ssr_models
from basicsr.utils.registry import LOSS_REGISTRY, METRIC_REGISTRY
from ssr_utils.registry_scan import import_losses_and_metrics
names = []
for module in import_losses_and_metrics():
    registry = LOSS_REGISTRY if module.__name__.endswith('_loss') else METRIC_REGISTRY
    for name, obj in vars(module).items():
        if (inspect.isclass(obj) or inspect.isfunction(obj)) and obj.__module__ == module.__name__ and name in registry:
            assert registry.get(name) is obj, name
            names.append(name)
print(sorted(names))
'''
    out = run_python(['-c', code])
    assert out.returncode == 0, out.stdout
    found = eval(out.stdout.strip().splitlines()[-1])
    assert set(found) >= {'ScaleShiftInvariantLoss', 'calculate_kernel_psnr', 'calculate_depth_absrel',
                          'calculate_depth_delta1', 'calculate_pyiqa'}


def test_no_module_registers_by_a_side_effect_import():
    # losses and metrics register where they are scanned, not through "from ssr_utils import x  # noqa (registers)"
    # lines (importing a package whose __init__ scans, e.g. ssr_arch, is the convention itself)
    import os
    from conftest import ROOT
    offenders = []
    for package in ('ssr_utils', 'ssr_data', 'ssr_arch', 'ssr_pipelines', 'ssr_models', 'ssr_app'):
        for name in sorted(os.listdir(os.path.join(ROOT, package))):
            if name.endswith('.py'):
                with open(os.path.join(ROOT, package, name), encoding='utf-8') as f:
                    for number, line in enumerate(f, 1):
                        if line.lstrip().startswith(('import ssr_utils', 'from ssr_utils')) and '(registers' in line:
                            offenders.append(f'{package}/{name}:{number}: {line.strip()}')
    assert not offenders, offenders
