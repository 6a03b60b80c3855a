"""Find a weights file by catalogue name, URL, Hugging Face Hub id or path, downloading it into a cache once.

Transfers are torch.hub's (``download_url_to_file``: progress bar, hash prefix) and huggingface_hub's
(``hf_hub_download``); this module only decides where a file goes and what a user is told. Caches:

- URLs: ``torch.hub.get_dir()/checkpoints/<file name>`` (``$TORCH_HOME/hub/checkpoints``, as timm and torchvision).
- Hub ids: the Hugging Face cache (``$HF_HUB_CACHE``, else ``$HF_HOME/hub``), laid out by huggingface_hub.

A download lands in ``<file>.partial`` and is renamed only once complete, its hash checked and its content
readable, so an interrupted run never leaves a file the next one would trust. ``HF_HUB_OFFLINE=1`` (or no
network) is an ordinary state: a cached file is used without a request; a missing one is one sentence naming
the file, its URL and where to put it by hand. The environment is read at each call, not at import.

Without ``HF_HUB_OFFLINE`` a host that cannot be reached is found with one connection attempt per process
(:func:`reachable`), so no network means one sentence at once rather than huggingface_hub's retries. A cached
file whose hash is known (the catalogue's SHA-256, a ``-<hex>`` prefix in its name, a Hub blob's name) is hashed
on first use and the result remembered (``verified.json`` in torch.hub's folder, by size and modification time),
so a file of other contents under a released name is refused and a cache hit stays fast.
"""

import hashlib
import json
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from urllib.error import HTTPError, URLError
from urllib.parse import urlparse

import torch.hub

from convnext_pl.errors import UserError
from convnext_pl.weights.catalogue import CATALOGUE, Weights, get_weights

HF_PREFIX = "hf-hub:"
# timm's repositories hold safetensors and, for older tools, the same tensors pickled.
HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")  # owner/name, as the Hub spells repositories
_FILE_SUFFIXES = (".pth", ".pt", ".bin", ".safetensors", ".ckpt")
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class Resolved:
    """A weights file on disk and, when it was named from the catalogue, its entry."""

    path: Path
    entry: Weights | None = None


