"""recon: multi-resolution neural surface reconstruction from posed images."""

__version__ = "0.1.0"
