"""``crdtool search``: AutoGAN-Distiller style architecture search under a MAC budget.

``space`` (layers, widths, MAC lookup), ``supernet`` (mixed ops, Gumbel widths, budget controller) and
``search`` (the loop). The layers are model code: ``crdtool.models.searchable_ops``.
"""

from __future__ import annotations

from typing import Any

__all__ = ["SearchConfig", "SearchResult", "run_search"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from crdtool.search import search

        return getattr(search, name)
    raise AttributeError(name)
