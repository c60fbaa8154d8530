"""OPA bundles: the ``.tar.gz`` that ``opa run --server --bundle`` loads.

``write_bundle`` compiles the YAML policies, collects the Rego modules
(``*_test.rego`` left out) and writes a bundle: a ``.manifest`` whose
``revision`` is the compiled data's revision (``Compiled.revision``), whose
``roots`` are ``["chio/budget"]`` and whose ``rego_version`` is 1 (so an OPA
started with ``--v0-compatible`` still parses the modules as Rego v1),
``chio/budget/data.json`` holding ``{"policies": ...}``, every module, and,
with a signing key, ``.signatures.json`` exactly as ``opa sign`` writes it
(``bundle_sign``). The bytes are a pure function of
the inputs (sorted entries, zero mtimes, no owner names, gzip without a
timestamp), so two builds of the same sources compare equal with ``cmp``
and the bundle can be cached or signed by content.

Files only: no network I/O here. Pushing the same contents to a running OPA
is ``engines.opa_http.push``.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compiler import DATA_ROOT, Compiled, canonical_json, compile_all
from .errors import EngineError
from .currencies import DEFAULT_CURRENCIES, CurrencyRegistry
from .policy import load_policies
from .rego_files import rego_modules

ROOT = "/".join(DATA_ROOT)  # "chio/budget": the one root this bundle owns
DATA_PATH = f"{ROOT}/data.json"

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)


@dataclass(frozen=True)
class BundleContents:
    """What a bundle holds, before it is written."""

    compiled: Compiled
    modules: dict[str, str]  # bundle path -> Rego source

    @property
    def roots(self) -> list[str]:
        return [ROOT]

    @property
    def revision(self) -> str:
        return self.compiled.revision

    @property
    def data(self) -> dict[str, Any]:
        """The value of ``data.chio.budget``: ``{"policies": {...}}``."""
        return self.compiled.budget

    @property
    def manifest(self) -> dict[str, Any]:
        return {"revision": self.revision, "rego_version": 1, "roots": list(self.roots)}


def _check_package(path: str, source: str) -> None:
    """Refuse a module outside the bundle's root: real OPA would reject the whole bundle."""
    m = _PACKAGE.search(source)
    if m is None:
        raise EngineError(f"{path}:1: package: no package declaration")
    package = m.group(1).split(".")
    if package[: len(DATA_ROOT)] != list(DATA_ROOT):
        line = source[: m.start(1)].count("\n") + 1
        raise EngineError(
            f"{path}:{line}: package: {m.group(1)} is outside the bundle root {ROOT!r} "
            f"(modules must be in package {'.'.join(DATA_ROOT)} or below it)")


def bundle_contents(policies_dir: str | Path, rego_dir: str | Path | None = None, *,
                    currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> BundleContents:
    """Compile the YAML policies and collect the Rego modules (``PolicyError``/``EngineError``)."""
    compiled = compile_all(load_policies(policies_dir, currencies=currencies))
    modules = rego_modules(rego_dir)
    for path, src in modules.items():
        _check_package(path, src)
    return BundleContents(compiled, modules)


def bundle_files(contents: BundleContents) -> dict[str, bytes]:
    """Every file of the bundle (no signatures), by path, in the order they are written."""
    files: dict[str, bytes] = {
        ".manifest": canonical_json(contents.manifest) + b"\n",
        DATA_PATH: canonical_json(contents.data) + b"\n",
    }
    for path, src in contents.modules.items():
        files[path] = src.encode("utf-8")
    return dict(sorted(files.items()))


def bundle_bytes(contents: BundleContents, *, signing_key: str | None = None, signing_alg: str = "RS256") -> bytes:
    """The ``.tar.gz`` bytes: deterministic for the same contents (and, for HMAC and RSA, key)."""
    files = bundle_files(contents)
    if signing_key is not None:
        from .bundle_sign import SIGNATURES, sign

        files = dict(sorted({**files, SIGNATURES: sign(files, signing_key, signing_alg)}.items()))
    return pack(files)


def pack(files: dict[str, bytes]) -> bytes:
    """A gzipped tar of ``files`` in the given order, with zero times and no owners."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in files:
            info = tarfile.TarInfo("/" + name)
            info.size = len(files[name])
            info.mtime = 0
            info.mode = 0o644
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            tar.addfile(info, io.BytesIO(files[name]))
    out = io.BytesIO()
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=9) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_bundle(policies_dir: str | Path, rego_dir: str | Path | None, output: str | Path, *,
                 signing_key: str | None = None, signing_alg: str = "RS256",
                 currencies: CurrencyRegistry = DEFAULT_CURRENCIES) -> BundleContents:
    """Build the bundle of ``policies_dir`` + ``rego_dir`` (signed with ``signing_key``) and write it."""
    contents = bundle_contents(policies_dir, rego_dir, currencies=currencies)
    data = bundle_bytes(contents, signing_key=signing_key, signing_alg=signing_alg)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(data)
    return contents


def read_bundle_files(path: str | Path) -> dict[str, bytes]:
    """The files of a bundle ``.tar.gz`` by path (no leading ``/``), in archive order.

    ``EngineError`` when it is not a readable gzipped tar.
    """
    try:
        with tarfile.open(fileobj=io.BytesIO(gzip.decompress(Path(path).read_bytes()))) as tar:
            return {m.name.lstrip("/"): tar.extractfile(m).read()  # type: ignore[union-attr]
                    for m in tar.getmembers() if m.isfile()}
    except (OSError, EOFError, tarfile.TarError) as exc:
        raise EngineError(f"{path}: not a readable bundle: {exc}") from None
