"""Minima sharpness for acoustic scene classification: the importable core of the workflow."""

__version__ = "0.1.0"
