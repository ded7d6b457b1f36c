import re
import sys

import pytest
import torch

from ssr_data.degradations import SVBlurStage
from ssr_utils.huge_pages import HUGE_PAGE_BYTES, advise_huge_pages, empty_on_huge_pages

linux_only = pytest.mark.skipif(not sys.platform.startswith('linux'), reason='madvise and /proc/self/smaps are Linux')


def _vm_flags(address):
    """The VmFlags of the mapping of this process that holds ``address``."""
    inside = False
    with open('/proc/self/smaps') as f:
        for line in f:
            span = re.match(r'^([0-9a-f]+)-([0-9a-f]+) ', line)
            if span:
                inside = int(span.group(1), 16) <= address < int(span.group(2), 16)
            elif inside and line.startswith('VmFlags:'):
                return line.split()[1:]
    raise AssertionError(f'no mapping holds {address:#x}')


def _first_whole_huge_page(tensor):
    return -(-tensor.data_ptr() // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES


@linux_only
def test_a_large_buffer_is_advised_and_keeps_shape_and_dtype():
    like = torch.zeros(1, dtype=torch.float64)
    buffer = empty_on_huge_pages((3, 1000, 1000), like)
    assert buffer.shape == (3, 1000, 1000) and buffer.dtype == torch.float64 and buffer.is_contiguous()
    assert 'hg' in _vm_flags(_first_whole_huge_page(buffer))
    buffer.fill_(2.0)  # the advised memory is ordinary memory to write and read
    assert buffer.sum().item() == 6e6


def test_buffers_without_a_whole_huge_page_are_left_alone():
    assert advise_huge_pages(torch.empty(1000)) == 0
    assert advise_huge_pages(torch.empty(16 << 20, device='meta')) == 0


@linux_only
@pytest.mark.parametrize('keep', [True, False])
def test_the_cpu_kernel_map_of_a_batch_is_on_huge_pages(monkeypatch, keep):
    # the one large, fresh, written-once buffer of the CPU synthesis (docs/degradations.md)
    advised = []
    import ssr_utils.huge_pages as huge_pages
    real = huge_pages.advise_huge_pages

    def spy(tensor):
        advised.append((tuple(tensor.shape), real(tensor)))
        return advised[-1][1]

    monkeypatch.setattr(huge_pages, 'advise_huge_pages', spy)
    b, s, k, h = 4, 4, 21, 40
    gt = torch.rand(b, 3, h * s, h * s)
    params = torch.stack([torch.full((b, h, h), 2.0), torch.full((b, h, h), 1.0), torch.zeros(b, h, h)], 1)
    kmap, lq = SVBlurStage({'scale': s, 'kernel_size': k}).kernels_and_blur(gt, params, keep_kernels=keep)
    assert lq.shape == (b, 3, h, h)
    assert advised and advised[0][1] > 0
    if keep:
        assert advised[0][0] == (b, k * k, h, h) and 'hg' in _vm_flags(_first_whole_huge_page(kmap))
