"""Which addresses webhooks may reach.

A webhook's URL is the tenant's to choose (an application's, an account's, a v1 message's
``webhook_url``), and the sender POSTs to it from inside the operator's network: without a
rule, a tenant could make Cascade knock on its loopback services, the private network or a
cloud's metadata address, and read from the timeline whether each answered (server-side
request forgery). Where tenants are not the operator's own, ``CASCADE_WEBHOOK_ALLOW_PRIVATE``
false keeps webhooks to public addresses, with ``CASCADE_WEBHOOK_ALLOWED_NETWORKS`` naming the
private ones that are the operator's receivers. It is not the default: a self-hosted
service's receivers are most often on the operator's own private network (and the README's
first failover has its receiver on 127.0.0.1).

The rule is applied to the address a connection is made to, after the name is resolved, so a
name that resolves to a public address when the URL is checked and to a private one at
delivery (DNS rebinding) is refused all the same.
"""

from __future__ import annotations

from dataclasses import dataclass
from ipaddress import IPv4Address, IPv4Network, IPv6Address, IPv6Network, ip_address, ip_network
from urllib.parse import urlsplit

IpAddress = IPv4Address | IPv6Address
IpNetwork = IPv4Network | IPv6Network

#: the well-known NAT64 prefix (RFC 6052): its addresses stand for the IPv4 address in their
#: last 32 bits
_NAT64 = IPv6Network("64:ff9b::/96")
_WHY = (
    "CASCADE_WEBHOOK_ALLOW_PRIVATE is false and CASCADE_WEBHOOK_ALLOWED_NETWORKS does not name it"
)


def parse_networks(text: str) -> tuple[IpNetwork, ...]:
    """Comma-separated networks (``10.1.2.0/24``) or addresses; ValueError names a bad one."""
    networks: list[IpNetwork] = []
    for item in text.split(","):
        item = item.strip()
        if not item:
            continue
        try:
            networks.append(ip_network(item, strict=False))
        except ValueError as exc:
            raise ValueError(f"{item!r} is not an IP network or address: {exc}") from exc
    return tuple(networks)


@dataclass(frozen=True, slots=True)
class AddressRule:
    """Where webhooks may connect: anywhere (the default), or public addresses and the
    networks named."""

    allow_private: bool = True
    #: networks reachable even when private addresses are not
    allowed_networks: tuple[IpNetwork, ...] = ()

    @property
    def restricts(self) -> bool:
        """Whether any address is refused (else addresses need not be checked)."""
        return not self.allow_private

    def admits(self, address: IpAddress) -> bool:
        """Whether a webhook may connect to ``address``."""
        if self.allow_private:
            return True
        if isinstance(address, IPv6Address):
            # ::ffff:127.0.0.1 and 64:ff9b::7f00:1 both reach 127.0.0.1
            if address.ipv4_mapped is not None:
                address = address.ipv4_mapped
            elif address in _NAT64:
                address = IPv4Address(int(address) & 0xFFFFFFFF)
        if any(address in network for network in self.allowed_networks):
            return True
        return address.is_global and not address.is_multicast

    def refusal(self, host: str) -> str:
        """Why no connection is made to ``host``, none of whose addresses is admitted. The
        addresses a name resolves to are not told: the record is the tenant's to read, and
        they may be the private network's."""
        try:
            ip_address(host)
        except ValueError:
            return f"{host} resolves to no public address ({_WHY})"
        return f"{host} is not a public address ({_WHY})"

    def url_refusal(self, url: str) -> str | None:
        """Why webhooks to ``url`` would be refused, when its host tells by itself: an address
        the rule does not admit, or ``localhost`` (which always means this machine). Other
        names are resolved only when a webhook goes out, and what they resolve to then is
        what counts, so None promises nothing for them."""
        if self.allow_private:
            return None
        try:
            host = urlsplit(url).hostname
        except ValueError:
            return None  # not a URL: the caller's own checks say so
        if not host:
            return None
        if host == "localhost" or host.endswith(".localhost"):
            loopback: tuple[IpAddress, ...] = (IPv4Address("127.0.0.1"), IPv6Address("::1"))
            return None if any(self.admits(a) for a in loopback) else self.refusal(host)
        try:
            address = ip_address(host)
        except ValueError:
            return None
        return None if self.admits(address) else self.refusal(host)


#: the rule by default: every address may be reached
ANYWHERE = AddressRule()
