"""Versions of installed libraries, for the provenance of results."""

from __future__ import annotations

import functools
from importlib import metadata


def installed_versions(*distributions: str) -> dict[str, str | None]:
    """Distribution name -> its installed version, None when it is not installed, in the
    order asked.

    Read from the installed package metadata, not by importing each library: a job that
    never uses LightGBM does not load it to name its version.
    """
    return {name: _installed_version(name) for name in distributions}


@functools.cache
def _installed_version(distribution: str) -> str | None:
    # Reading package metadata scans sys.path (about a tenth of a second): once per
    # distribution per process.
    try:
        return metadata.version(distribution)
    except metadata.PackageNotFoundError:
        return None
