"""Installation script for harmonize.

CPU install (use and tests):   pip install -e ".[test]"
With a CUDA GPU:               pip install -e ".[gpu,test]"
"""
import re
from pathlib import Path

from setuptools import find_packages, setup

HERE = Path(__file__).parent
VERSION = re.search(r'__version__ = "([^"]+)"', (HERE / "harmonize" / "__init__.py").read_text()).group(1)

setup(
    name="harmonize",
    version=VERSION,
    description="Harmonise quantitative MR maps between scanners with CycleGAN style transfer, and validate it.",
    long_description=(HERE / "README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["harmonize", "harmonize.*"]),
    install_requires=[
        "tensorflow>=2.16,<2.22",
        "keras>=3.3",
        "numpy>=1.24",
        "SimpleITK>=2.3",
        "pydicom>=2.4",
        "h5py>=3.8",
        "scikit-image>=0.22",
        "scipy>=1.10",
        "pandas>=2.0",
        "matplotlib>=3.7",
        "nilearn>=0.10",
        "nibabel>=5.0",  # only to see NaN in NIfTI files, which SimpleITK 2.x reads as 0
        "PyYAML>=6.0",
        "tqdm>=4.60",
    ],
    extras_require={
        "gpu": ["tensorflow[and-cuda]>=2.16,<2.22"],
        "test": ["pytest>=7", "pytest-xdist>=3", "nbmake>=1.5", "nbclient>=0.9", "ipykernel>=6"],
        "notebooks": ["jupyterlab>=4"],
    },
    entry_points={"console_scripts": ["harmonize=harmonize.cli:main"]},
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Medical Science Apps.",
        "Intended Audience :: Science/Research",
    ],
)
