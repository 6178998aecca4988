"""Image-quality metrics. ``fid``: TF InceptionV3 from a local file, FID/KID math, statistics files."""

from crdtool.metrics.fid import (
    FIDStats,
    compute_stats,
    extract_features,
    fid_from_stats,
    frechet_distance,
    frechet_distance_from_features,
    kernel_inception_distance,
    load_inception,
    load_stats,
    save_stats,
)

__all__ = ["FIDStats", "compute_stats", "extract_features", "fid_from_stats", "frechet_distance",
           "frechet_distance_from_features", "kernel_inception_distance", "load_inception", "load_stats",
           "save_stats"]
