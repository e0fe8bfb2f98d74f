"""An app bundle from the URLs ``POST /upload_app`` names: only ``s3://<bundle bucket>/<key>``, ``file://`` under
the bundle root, and ``https://`` on a listed bundle host (FLIP's hub's pre-signed S3 links: fetched as they are, no
redirect followed, no credential of ours sent), within a size and file-count bound, each file placed by a safe
relative path.

FLIP's hub sends one URL per object of the bundle it assembled under ``<bucket>/<model_id>/``: its job template
(``app/config/*.json``, ``meta.json``), the researcher's files in ``app/custom/`` and evaluation checkpoints in
``server_checkpoints/``. The job here is built by flip's own job builder from the researcher's files, so the
template is not used: the app folder is ``app/custom/`` when the bundle has one (with the checkpoints beside the
files), otherwise the bundle's files themselves (a flat app folder, or one ``file://`` folder).

Paths are taken relative to the bundle's common folder (``<model_id>/`` for FLIP's hub). Nothing is read from a URL
that is refused, and a refusal names the URL without its query string.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from urllib.parse import unquote, urlsplit

from flip.api.settings import ServiceConfig
from flip.checks import check_object_key
from flip.errors import ApiError, BundleHostError, BundleTooLarge, StorageError
from flip.platform.http import redact_url

#: the longest URL accepted (characters)
MAX_URL_LENGTH = 8192
#: where FLIP's hub puts the researcher's files, and the evaluation checkpoints, inside its bundle
FLIP_APP_FILES = ("app", "custom")
FLIP_CHECKPOINTS = "server_checkpoints"


@dataclass(frozen=True)
class BundleFile:
    """One file of a bundle: where it comes from and its path in the bundle (a tuple of safe names)."""

    shown: str  # the URL fit for a message (no query string)
    parts: tuple[str, ...]  # the path the layout is computed from: the S3 key, or the path under the root
    bucket: str | None = None
    key: str | None = None
    path: Path | None = None
    url: str | None = field(default=None, repr=False)  # an http(s) URL (its query: a signature, never shown)


def _allowed(config: ServiceConfig) -> str:
    kinds = []
    if config.bundle_bucket:
        kinds.append(f"s3://{config.bundle_bucket}/<key> (FLIP_API_BUNDLE_BUCKET)")
    if config.bundle_root:
        kinds.append(f"file:// under {config.bundle_root} (FLIP_API_BUNDLE_ROOT)")
    if config.bundle_hosts:
        hosts = ", ".join(sorted(map(str, config.bundle_hosts)))
        kinds.append(f"https:// on {hosts} (FLIP_API_BUNDLE_HOSTS)")
    if not kinds:
        return "none: set FLIP_API_BUNDLE_BUCKET, FLIP_API_BUNDLE_ROOT or FLIP_API_BUNDLE_HOSTS"
    return " or ".join(kinds)


def _refuse(url: str, why: str, config: ServiceConfig) -> ApiError:
    return ApiError(f"bundle URL {redact_url(url)} is not allowed: {why}; allowed: {_allowed(config)}")


def parse_url(url: object, config: ServiceConfig) -> list[BundleFile]:
    """Return the file(s) a bundle URL names: an S3 object of the bundle bucket, or a file or folder (every file
    under it) below the bundle root.

    Raises:
        ApiError: (400) the URL is not a string, holds a query, a fragment, credentials or a control character,
            has another scheme or bucket, a key or path with ``..`` or outside the root (symlinks resolved), or
            names nothing that exists (the message names the URL without its query string).
    """
    if not isinstance(url, str) or not url or len(url) > MAX_URL_LENGTH:
        raise ApiError(f"a bundle URL must be a string of 1-{MAX_URL_LENGTH} characters")
    if any(not c.isprintable() or c.isspace() for c in url):
        raise _refuse(url, "it holds whitespace or a control character", config)
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
    except ValueError:
        raise _refuse(url, "it is not a URL", config) from None
    scheme = parts.scheme.lower()
    if scheme in ("https", "http"):
        return [_web_file(url, parts, config)]
    if scheme not in ("s3", "file"):
        where = f" (host {host!r})" if host else ""
        raise _refuse(url, f"scheme {scheme or 'none'!r}{where}", config)
    if parts.query or parts.fragment or "?" in url or "#" in url:
        raise _refuse(url, "it carries a query or a fragment", config)
    if "@" in parts.netloc or parts.port is not None:
        raise _refuse(url, "it carries credentials or a port", config)
    if scheme == "s3":
        if not config.bundle_bucket or parts.netloc != config.bundle_bucket:
            raise _refuse(url, f"bucket {parts.netloc!r} is not the bundle bucket", config)
        key = _safe_path(url, unquote(parts.path).removeprefix("/"), "key", config)
        return [BundleFile(redact_url(url), tuple(key.split("/")), bucket=parts.netloc, key=key)]
    return _local_files(url, parts.netloc, unquote(parts.path), config)


def _safe_path(url: str, path: str, what: str, config: ServiceConfig) -> str:
    """``path`` (an S3 key, a link's path) if it is a relative path of safe names, else the refusal naming ``what``."""
    try:
        return check_object_key(path)
    except ValueError:
        raise _refuse(
            url, f"its {what} is not a relative path of safe names (letters, digits, '.', '_', '-')", config
        ) from None


def _web_file(url: str, parts, config: ServiceConfig) -> BundleFile:
    """The file an http(s) URL on a bundle host names (a pre-signed link: its query is kept, never shown)."""
    try:
        port = parts.port
    except ValueError:
        raise _refuse(url, "its port is not a number", config) from None
    host = parts.hostname or ""
    if not url.isascii():
        raise _refuse(url, "it holds a non-ASCII character (a link is percent-encoded)", config)
    if "@" in parts.netloc:
        raise _refuse(url, "it carries credentials", config)
    if parts.fragment or "#" in url:
        raise _refuse(url, "it carries a fragment", config)
    if not any(h.allows(parts.scheme.lower(), host, port) for h in config.bundle_hosts):
        shown = f"{host}:{port}" if port else host
        raise _refuse(url, f"{parts.scheme.lower()}://{shown} is not a bundle host", config)
    path = _safe_path(url, unquote(parts.path).removeprefix("/"), "path", config)
    return BundleFile(redact_url(url), tuple(path.split("/")), url=url)


def _local_files(url: str, netloc: str, path: str, config: ServiceConfig) -> list[BundleFile]:
    """The files a ``file://`` URL names under the bundle root (a folder: every regular file under it)."""
    root = config.bundle_root
    if root is None:
        raise _refuse(url, "no bundle root is configured for file:// URLs", config)
    if netloc not in ("", "localhost"):
        raise _refuse(url, f"host {netloc!r}: a file:// URL names a local path", config)
    given = PurePosixPath(path)
    if not given.is_absolute() or ".." in given.parts or "\x00" in path:
        raise _refuse(url, "its path is not absolute or holds '..'", config)
    resolved = Path(os.path.realpath(path))
    if not resolved.is_relative_to(root):
        raise _refuse(url, "its path is outside the bundle root (links resolved)", config)
    if resolved.is_file():
        return [_local_file(url, resolved, root, config, redact_url(url))]
    if not resolved.is_dir():
        raise ApiError(f"bundle URL {redact_url(url)}: no such file or folder")
    found = []
    for folder, dirs, files in os.walk(resolved):  # links to folders are not followed
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__pycache__")
        for name in sorted(files):
            if not name.startswith("."):
                path = Path(folder) / name
                shown = f"{redact_url(url).rstrip('/')}/{path.relative_to(resolved).as_posix()}"
                found.append(_local_file(url, path, root, config, shown))
    if not found:
        raise ApiError(f"bundle URL {redact_url(url)}: the folder holds no file")
    return found


def _local_file(url: str, path: Path, root: Path, config: ServiceConfig, shown: str) -> BundleFile:
    """One file under the bundle root, its link resolved and checked, as the bundle file ``shown``."""
    real = Path(os.path.realpath(path))
    if not real.is_relative_to(root) or not real.is_file():
        raise _refuse(url, f"{shown.rsplit('/', 1)[-1]} links outside the bundle root or is not a regular file", config)
    relative = path.relative_to(root).as_posix()
    try:
        check_object_key(relative)
    except ValueError:
        raise _refuse(
            url, f"{relative!r} is not a relative path of safe names (letters, digits, '.', '_', '-')", config
        ) from None
    return BundleFile(shown, tuple(relative.split("/")), path=real)


def check_urls(urls: list[str], config: ServiceConfig) -> list[BundleFile]:
    """Every file the bundle URLs name, checked (scheme, bucket, root, paths, count); nothing is read.

    Raises:
        ApiError: (400) no URL, a URL refused (:func:`parse_url`), a file named twice, or more files than allowed.
    """
    if not urls:
        raise ApiError("bundle_urls is empty: give the URL of each file of the app bundle")
    files: list[BundleFile] = []
    for url in urls:
        files.extend(parse_url(url, config))
        if len(files) > config.max_bundle_files:
            raise ApiError(f"the bundle has more than {config.max_bundle_files} files (FLIP_API_MAX_BUNDLE_FILES)")
    seen: set[tuple[str, ...]] = set()
    for f in files:
        if f.parts in seen:
            raise ApiError(f"bundle URL {f.shown}: the file is named twice")
        seen.add(f.parts)
    return files


def layout(files: list[BundleFile]) -> list[tuple[BundleFile, PurePosixPath]]:
    """Each file with its path in the bundle: relative to the folder all of them share."""
    common = list(files[0].parts[:-1])
    for f in files[1:]:
        n = 0
        while n < min(len(common), len(f.parts) - 1) and common[n] == f.parts[n]:
            n += 1
        del common[n:]
    return [(f, PurePosixPath(*f.parts[len(common) :])) for f in files]


def fetch_bundle(files: list[BundleFile], dest: Path, config: ServiceConfig, s3_client=None) -> Path:
    """Fetch the bundle's files into ``dest`` (an empty folder) and return the app folder in it.

    Args:
        files: from :func:`check_urls`.
        dest: where the files go (each at its path in the bundle).
        config: the bounds.
        s3_client: a boto3 S3 client (built from boto3's chain when an S3 file is first needed).

    Raises:
        ApiError: (400) the bundle is larger than allowed, an S3 object does not exist, two paths collide;
            (502) the S3 server failed or refused the service's credentials (the cause, never a credential).
    """
    placed = layout(files)
    s3 = _LazyClient(s3_client)
    total = 0
    sizes: dict[PurePosixPath, int] = {}
    for f, rel in placed:
        if f.url is not None:
            continue  # a link's size is known as it is read, within what the others leave
        size = f.path.stat().st_size if f.path is not None else _s3_size(f, s3.get())
        total += size
        sizes[rel] = size
        if total > config.max_bundle_bytes:
            raise _too_large(config)
    for f, rel in placed:
        target = dest.joinpath(*rel.parts)
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
        except (FileExistsError, NotADirectoryError):
            raise ApiError(f"bundle URL {f.shown}: its path {rel} collides with a file of the bundle") from None
        if target.exists():
            raise ApiError(f"bundle URL {f.shown}: its path {rel} collides with another file of the bundle")
        if f.url is not None:
            total += _web_download(f, target, config.max_bundle_bytes - total, config)
            continue
        if f.path is not None:
            shutil.copyfile(f.path, target)
        else:
            _s3_download(f, target, s3.get())
        if target.stat().st_size != sizes[rel]:
            raise ApiError(f"bundle URL {f.shown} changed while it was read", status=502)
    return _app_folder(dest)


def _app_folder(dest: Path) -> Path:
    """``app/custom`` of a FLIP hub bundle (checkpoints from ``server_checkpoints/`` beside the app's files), else
    the bundle's own folder."""
    app = dest.joinpath(*FLIP_APP_FILES)
    if not app.is_dir():
        return dest
    checkpoints = dest / FLIP_CHECKPOINTS
    if checkpoints.is_dir():
        for path in sorted(checkpoints.iterdir()):
            if path.is_file() and not (app / path.name).exists():
                shutil.copyfile(path, app / path.name)
    return app


class _LazyClient:
    """The S3 client, built from boto3's chain when an S3 file is first needed."""

    def __init__(self, client=None):
        self.client = client

    def get(self):
        if self.client is None:
            from flip.storage.client import make_s3_client

            self.client = make_s3_client(max_attempts=3, connect_timeout=10, read_timeout=120)
        return self.client


def _s3_size(f: BundleFile, client) -> int:
    from flip.storage.client import BOTO_ERRORS, head_object, s3_error

    try:
        head = head_object(client, f.bucket, f.key)
    except BOTO_ERRORS as exc:
        raise _upstream(s3_error(exc, f"cannot read {f.shown}")) from exc
    if head is None:
        raise ApiError(f"bundle URL {f.shown}: no such object")
    return int(head["ContentLength"])


def _s3_download(f: BundleFile, target: Path, client) -> None:
    from flip.storage.client import BOTO_ERRORS, s3_error

    try:
        client.download_file(f.bucket, f.key, str(target))
    except BOTO_ERRORS as exc:
        raise _upstream(s3_error(exc, f"cannot download {f.shown}")) from exc


def _too_large(config: ServiceConfig) -> ApiError:
    return ApiError(
        f"the bundle is larger than {config.max_bundle_bytes // (1024 * 1024)} MiB (FLIP_API_MAX_BUNDLE_MB)"
    )


def _web_download(f: BundleFile, target: Path, left: int, config: ServiceConfig) -> int:
    """Fetch a link into ``target`` (at most ``left`` bytes: else the bundle is too large); return its size.

    Raises:
        ApiError: (400) no such object, the signature refused (expired?), the bundle too large; (502) the host
            failed, was unreachable, or answered with a redirect (not followed).
    """
    from flip.platform.http import Retry, Service, request

    host = urlsplit(f.url).hostname
    service = Service(
        name=f"bundle host {host}",
        url_var="FLIP_API_BUNDLE_HOSTS",
        key_var="the link's signature",
        error=BundleHostError,
        key_refused=(),
    )
    with open(target, "wb") as sink:
        try:
            reply = request(
                service,
                "GET",
                f.url,
                timeout=60.0,
                retry=Retry(attempts=3, deadline=900.0),
                accept=lambda status, attempt: status in (403, 404),
                max_bytes=max(left, 1),
                sink=sink,
                too_large=BundleTooLarge,
            )
        except BundleTooLarge:
            raise _too_large(config) from None
    if reply.status in (403, 404):
        target.unlink(missing_ok=True)
        why = (
            "no such object" if reply.status == 404 else "the host refused its signature (expired, or not this object)"
        )
        raise ApiError(f"bundle URL {f.shown}: {why} (HTTP {reply.status})")
    size = target.stat().st_size
    if size > left:
        raise _too_large(config)
    return size


def _upstream(error: StorageError) -> ApiError:
    return ApiError(str(error), status=502)
