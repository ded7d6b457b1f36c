"""The layers a newcomer can see, checked on the source: each package imports only the ones below it, and no
module of the project reaches for another module's underscore names.

    ssr_utils  <  ssr_data  <  ssr_arch  <  ssr_pipelines  <  ssr_models  <  ssr_app  (<  scripts, launchers)

``ssr_utils`` holds low-level helpers (tiling, colour, image IO, atomic files, drawing, metrics) and imports
no model; data sits below the networks (the kernel PCA and the depth prior live there, so the networks
use them one way and the datasets never import an arch); the pipeline sits on the networks; the training
models sample through the pipeline; the application layer (inference, export, launchers) is on top.
"""
import ast
import glob
import os.path as osp

import pytest

from conftest import ROOT

LAYERS = ('ssr_utils', 'ssr_data', 'ssr_arch', 'ssr_pipelines', 'ssr_models', 'ssr_app')


def _sources(*patterns):
    files = []
    for pattern in patterns:
        files += glob.glob(osp.join(ROOT, pattern), recursive=True)
    return sorted(files)


def _imports(tree):
    """``(line, module, names)`` of every import statement, function-level ones included."""
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.lineno, node.module, [alias.name for alias in node.names]


@pytest.mark.parametrize('package', LAYERS)
def test_each_package_imports_only_the_layers_below_it(package):
    rank = LAYERS.index(package)
    bad = []
    for path in _sources(f'{package}/**/*.py'):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        for line, module, _ in _imports(tree):
            top = module.split('.')[0]
            if top in LAYERS and LAYERS.index(top) > rank:
                bad.append(f'{osp.relpath(path, ROOT)}:{line} imports {module}')
    assert not bad, f'{package} may import only {LAYERS[:rank + 1]}:\n' + '\n'.join(bad)


def _ssr_module_names(tree):
    """Names bound to project modules by the imports of a file (``from ssr_utils import compat`` -> compat)."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split('.')[0] in LAYERS:
                    names.add(alias.asname or alias.name.split('.')[0])
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split('.')[0] in LAYERS:
            for alias in node.names:
                if alias.name[0].islower() and osp.isfile(osp.join(ROOT, *node.module.split('.'), f'{alias.name}.py')):
                    names.add(alias.asname or alias.name)
    return names


def test_no_module_uses_another_modules_underscore_names():
    bad = []
    for path in _sources(*(f'{p}/**/*.py' for p in LAYERS), 'scripts/**/*.py', 'basicsr/*.py'):
        with open(path) as f:
            tree = ast.parse(f.read(), path)
        where = osp.relpath(path, ROOT)
        for line, module, names in _imports(tree):
            if module.split('.')[0] in LAYERS:
                # dunder names (``__version__``) are public by convention
                bad += [f'{where}:{line} imports {module}.{n}' for n in names
                        if n.startswith('_') and not (n.startswith('__') and n.endswith('__'))]
        modules = _ssr_module_names(tree)
        for node in ast.walk(tree):
            if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id in modules \
                    and node.attr.startswith('_') and not node.attr.startswith('__'):
                bad.append(f'{where}:{node.lineno} uses {node.value.id}.{node.attr}')
    assert not bad, '\n'.join(bad)


def test_low_level_helpers_import_no_model_at_run_time():
    """Importing every helper module loads none of the model packages (the layers test, at run time)."""
    import subprocess
    import sys
    helpers = [osp.splitext(osp.basename(p))[0] for p in _sources('ssr_utils/*.py') if not p.endswith('__init__.py')]
    code = ('import sys\nfrom ssr_utils import compat\ncompat.apply()\n'
            + ''.join(f'import ssr_utils.{h}\n' for h in helpers)
            + "print(sorted(m for m in sys.modules if m.split('.')[0] in %r))" % (LAYERS[1:], ))
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == '[]'


def test_importing_the_pipeline_imports_no_training_machinery():
    """``import ssr_pipelines`` (the inference path) loads neither BasicSR's training pipeline, models, datasets
    and losses nor the SSR training models (``compat`` Fix 10); the training side's ``apply_training()`` still
    patches BasicSR's training pipeline afterwards."""
    import subprocess
    import sys
    from conftest import subprocess_env
    code = ('import sys\nimport ssr_pipelines\nfrom ssr_pipelines import SSRPipeline\n'
            "print(sorted(m for m in ('basicsr.train', 'basicsr.test', 'basicsr.models', 'basicsr.data', "
            "'basicsr.losses', 'ssr_models') if m in sys.modules))\n"
            'from ssr_utils import compat\ncompat.apply_training()\nimport basicsr.train\n'
            'print(basicsr.train.load_resume_state is compat.load_resume_state)\n')
    out = subprocess.run([sys.executable, '-c', code], cwd=ROOT, env=subprocess_env(), capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ['[]', 'True']
