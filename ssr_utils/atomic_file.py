"""Files that are either complete or absent: write to a temporary file beside the target, then rename."""
import os
import os.path as osp
import tempfile
from contextlib import contextmanager


def _default_permissions():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


@contextmanager
def atomic_write(path, mode='wb', **open_kwargs):
    """Open a temporary file in ``path``'s folder; on a normal exit it is synced and renamed onto ``path``.

    On an exception the temporary file is removed and an existing ``path`` is left as it was. A kill
    cannot leave a partial ``path`` either; temporaries of writers of the same name that were killed are
    removed after the next successful write (one writer per name is assumed).
    """
    folder = osp.dirname(osp.abspath(path))
    os.makedirs(folder, exist_ok=True)
    prefix = f'.{osp.basename(path)}.'
    fd, tmp_path = tempfile.mkstemp(prefix=prefix, suffix='.tmp', dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp_path, _default_permissions())  # mkstemp creates 0600; outputs get the usual mode
        os.replace(tmp_path, path)
    except BaseException:
        if osp.exists(tmp_path):
            os.remove(tmp_path)
        raise
    for entry in os.listdir(folder):
        if entry.startswith(prefix) and entry.endswith('.tmp'):
            try:
                os.remove(osp.join(folder, entry))
            except OSError:
                pass
    try:  # make the rename itself durable
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


def atomic_torch_save(obj, path):
    """``torch.save`` that either leaves the complete new file at ``path`` or the old one."""
    import torch
    with atomic_write(path) as f:
        torch.save(obj, f)
