"""The package version, in a module of its own so that any module can read it without importing the package
root (whose public names reach up to the runner, the sweeps and the reports)."""

__version__ = "0.1.0"
