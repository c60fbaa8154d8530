"""Getting policies and Rego into an OPA server: bundles (pull) and push.

Two ways, the two OPA supports:

* ``write_bundle`` builds an OPA bundle (``.tar.gz``) that
  ``opa run --server --bundle build/bundle.tar.gz`` loads unchanged: a
  ``.manifest`` whose ``revision`` is the compiled data's revision
  (``compiler.data_revision``) and whose ``roots`` are ``["chio/budget"]``,
  ``chio/budget/data.json`` holding ``{"policies": ...}``, and every Rego
  module (``*_test.rego`` left out). The bytes are a pure function of the
  inputs (sorted entries, zero mtimes, no owner names, gzip without a
  timestamp), so two builds of the same sources compare equal with ``cmp``
  and the bundle can be cached or signed by content.
* ``push`` PUTs the same data document and modules through the OPA REST API
  (``opa_client.OpaClient``), removes modules an earlier push left that no
  longer exist, then reads the data back and confirms its revision. It
  raises ``EngineError`` on any failure; a push is not atomic (modules first,
  then data), which is why the read-back is the point where it counts as done.
"""

from __future__ import annotations

import gzip
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .compiler import DATA_ROOT, canonical_json, compile_policies, revision_of
from .engines.base import rego_modules
from .errors import EngineError
from .policy import load_policies

ROOT = "/".join(DATA_ROOT)  # "chio/budget": the one root this bundle owns
DATA_PATH = f"{ROOT}/data.json"
#: Policy ids ``push`` gives the modules it uploads (and may later delete).
PUSH_PREFIX = "chio-budget/"

_PACKAGE = re.compile(r"^\s*package\s+([A-Za-z_][A-Za-z0-9_.]*)", re.MULTILINE)


@dataclass(frozen=True)
class BundleContents:
    """What a bundle holds, before it is written (or after it is read)."""

    revision: str
    roots: list[str]
    data: dict[str, Any]  # the value of data.chio.budget: {"policies": {...}}
    modules: dict[str, str]  # bundle path -> Rego source

    @property
    def manifest(self) -> dict[str, Any]:
        return {"revision": self.revision, "roots": list(self.roots)}


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


def bundle_contents(policies_dir: str | Path, rego_dir: str | Path | None = None) -> BundleContents:
    """Compile the YAML policies and collect the Rego modules (``PolicyError``/``EngineError``)."""
    data = compile_policies(load_policies(policies_dir))
    modules = rego_modules(rego_dir)
    for path, src in modules.items():
        _check_package(path, src)
    return BundleContents(revision_of(data), [ROOT], data, modules)


def bundle_bytes(contents: BundleContents) -> bytes:
    """The ``.tar.gz`` bytes: deterministic for the same contents."""
    files: dict[str, bytes] = {
        ".manifest": canonical_json(contents.manifest) + b"\n",
        DATA_PATH: canonical_json(contents.data) + b"\n",
    }
    for path, src in contents.modules.items():
        files[path] = src.encode("utf-8")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        for name in sorted(files):
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


def write_bundle(policies_dir: str | Path, rego_dir: str | Path | None, output: str | Path) -> BundleContents:
    """Build the bundle of ``policies_dir`` + ``rego_dir`` and write it to ``output``."""
    contents = bundle_contents(policies_dir, rego_dir)
    out = Path(output)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(bundle_bytes(contents))
    return contents


def push(client: Any, contents: BundleContents) -> str:
    """PUT modules and data to the server behind ``client`` (an ``OpaClient``); return the confirmed revision.

    Idempotent: pushing the same contents twice leaves the server as after
    one push. Raises ``EngineError`` naming the step that failed, including
    when the revision read back differs (someone else wrote in between, or a
    bundle owns ``chio/budget`` on that server).
    """
    step = "connect"
    try:
        step = "list policies"
        existing = [p for p in _policy_ids(client) if p.startswith(PUSH_PREFIX)]
        wanted = {PUSH_PREFIX + path: src for path, src in contents.modules.items()}
        for pid, src in sorted(wanted.items()):
            step = f"PUT /v1/policies/{pid}"
            client.update_policy_from_string(src, pid, rego_compat=False)
        for pid in sorted(set(existing) - set(wanted)):
            step = f"DELETE /v1/policies/{pid}"
            client.delete_policy(pid)
        step = f"PUT /v1/data/{ROOT}"
        client.update_or_create_data(contents.data, ROOT)
        step = f"GET /v1/data/{ROOT}/policies"
        body = client.get_data(f"{ROOT}/policies")
    except EngineError:
        raise
    except Exception as exc:
        raise EngineError(f"push failed at {step}: {_describe(exc)}") from None
    got = revision_of({"policies": body.get("result")})
    if got != contents.revision:
        raise EngineError(f"push: the server's data revision is {got}, expected {contents.revision}")
    return got


def _policy_ids(client: Any) -> list[str]:
    """``GET /v1/policies`` (OPA's documented path) on the client's session.

    The client's own ``get_policies_list`` asks for ``/v1/policies/`` with a
    trailing slash, which is not the documented endpoint; this one request
    bypasses it and keeps everything else (session, headers, TLS, timeout).
    """
    r = client._session.get(f"{client.root_url}/policies", timeout=client.timeout)
    r.raise_for_status()
    return [p.get("id") for p in r.json().get("result", []) if isinstance(p, dict) and p.get("id")]


def _describe(exc: BaseException) -> str:
    from .engines.server import describe_error

    return describe_error(exc)
