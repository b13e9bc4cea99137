"""AutoBot cluster services: the code deployed to the six machines."""

__version__ = "0.1.0"
