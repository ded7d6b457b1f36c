import sys

import pytest

from ssr_utils.extras import MissingExtraError, is_available, require


def test_missing_extra_names_the_feature_and_the_install_command(monkeypatch):
    monkeypatch.setitem(sys.modules, 'pyiqa', None)  # makes `import pyiqa` fail even where it is installed
    assert not is_available('pyiqa')
    with pytest.raises(MissingExtraError) as info:
        require('pyiqa', 'LPIPS')
    message = str(info.value)
    assert 'LPIPS' in message and "pip install -e '.[iqa]'" in message


def test_present_module_is_returned():
    assert require('yaml', 'option files').safe_load('a: 1') == {'a': 1}
