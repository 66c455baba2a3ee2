"""The package's version, apart from ``pipeline/__init__.py``: every layer may import it without the API."""

__version__ = "0.1.0"
