"""What a process registers at start-up: the job kinds it knows.

The API (``service.app.create_app``) and each worker (``tabxai worker``, through
``service.cli``) call :func:`register_methods` once before they serve or claim: the
built-in explanation methods, then the modules named in ``TABXAI_EXTRA_KINDS``
(``Settings.extra_kinds``). Nothing registers a kind by being imported, so what a
process knows is what its settings say, and a misnamed plug-in stops it at start-up
instead of failing jobs later.
"""

from __future__ import annotations

from service.config import Settings
from service.methods import feature_vectors, permutation, rashomon, tree_shap
from service.registry import KindRegistry, KindRegistryError

BUILTIN_KIND_MODULES: tuple[str, ...] = tuple(
    module.__name__ for module in (tree_shap, permutation, feature_vectors, rashomon))
"""The modules of the shipped kinds (the explanation methods), each with a ``KIND``."""


def register_methods(registry: KindRegistry, settings: Settings) -> KindRegistry:
    """Register the built-in kinds and those of ``settings.extra_kinds`` in ``registry``
    (returned). Raises :class:`KindRegistryError` naming the setting when an extra
    module cannot be imported, defines no kind, or reuses a kind's name."""
    for module in BUILTIN_KIND_MODULES:
        registry.register_module(module)
    for module in settings.extra_kinds:
        try:
            registry.register_module(module)
        except KindRegistryError as exc:
            raise KindRegistryError(f"TABXAI_EXTRA_KINDS: {exc}") from exc
    return registry


def method_registry(settings: Settings) -> KindRegistry:
    """A new registry with the kinds ``settings`` ask for."""
    return register_methods(KindRegistry(), settings)
