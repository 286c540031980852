"""Streaming download of one raw file with retries, back-off and a completeness check.

The body is streamed to a temporary file next to the destination (so the final rename stays on one
file system) and renamed into place only after the byte count matches ``Content-Length`` (when the
server sends one) and an optional ``verify`` callback accepted the file. Any failure removes the
temporary file, so a destination path either holds a complete file or nothing.

Retry policy: connection errors, timeouts, 5xx/429 answers and short bodies are retried with an
exponential back-off (``backoff_s``, doubling each time); other 4xx answers fail at once because
repeating them cannot help. After the last attempt the error names the URL and tells the user to set
``data.mirror`` to a folder holding the dataset's files (listed by the caller).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Callable, Sequence

import requests
from tqdm import tqdm

from cpsl.data.sources import RawDataError
from cpsl.runtime.io_utils import atomic_path

_CHUNK = 1 << 20


class DownloadError(RawDataError):
    """A file could not be downloaded; the message says what to do instead."""


class _Retryable(Exception):
    """An attempt failed in a way another attempt may fix."""


def mirror_hint(file_names: Sequence[str]) -> str:
    names = ", ".join(file_names)
    return (
        f"Set 'data.mirror' in params.yaml (or --set data.mirror=/path/to/folder) to a local folder holding "
        f"these files under exactly these names: {names}"
    )


def _stream_once(url: str, tmp: Path, label: str, timeout_s: float, progress: bool) -> None:
    try:
        # identity encoding: Content-Length then counts exactly the bytes we write
        response = requests.get(url, stream=True, timeout=timeout_s, headers={"Accept-Encoding": "identity"})
    except (requests.ConnectionError, requests.Timeout) as exc:
        raise _Retryable(f"cannot connect ({exc.__class__.__name__}: {exc})") from exc
    with response:
        if response.status_code >= 500 or response.status_code == 429:
            raise _Retryable(f"server answered HTTP {response.status_code}")
        if response.status_code >= 400:
            raise DownloadError(f"{url}: server answered HTTP {response.status_code}")
        expected = response.headers.get("Content-Length")
        expected = int(expected) if expected and expected.isdigit() else None
        received = 0
        bar = tqdm(total=expected, unit="B", unit_scale=True, desc=label,
                   disable=not (progress and sys.stderr.isatty()), leave=False)
        try:
            with open(tmp, "wb") as fh:
                for chunk in response.iter_content(_CHUNK):
                    fh.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (requests.ConnectionError, requests.Timeout, requests.exceptions.ChunkedEncodingError) as exc:
            raise _Retryable(
                f"connection lost after {received} bytes, "
                f"Content-Length {expected if expected is not None else 'not sent'} "
                f"({exc.__class__.__name__})"
            ) from exc
        finally:
            bar.close()
        if expected is not None and received != expected:
            raise _Retryable(f"received {received} bytes but Content-Length is {expected}")


def download_file(
    url: str,
    dest: str | Path,
    *,
    retries: int = 4,
    backoff_s: float = 2.0,
    timeout_s: float = 60.0,
    all_file_names: Sequence[str] | None = None,
    verify: Callable[[Path], None] | None = None,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` atomically; return ``dest``.

    ``retries`` is the number of attempts (>= 1). ``verify(tmp_path)`` may raise to reject a complete
    but unusable body (not retried: the server would send the same bytes again).
    ``all_file_names`` are listed in the mirror hint of the final error (default: this file's name).
    """
    dest = Path(dest)
    names = list(all_file_names) if all_file_names else [dest.name]
    failures: list[str] = []
    for attempt in range(1, max(1, int(retries)) + 1):
        try:
            with atomic_path(dest, suffix=".part") as tmp:
                _stream_once(url, tmp, dest.name, timeout_s, progress)
                if verify is not None:
                    verify(tmp)
            return dest
        except DownloadError as exc:  # a definitive answer (e.g. 404): retrying cannot help
            raise DownloadError(f"{exc}. {mirror_hint(names)}") from exc
        except _Retryable as exc:
            failures.append(f"attempt {attempt}: {exc}")
            if attempt < retries:
                time.sleep(backoff_s * (2 ** (attempt - 1)))
    detail = "; ".join(failures)
    raise DownloadError(
        f"could not download {dest.name} from {url}: the CMU server is unreachable or keeps failing "
        f"after {len(failures)} attempt(s) ({detail}). {mirror_hint(names)}"
    )
