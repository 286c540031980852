"""cpsl.data.download: streaming, retries, Content-Length check, atomic placement (loopback server only)."""
from __future__ import annotations

import os

import pytest
from fixtures_data import LocalServer, free_port

from cpsl.data.download import DownloadError, download_file

BODY = os.urandom(300_000)
FAST = {"backoff_s": 0.01, "timeout_s": 5.0, "progress": False}


def _only(tmp_path):
    return sorted(p.name for p in tmp_path.iterdir())


def test_download_success_places_exact_bytes(tmp_path):
    with LocalServer({"/a.csd": BODY}) as srv:
        out = download_file(srv.url("/a.csd"), tmp_path / "a.csd", retries=1, **FAST)
    assert out.read_bytes() == BODY
    assert _only(tmp_path) == ["a.csd"]  # no temporary file left behind


def test_download_retries_server_errors_then_succeeds(tmp_path):
    with LocalServer({"/a.csd": BODY}) as srv:
        srv.fail_first["/a.csd"] = 2
        download_file(srv.url("/a.csd"), tmp_path / "a.csd", retries=3, **FAST)
        assert srv.hits["/a.csd"] == 3
    assert (tmp_path / "a.csd").read_bytes() == BODY


def test_truncated_body_is_retried(tmp_path):
    with LocalServer({"/a.csd": BODY}) as srv:
        srv.truncate_first["/a.csd"] = 1
        download_file(srv.url("/a.csd"), tmp_path / "a.csd", retries=2, **FAST)
        assert srv.hits["/a.csd"] == 2
    assert (tmp_path / "a.csd").read_bytes() == BODY


def test_always_truncated_body_fails_and_leaves_nothing(tmp_path):
    with LocalServer({"/a.csd": BODY}) as srv:
        srv.truncate_first["/a.csd"] = 99
        with pytest.raises(DownloadError, match="Content-Length"):
            download_file(srv.url("/a.csd"), tmp_path / "a.csd", retries=2, **FAST)
        assert srv.hits["/a.csd"] == 2
    assert _only(tmp_path) == []


def test_unreachable_server_names_mirror_and_files(tmp_path):
    names = ["X_words.csd", "X_COVAREP.csd", "X_Facet.csd", "X_Labels.csd"]
    url = f"http://127.0.0.1:{free_port()}/X_COVAREP.csd"
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "X_COVAREP.csd", retries=2, all_file_names=names, **FAST)
    msg = str(info.value)
    assert "unreachable" in msg and "data.mirror" in msg and "2 attempt" in msg
    for name in names:
        assert name in msg
    assert _only(tmp_path) == []


def test_client_error_is_not_retried(tmp_path):
    with LocalServer({}) as srv:
        with pytest.raises(DownloadError, match="HTTP 404.*data.mirror"):
            download_file(srv.url("/missing.csd"), tmp_path / "missing.csd", retries=4, **FAST)
        assert srv.hits["/missing.csd"] == 1
    assert _only(tmp_path) == []


def test_rejected_body_is_not_placed(tmp_path):
    def reject(path):
        assert path.stat().st_size == len(BODY)  # verify sees the complete temporary file
        raise ValueError("not a computational sequence")

    with LocalServer({"/a.csd": BODY}) as srv:
        with pytest.raises(ValueError, match="not a computational sequence"):
            download_file(srv.url("/a.csd"), tmp_path / "a.csd", retries=3, verify=reject, **FAST)
        assert srv.hits["/a.csd"] == 1
    assert _only(tmp_path) == []
