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
