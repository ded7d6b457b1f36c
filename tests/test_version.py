"""One version string (ssr_utils/version.py), exposed by the SSR packages and read by setup.py."""
import os.path as osp
import subprocess
import sys

from conftest import ROOT


def test_packages_expose_the_one_version():
    import ssr_arch
    import ssr_data
    import ssr_utils
    from ssr_utils.version import __version__
    assert __version__.count('.') >= 2
    for package in (ssr_arch, ssr_data, ssr_utils):
        assert package.__version__ == __version__, package.__name__


def test_setup_reads_it_and_the_license_is_apache():
    from ssr_utils.version import __version__
    out = subprocess.run([sys.executable, 'setup.py', '--version'], cwd=ROOT, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip().splitlines()[-1] == __version__
    text = open(osp.join(ROOT, 'LICENSE')).read()
    assert 'Apache License' in text and 'Version 2.0, January 2004' in text and 'END OF TERMS AND CONDITIONS' in text
