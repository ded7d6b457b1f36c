"""The versions of the packages SSR runs on: ``python -m ssr_utils.environment`` prints what the set-up installed
(the set-up command and CI print it after installing)."""
import sys
from importlib import metadata

from ssr_utils.version import __version__

# the packages whose versions decide whether SSR runs as tested (constraints.txt pins them all)
MAIN_PACKAGES = ('torch', 'torchvision', 'basicsr', 'diffusers', 'transformers', 'numpy', 'opencv-python', 'lmdb',
                 'scikit-image', 'scipy', 'pillow', 'safetensors', 'huggingface-hub', 'tensorboard', 'pytest')


def package_versions(names=MAIN_PACKAGES):
    """``{name: installed version or None}``, read from the installed distributions (nothing is imported)."""
    versions = {}
    for name in names:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def describe():
    """One line: the SSR version, Python's, and each main package's."""
    return f'SSR {__version__} on Python {sys.version.split()[0]}; ' + ', '.join(
        f'{name} {version or "(not installed)"}' for name, version in package_versions().items())


if __name__ == '__main__':
    print(describe())
