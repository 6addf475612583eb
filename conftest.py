"""Settings for every pytest run of this repository (unit tests and the notebooks under nbmake).

The notebooks read HARMONIZE_NOTEBOOK_PROFILE; under pytest they run their smallest ("ci")
profile unless the caller chose another. Kernels started by nbmake inherit this environment.
"""
import os

import pytest

os.environ.setdefault("HARMONIZE_NOTEBOOK_PROFILE", "ci")
os.environ.setdefault("HARMONIZE_CACHE", os.path.join(os.path.dirname(os.path.abspath(__file__)), "tests", ".cache"))


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist's own hook reads the group marks
def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist (--dist loadgroup) the notebooks run one after another in one worker:
    notebooks 03 and 04 reuse the run that notebook 02 trains."""
    for item in items:
        if str(item.fspath).endswith(".ipynb"):
            item.add_marker(pytest.mark.xdist_group("notebooks"))
