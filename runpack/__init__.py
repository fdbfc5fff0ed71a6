"""Runpack: on-demand computation and result caching."""

__version__ = "0.1.0"
