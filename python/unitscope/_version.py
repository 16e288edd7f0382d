"""The one version string: pyproject.toml reads it (scikit-build-core's regex metadata provider)."""
__version__ = "0.1.0"
