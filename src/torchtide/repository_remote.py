"""Model repositories on object storage (`s3://`, `gs://`, `as://`, spelled as Triton spells
them), read through fsspec. Each one is mirrored into a local cache folder that the server then
scans like any other repository; nothing else in the server knows the files came from far away.

A sync lists the remote prefix once and compares every object's ETag and size with the manifest
of the last sync: an unchanged object is never downloaded, so a restart with a warm cache or a
poll that sees no change costs one listing and no object GET. A model's changed parts (a version
folder, or a file beside the version folders) are downloaded into a staging folder first and
swapped in only when all of that model's downloads succeeded -- a folder by an atomic exchange
where the OS has one -- so a half-downloaded version is never loaded.

Credentials come from each SDK's own chain (botocore, google-auth, azure-identity: environment,
profiles, web identity, instance metadata), or from Triton's TRITON_CLOUD_CREDENTIAL_PATH file.
"""

from __future__ import annotations

import ctypes
import hashlib
import importlib
import json
import logging
import os
import re
import shutil
import tempfile
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

log = logging.getLogger("torchtide.repository")

CACHE_DIR_ENV = "TORCHTIDE_MODEL_CACHE_DIR"
CREDENTIAL_PATH_ENV = "TRITON_CLOUD_CREDENTIAL_PATH"
# scheme -> (the fsspec implementation's package, the torchtide extra that installs it)
PACKAGES = {"s3": ("s3fs", "s3"), "gs": ("gcsfs", "gcs"), "as": ("adlfs", "azure")}
_SCHEME = re.compile(r"^(s3|gs|as)://")
_NAME = re.compile(r"[A-Za-z0-9._-]+")
_HOST_PORT = re.compile(r"([A-Za-z0-9.-]+):([0-9]{1,5})")
_AZURE_HOST = ".blob.core.windows.net"
_SKIPPED_LOCAL = "__pycache__"  # written next to a Python model by imports; never mirrored


class RemoteError(Exception):
    """A remote repository that cannot be used; the message is one line naming the cause."""


@dataclass(frozen=True, slots=True)
class RemoteURL:
    url: str  # as given on the command line
    scheme: str  # s3 | gs | as
    bucket: str  # the bucket, or the Azure container
    prefix: str  # the repository inside the bucket, without leading or trailing '/'
    endpoint: str = ""  # s3 only: http(s)://host:port when the URL names a server
    account: str = ""  # as only: the storage account

    @property
    def root(self) -> str:
        """The repository's path as fsspec names it."""
        return f"{self.bucket}/{self.prefix}" if self.prefix else self.bucket

    @property
    def cache_key(self) -> str:
        """A folder name that is readable and unique to the objects the URL names."""
        where = f"{self.scheme}|{self.endpoint}|{self.account}|{self.root}"
        digest = hashlib.sha256(where.encode()).hexdigest()[:12]
        readable = re.sub(r"[^A-Za-z0-9._-]+", "-", self.root).strip("-")[:60]
        return f"{self.scheme}-{readable}-{digest}"


def is_remote(text: str) -> bool:
    return _SCHEME.match(text) is not None


def _clean(rest: str) -> list[str]:
    """Path parts without empty ones: Triton drops leading, trailing and doubled slashes."""
    return [p for p in rest.split("/") if p]


def parse_url(url: str) -> RemoteURL:
    """Read a remote repository URL the way Triton does: `s3://bucket/path`,
    `s3://host:port/bucket/path`, `s3://http(s)://host:port/bucket/path`, `gs://bucket/path`,
    `as://account/container/path` (the account may be written `NAME.blob.core.windows.net`)."""
    m = _SCHEME.match(url)
    if m is None:
        raise RemoteError(f"'{url}' is not an s3://, gs:// or as:// URL")
    scheme, rest = m.group(1), url[m.end() :]
    if scheme == "s3":
        return _parse_s3(url, rest)
    parts = _clean(rest)
    if scheme == "gs":
        _check_names(url, parts[:1], "bucket")
        return RemoteURL(url, scheme, parts[0], "/".join(parts[1:]))
    _check_names(url, parts[:2], "account and container")
    account = parts[0].removesuffix(_AZURE_HOST)
    return RemoteURL(url, scheme, parts[1], "/".join(parts[2:]), account=account)