def offline() -> bool:
    """True when ``HF_HUB_OFFLINE`` is set to a true value: use caches only, never a request."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on")


def torch_cache_file(url: str) -> Path:
    """Where a URL's file is cached: torch.hub's checkpoints folder (``$TORCH_HOME/hub/checkpoints``)."""
    return Path(torch.hub.get_dir()) / "checkpoints" / Path(urlparse(url).path).name


def hf_cache_dir() -> Path:
    """The Hugging Face cache folder, from the environment at call time (``HF_HUB_CACHE``, ``HF_HOME``)."""
    if os.environ.get("HF_HUB_CACHE"):
        return Path(os.environ["HF_HUB_CACHE"])
    if os.environ.get("HF_HOME"):
        return Path(os.environ["HF_HOME"]) / "hub"
    return Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "huggingface" / "hub"


def resolve(source: str | Path, check: Callable[[Path], object] | None = None) -> Resolved:
    """The local file ``source`` names, downloading it first when it is not cached.

    Args:
        source: a local path; a catalogue name (``convnext_tiny.in1k``); an ``https://``/``http://`` URL;
            ``hf-hub:<owner>/<repo>`` or a bare ``<owner>/<repo>`` that is not a local path.
        check: called on a freshly downloaded file before it is kept (it raises when the file is unreadable).

    Raises:
        UserError: the name is unknown, the path missing, the download failed or is impossible offline.
    """
    text = str(source)
    if Path(text).expanduser().exists():
        return Resolved(Path(text).expanduser())
    if text in CATALOGUE:
        entry = CATALOGUE[text]
        return Resolved(_fetch_entry(entry, check), entry)
    if text.startswith(("https://", "http://")):
        return Resolved(download_url(text, check=check))
    if text.startswith(HF_PREFIX) or (_HUB_ID.match(text) and Path(text).suffix not in _FILE_SUFFIXES):
        return Resolved(download_hf(text.removeprefix(HF_PREFIX), check=check))
    if re.fullmatch(r"\w+\.\w+", text) and Path(text).suffix not in _FILE_SUFFIXES:
        get_weights(text)  # reads as a catalogue name (model.tag): the unknown-name sentence suggests names
    if "/" in text or os.sep in text or Path(text).suffix in _FILE_SUFFIXES:
        raise UserError(f"Checkpoint file '{text}' does not exist; check the path.")
    raise UserError(
        f"pretrained weights '{text}' are neither a file nor a released weights name, URL or hf-hub:<repo>; "
        "check the path, or see the names with: python -m convnext_pl.weights list"
    )


def _fetch_entry(entry: Weights, check: Callable[[Path], object] | None) -> Path:
    """A catalogue file: the Hub copy (its hash is known) when it has one, else the official URL.

    Offline, whichever copy is already cached is used.
    """
    hub_copy = _hf_cached(entry.hf_hub_id)
    if hub_copy is not None:
        return _checked(hub_copy, _blob_sha256(hub_copy), entry.name)
    url_copy = _url_cached(entry.url)
    if url_copy is not None:
        return _checked(url_copy, entry.sha256 or _name_hash_prefix(url_copy), entry.name)
    hosts = [url for url in (hub_endpoint() if entry.hf_hub_id else None, entry.url) if url]
    if offline() or not any(reachable(url) for url in hosts):
        raise UserError(_offline_sentence(entry.name, entry.url, entry.hf_hub_id))
    if entry.hf_hub_id:
        try:  # the Hub's own SHA-256 is checked; the entry's sha256 is the URL file's
            return download_hf(entry.hf_hub_id, check=check, name=entry.name, url=entry.url)
        except UserError:
            if not entry.url:
                raise
            # The Hub unreachable (a firewall that lets the official server through) or refusing: try the URL.
    return download_url(entry.url, sha256=entry.sha256, check=check, name=entry.name)


def hub_endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


_REACHABLE: dict[tuple[str, int], bool] = {}
_PROXY_VARIABLES = ("https_proxy", "HTTPS_PROXY", "http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def reachable(url: str, timeout: float = 3.0) -> bool:
    """Whether ``url``'s host accepts a connection: asked once per process and host (a name that does not resolve
    answers at once, a firewall that drops packets after ``timeout`` seconds). Behind a proxy the transfer goes
    through it, so the host is not asked."""
    if any(os.environ.get(name) for name in _PROXY_VARIABLES):
        return True
    parsed = urlparse(url)
    if not parsed.hostname:
        return True
    key = (parsed.hostname, parsed.port or (443 if parsed.scheme == "https" else 80))
    if key not in _REACHABLE:
        try:
            socket.create_connection(key, timeout=timeout).close()
            _REACHABLE[key] = True
        except OSError:
            _REACHABLE[key] = False
    return _REACHABLE[key]


def _name_hash_prefix(path: Path) -> str | None:
    match = torch.hub.HASH_REGEX.search(path.name)  # torch.hub's `name-<hex>.pth`
    return match.group(1) if match else None


def _blob_sha256(path: Path) -> str | None:
    blob = path.resolve()
    return blob.name if _SHA256.match(blob.name) else None  # the Hub's LFS blobs are named by their SHA-256


def _checked(path: Path, expected: str | None, what: str) -> Path:
    """``path`` when its SHA-256 starts with ``expected`` (the full hash or torch.hub's prefix), or no hash is
    known. The hash of a file is computed once: ``verified.json`` remembers it by size and modification time."""
    if not expected:
        return path
    real = path.resolve()
    stat = real.stat()
    record = Path(torch.hub.get_dir()) / "verified.json"
    try:
        known = json.loads(record.read_text())
    except (OSError, ValueError):
        known = {}
    entry = known.get(str(real))
    if entry and entry[:2] == [stat.st_size, stat.st_mtime_ns]:
        digest = entry[2]
    else:
        digest = _sha256(real)
        known[str(real)] = [stat.st_size, stat.st_mtime_ns, digest]
        try:
            record.parent.mkdir(parents=True, exist_ok=True)
            partial = record.with_name(f"{record.name}.{os.getpid()}.partial")
            partial.write_text(json.dumps(known))
            os.replace(partial, record)
        except OSError:
            pass  # a read-only cache: the file is hashed again next time
    if not digest.startswith(expected.lower()):
        raise UserError(
            f"the cached file {path} is not the released {what}: its SHA-256 begins {digest[:12]}, the release's "
            f"{expected.lower()[:12]}; delete it and run 'python -m convnext_pl.weights download {what}', or put "
            "the released file there"
        )
    return path


def _url_cached(url: str | None) -> Path | None:
    return torch_cache_file(url) if url and torch_cache_file(url).is_file() else None


def _hf_cached(repo_id: str | None) -> Path | None:
    if not repo_id:
        return None
    from huggingface_hub import try_to_load_from_cache

    for filename in HF_WEIGHT_FILES:
        path = try_to_load_from_cache(repo_id, filename, cache_dir=hf_cache_dir())
        if isinstance(path, str) and Path(path).is_file():
            return Path(path)
    return None


def _offline_sentence(what: str, url: str | None, repo_id: str | None) -> str:
    places = []
    if url:
        places.append(f"{url} saved as {torch_cache_file(url)}")
    if repo_id:
        places.append(f"hf-hub:{repo_id} (huggingface-cli download {repo_id} --cache-dir {hf_cache_dir()})")
    return (
        f"{what} is not in the cache and this machine is offline (HF_HUB_OFFLINE=1 or no network); on a machine "
        f"with internet run 'python -m convnext_pl.weights download {what}' with the same TORCH_HOME/"
        f"HF_HOME, or put the file there by hand: {' or '.join(places)}"
    )


def download_url(
    url: str,
    sha256: str | None = None,
    check: Callable[[Path], object] | None = None,
    name: str | None = None,
) -> Path:
    """The cached copy of ``url``, downloaded (with a progress bar) when missing.

    A hash is checked when known: ``sha256``, or the prefix torch.hub reads from a file name ``name-<hex>.pth``.
    """
    target = torch_cache_file(url)
    what = name or target.name
    if target.is_file():  # cache hit: no request at all
        return _checked(target, sha256 or _name_hash_prefix(target), what)
    if offline() or not reachable(url):
        raise UserError(_offline_sentence(what, url, None))
    target.parent.mkdir(parents=True, exist_ok=True)
    partial = target.with_name(target.name + ".partial")
    hash_match = torch.hub.HASH_REGEX.search(target.name)
    try:
        # torch.hub writes to its own temporary file and moves it to `partial` only when the transfer ended.
        torch.hub.download_url_to_file(
            url, str(partial), hash_prefix=hash_match.group(1) if hash_match else None
        )
        if sha256 and _sha256(partial) != sha256.lower():
            raise UserError(f"its SHA-256 is not the catalogue's {sha256}")
        if check is not None:
            check(partial)
        os.replace(partial, target)
    except HTTPError as e:
        raise UserError(
            f"downloading {what} failed: {url} answered HTTP {e.code} ({e.reason}); check the URL"
        ) from e
    except URLError as e:
        raise UserError(
            f"could not reach {url} ({e.reason}); behind a firewall or offline, download {what} elsewhere and "
            f"put it at {target}"
        ) from e
    except UserError as e:
        raise UserError(
            f"the file downloaded from {url} was not kept in the cache (an interrupted transfer, or no weights "
            f"file): {e}"
        ) from e
    except RuntimeError as e:  # torch.hub: "invalid hash value (expected ..., got ...)"
        raise UserError(
            f"downloaded {what} from {url} has the wrong hash ({e}); nothing was kept, try again"
        ) from e
    except Exception as e:  # the connection dropped mid-transfer (http.client.IncompleteRead, a reset socket)
        raise UserError(
            f"the download of {what} from {url} stopped before the end ({type(e).__name__}); nothing was kept in "
            f"the cache, run again"
        ) from e
    finally:
        partial.unlink(missing_ok=True)
    return target


def download_hf(
    repo: str,
    check: Callable[[Path], object] | None = None,
    sha256: str | None = None,
    name: str | None = None,
    url: str | None = None,
) -> Path:
    """The weights file of Hub repository ``repo`` (``owner/name``, optionally ``owner/name/<file>``) from the cache.

    Downloads it when missing and online, trying ``model.safetensors`` then ``pytorch_model.bin``; the Hub gives
    a stored file's SHA-256 (the cache names the file's blob by it), checked after a download.
    """
    from huggingface_hub import hf_hub_download, try_to_load_from_cache
    from huggingface_hub.errors import EntryNotFoundError, HfHubHTTPError, LocalEntryNotFoundError

    parts = repo.split("/")
    repo_id, filenames = "/".join(parts[:2]), ("/".join(parts[2:]),) if len(parts) > 2 else HF_WEIGHT_FILES
    cache_dir = hf_cache_dir()
    for filename in filenames:
        cached = try_to_load_from_cache(repo_id, filename, cache_dir=cache_dir)
        if isinstance(cached, str):
            return _checked(Path(cached), sha256 or _blob_sha256(Path(cached)), name or f"hf-hub:{repo_id}")
    if offline() or not reachable(hub_endpoint()):
        raise UserError(_offline_sentence(name or f"hf-hub:{repo_id}", url, repo_id))
    for filename in filenames:
        try:
            path = Path(hf_hub_download(repo_id, filename, cache_dir=cache_dir))
        except LocalEntryNotFoundError as e:  # no connection and not cached
            raise UserError(_offline_sentence(name or f"hf-hub:{repo_id}", url, repo_id)) from e
        except EntryNotFoundError:
            continue  # the repository holds the other file name
        except HfHubHTTPError as e:
            raise UserError(
                f"the Hugging Face Hub refused hf-hub:{repo_id} ({e.__class__.__name__}); check the id"
            ) from e
        _verify_hf_download(path, sha256, check, repo_id)
        return path
    raise UserError(
        f"hf-hub:{repo_id} holds none of {', '.join(filenames)}; name the file: hf-hub:{repo_id}/<file>"
    )


def _verify_hf_download(path: Path, sha256: str | None, check, repo_id: str) -> None:
    blob = path.resolve()
    expected = sha256 or _blob_sha256(path)
    try:
        if expected and _sha256(blob) != expected.lower():
            raise UserError(f"its SHA-256 is not the Hub's {expected}")
        if check is not None:
            check(blob)
    except UserError as e:
        path.unlink(missing_ok=True)  # the snapshot link and the blob we just wrote: nothing the user made
        blob.unlink(missing_ok=True)
        raise UserError(f"the file downloaded from hf-hub:{repo_id} was not kept: {e}") from e


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()
