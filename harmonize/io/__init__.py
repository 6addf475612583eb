"""Reading and writing quantitative maps (NIfTI, NumPy, DICOM) and prepared HDF5 datasets."""
from harmonize.io.volume import MAP_UNITS, MapVolume, check_map_values, normalize_map_type

__all__ = ["MAP_UNITS", "MapVolume", "check_map_values", "normalize_map_type"]