def _parse_s3(url: str, rest: str) -> RemoteURL:
    protocol = ""
    for p in ("https://", "http://"):
        if rest.startswith(p):
            protocol, rest = p, rest[len(p) :]
    parts = _clean(rest)
    endpoint = ""
    host = _HOST_PORT.fullmatch(parts[0]) if parts else None
    if host is not None or protocol:
        endpoint = f"{protocol or 'http://'}{parts[0] if parts else ''}"
        parts = parts[1:]
    _check_names(url, parts[:1], "bucket")
    return RemoteURL(url, "s3", parts[0], "/".join(parts[1:]), endpoint=endpoint)


def _check_names(url: str, names: list[str], what: str) -> None:
    wanted = 2 if what.startswith("account") else 1
    if len(names) < wanted or not all(_NAME.fullmatch(n) for n in names):
        raise RemoteError(f"model repository '{url}': no valid {what} in the URL")


# ---------------------------------------------------------------------------- credentials


def _credential_entry(url: RemoteURL, env: Mapping[str, str]) -> Any:
    """The entry of Triton's credential file whose key is the longest prefix of the URL ('' is
    the default); None when the file is not set or names nothing for this scheme."""
    path = env.get(CREDENTIAL_PATH_ENV, "")
    if not path:
        return None
    try:
        section = json.loads(Path(path).read_text()).get(url.scheme) or {}
    except (OSError, ValueError, AttributeError) as e:
        raise RemoteError(f"{CREDENTIAL_PATH_ENV} '{path}' cannot be read: {e}") from None
    given = url.url.rstrip("/")
    keys = [k for k in section if given.startswith(k.rstrip("/"))]
    return section[max(keys, key=len)] if keys else None


