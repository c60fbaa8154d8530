"""Bundle signatures as ``opa sign`` writes them, checked by an independent implementation.

The checks here do not use ``bundle_sign``'s hashing or PyJWT: they hash
each file the way OPA's ``hash.go`` documents it (a structured file as its
compact, key-sorted JSON with numbers as written; anything else as bytes)
and verify the JWS with ``cryptography`` or ``hmac`` directly.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from chio_budget.bundle_sign import BundleSignatureError, file_digest, sign, verify

U64_MAX = 2**64 - 1
FILES = {
    ".manifest": b'{"revision":"sha256:abc","rego_version":1,"roots":["chio/budget"]}\n',
    "chio/budget/data.json": json.dumps({"policies": {"default": {"max_total": U64_MAX, "currency": "USD",
                                                                  "note": "a<b & \u00e9"}}}).encode(),
    "chio/budget/decision.rego": b"package chio.budget\n\ndecision := {}\n",
}


@pytest.fixture(scope="module")
def rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


@pytest.fixture(scope="module")
def ec_key():
    return ec.generate_private_key(ec.SECP256R1())


def pem(key) -> str:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption()).decode()


def public_pem(key) -> str:
    return key.public_key().public_bytes(serialization.Encoding.PEM,
                                         serialization.PublicFormat.SubjectPublicKeyInfo).decode()


def b64d(part: str) -> bytes:
    return base64.urlsafe_b64decode(part + "=" * (-len(part) % 4))


def independent_digest(name: str, data: bytes) -> str:
    """OPA's documented digest: structured files as compact sorted JSON, others as bytes."""
    if name.rsplit("/", 1)[-1] in ("data.json", ".manifest"):
        data = json.dumps(json.loads(data), sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()
    return hashlib.sha256(data).hexdigest()


def split(signatures: bytes) -> tuple[bytes, dict, bytes, bytes]:
    token = json.loads(signatures)["signatures"][0]
    header, payload, sig = token.split(".")
    return b64d(header), json.loads(b64d(payload)), f"{header}.{payload}".encode(), b64d(sig)


def check_files(payload: dict) -> None:
    assert [f["name"] for f in payload["files"]] == list(FILES)  # every file, in bundle order
    for f in payload["files"]:
        assert f == {"name": f["name"], "hash": independent_digest(f["name"], FILES[f["name"]]),
                     "algorithm": "SHA-256"}


def test_rs256_signature_is_what_opa_sign_writes(rsa_key, tmp_path):
    key_file = tmp_path / "key.pem"
    key_file.write_text(pem(rsa_key))
    out = sign(FILES, str(key_file), "RS256")
    assert out.startswith(b'{\n "signatures": [\n  "') and out.endswith(b'"\n ]\n}')  # MarshalIndent, one space
    header, payload, signed, sig = split(out)
    assert header == b'{"alg":"RS256"}'  # opa sign sets no key id
    assert set(payload) == {"files"}
    check_files(payload)
    rsa_key.public_key().verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
    # the payload is Go's json.Marshal of {"files": [...]}: field order name, hash, algorithm
    assert b64d(json.loads(out)["signatures"][0].split(".")[1]).startswith(b'{"files":[{"name":".manifest","hash":"')


def test_es256_signature_is_raw_r_s(ec_key):
    header, payload, signed, sig = split(sign(FILES, pem(ec_key), "ES256"))
    assert header == b'{"alg":"ES256"}' and len(sig) == 64
    check_files(payload)
    r, s = int.from_bytes(sig[:32], "big"), int.from_bytes(sig[32:], "big")
    ec_key.public_key().verify(encode_dss_signature(r, s), signed, ec.ECDSA(hashes.SHA256()))


def test_hs256_signature_uses_the_secret_itself():
    header, payload, signed, sig = split(sign(FILES, "s3cret-for-tests-only-32-bytes!!", "HS256"))
    assert header == b'{"alg":"HS256"}'
    check_files(payload)
    assert hmac.compare_digest(sig, hmac.new(b"s3cret-for-tests-only-32-bytes!!", signed, hashlib.sha256).digest())


def test_structured_files_hash_numbers_as_written_and_without_html_escapes():
    assert file_digest("data.json", b'{"b": 1.50, "a": ["<&>", 1e3]}') == \
        hashlib.sha256(b'{"a":["<&>",1e3],"b":1.50}').hexdigest()
    assert file_digest("x.rego", b"raw bytes\n") == hashlib.sha256(b"raw bytes\n").hexdigest()


def test_verify_accepts_the_signed_bundle_and_refuses_every_change(rsa_key):
    signed = {**FILES, ".signatures.json": sign(FILES, pem(rsa_key), "RS256")}
    assert [f["name"] for f in verify(signed, public_pem(rsa_key), "RS256")] == list(FILES)
    tampered = {**signed, "chio/budget/decision.rego": b"package chio.budget\n\ndecision := 1\n"}
    with pytest.raises(BundleSignatureError, match="chio/budget/decision.rego: digest mismatch"):
        verify(tampered, public_pem(rsa_key))
    with pytest.raises(BundleSignatureError, match="file extra.rego not included in bundle signature"):
        verify({**signed, "extra.rego": b"package chio.budget.x\n"}, public_pem(rsa_key))
    missing = {k: v for k, v in signed.items() if k != ".manifest"}
    with pytest.raises(BundleSignatureError, match=r"file\(s\) \[\.manifest\] specified in bundle signatures"):
        verify(missing, public_pem(rsa_key))
    other = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    with pytest.raises(BundleSignatureError, match="could not verify"):
        verify(signed, public_pem(other))
    with pytest.raises(BundleSignatureError, match="bundle missing .signatures.json file"):
        verify(FILES, public_pem(rsa_key))


def test_key_errors_are_opas():
    with pytest.raises(BundleSignatureError, match="failed to parse PEM block containing the key"):
        sign(FILES, "not a pem and not a file", "RS256")
    with pytest.raises(BundleSignatureError, match="unknown signature algorithm: XS1"):
        sign(FILES, "k", "XS1")


# -- chio-budget bundle --signing-key / --verify -----------------------------------------------------

def _cli(*args):
    from typer.testing import CliRunner

    from chio_budget.cli import app

    return CliRunner().invoke(app, ["bundle", *[str(a) for a in args]])


def _tar_files(path) -> dict[str, bytes]:
    import gzip
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(path.read_bytes()))) as tar:
        return {m.name.lstrip("/"): tar.extractfile(m).read() for m in tar.getmembers()}


