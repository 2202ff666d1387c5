"""Imports every data adapter so that each registers its SPEC prefix."""

from earmark.data import (  # noqa: F401
    audioset,
    desed,
    esc50,
    folder,
    fsd50k,
    fsdd,
    manifest_file,
    speechcommands,
    synth,
)
