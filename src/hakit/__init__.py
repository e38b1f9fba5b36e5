"""hakit: high-availability clustering for Linux (mirror and farm modules)."""

__version__ = "0.1.0"
