"""Public JSON Web Keys: parsing into key objects, publishing, RFC 7638 thumbprints."""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Mapping
from dataclasses import dataclass

from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

PublicKey = Ed25519PublicKey | ec.EllipticCurvePublicKey | rsa.RSAPublicKey

MIN_RSA_BITS = 2048

# The algorithm allowlist, by key type. A key only ever verifies the algorithms of its own
# type, which is what rules out algorithm confusion (an RSA key used as an HMAC secret, an
# EC key checked as RSA). `none` and HS* appear nowhere.
ALGORITHMS_BY_KTY: Mapping[str, frozenset[str]] = {
    "OKP": frozenset({"EdDSA"}),
    "EC": frozenset({"ES256"}),
    "RSA": frozenset({"RS256", "PS256"}),
}
ALLOWED_ALGORITHMS: frozenset[str] = frozenset().union(*ALGORITHMS_BY_KTY.values())

# Members that only a private JWK has; a trust store containing them is a misconfiguration.
_PRIVATE_MEMBERS = frozenset({"d", "p", "q", "dp", "dq", "qi", "oth", "k"})


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """A trusted public key and the algorithms it may verify."""

    kid: str | None
    key: PublicKey
    algorithms: frozenset[str]


def b64url_encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64url_decode(text: str) -> bytes:
    """Strict unpadded base64url (RFC 7515 section 2); ValueError on anything else."""
    if "=" in text or not text.isascii():
        raise ValueError("not unpadded base64url")
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError) as exc:
        raise ValueError("not base64url") from exc


def _uint(jwk: Mapping[str, object], member: str) -> int:
    return int.from_bytes(_member_bytes(jwk, member), "big")


def _member_bytes(jwk: Mapping[str, object], member: str) -> bytes:
    value = jwk.get(member)
    if not isinstance(value, str) or not value:
        raise ValueError(f"JWK member {member!r} is missing")
    return b64url_decode(value)


def key_from_jwk(jwk: Mapping[str, object]) -> VerificationKey:
    """Turn one public JWK into a VerificationKey; ValueError if it is unusable.

    Refused: private keys, keys not meant for signatures (`use`/`key_ops`), curves and key
    types outside the allowlist, RSA keys under 2048 bits, and an `alg` member naming an
    algorithm that does not belong to the key's type.
    """
    kty = jwk.get("kty")
    if not isinstance(kty, str) or kty not in ALGORITHMS_BY_KTY:
        raise ValueError(f"unsupported key type {kty!r}")
    if _PRIVATE_MEMBERS & jwk.keys():
        raise ValueError("JWK contains private key material")
    use = jwk.get("use")
    if use is not None and use != "sig":
        raise ValueError("JWK is not a signature key")
    key_ops = jwk.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise ValueError("JWK may not verify")
    kid = jwk.get("kid")
    if kid is not None and not isinstance(kid, str):
        raise ValueError("JWK kid must be a string")

    key: PublicKey
    crv = jwk.get("crv")
    if kty == "OKP":
        if crv != "Ed25519":
            raise ValueError(f"unsupported OKP curve {crv!r}")
        key = Ed25519PublicKey.from_public_bytes(_member_bytes(jwk, "x"))
    elif kty == "EC":
        if crv != "P-256":
            raise ValueError(f"unsupported EC curve {crv!r}")
        x, y = _member_bytes(jwk, "x"), _member_bytes(jwk, "y")
        if len(x) != 32 or len(y) != 32:
            raise ValueError("P-256 coordinates must be 32 bytes")
        # public_key() checks that the point is on the curve (invalid-curve attacks).
        key = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ec.SECP256R1()
        ).public_key()
    else:
        key = rsa.RSAPublicNumbers(_uint(jwk, "e"), _uint(jwk, "n")).public_key()
        if key.key_size < MIN_RSA_BITS:
            raise ValueError("RSA key is shorter than 2048 bits")

    algorithms = ALGORITHMS_BY_KTY[kty]
    alg = jwk.get("alg")
    if alg is not None:
        if not isinstance(alg, str) or alg not in algorithms:
            raise ValueError(f"JWK alg {alg!r} does not fit key type {kty}")
        algorithms = frozenset({alg})
    return VerificationKey(kid=kid, key=key, algorithms=algorithms)


def public_jwk(key: PublicKey) -> dict[str, str]:
    """The required public members of `key` (no kid/alg/use), as RFC 7638 lists them."""
    if isinstance(key, Ed25519PublicKey):
        raw = key.public_bytes(Encoding.Raw, PublicFormat.Raw)
        return {"crv": "Ed25519", "kty": "OKP", "x": b64url_encode(raw)}
    if isinstance(key, ec.EllipticCurvePublicKey):
        if not isinstance(key.curve, ec.SECP256R1):
            raise ValueError("only P-256 EC keys are supported")
        numbers = key.public_numbers()
        return {
            "crv": "P-256",
            "kty": "EC",
            "x": b64url_encode(numbers.x.to_bytes(32, "big")),
            "y": b64url_encode(numbers.y.to_bytes(32, "big")),
        }
    rsa_numbers = key.public_numbers()
    return {
        "e": b64url_encode(_int_bytes(rsa_numbers.e)),
        "kty": "RSA",
        "n": b64url_encode(_int_bytes(rsa_numbers.n)),
    }


def _int_bytes(value: int) -> bytes:
    return value.to_bytes(max(1, (value.bit_length() + 7) // 8), "big")


def jwk_thumbprint(key: PublicKey) -> str:
    """RFC 7638 SHA-256 thumbprint, base64url: required members, sorted, no whitespace."""
    canonical = json.dumps(public_jwk(key), sort_keys=True, separators=(",", ":"))
    return b64url_encode(hashlib.sha256(canonical.encode("utf-8")).digest())