def test_cli_signs_the_bundle_it_writes(rsa_key, tmp_path):
    from support.guards import REGO_DIR, ROOT

    key = tmp_path / "key.pem"
    key.write_text(pem(rsa_key))
    out = tmp_path / "b.tar.gz"
    r = _cli(ROOT / "policies", REGO_DIR, "-o", out, "--signing-key", key, "--signing-alg", "RS256")
    assert r.exit_code == 0, r.output
    files = _tar_files(out)
    assert json.loads(files[".manifest"])["rego_version"] == 1
    header, payload, signed, sig = split(files[".signatures.json"])
    rsa_key.public_key().verify(sig, signed, padding.PKCS1v15(), hashes.SHA256())
    unsigned = {k: v for k, v in files.items() if k != ".signatures.json"}
    assert [f["name"] for f in payload["files"]] == list(unsigned)
    assert all(f["hash"] == independent_digest(f["name"], unsigned[f["name"]]) for f in payload["files"])
    pub = tmp_path / "pub.pem"
    pub.write_text(public_pem(rsa_key))
    ok = _cli("--verify", "-o", out, "--verification-key", pub)
    assert ok.exit_code == 0 and f"verified {out}: {len(unsigned)} file(s) signed with RS256" in ok.output


def test_cli_verify_refuses_a_changed_bundle_and_bad_input(rsa_key, tmp_path):
    from chio_budget.bundle import pack

    key, pub = tmp_path / "key.pem", tmp_path / "pub.pem"
    key.write_text(pem(rsa_key))
    pub.write_text(public_pem(rsa_key))
    signed = {**FILES, ".signatures.json": sign(FILES, str(key))}
    out = tmp_path / "b.tar.gz"
    out.write_bytes(pack({**signed, "chio/budget/decision.rego": b"package chio.budget\n"}))
    r = _cli("--verify", "-o", out, "--verification-key", pub)
    assert r.exit_code == 1 and "chio/budget/decision.rego: digest mismatch" in r.output
    assert _cli("--verify", "-o", out).exit_code == 2
    assert _cli("--verify", "-o", tmp_path / "none.tar.gz", "--verification-key", pub).exit_code == 2
    assert _cli("-o", out, "--signing-key", key, "--signing-alg", "XX1").exit_code == 2


def test_real_opa_loads_the_signed_bundle_with_its_key(opa_bin, rsa_key, tmp_path):
    """With a real ``opa``: ``opa run --verification-key`` accepts the bundle, and ``--v0-compatible`` too."""
    if not opa_bin:
        pytest.skip("no opa binary (OPA_BIN unset, none on PATH): verified above by an independent implementation")
    from chio_budget.bundle import write_bundle
    from support.guards import REGO_DIR, ROOT
    from support.opa import start_opa

    key, pub, out = tmp_path / "key.pem", tmp_path / "pub.pem", tmp_path / "b.tar.gz"
    key.write_text(pem(rsa_key))
    pub.write_text(public_pem(rsa_key))
    contents = write_bundle(ROOT / "policies", REGO_DIR, out, signing_key=str(key))
    for args in (("--verification-key", str(pub)), ("--v0-compatible",)):
        server = start_opa(out, args=args)
        try:
            import requests

            got = requests.get(f"{server.url}/v1/data/chio/budget/policies", timeout=5).json()["result"]
            assert {p: v["revision"] for p, v in got.items()} == dict(contents.compiled.revisions)
        finally:
            server.close()
