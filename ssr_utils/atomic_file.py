"""Files and folders that are either complete or absent: written under a temporary name beside the target, then
renamed (``atomic_write``, ``atomic_torch_save``; ``atomic_directory`` for a whole folder: model folders, LMDBs,
test sets)."""
import os
import os.path as osp
import shutil
import tempfile
from contextlib import contextmanager


def _default_permissions():
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def _sync_folder(folder):
    """Make a rename inside ``folder`` durable (where the file system allows it)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
    except OSError:
        pass


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
    _sync_folder(folder)


def atomic_torch_save(obj, path):
    """``torch.save`` that either leaves the complete new file at ``path`` or the old one."""
    import torch
    with atomic_write(path) as f:
        torch.save(obj, f)


def _pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def stale_partial_dirs(path):
    """Temporary folders of :func:`atomic_directory` runs for ``path`` whose process is gone (killed)."""
    parent, name = osp.split(osp.abspath(path))
    prefix = f'.{name}.partial-'
    found = []
    if osp.isdir(parent):
        for entry in os.listdir(parent):
            if entry.startswith(prefix) and entry[len(prefix):].isdigit() and not _pid_alive(int(entry[len(prefix):])):
                found.append(osp.join(parent, entry))
    return sorted(found)


@contextmanager
def atomic_directory(path, overwrite=False, report=None):
    """Build a folder under a temporary sibling name (``.<name>.partial-<pid>``) and rename it onto
    ``path`` only when the ``with`` block ends normally: readers never see a half-written ``path``.

    An existing ``path`` raises FileExistsError (before anything is built) unless ``overwrite``; then it is
    replaced only once the new folder is complete (moved aside, the new one renamed in, the old removed).
    On an exception the temporary folder is removed. A killed run leaves its temporary folder behind;
    the next run for the same ``path`` removes those of dead processes (and names them to ``report``).
    Yields the temporary folder's path.
    """
    path = osp.abspath(path)
    parent, name = osp.split(path)
    if osp.exists(path) and not overwrite:
        raise FileExistsError(f'{path} already exists; pass overwrite (--overwrite) to replace it')
    os.makedirs(parent, exist_ok=True)
    for stale in stale_partial_dirs(path):
        if report is not None:
            report(f'removing {stale}: left by an interrupted run')
        shutil.rmtree(stale, ignore_errors=True)
    tmp = osp.join(parent, f'.{name}.partial-{os.getpid()}')
    if osp.exists(tmp):
        shutil.rmtree(tmp)
    os.makedirs(tmp)
    try:
        yield tmp
        if osp.exists(path):
            if not overwrite:
                raise FileExistsError(f'{path} appeared while it was being built; the new one is discarded')
            old = osp.join(parent, f'.{name}.old-{os.getpid()}')
            os.rename(path, old)
            os.rename(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.rename(tmp, path)
    except BaseException:
        if osp.exists(tmp):
            shutil.rmtree(tmp, ignore_errors=True)
        raise
    _sync_folder(parent)
