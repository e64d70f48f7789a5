"""The package version, in one place (read by pyproject.toml and saved model files)."""
__version__ = "0.1.0"
