"""Installable SSR package: a BasicSR extension (archs, models, datasets)."""
import os.path as osp
import re

from setuptools import find_packages, setup


def read_version():
    """``__version__`` of ssr_utils/version.py, read as text (importing ssr_utils would need torch)."""
    with open(osp.join(osp.dirname(osp.abspath(__file__)), 'ssr_utils', 'version.py'), encoding='utf-8') as f:
        return re.search(r"^__version__ = '([^']+)'", f.read(), re.M).group(1)


INSTALL_REQUIRES = [
    'torch>=2.1',
    'torchvision>=0.16',
    'basicsr==1.4.2',
    'diffusers>=0.27',
    'lmdb>=1.4',
    'numpy>=1.24',
    'opencv-python>=4.8',
    'pillow>=9.1',
    'pyyaml>=6.0',
    'scikit-image>=0.21',
    'scipy>=1.10',
    'tensorboard>=2.14',
    'tqdm>=4.60',
]

EXTRAS_REQUIRE = {
    # depth networks (DPT / MiDaS v3.x / Depth Anything) loaded from local directories
    'depth': ['transformers>=4.40'],
    # perceptual metrics (LPIPS, MUSIQ, CLIP-IQA); pulls in many packages, so it is opt-in
    'iqa': ['pyiqa>=0.1.10'],
    'test': ['pytest>=7'],
}

CONSOLE_SCRIPTS = [
    'ssr-train = ssr_app.console:train',
    'ssr-test = ssr_app.console:test',
    'ssr-infer = ssr_app.console:infer',
    'ssr-export = ssr_app.console:export',
    'ssr-create-lmdb = ssr_app.console:create_lmdb',
    'ssr-make-sv-testset = ssr_app.console:make_sv_testset',
    'ssr-fit-kernel-pca = ssr_app.console:fit_kernel_pca',
    'ssr-make-depth-lmdb = ssr_app.console:make_depth_lmdb',
    'ssr-prepare-demo-data = ssr_app.console:prepare_demo_data',
    'ssr-options = ssr_app.console:options',
]

# options/*.yml and the command-line scripts travel with an installed package (as ``ssr_options`` and
# ``ssr_scripts``), so the console commands find them outside a checkout (ssr_utils.install)
SHIPPED_FOLDERS = {'ssr_options': 'options', 'ssr_scripts': 'scripts'}

setup(
    name='ssr-basicsr',
    version=read_version(),
    description='SSR: depth-informed spatially variant kernel refinement with a diffusion model for blind SR, '
    'as a BasicSR extension',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['ssr_arch', 'ssr_data', 'ssr_models', 'ssr_pipelines', 'ssr_app', 'ssr_utils',
                                    'ssr_utils.*']) + list(SHIPPED_FOLDERS),
    package_dir=SHIPPED_FOLDERS,
    package_data={'ssr_options': ['*.yml'], 'ssr_scripts': ['*.py']},
    entry_points={'console_scripts': CONSOLE_SCRIPTS},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license='Apache-2.0',
    license_files=['LICENSE'],
    zip_safe=False,
)