def filesystem_options(url: RemoteURL, env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """The keyword arguments of the fsspec filesystem for `url`. Nothing here names a credential
    unless the user did (Triton's environment variables or credential file): otherwise the SDK's
    own chain finds one."""
    env = os.environ if env is None else env
    entry = _credential_entry(url, env)
    # each sync lists afresh; an instance is never shared with other users of fsspec
    opts: dict[str, Any] = {"skip_instance_cache": True}
    if url.scheme == "s3":
        if url.endpoint:
            opts["endpoint_url"] = url.endpoint
            opts["config_kwargs"] = {"s3": {"addressing_style": "path"}}  # as Triton: no vhost
        if isinstance(entry, dict):
            names = {"key_id": "key", "secret_key": "secret", "session_token": "token"}
            opts.update({names[k]: v for k, v in entry.items() if k in names and v})
            if entry.get("profile"):
                opts["profile"] = entry["profile"]
            if entry.get("region"):
                opts["client_kwargs"] = {"region_name": entry["region"]}
    elif url.scheme == "gs":
        if isinstance(entry, str) and entry:
            opts["token"] = entry  # a service-account key file, as in Triton's file
    else:
        opts.update(_azure_options(url, env, entry if isinstance(entry, dict) else {}))
    return opts


def _azure_options(url: RemoteURL, env: Mapping[str, str], entry: dict[str, Any]) -> dict[str, Any]:
    opts: dict[str, Any] = {
        "account_name": entry.get("account_str") or env.get("AZURE_STORAGE_ACCOUNT") or url.account
    }
    key = entry.get("account_key") or env.get("AZURE_STORAGE_KEY", "")
    auth = entry.get("auth_type") or env.get("AZURE_STORAGE_AUTH_TYPE", "")
    if key and auth in ("", "key"):
        opts["account_key"] = key
    elif auth in ("managed_identity", "default"):
        client_id = entry.get("client_id") or env.get("AZURE_STORAGE_CLIENT_ID", "")
        opts["credential"] = ("azure-identity", auth, client_id)  # built when the fs is opened
    elif "AZURE_STORAGE_ANON" not in env:
        opts["anon"] = False  # adlfs is anonymous by default; we use DefaultAzureCredential
    return opts


def require_package(url: RemoteURL) -> None:
    package, extra = PACKAGES[url.scheme]
    try:
        importlib.import_module(package)
    except ImportError:
        raise RemoteError(
            f"model repository '{url.url}' needs the Python package '{package}': "
            f"pip install 'torchtide[{extra}]'"
        ) from None


def open_filesystem(url: RemoteURL, env: Mapping[str, str] | None = None) -> Any:
    require_package(url)
    opts = filesystem_options(url, env)
    credential = opts.get("credential")
    if isinstance(credential, tuple):
        from azure import identity  # adlfs depends on azure-identity

        _, auth, client_id = credential
        opts["credential"] = (
            identity.ManagedIdentityCredential(client_id=client_id or None)
            if auth == "managed_identity"
            else identity.DefaultAzureCredential()
        )
    import fsspec

    return fsspec.filesystem({"s3": "s3", "gs": "gcs", "as": "abfs"}[url.scheme], **opts)


# ---------------------------------------------------------------------------- the mirror


@dataclass(frozen=True, slots=True)
class Stamp:
    """What identifies an object's content without reading it."""

    etag: str
    size: int


@dataclass(slots=True)
class SyncStats:
    syncs: int = 0
    failures: int = 0
    listings: int = 0
    downloads: int = 0  # object GETs: the only calls that read model bytes
    downloaded_bytes: int = 0
    removed: int = 0


def _stamp(info: Mapping[str, Any]) -> Stamp:
    etag = next(
        (str(info[k]) for k in ("ETag", "etag", "md5Hash", "generation") if info.get(k)), ""
    )
    if not etag:  # a store without ETags: the modification time stands in
        etag = str(info.get("LastModified") or info.get("last_modified") or info.get("mtime"))
    return Stamp(etag, int(info.get("size") or 0))


def _safe(rel: str) -> bool:
    parts = rel.split("/")
    return all(p not in ("", ".", "..") for p in parts) and "\\" not in rel and "\x00" not in rel


def _unit(rel: str) -> str:
    """What is replaced as one piece: a model's subfolder (a version), or a single file."""
    parts = rel.split("/")
    return "/".join(parts[:2]) if len(parts) > 2 else rel


def _model(rel: str) -> str:
    return rel.split("/", 1)[0] if "/" in rel else ""


def default_cache_dir(env: Mapping[str, str] | None = None) -> Path:
    env = os.environ if env is None else env
    if env.get(CACHE_DIR_ENV):
        return Path(env[CACHE_DIR_ENV])
    if env.get("XDG_CACHE_HOME"):
        return Path(env["XDG_CACHE_HOME"]) / "torchtide" / "models"
    return Path(tempfile.gettempdir()) / "torchtide-cache"


class RemoteRepository:
    """One remote repository and its local mirror (`local`), which the server scans."""

    def __init__(
        self,
        url: str,
        cache_dir: Path | None = None,
        open_fs: Callable[[RemoteURL], Any] = open_filesystem,
    ) -> None:
        self.url = parse_url(url)
        self.entry = (cache_dir or default_cache_dir()) / self.url.cache_key
        self.local = self.entry / "models"
        self.usable = False  # a listing succeeded in this process: `local` is the remote's state
        self.error = ""
        self.stats = SyncStats()
        self._open_fs = open_fs
        self._fs: Any = None
        self._lock = threading.Lock()

    def sync(self, only: str | None = None) -> bool:
        """Bring the mirror up to date (only model `only` when given). False when the remote
        could not be listed (the mirror is left as it was) or a model could not be downloaded
        (that model is left as it was); `error` says why. Blocking: call it off the event loop."""
        with self._lock:
            try:
                self.entry.mkdir(parents=True, exist_ok=True)
                with _file_lock(self.entry / "lock"):
                    return self._sync_locked(only)
            except OSError as e:  # the cache folder itself
                return self._result(f"model cache '{self.entry}' cannot be used: {_one_line(e)}")

    def _sync_locked(self, only: str | None) -> bool:
        try:
            if self._fs is None:
                self._fs = self._open_fs(self.url)
            listing = self._list()
        except Exception as e:
            self._fs = None  # a new client next time: credentials may have been renewed
            log.debug("model repository '%s'", self.url.url, exc_info=True)
            return self._result(_describe(self.url.url, e))
        self.usable = True
        return self._result(self._apply(listing, only))

    def _result(self, error: str) -> bool:
        if error and error != self.error:
            log.error("%s", error)
        elif not error and self.error:
            log.info("model repository '%s' is available again", self.url.url)
        self.stats.syncs += 1
        self.stats.failures += bool(error)
        self.error = error
        return not error

    def _apply(self, listing: dict[str, Stamp], only: str | None) -> str:
        """Bring each model up to date on its own; the first failure, as one line ('' if none)."""
        manifest = self._read_manifest()
        if only is None:
            models = {_model(r) for r in listing} | {_model(r) for r in manifest} | {""}
            models |= (
                {p.name for p in self.local.iterdir() if p.is_dir()}
                if self.local.is_dir()
                else set()
            )
        else:
            models = {only}
        staging = self.entry / "staging"
        shutil.rmtree(staging, ignore_errors=True)  # what a killed sync left
        staging.mkdir()
        errors = []
        try:
            for model in sorted(models):
                try:
                    self._sync_model(model, listing, manifest, staging)
                except Exception as e:
                    log.debug("model repository '%s'", self.url.url, exc_info=True)
                    errors.append(f"model '{model}': {type(e).__name__}: {_one_line(e)}")
                    continue
                self._write_manifest(manifest)
        finally:
            shutil.rmtree(staging, ignore_errors=True)
        if not errors:
            return ""
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        return f"model repository '{self.url.url}' could not be synced: {errors[0]}{more}"

    def _list(self) -> dict[str, Stamp]:
        self._fs.invalidate_cache()
        found = self._fs.find(self.url.root, detail=True)
        self.stats.listings += 1
        root = self.url.root.rstrip("/") + "/"
        listing: dict[str, Stamp] = {}
        for name, info in found.items():
            rel = name[len(root) :] if name.startswith(root) else ""
            if info.get("type") == "directory" or name.endswith("/") or not rel:
                continue
            if not _safe(rel):
                log.warning("model repository '%s': object '%s' skipped", self.url.url, rel)
                continue
            listing[rel] = _stamp(info)
        folders = {_unit(r) for r in listing if r.count("/") > 1}
        listing = {r: s for r, s in listing.items() if r not in folders}  # a file named as a folder
        if not listing:
            raise RemoteError(
                f"model repository '{self.url.url}' is unavailable: no objects found under it"
            )
        return listing

    def _sync_model(
        self, model: str, listing: dict[str, Stamp], manifest: dict[str, Stamp], staging: Path
    ) -> None:
        """Stage every changed unit of `model`, then swap them all in; on any failure the
        mirror keeps the model as it was."""
        remote = {r: s for r, s in listing.items() if _model(r) == model}
        known = {r: s for r, s in manifest.items() if _model(r) == model}
        units: dict[str, dict[str, Stamp]] = {}
        for rel, st in remote.items():
            units.setdefault(_unit(rel), {})[rel] = st
        changed = [u for u, objs in units.items() if not self._current(objs, known)]
        base = self.local / model if model else self.local
        stale = self._stale_paths(model, base, units)
        if not changed and not stale:
            return
        work = Path(tempfile.mkdtemp(dir=staging))
        for u in changed:
            for rel, st in units[u].items():
                self._stage(rel, st, known, work)
        for u in changed:  # everything is here: apply
            _put(work / u, self.local / u, staging)
        for p in stale:
            _remove(p, staging)
            self.stats.removed += 1
        if not remote and base != self.local and base.is_dir() and not any(base.iterdir()):
            base.rmdir()
        for rel in known:
            manifest.pop(rel)
        manifest.update(remote)

    def _current(self, objs: dict[str, Stamp], known: dict[str, Stamp]) -> bool:
        return all(known.get(rel) == st and self._present(rel, st) for rel, st in objs.items())

    def _present(self, rel: str, st: Stamp) -> bool:
        p = self.local / rel
        return p.is_file() and p.stat().st_size == st.size

    def _stale_paths(
        self, model: str, base: Path, units: dict[str, dict[str, Stamp]]
    ) -> list[Path]:
        """What the mirror holds for `model` that the remote no longer has."""
        if not base.is_dir():
            return []
        if not model:  # the repository root: only files that are not in the listing
            return [p for p in base.iterdir() if p.is_file() and p.name not in units]
        if not units:
            return [base]
        return [
            p
            for p in base.iterdir()
            if p.name != _SKIPPED_LOCAL and f"{model}/{p.name}" not in units
        ]

    def _stage(self, rel: str, st: Stamp, known: dict[str, Stamp], work: Path) -> None:
        target = work / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        if known.get(rel) == st and self._present(rel, st):
            try:  # an unchanged file of a changed folder: no download, no copy
                os.link(self.local / rel, target)
                return
            except OSError:
                pass
        self._fs.get_file(f"{self.url.root}/{rel}", str(target))
        self.stats.downloads += 1
        self.stats.downloaded_bytes += st.size
        size = target.stat().st_size
        if size != st.size:
            raise RemoteError(f"'{rel}': downloaded {size} bytes, the listing said {st.size}")

    def _read_manifest(self) -> dict[str, Stamp]:
        try:
            data = json.loads((self.entry / "manifest.json").read_text())
            return {rel: Stamp(str(e), int(n)) for rel, (e, n) in data["objects"].items()}
        except (OSError, ValueError, KeyError, TypeError):
            return {}  # no cache yet, or a damaged one: every object counts as changed

    def _write_manifest(self, manifest: dict[str, Stamp]) -> None:
        data = {"url": self.url.url, "objects": {r: [s.etag, s.size] for r, s in manifest.items()}}
        tmp = self.entry / "manifest.json.tmp"
        tmp.write_text(json.dumps(data, indent=0, sort_keys=True))
        os.replace(tmp, self.entry / "manifest.json")


def _one_line(e: BaseException) -> str:
    return (" ".join(str(e).split()) or type(e).__name__)[:300]


def _describe(url: str, e: BaseException) -> str:
    if isinstance(e, RemoteError):
        return str(e)
    return f"model repository '{url}' is unavailable: {type(e).__name__}: {_one_line(e)}"


@contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """Two servers sharing one cache folder sync it one at a time."""
    import fcntl  # POSIX only, like the rest of the server

    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two folders in one step (Linux renameat2 RENAME_EXCHANGE); False where the OS or
    the file system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    rc = renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange)
    return bool(rc == 0)


