"""Request authentication: an application's RS256 JWT, or an account's API key and secret.

Every failure raises the same 401 problem; the reason goes to the log, never to the client.
Whatever the client sent is clipped before it is logged, and refusals are logged at most
REFUSAL_LINES_PER_SECOND times a second, so that bad requests cannot flood the log.
RS256 verification is the largest cost of a request (about 0.1 ms here), so a verified token is
remembered by its exact bytes until it expires (or for a short bound when it has no ``exp``),
and forgotten as soon as its application's key changes.

The official SDKs make a new token for every request, so most tokens are seen once and the
verification is on the accept path. It is done here (:func:`read_token`, then the signature
through ``cryptography``) rather than by ``jwt.decode``: PyJWT 2.15 checks each character of
a token against the base64url alphabet in a Python generator, which cost about twice the RSA
verification itself (BENCHMARKS.md). The rules are PyJWT's, stricter where a token Cascade
has no use for could pass (``crit`` and ``b64`` headers, padded segments, an empty ``aud``);
a property test holds every token this module accepts to PyJWT's verdict and claims.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import msgspec
import structlog
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15
from cryptography.hazmat.primitives.asymmetric.rsa import RSAPublicKey
from cryptography.hazmat.primitives.hashes import SHA256
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from cascade.api.access import note_account
from cascade.clock import Clock
from cascade.domain.records import Account, Application
from cascade.errors import Unauthorized
from cascade.log import LogLimiter, clip
from cascade.store.base import Tenants

log = structlog.get_logger(__name__)

#: the longest a JWT may live, as Nexmo documents (``exp`` at most 24 h after ``iat``)
MAX_TOKEN_LIFETIME = 24 * 3600
#: how far ahead of our clock a client's ``iat``/``nbf`` may be
CLOCK_SKEW = 60
#: how long a verified token without ``exp`` is trusted before it is verified again
UNBOUNDED_TOKEN_CACHE_SECONDS = 300
#: how long tenant lookups are trusted before reading the store again
TENANT_CACHE_SECONDS = 5.0
#: refused requests logged per second (per Authenticator); the rest are counted, and the count
#: is logged with the next refusal logged
REFUSAL_LINES_PER_SECOND = 10


def hash_secret(secret: str) -> str:
    """The stored form of an API secret: generated secrets are long and random, so SHA-256
    suffices and keeps a slow password hash off the request path (docs/design.md §3)."""
    return hashlib.sha256(secret.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Principal:
    """Who a request acts for: an account, and the application when a JWT was used."""

    account: Account
    application: Application | None


@dataclass(slots=True)
class _VerifiedToken:
    principal: Principal
    public_key_pem: str
    trusted_until: float


@dataclass(slots=True)
class _CachedApplication:
    application: Application | None
    account: Account | None
    key: RSAPublicKey | None
    fetched_at: float


class Authenticator:
    """Turns an Authorization header into a Principal, or raises Unauthorized."""

    def __init__(self, store: Tenants, clock: Clock, *, token_cache_size: int = 10_000) -> None:
        self._store = store
        self._clock = clock
        self._tokens: OrderedDict[str, _VerifiedToken] = OrderedDict()
        self._token_cache_size = token_cache_size
        self._applications: dict[str, _CachedApplication] = {}
        self._basic: dict[str, tuple[Account | None, float]] = {}
        self._refusals = LogLimiter(REFUSAL_LINES_PER_SECOND, clock.now)

    async def authenticate(self, authorization: list[str]) -> Principal:
        """The principal of a request with these Authorization header values (its account is
        named in the request's access line)."""
        if not authorization:
            raise self._refuse("no Authorization header")
        if len(authorization) > 1:
            raise self._refuse("more than one Authorization header (JWT and Basic at once?)")
        scheme, _, credentials = authorization[0].strip().partition(" ")
        scheme = scheme.lower()
        credentials = credentials.strip()
        if scheme == "bearer" and credentials:
            principal = await self._bearer(credentials)
        elif scheme == "basic" and credentials:
            principal = await self._basic_auth(credentials)
        else:
            raise self._refuse("unsupported Authorization scheme", scheme=clip(scheme))
        note_account(principal.account.id)
        return principal

    def forget(self, application_id: str) -> None:
        """Drop what is cached about an application (its key or URLs changed)."""
        self._applications.pop(application_id, None)

    def _refuse(self, reason: str, **client_values: str) -> Unauthorized:
        """The 401 to raise, logging why (``client_values``: what the client sent, clipped
        by the caller) unless refusals are being logged too often."""
        suppressed = self._refusals.admit()
        if suppressed is not None:
            if suppressed:
                client_values["suppressed"] = str(suppressed)
            log.info("auth.refused", reason=reason, **client_values)
        return Unauthorized()

    # --- Bearer JWT ------------------------------------------------------------------------

    async def _bearer(self, token: str) -> Principal:
        now = self._clock.now()
        cached = self._tokens.get(token)
        if cached is not None:
            if cached.trusted_until > now:
                current = await self._application(cached.principal.application, now)
                if (
                    current.application is not None
                    and current.application.public_key_pem == cached.public_key_pem
                ):
                    return cached.principal
            del self._tokens[token]

        try:
            read = read_token(token)
        except TokenRefused as exc:
            raise self._refuse("JWT rejected", error=str(exc)) from exc
        application_id = read.claims.get("application_id")
        if not isinstance(application_id, str) or not application_id:
            raise self._refuse("JWT without a readable application_id")
        if not _plausible_id(application_id):
            raise self._refuse("implausible application_id", application_id=clip(application_id))
        entry = await self._lookup_application(application_id, now)
        if entry.application is None or entry.key is None or entry.account is None:
            raise self._refuse("unknown application", application_id=clip(application_id))
        try:
            entry.key.verify(read.signature, read.signed, PKCS1v15(), SHA256())
        except InvalidSignature as exc:
            raise self._refuse("JWT rejected", error="the signature does not verify") from exc
        try:
            trusted_until = _check_claims(read.claims, application_id, now)
        except _ClaimsRefused as exc:
            raise self._refuse(str(exc)) from exc
        principal = Principal(entry.account, entry.application)
        self._remember(token, principal, entry.application.public_key_pem, trusted_until)
        return principal

    def _remember(self, token: str, principal: Principal, pem: str, until: float) -> None:
        self._tokens[token] = _VerifiedToken(principal, pem, until)
        if len(self._tokens) > self._token_cache_size:
            self._tokens.popitem(last=False)

    async def _application(self, app: Application | None, now: float) -> _CachedApplication:
        assert app is not None
        return await self._lookup_application(app.id, now)

    async def _lookup_application(self, application_id: str, now: float) -> _CachedApplication:
        entry = self._applications.get(application_id)
        if entry is not None and now - entry.fetched_at < TENANT_CACHE_SECONDS:
            return entry
        application = await self._store.get_application(application_id)
        account = key = None
        if application is not None:
            account = await self._store.get_account(application.account_id)
            loaded = load_pem_public_key(application.public_key_pem.encode())
            key = loaded if isinstance(loaded, RSAPublicKey) else None
        entry = _CachedApplication(application, account, key, now)
        if application is not None:  # ids that do not exist are not remembered: they are unbounded
            self._applications[application_id] = entry
        return entry

    # --- Basic -----------------------------------------------------------------------------

    async def _basic_auth(self, credentials: str) -> Principal:
        try:
            decoded = base64.b64decode(credentials, validate=True).decode()
        except (binascii.Error, UnicodeDecodeError) as exc:
            raise self._refuse("malformed Basic credentials") from exc
        api_key, sep, api_secret = decoded.partition(":")
        if not sep or not api_key or not api_secret:
            raise self._refuse("Basic credentials are not api_key:api_secret")
        if not _plausible_id(api_key):
            # never ours, and a NUL in it would make PostgreSQL fail the lookup (a 503)
            raise self._refuse("implausible api_key", api_key=clip(api_key))
        now = self._clock.now()
        cached = self._basic.get(api_key)
        if cached is not None and now - cached[1] < TENANT_CACHE_SECONDS:
            account = cached[0]
        else:
            account = await self._store.get_account_by_api_key(api_key)
            if account is not None:  # unknown keys are not remembered: they are unbounded
                self._basic[api_key] = (account, now)
        # compare even when the account is unknown, so timing does not reveal which keys exist
        expected = account.api_secret_sha256 if account else "0" * 64
        if not hmac.compare_digest(hash_secret(api_secret), expected) or account is None:
            raise self._refuse("wrong api_key or api_secret")
        return Principal(account, None)


#: longer than any id Cascade issues (api keys have 8 characters, application ids 36)
MAX_ID_LENGTH = 64


def _plausible_id(value: str) -> bool:
    """Whether a client-sent api_key or application_id could be one Cascade issued: short,
    printable ASCII. Anything else is refused before it reaches the store."""
    return len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()


#: a JWS in compact form: three base64url segments without padding (RFC 7515 §2 and §7.1)
_COMPACT_JWS = re.compile(r"([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)\.([A-Za-z0-9_-]+)")
#: headers that change how a token is read (RFC 7515 §4.1.11, RFC 7797): none is supported
_UNSUPPORTED_HEADERS = frozenset({"crit", "b64"})


class TokenRefused(Exception):
    """A bearer token that is not an RS256 JWT Cascade can verify; the message says why
    (fixed text, never the token's content)."""


@dataclass(frozen=True, slots=True)
class ReadToken:
    """A JWT read but not yet verified: its claims, and what its signature must match."""

    claims: dict[str, Any]
    #: the signing input: the header and payload segments as sent, joined by a dot
    signed: bytes
    signature: bytes


def read_token(token: str) -> ReadToken:
    """Read an RS256 JWT's segments and claims, refusing what PyJWT would refuse before and
    after the signature. The signature is the caller's to verify (it knows the key), and the
    claims' values too (``_check_claims``: PyJWT's ``require`` of ``application_id``, ``iat``
    and ``jti`` among them)."""
    match = _COMPACT_JWS.fullmatch(token)
    if match is None:
        raise TokenRefused("not three base64url segments")
    header = _json_object(_segment(match[1], "header"), "header")
    if header.get("alg") != "RS256":
        raise TokenRefused("the alg is not RS256")
    if not _UNSUPPORTED_HEADERS.isdisjoint(header):
        raise TokenRefused("an unsupported crit or b64 header")
    if "kid" in header and not isinstance(header["kid"], str):
        raise TokenRefused("kid is not a string")
    claims = _json_object(_segment(match[2], "payload"), "payload")
    if "aud" in claims:
        raise TokenRefused("an aud claim, which nothing here could match")
    for name in ("sub", "jti"):
        if name in claims and not isinstance(claims[name], str):
            raise TokenRefused(f"{name} is not a string")
    signed = token[: match.end(2)].encode("ascii")
    return ReadToken(claims, signed, _segment(match[3], "signature"))


def _segment(segment: str, name: str) -> bytes:
    """A base64url segment's bytes; only the canonical encoding of them is accepted (the
    unused bits of the last character zero), so no two token texts carry one signature."""
    try:
        data = base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))
    except binascii.Error as exc:
        raise TokenRefused(f"the {name} is not base64url") from exc
    if base64.urlsafe_b64encode(data).rstrip(b"=") != segment.encode("ascii"):
        raise TokenRefused(f"the {name} is not in canonical base64url")
    return data


