"""Bundle signatures exactly as ``opa sign`` writes them and ``opa run`` checks them.

A signed bundle carries ``/.signatures.json``: ``{"signatures": [JWT]}``
whose payload lists every other file of the bundle with a digest
(``cmd/sign.go``, ``v1/bundle/sign.go``, ``hash.go``, ``verify.go``,
``keys.go``):

- the payload is Go's ``json.Marshal`` of ``{"files": [{"name", "hash",
  "algorithm"}...]}``, files in bundle order, names without the leading
  ``/``; the JWS header is ``{"alg": ...}`` only (``opa sign`` sets no key id);
- a structured file (base name ``data.json``, ``data.yaml``,
  ``signatures.json`` or ``.manifest``) is hashed as its parsed JSON: ``{``,
  each key in sorted order as JSON, ``:``, the value's digest input, ``,``
  between items, ``}``; arrays likewise with ``[`` ``]``; a scalar as Go's JSON
  encoder writes it (numbers exactly as written, no HTML escaping); any other
  file is hashed as its bytes; SHA-256 unless the payload names another;
- the signing key is PEM text, a file holding it, or (HMAC) the secret
  itself; verification takes a PEM public key, certificate or private key,
  or (HMAC) the secret; a bundle verifies when its one JWT verifies with the
  configured algorithm, its ``scope`` is the configured one, every file is
  listed with a matching digest and every listed file is present.

Needs PyJWT and cryptography: ``pip install 'chio-budget-guard[signing]'``.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Any, Mapping

from .errors import ChioBudgetError

SIGNATURES = ".signatures.json"
ALGORITHMS = ("RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512",
              "HS256", "HS384", "HS512")
_HASHES = {"MD5": "md5", "SHA-1": "sha1", "SHA-224": "sha224", "SHA-256": "sha256", "SHA-384": "sha384",
           "SHA-512": "sha512", "SHA-512-224": "sha512_224", "SHA-512-256": "sha512_256"}
_STRUCTURED = {"data.json", "data.yaml", "signatures.json", ".manifest"}
_EXTRA = "pip install 'chio-budget-guard[signing]'"


class BundleSignatureError(ChioBudgetError):
    """A bundle cannot be signed, or its signature does not verify."""


class RawNumber(str):
    """A JSON number kept as written (Go's ``json.Number``)."""


def _jwt():
    try:
        import jwt  # noqa: F401
        from cryptography.hazmat.primitives import serialization  # noqa: F401
    except ImportError:
        raise BundleSignatureError(f"bundle signing needs PyJWT and cryptography: {_EXTRA}") from None
    return jwt


def go_json(value: Any) -> str:
    """Go's ``encoding/json`` text of a scalar or string (HTML escaping is the caller's choice)."""
    if isinstance(value, RawNumber):
        return str(value)
    text = json.dumps(value, ensure_ascii=False, separators=(",", ":"))
    return text.replace("\u2028", "\\u2028").replace("\u2029", "\\u2029")


def _walk(value: Any, h) -> None:
    """``hash.go``'s ``walk``: the digest input of a parsed structured document."""
    if isinstance(value, dict):
        h.update(b"{")
        for i, key in enumerate(sorted(value)):
            if i:
                h.update(b",")
            h.update(go_json(key).encode())
            h.update(b":")
            _walk(value[key], h)
        h.update(b"}")
    elif isinstance(value, list):
        h.update(b"[")
        for i, item in enumerate(value):
            if i:
                h.update(b",")
            _walk(item, h)
        h.update(b"]")
    elif isinstance(value, (bytes, bytearray)):
        h.update(value)
    else:
        h.update(go_json(value).encode())


def is_structured(name: str) -> bool:
    return os.path.basename(name) in _STRUCTURED


def _parse(name: str, data: bytes) -> Any:
    try:
        return json.loads(data, parse_int=RawNumber, parse_float=RawNumber)
    except ValueError:
        import yaml  # util.Unmarshal falls back to YAML

        try:
            return yaml.safe_load(data)
        except yaml.YAMLError as exc:
            raise BundleSignatureError(f"{name}: {exc}") from None


def file_digest(name: str, data: bytes, algorithm: str = "SHA-256") -> str:
    """The hex digest OPA records for a bundle file."""
    if algorithm not in _HASHES:
        raise BundleSignatureError(f"unsupported hashing algorithm: {algorithm}")
    h = hashlib.new(_HASHES[algorithm])
    _walk(_parse(name, data) if is_structured(name) else data, h)
    return h.hexdigest()


def signed_files(files: Mapping[str, bytes]) -> list[dict[str, str]]:
    """``readBundleFiles``: every file but the signatures, in bundle order."""
    return [{"name": name.lstrip("/"), "hash": file_digest(name, data), "algorithm": "SHA-256"}
            for name, data in files.items() if not name.endswith("signatures.json")]


def _payload(infos: list[dict[str, str]]) -> bytes:
    items = ",".join("{" + ",".join(f'"{k}":{_html_safe(go_json(f[k]))}' for k in ("name", "hash", "algorithm"))
                     + "}" for f in infos)
    return ('{"files":[' + items + "]}").encode()


def _html_safe(text: str) -> str:
    return text.replace("<", "\\u003c").replace(">", "\\u003e").replace("&", "\\u0026")


def key_material(key: str) -> str:
    """``SigningConfig.GetPrivateKey``: PEM text, else a file's content, else the text itself."""
    if key.startswith("-----BEGIN"):
        return key
    if os.path.exists(key):
        with open(key, encoding="utf-8") as f:
            return f.read()
    return key


def _pem_type(text: str) -> str | None:
    for line in text.splitlines():
        if line.startswith("-----BEGIN ") and line.rstrip().endswith("-----"):
            return line.rstrip()[len("-----BEGIN "):-len("-----")]
    return None


def _private_key(text: str, alg: str):
    from cryptography.hazmat.primitives import serialization

    if alg.startswith("HS"):
        return text.encode()
    kind = _pem_type(text)
    if kind is None:
        raise BundleSignatureError("failed to parse PEM block containing the key")
    if kind not in ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"):
        raise BundleSignatureError(f"unsupported key type: {kind}")
    try:
        return serialization.load_pem_private_key(text.encode(), password=None)
    except (ValueError, TypeError) as exc:
        raise BundleSignatureError(f"cannot read the {kind}: {exc}") from None


def sign(files: Mapping[str, bytes], key: str, alg: str = "RS256") -> bytes:
    """The ``.signatures.json`` bytes ``opa sign --bundle`` writes for these files."""
    jwt = _jwt()
    if alg not in ALGORITHMS:
        raise BundleSignatureError(f"unknown signature algorithm: {alg}")
    private = _private_key(key_material(key), alg)
    try:
        token = jwt.api_jws.PyJWS().encode(_payload(signed_files(files)), private, algorithm=alg,
                                           headers={"typ": None})
    except (jwt.exceptions.PyJWTError, ValueError, TypeError) as exc:
        raise BundleSignatureError(f"cannot sign with {alg}: {exc}") from None
    return ('{\n "signatures": [\n  ' + json.dumps(token) + "\n ]\n}").encode()


def _public_key(text: str, alg: str):
    """``parseVerificationKey``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    if alg.startswith("HS"):
        return text.encode()
    kind = _pem_type(text)
    if kind is None:
        return text.encode()
    data = text.encode()
    try:
        if kind in ("RSA PUBLIC KEY", "PUBLIC KEY"):
            return serialization.load_pem_public_key(data)
        if kind in ("RSA PRIVATE KEY", "PRIVATE KEY", "EC PRIVATE KEY"):
            return serialization.load_pem_private_key(data, password=None).public_key()
        if kind == "CERTIFICATE":
            return x509.load_pem_x509_certificate(data).public_key()
    except (ValueError, TypeError) as exc:
        raise BundleSignatureError(f"cannot read the {kind}: {exc}") from None
    raise BundleSignatureError(f"unsupported PEM block type: {kind}")


def _token(signatures: bytes) -> str:
    try:
        doc = json.loads(signatures)
    except ValueError as exc:
        raise BundleSignatureError(f"{SIGNATURES}: {exc}") from None
    tokens = doc.get("signatures") if isinstance(doc, dict) else None
    if not tokens:
        raise BundleSignatureError(f"{SIGNATURES}: missing JWT (expected exactly one)")
    if len(tokens) > 1:
        raise BundleSignatureError(f"{SIGNATURES}: multiple JWTs not supported (expected exactly one)")
    return tokens[0]


def verify(files: Mapping[str, bytes], key: str, alg: str = "RS256", scope: str = "") -> list[dict[str, str]]:
    """Check a bundle's signature as ``opa run --verification-key`` does; the signed files, or raise."""
    jwt = _jwt()
    if SIGNATURES not in files and "/" + SIGNATURES not in files:
        raise BundleSignatureError("bundle missing .signatures.json file")
    token = _token(files.get(SIGNATURES) or files["/" + SIGNATURES])
    try:
        payload = jwt.api_jws.PyJWS().decode(token, _public_key(key_material(key), alg), algorithms=[alg])
    except jwt.exceptions.PyJWTError as exc:
        raise BundleSignatureError(f"could not verify the JWT with {alg}: {exc}") from None
    claims = json.loads(payload)
    if claims.get("scope", "") != scope:
        raise BundleSignatureError("scope mismatch")
    listed = {f["name"]: f for f in claims.get("files") or []}
    for name, data in files.items():
        if name.endswith("signatures.json"):
            continue
        path = name.lstrip("/")
        info = listed.pop(path, None)
        if info is None:
            raise BundleSignatureError(f"file {path} not included in bundle signature")
        if not info.get("algorithm"):
            raise BundleSignatureError(f"no hashing algorithm provided for file {path}")
        got = file_digest(path, data, info["algorithm"])
        if got != str(info.get("hash", "")).lower():
            raise BundleSignatureError(f"{path}: digest mismatch (want: {info.get('hash')}, got: {got})")
    if listed:
        raise BundleSignatureError(
            f"file(s) [{' '.join(listed)}] specified in bundle signatures but not found in the target bundle")
    return list(claims.get("files") or [])
