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

setup(
    name='ssr-basicsr',
    version=read_version(),
    description='SSR: depth-informed spatially variant kernel refinement with a diffusion model for blind SR, '
    'as a BasicSR extension',
    long_description=open('README.md', encoding='utf-8').read(),
    long_description_content_type='text/markdown',
    python_requires='>=3.9',
    packages=find_packages(include=['ssr_arch', 'ssr_data', 'ssr_models', 'ssr_pipelines', 'ssr_app', 'ssr_utils',
                                    'ssr_utils.*']),
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
    license='Apache-2.0',
    license_files=['LICENSE'],
    zip_safe=False,
)
