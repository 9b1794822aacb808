"""``server.served_copy``: what a generation of workers loads is a private copy of the files
the manifest serves, each checked as it is read, unchanged by what later happens to the
artifacts directory, and written again when it goes from the temporary directory."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest

from optimize.loader import load_manifest, served_records, verify_artifacts
from optimize.manifest import ArtifactIntegrityError, ManifestError
from server.served_copy import ServedCopy


def served_files(arts: Path) -> set[str]:
    files = {"manifest.json"}
    for name, entry in load_manifest(arts).models.items():
        files |= {str(Path(name) / Path(r.file).name) for r in served_records(entry)}
    return files


def test_the_copy_holds_what_is_served_and_outlives_changes_to_the_source(
    artifacts_dir: Path, tmp_path: Path
) -> None:
    arts = tmp_path / "arts"
    shutil.copytree(artifacts_dir, arts)
    copy = ServedCopy.take(arts)
    try:
        held = {str(p.relative_to(copy.path)) for p in copy.path.rglob("*") if p.is_file()}
        assert held == served_files(arts)
        assert copy.manifest == load_manifest(arts)
        for path in arts.rglob("*"):  # the source changes: every file, every byte
            if path.is_file():
                path.write_bytes(b"changed")
        assert verify_artifacts(copy.path) == copy.manifest
        # a cleaner of the temporary directory takes the copy, or a file of it: what a
        # worker is about to load is written again from the bytes the front kept
        shutil.rmtree(copy.path)
        copy.ensure()
        assert verify_artifacts(copy.path) == copy.manifest
        selected = copy.manifest.models["tactical"].selected_variant.file
        (copy.path / selected).write_bytes(b"cut")
        copy.ensure()
        assert verify_artifacts(copy.path) == copy.manifest
    finally:
        copy.remove()
    assert not copy.path.exists()


def test_a_source_that_does_not_verify_leaves_no_copy(
    artifacts_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    made: list[Path] = []
    real_mkdtemp = tempfile.mkdtemp

    def mkdtemp(**kwargs: str) -> str:
        made.append(Path(real_mkdtemp(dir=tmp_path, **kwargs)))
        return str(made[-1])

    monkeypatch.setattr("server.served_copy.tempfile.mkdtemp", mkdtemp)
    arts = tmp_path / "arts"
    shutil.copytree(artifacts_dir, arts)
    selected = load_manifest(arts).models["tactical"].selected_variant.file
    (arts / selected).write_bytes((arts / selected).read_bytes() + b"tampered")
    with pytest.raises(ArtifactIntegrityError, match="sha256"):
        ServedCopy.take(arts)
    (arts / "manifest.json").write_text("{")
    with pytest.raises(ManifestError, match=str(arts)) as refused:
        ServedCopy.take(arts)
    assert "pis-served-" not in str(refused.value), "the error names the user's file"
    assert made == [], "the source is read and checked before any directory is made"
