"""Large CPU buffers on transparent huge pages (Linux).

A kernel map of a batch is large (16 crops of 192 px at k = 21: 65 MB) and fresh every batch: glibc hands
allocations this large to ``mmap`` and gives them back on free, so each batch faults in and zeroes 16 000
pages of 4 KB on its first write. ``madvise(MADV_HUGEPAGE)`` on the buffer before that write lets the
kernel fault it in 2 MB pages instead, which is what PyTorch's process-wide ``THP_MEM_ALLOC_ENABLE=1`` does
for every allocation; here it is scoped to the buffers known to be large and written once. On the 2-core
development machine it took the CPU synthesis of a 192-px crop with its kernel map kept from 7.29 / 6.30 ms
to 4.92 / 4.85 ms (``python scripts/benchmarks/bench_batch_degradation.py --skip-throughput --skip-jpeg
--skip-step``, the ``kernel map kept`` row, both versions interleaved, twice; docs/degradations.md).

Where the advice is not available (not Linux, no libc, transparent huge pages set to ``never``, an
accelerator tensor) the buffer is the plain ``torch.empty`` one, with the same contents and layout.
"""
import ctypes
import functools
import sys

HUGE_PAGE_BYTES = 2 << 20
# Linux <asm-generic/mman-common.h>
_MADV_HUGEPAGE = 14


@functools.lru_cache(maxsize=1)
def _madvise():
    """libc's ``madvise``, or None where there is none to call."""
    if not sys.platform.startswith('linux'):
        return None
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        madvise = libc.madvise
    except (OSError, AttributeError):
        return None
    madvise.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
    madvise.restype = ctypes.c_int
    return madvise


def advise_huge_pages(tensor):
    """Asks the kernel to back the whole 2 MB pages inside ``tensor``'s memory with huge pages.

    Call it before the first write: pages already faulted in stay as they are. Returns the number of bytes
    advised (0 when nothing was: too small, not on the CPU, or no ``madvise``)."""
    if tensor.device.type != 'cpu':
        return 0
    madvise = _madvise()
    if madvise is None:
        return 0
    start = tensor.data_ptr()
    end = start + tensor.numel() * tensor.element_size()
    first = -(-start // HUGE_PAGE_BYTES) * HUGE_PAGE_BYTES
    last = end // HUGE_PAGE_BYTES * HUGE_PAGE_BYTES
    if last <= first:
        return 0
    # a refused advice (EINVAL where transparent huge pages are compiled out) leaves ordinary pages
    if madvise(first, last - first, _MADV_HUGEPAGE) != 0:
        return 0
    return last - first


def empty_on_huge_pages(shape, like):
    """``like.new_empty(shape)``, advised onto huge pages when it lives on the CPU (see the module text)."""
    tensor = like.new_empty(shape)
    advise_huge_pages(tensor)
    return tensor


__all__ = ['HUGE_PAGE_BYTES', 'advise_huge_pages', 'empty_on_huge_pages']
