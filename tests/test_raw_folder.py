"""cpsl.formats.raw_folder is the one owner of the raw folder's file names and its manifest/folds format (issue 23
item 1): no other module spells them, and what its writer writes its reader accepts. Was: `manifest.json` named in
config/paths.py, stages/prepare.py and stages/align.py, read by two readers that disagreed."""
from __future__ import annotations

import ast
import json

import pytest
from train_helpers import REPO

from cpsl.config import paths
from cpsl.formats import raw_folder

OWNERS = {"src/cpsl/config/paths.py", "src/cpsl/formats/raw_folder.py"}


def _spelled(path) -> set[str]:
    """The raw folder's file names written as string literals in a module (docstrings are prose, not code)."""
    tree = ast.parse(path.read_text())
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                  and node.body and isinstance(node.body[0], ast.Expr)}
    names = {raw_folder.MANIFEST_NAME, raw_folder.FOLDS_NAME}
    return {node.value for node in ast.walk(tree) if isinstance(node, ast.Constant) and id(node) not in docstrings
            and isinstance(node.value, str) and node.value in names}


def test_only_the_owners_spell_the_raw_folder_s_file_names():
    spelled = {str(p.relative_to(REPO)): found for p in sorted((REPO / "src" / "cpsl").rglob("*.py"))
               if (found := _spelled(p))}
    assert set(spelled) <= OWNERS, {k: v for k, v in spelled.items() if k not in OWNERS}
    assert paths.manifest_path("mosi") == paths.raw_dir("mosi") / raw_folder.MANIFEST_NAME


def test_what_the_writer_writes_the_reader_accepts_and_invalidate_removes_the_mark(tmp_path):
    entries = {}
    for role in raw_folder.ROLES:
        (tmp_path / f"{role}.csd").write_bytes(role.encode())
        entries[role] = {"name": f"{role}.csd", "sha256": f"sha-{role}", "size": len(role), "url": None}
    folds = {"train": ["a"], "valid": ["b"], "test": ["c"]}
    written = raw_folder.write_folds_and_manifest(tmp_path, "demo", "demo", entries, folds)
    assert raw_folder.read_manifest(tmp_path) == written == json.loads((tmp_path / "manifest.json").read_text())
    assert raw_folder.read_folds(raw_folder.folds_path(tmp_path, written)) == {"a": "train", "b": "valid", "c": "test"}
    raw_folder.check_digests(tmp_path, written, lambda role: f"sha-{role}")
    with pytest.raises(raw_folder.RawFolderError, match=r"visual\.csd: file changed since `cpsl prepare`"):
        raw_folder.check_digests(tmp_path, written, lambda role: "other" if role == "visual" else f"sha-{role}")
    raw_folder.invalidate(tmp_path)
    with pytest.raises(raw_folder.RawFolderError, match=r"manifest\.json: manifest not found \(run `cpsl prepare`"):
        raw_folder.read_manifest(tmp_path)
