"""Pre-processing: intensity normalisation, foreground masks, in-plane resampling, registration."""
