"""The pipeline lock and the artifact paths (behaviours a mutation review found unchecked)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from musicrec import artifacts
from musicrec.artifacts import RUN_LOCK, ArtifactPaths, pipeline_lock, release_flock, take_flock


def test_a_nested_pipeline_lock_is_released_at_the_outer_exit(tmp_path: Path) -> None:
    """The lock nests within a process (a run, then its stages); when the outermost use
    ends it is free again: another open file can take it."""
    cache = ArtifactPaths(tmp_path / "recsys").cache_dir
    with pipeline_lock(cache):
        with pipeline_lock(cache):
            pass
        with pytest.raises(artifacts.LockHeld):  # still held by the outer use
            release_flock(take_flock(cache / RUN_LOCK))
    assert (cache / RUN_LOCK).resolve() not in artifacts._held
    release_flock(take_flock(cache / RUN_LOCK))  # free: taken at once


def test_artifact_paths_are_immutable_and_hashable(tmp_path: Path) -> None:
    paths = ArtifactPaths(tmp_path)
    assert {paths: 1}[ArtifactPaths(tmp_path)] == 1
    with pytest.raises(dataclasses.FrozenInstanceError):
        paths.root = tmp_path / "other"  # type: ignore[misc]
