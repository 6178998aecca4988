"""``crdtool search``: AutoGAN-Distiller style architecture search under a MAC budget.

``space`` (layers, widths, MAC lookup), ``supernet`` (mixed ops, Gumbel widths, budget controller) and
``search`` (the loop). The layers are model code: ``crdtool.models.searchable_ops``.
"""

from crdtool.search.search import SearchConfig, SearchResult, run_search

__all__ = ["SearchConfig", "SearchResult", "run_search"]
