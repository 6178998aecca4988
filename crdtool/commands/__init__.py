"""Typer command functions, one module per command; ``crdtool.cli`` registers them."""
