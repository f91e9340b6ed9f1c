"""The server's stand-in for ESD's S3 bucket: objects in memory behind presigned-style URLs.

`PresignedStorage` owns the objects (payload uploads, result images, `_param.json`) and the URLs
that reach them on the same server: `/s3/<bucket>/<key>?X-Amz-…&X-Amz-Signature=<hmac>`. A URL is
signed with a per-server secret over the method, the path and every `X-Amz-*` parameter, and it
expires `ttl` seconds after its `X-Amz-Date`. S3 writes that date in whole seconds; it is rounded
up here, so a URL lives at least `ttl` and less than `ttl + 1` seconds. `check` answers
what S3 would: `SignatureDoesNotMatch` for a tampered URL, `AccessDenied` / `Request has expired`
for a stale one.

ESD's Lambdas sign with their execution role's temporary credentials, so every URL they make
carries the session token as `X-Amz-Security-Token` (SigV4 query authentication with
temporary credentials; STS says the token's size is not fixed). Here it is about 1 KB of
base64, so the URLs, and the rows of `GET /inferences` that keep the upload URL in `params`
(`input_body_presign_url`), are about as long as a real stack's: a 1 MB list page holds ~400 of
the bot's rows, not 500.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import math
import secrets
from datetime import UTC, datetime
from typing import TYPE_CHECKING
from urllib.parse import quote, urlencode

if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

BUCKET = "sdbot-local-backend"
PATH_PREFIX = "/s3/"
_ALGORITHM = "AWS4-HMAC-SHA256"
_DATE_FORMAT = "%Y%m%dT%H%M%SZ"
_SIGNATURE = "X-Amz-Signature"
_REQUIRED = ("X-Amz-Algorithm", "X-Amz-Date", "X-Amz-Expires", _SIGNATURE)
_SESSION_TOKEN_BYTES = 768  # 1,024 characters of base64


class StorageError(Exception):
    """An S3-style refusal: HTTP status, S3 error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.status = status
        self.code = code
        self.message = message


class PresignedStorage:
    """One in-memory bucket and the URLs that reach its keys."""

    def __init__(self, ttl: float, now: Callable[[], float], bucket: str = BUCKET) -> None:
        self.bucket = bucket
        self.objects: dict[str, bytes] = {}  # read freely; write through `put` / `delete`
        self.stored_bytes = 0
        self._ttl = ttl
        self._now = now  # epoch seconds; a callable so tests may swap the server's clock
        self._secret = secrets.token_bytes(32)
        # The role's session token: one per server, as a Lambda keeps its credentials a while.
        self._session_token = base64.b64encode(secrets.token_bytes(_SESSION_TOKEN_BYTES)).decode()

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{key}"

    def url(self, origin: str, method: str, key: str) -> str:
        """A presigned URL for `method` on `key`, rooted at `origin` (scheme://host:port)."""
        signed_at = math.ceil(self._now())
        params = {
            "X-Amz-Algorithm": _ALGORITHM,
            "X-Amz-Credential": f"LOCALBACKEND/{_day(signed_at)}/local/s3/aws4_request",
            "X-Amz-Date": datetime.fromtimestamp(signed_at, UTC).strftime(_DATE_FORMAT),
            "X-Amz-Expires": _seconds_text(self._ttl),
            "X-Amz-SignedHeaders": "host",
            "X-Amz-Security-Token": self._session_token,
        }
        path = self.path(key)
        params[_SIGNATURE] = self._sign(method, path, params)
        return f"{origin}{quote(path)}?{urlencode(params)}"

    def path(self, key: str) -> str:
        return f"{PATH_PREFIX}{self.bucket}/{key}"

    def key_of(self, path: str) -> str | None:
        """The object key a request path names, or None when it is not in this bucket."""
        prefix = f"{PATH_PREFIX}{self.bucket}/"
        return path[len(prefix) :] if path.startswith(prefix) and len(path) > len(prefix) else None

    def check(self, method: str, path: str, query: Mapping[str, str]) -> None:
        """Raise `StorageError` unless `query` presigns `method` on `path` and has not expired."""
        if any(name not in query for name in _REQUIRED):
            raise StorageError(
                403,
                "AccessDenied",
                "Query-string authentication version 4 requires the X-Amz-Algorithm, "
                "X-Amz-Credential, X-Amz-Signature, X-Amz-Date, X-Amz-SignedHeaders, "
                "and X-Amz-Expires parameters.",
            )
        signed = {name: value for name, value in query.items() if name.startswith("X-Amz-")}
        expected = self._sign(method, path, signed)
        if not hmac.compare_digest(expected, query[_SIGNATURE]):
            raise StorageError(
                403,
                "SignatureDoesNotMatch",
                "The request signature we calculated does not match the signature you provided. "
                "Check your key and signing method.",
            )
        try:
            signed_at = datetime.strptime(query["X-Amz-Date"], _DATE_FORMAT).replace(tzinfo=UTC)
            lifetime = float(query["X-Amz-Expires"])
        except ValueError:
            raise StorageError(
                400, "AuthorizationQueryParametersError", "X-Amz-Date or X-Amz-Expires is invalid"
            ) from None
        if self._now() > signed_at.timestamp() + lifetime:
            raise StorageError(403, "AccessDenied", "Request has expired")

    def put(self, key: str, data: bytes) -> None:
        self.delete(key)
        self.objects[key] = data
        self.stored_bytes += len(data)

    def delete(self, key: str) -> None:
        data = self.objects.pop(key, None)
        if data is not None:
            self.stored_bytes -= len(data)

    def delete_prefix(self, prefix: str) -> None:
        for key in [key for key in self.objects if key.startswith(prefix)]:
            self.delete(key)

    def _sign(self, method: str, path: str, params: Mapping[str, str]) -> str:
        canonical = "&".join(
            f"{name}={value}" for name, value in sorted(params.items()) if name != _SIGNATURE
        )
        message = f"{method.upper()}\n{path}\n{canonical}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()


def _day(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y%m%d")


def _seconds_text(seconds: float) -> str:
    """S3 writes whole seconds; sub-second lifetimes (tests) keep millisecond precision."""
    if float(seconds).is_integer():
        return str(int(seconds))
    return f"{seconds:.3f}".rstrip("0").rstrip(".")
