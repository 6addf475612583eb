"""Settings for every pytest run of this repository (unit tests and the notebooks under nbmake).

The notebooks read HARMONIZE_NOTEBOOK_PROFILE; under pytest they run their smallest ("ci")
profile unless the caller chose another. Kernels started by nbmake inherit this environment.
"""
import os

os.environ.setdefault("HARMONIZE_NOTEBOOK_PROFILE", "ci")
os.environ.setdefault("HARMONIZE_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", ".cache"))
