"""What changing an account or its applications means, once for every front end: the
``cascade`` command and the dashboard both call these, so a rule (what a webhook URL may be,
how a key pair or a secret is made) lives in one place.
"""

from __future__ import annotations

import secrets
import uuid
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from cascade.api.auth import hash_secret
from cascade.domain.records import Account, Application, WebhookVersion
from cascade.reach import ANYWHERE, AddressRule
from cascade.store.base import Tenants


def webhook_url(url: str, reach: AddressRule = ANYWHERE) -> str | None:
    """A webhook URL as stored: '' clears it (None); anything but an http(s) URL is a
    ValueError, and so is one whose host ``reach`` refuses by itself (an address, localhost)."""
    if url == "":
        return None
    if not url.startswith(("http://", "https://")):
        raise ValueError(f"{url!r} is not an http(s) URL")
    refusal = reach.url_refusal(url)
    if refusal is not None:
        raise ValueError(f"webhooks cannot go there: {refusal}")
    return url


@dataclass(frozen=True, slots=True)
class KeyPair:
    """A new application key: the private key (PKCS#8 PEM, handed to its owner once and kept
    nowhere) and the public key the application stores."""

    private_pem: bytes
    public_pem: str


def generate_key_pair() -> KeyPair:
    """A new 2048-bit RSA key pair (JWTs are RS256)."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    private = key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    public = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    return KeyPair(private, public)


def public_key_pem(data: bytes) -> str:
    """The public key in ``data`` (PEM) as stored; ValueError when it is not an RSA public
    key in PEM."""
    try:
        loaded = serialization.load_pem_public_key(data)
    except (ValueError, TypeError) as exc:
        raise ValueError(f"not a PEM public key: {exc}") from exc
    if not isinstance(loaded, rsa.RSAPublicKey):
        raise ValueError("the public key must be an RSA key (JWTs are RS256)")
    return loaded.public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    ).decode()


def new_application(
    account_id: str,
    name: str,
    public_pem: str,
    *,
    status_url: str | None,
    inbound_url: str | None,
    webhook_version: WebhookVersion | None,
    now: float,
) -> Application:
    """A new application of the account (not yet stored)."""
    return Application(
        id=str(uuid.uuid4()),
        account_id=account_id,
        name=name,
        public_key_pem=public_pem,
        status_url=status_url,
        inbound_url=inbound_url,
        created_at=now,
        webhook_version=(webhook_version or WebhookVersion.V0_1).value,
    )


async def own_application(
    store: Tenants, account_id: str, application_id: str
) -> Application | None:
    """The account's application of this id; None when it has none (another account's
    application of that id reads as none)."""
    application = await store.get_application(application_id)
    if application is None or application.account_id != account_id:
        return None
    return application


async def rotate_signature_secret(store: Tenants, account_id: str) -> Account:
    """Give the account a new secret to sign its webhooks with."""
    return await store.update_account(account_id, signature_secret=secrets.token_urlsafe(32))


async def rotate_api_secret(store: Tenants, account_id: str) -> tuple[Account, str]:
    """Give the account a new API secret; returns it with the secret, which is stored nowhere
    (only its digest) and so can be shown only this once."""
    api_secret = secrets.token_urlsafe(24)
    account = await store.update_account(account_id, api_secret_sha256=hash_secret(api_secret))
    return account, api_secret


#: the credentials of a linked channel that are secrets (masked when listed, prompted for
#: without echo); the others (ids, the Viber sender's name and avatar) are shown in full
SECRET_CREDENTIALS = frozenset(
    {"page_access_token", "app_secret", "access_token", "auth_token", "verify_token"}
)


def masked_credential(name: str, value: str) -> str:
    """A linked channel's credential as a listing shows it: a secret's first 4 characters
    (none of a short one) and "…"; anything else in full."""
    if name not in SECRET_CREDENTIALS:
        return value
    return value[:4] + "…" if len(value) >= 16 else "…"