def _json_object(data: bytes, name: str) -> dict[str, Any]:
    try:
        value = msgspec.json.decode(data)
    except (msgspec.DecodeError, UnicodeDecodeError) as exc:  # not UTF-8: msgspec's own error
        raise TokenRefused(f"the {name} is not JSON") from exc
    if not isinstance(value, dict):
        raise TokenRefused(f"the {name} is not a JSON object")
    return value


class _ClaimsRefused(Exception):
    """Verified claims that do not hold; the message is the reason to log (fixed text)."""


def _check_claims(claims: dict[str, Any], application_id: str, now: float) -> float:
    """The time until which these verified claims may be trusted; _ClaimsRefused if never."""
    iat = claims.get("iat")
    exp = claims.get("exp")
    if not isinstance(iat, int | float) or isinstance(iat, bool):
        raise _ClaimsRefused("iat is not a number")
    if claims.get("application_id") != application_id:
        raise _ClaimsRefused("application_id changed between reads")
    if iat > now + CLOCK_SKEW:
        raise _ClaimsRefused("iat is in the future")
    if not isinstance(claims.get("jti"), str) or not claims["jti"]:
        raise _ClaimsRefused("jti is empty")
    nbf = claims.get("nbf")
    if nbf is not None:
        if not isinstance(nbf, int | float) or isinstance(nbf, bool):
            raise _ClaimsRefused("nbf is not a number")
        if nbf > now + CLOCK_SKEW:
            raise _ClaimsRefused("token not yet valid (nbf)")
    if exp is not None:
        if not isinstance(exp, int | float) or isinstance(exp, bool):
            raise _ClaimsRefused("exp is not a number")
        if exp <= now - CLOCK_SKEW:
            raise _ClaimsRefused("token expired")
    if exp is None:
        if now - iat > MAX_TOKEN_LIFETIME:
            raise _ClaimsRefused("a token without exp older than 24 h")
        return min(now + UNBOUNDED_TOKEN_CACHE_SECONDS, iat + MAX_TOKEN_LIFETIME)
    if exp - iat > MAX_TOKEN_LIFETIME:
        raise _ClaimsRefused("token lifetime over 24 h")
    return float(exp)
