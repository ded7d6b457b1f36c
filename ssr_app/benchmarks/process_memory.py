"""The benchmarks' measuring processes: resident memory of this process for the CPU memory columns (Linux /proc;
elsewhere the peak falls back to ``getrusage``, which cannot be reset), and the environment of a child that
measures in a fresh process."""
import os
import resource


def reset_peak_rss():
    """Linux: writing 5 to clear_refs resets the process's peak RSS (VmHWM) to its current RSS."""
    try:
        with open('/proc/self/clear_refs', 'w') as f:
            f.write('5')
        return True
    except OSError:
        return False


def peak_rss_kb():
    try:
        with open('/proc/self/status') as f:
            for line in f:
                if line.startswith('VmHWM:'):
                    return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


def rss_kb():
    with open('/proc/self/statm') as f:
        return int(f.read().split()[1]) * os.sysconf('SC_PAGE_SIZE') // 1024


def child_env(root):
    """This environment with the project root first on PYTHONPATH; packages found through the caller's own
    PYTHONPATH (a ``--target`` install, say) stay importable in the child."""
    return dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in (root, os.environ.get('PYTHONPATH')) if p))