def _put(new: Path, target: Path, trash: Path) -> None:
    """Move `new` (a staged file or folder) to `target`, replacing what is there in one step."""
    target.parent.mkdir(parents=True, exist_ok=True)
    if new.is_file() or not target.exists():
        if target.is_dir() and new.is_file():
            _remove(target, trash)
        os.replace(new, target)
    elif target.is_dir() and _exchange(new, target):
        shutil.rmtree(new, ignore_errors=True)  # `new` now holds the old folder
    else:
        _remove(target, trash)
        os.replace(new, target)


def _remove(p: Path, trash: Path) -> None:
    """Take `p` out of the mirror in one rename, then delete it."""
    if p.is_dir() and not p.is_symlink():
        gone = Path(tempfile.mkdtemp(dir=trash)) / p.name
        os.rename(p, gone)
        shutil.rmtree(gone.parent, ignore_errors=True)
    else:
        p.unlink(missing_ok=True)


class RemoteRepositories:
    """The server's remote repositories, synced in order."""

    def __init__(self, urls: Sequence[str], cache_dir: Path | None = None) -> None:
        self.items = [RemoteRepository(u, cache_dir) for u in urls]

    def __bool__(self) -> bool:
        return bool(self.items)

    def sync(self, only: str | None = None) -> None:
        for r in self.items:
            r.sync(only)

    def paths(self) -> list[Path]:
        """The mirrors to scan: a repository whose first sync failed serves nothing yet."""
        return [r.local for r in self.items if r.usable]

    def errors(self) -> list[str]:
        return [r.error for r in self.items if r.error]

    def ready(self) -> bool:
        return all(r.usable for r in self.items)
