"""How a certificate names its holder's role: a URI subject alternative name,
as SPIFFE ids name a workload. The CA that signs members may also sign
operators; a certificate with neither URI is a client's."""

from __future__ import annotations

MEMBER_ROLE_URI = "urn:ringkv:role:member"
OPERATOR_ROLE_URI = "urn:ringkv:role:operator"
