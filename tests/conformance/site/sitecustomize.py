"""For joblib's test_parallel.py: every Python process of the run (loky's and multiprocessing's
workers too) knows shoal's joblib backends once it imports joblib, as the test process does."""

from shoal import _imports

_imports.joblib_backends_on_import()
