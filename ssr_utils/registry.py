"""Registries of the SSR capabilities that an option value names, filled where each capability is written.

BasicSR's registries (``ARCH_REGISTRY``, ``DATASET_REGISTRY`` ...) hold the classes an option's ``type``
names, keyed by class name. The registries here hold the parts an option names by a short value instead:

- :data:`DEPTH_BACKEND_REGISTRY`: the ``backend`` of ``type: MonocularDepth`` (``prior``, ``dpt``,
  ``depth_anything``), filled by ``ssr_arch/depth_arch.py``;
- :data:`DEGRADATION_STAGE_REGISTRY`: the ``degradation_stages`` of ``SSRDegradationDataset`` (``blur``,
  ``gaussian_noise``, ``poisson_noise``, ``jpeg``), filled by ``ssr_data/degradations.py``.

They live at the bottom layer so that option checking (``ssr_utils.option_check``) reads what the higher
layers declare without importing them (docs/interfaces.md §12). A capability is declared once: its class,
registered under its option value, carries what the checks need (e.g. a depth backend's
``needs_model_path``).
"""


class NamedRegistry:
    """Name -> object, filled by a decorator: ``@REGISTRY.register('name')`` on a class or function."""

    def __init__(self, what):
        self.what = what
        self._entries = {}

    def register(self, name):
        """Decorator registering its target under ``name``; a name is registered once."""
        if not isinstance(name, str) or not name:
            raise ValueError(f'{self.what} registry: a name must be a non-empty string, got {name!r}')

        def add(obj):
            if name in self._entries:
                raise KeyError(f'{self.what} {name!r} is already registered ({self._entries[name]!r})')
            self._entries[name] = obj
            return obj

        return add

    def unregister(self, name):
        """Remove ``name`` (e.g. a part a test registered for itself); returns what it held."""
        return self._entries.pop(name)

    def get(self, name):
        if name not in self._entries:
            raise KeyError(f'no {self.what} {name!r} registered (known: {", ".join(self.names())})')
        return self._entries[name]

    def names(self):
        """The registered names, in registration order."""
        return list(self._entries)

    def items(self):
        return list(self._entries.items())

    def __contains__(self, name):
        return name in self._entries

    def __iter__(self):
        return iter(self._entries)

    def __len__(self):
        return len(self._entries)


DEPTH_BACKEND_REGISTRY = NamedRegistry('depth backend')
DEGRADATION_STAGE_REGISTRY = NamedRegistry('degradation stage')
