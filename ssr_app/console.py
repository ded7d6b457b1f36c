"""The console commands ``setup.py`` installs (``[project.scripts]``-style entry points).

    ssr-train -opt options/train_ssr_demo.yml      = python basicsr/train.py -opt ...
    ssr-test -opt options/test_ssr_demo.yml        = python basicsr/test.py -opt ...
    ssr-infer --model_path models/x4 -i photos -o out   = python scripts/inference_ssr.py ...
    ssr-export, ssr-create-lmdb, ssr-make-sv-testset, ssr-fit-kernel-pca, ssr-make-depth-lmdb,
    ssr-prepare-demo-data                          = the scripts of the same names
    ssr-options [--copy NAME]                      list (or copy here) the shipped option files

In a checkout the commands behave as the scripts do (experiments and results under the repository root);
installed, they write under the current directory and find the shipped option files by name
(``ssr_utils.install``).
"""
import argparse
import os
import os.path as osp
import runpy
import shutil
import sys

from ssr_utils.errors import exit_on_option_error
from ssr_utils.install import options_dir, project_root, scripts_dir, shipped_option_files

# console command -> script of scripts/ it runs as __main__
SCRIPT_COMMANDS = {
    'ssr-create-lmdb': 'create_lmdb.py',
    'ssr-make-sv-testset': 'make_sv_testset.py',
    'ssr-fit-kernel-pca': 'fit_kernel_pca.py',
    'ssr-make-depth-lmdb': 'make_depth_lmdb.py',
    'ssr-prepare-demo-data': 'prepare_demo_data.py',
}


def train():
    from ssr_app.launch import train as launch_train
    launch_train(project_root())


def test():
    from ssr_app.launch import test as launch_test
    launch_test(project_root())


@exit_on_option_error()
def infer(argv=None):
    from ssr_app.cli import build_inference_parser
    args = build_inference_parser(prog='ssr-infer').parse_args(argv)
    from ssr_app.inference import run
    return run(args)


@exit_on_option_error()
def export(argv=None):
    from ssr_app.cli import build_export_parser
    args = build_export_parser().parse_args(argv)
    from ssr_app.export import run
    return run(args)


def run_script(command, argv=None):
    """Run the script behind ``command`` as ``python scripts/<script> <argv>`` would (its folder first on
    ``sys.path``, so it imports its neighbours). Returns its exit status."""
    folder = scripts_dir()
    script = osp.join(folder, SCRIPT_COMMANDS[command]) if folder else None
    if script is None or not osp.isfile(script):
        print(f'{command}: the script {SCRIPT_COMMANDS[command]} is not installed (reinstall the package)')
        return 2
    saved_argv, saved_path = sys.argv, list(sys.path)
    sys.argv = [command] + list(sys.argv[1:] if argv is None else argv)
    sys.path.insert(0, folder)
    try:
        runpy.run_path(script, run_name='__main__')
    except SystemExit as exc:
        if isinstance(exc.code, int) or exc.code is None:
            return exc.code or 0
        print(exc.code, file=sys.stderr, flush=True)  # as Python prints a message exit (an option error's line)
        return 1
    finally:
        sys.argv, sys.path[:] = saved_argv, saved_path
    return 0


def _script_entry(command):
    def main():
        return run_script(command)

    main.__name__ = command.replace('-', '_')
    return main


create_lmdb = _script_entry('ssr-create-lmdb')
make_sv_testset = _script_entry('ssr-make-sv-testset')
fit_kernel_pca = _script_entry('ssr-fit-kernel-pca')
make_depth_lmdb = _script_entry('ssr-make-depth-lmdb')
prepare_demo_data = _script_entry('ssr-prepare-demo-data')


def options(argv=None):
    """``ssr-options``: list the shipped option files, or copy one into the current directory to edit."""
    parser = argparse.ArgumentParser(prog='ssr-options', description=options.__doc__)
    parser.add_argument('--copy', metavar='NAME', help='copy options/NAME to ./options/NAME')
    args = parser.parse_args(argv)
    names = shipped_option_files()
    if args.copy is None:
        print(f'option files in {options_dir()} (give -opt options/<name>; ssr-options --copy <name> to edit one):')
        print('\n'.join(f'  {n}' for n in names))
        return 0
    name = osp.basename(args.copy)
    if name not in names:
        print(f'ssr-options: --copy {args.copy}: no shipped option file of that name (ssr-options lists them)')
        return 2
    target = osp.join('options', name)
    if osp.exists(target):
        print(f'ssr-options: {target} exists; not overwritten')
        return 2
    os.makedirs('options', exist_ok=True)
    shutil.copyfile(osp.join(options_dir(), name), target)
    print(f'copied to {target}')
    return 0
