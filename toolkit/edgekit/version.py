"""The edgekit version, in a module of its own: records and run folders name it without importing the package's
entry points."""

__version__ = "0.1.0"
