"""Generate the Python gRPC code and mypy stubs from the platform's protos.

Usage (from the repository root):

    .venv/bin/python protos/generate.py           # regenerate gen/
    .venv/bin/python protos/generate.py --check   # exit 1 when gen/ is stale

Runs protoc in-process through ``grpc_tools.protoc`` with the well-known types shipped
in the ``grpc_tools`` package, the built-in Python and gRPC generators, and the
mypy-protobuf plugins (``protoc-gen-mypy`` / ``protoc-gen-mypy_grpc``) found next to the
running interpreter. Proto root: ``protos/``; output: ``gen/``. Every generated package
directory gets an empty ``__init__.py``. ``--check`` generates into a temporary
directory and compares it byte for byte with ``gen/``, listing stale, missing and extra
files. ``__pycache__`` directories under ``gen/`` are ignored.
"""

from __future__ import annotations

import argparse
import importlib.resources
import shutil
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from grpc_tools import protoc  # type: ignore[import-untyped]

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTO_ROOT = REPO_ROOT / "protos"
GEN_ROOT = REPO_ROOT / "gen"
IGNORED_DIR_NAMES = frozenset({"__pycache__"})


def proto_files(proto_root: Path = PROTO_ROOT) -> list[str]:
    """Every .proto under the root, as sorted POSIX paths relative to it."""
    return sorted(path.relative_to(proto_root).as_posix() for path in proto_root.rglob("*.proto"))


def well_known_types_dir() -> Path:
    """The include directory of google/protobuf/*.proto shipped with grpc_tools."""
    return Path(str(importlib.resources.files("grpc_tools") / "_proto"))


def find_plugin(name: str) -> Path:
    """A protoc plugin installed next to the running interpreter (the virtualenv's bin/)."""
    # Deliberately not resolved: in a virtualenv sys.executable is a symlink whose
    # directory holds the entry points, while its target's directory does not.
    candidate = Path(sys.executable).parent / name
    if candidate.is_file():
        return candidate
    found = shutil.which(name)
    if found is None:
        raise SystemExit(f"protoc plugin {name!r} not found next to {sys.executable} or on PATH")
    return Path(found)


def run_protoc(out_dir: Path, proto_root: Path = PROTO_ROOT) -> None:
    """Generate every proto into out_dir, then add the packages' __init__.py files."""
    files = proto_files(proto_root)
    if not files:
        raise SystemExit(f"no .proto files under {proto_root}")
    out_dir.mkdir(parents=True, exist_ok=True)
    args = [
        "grpc_tools.protoc",
        f"--proto_path={proto_root}",
        f"--proto_path={well_known_types_dir()}",
        f"--plugin=protoc-gen-mypy={find_plugin('protoc-gen-mypy')}",
        f"--plugin=protoc-gen-mypy_grpc={find_plugin('protoc-gen-mypy_grpc')}",
        f"--python_out={out_dir}",
        f"--grpc_python_out={out_dir}",
        f"--mypy_out=quiet:{out_dir}",
        f"--mypy_grpc_out=quiet:{out_dir}",
        *files,
    ]
    code = protoc.main(args)
    if code != 0:
        raise SystemExit(f"protoc failed with exit code {code}")
    add_package_markers(out_dir)


def add_package_markers(out_dir: Path) -> None:
    """Write an empty __init__.py in every directory below out_dir (not out_dir itself)."""
    for directory in sorted(p for p in out_dir.rglob("*") if p.is_dir()):
        if IGNORED_DIR_NAMES.intersection(directory.relative_to(out_dir).parts):
            continue
        marker = directory / "__init__.py"
        if not marker.exists():
            marker.write_bytes(b"")


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file under root (caches excluded) keyed by sorted relative POSIX path."""
    if not root.is_dir():
        return {}
    files: dict[str, bytes] = {}
    for path in sorted(root.rglob("*")):
        relative = path.relative_to(root)
        if IGNORED_DIR_NAMES.intersection(relative.parts) or not path.is_file():
            continue
        files[relative.as_posix()] = path.read_bytes()
    return files


def differences(expected: dict[str, bytes], actual: dict[str, bytes]) -> list[str]:
    """Human-readable lines for every file that is stale, missing or extra, sorted."""
    lines: list[str] = []
    for name in sorted(expected.keys() | actual.keys()):
        if name not in actual:
            lines.append(f"missing: gen/{name}")
        elif name not in expected:
            lines.append(f"extra: gen/{name}")
        elif expected[name] != actual[name]:
            lines.append(f"stale: gen/{name}")
    return lines


def sync(fresh: dict[str, bytes], target: Path) -> list[str]:
    """Make target hold exactly the fresh files; rewrite only what changed."""
    changes = differences(fresh, snapshot(target))
    for name, content in fresh.items():
        destination = target / name
        if destination.is_file() and destination.read_bytes() == content:
            continue
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes(content)
    for name in snapshot(target).keys() - fresh.keys():
        (target / name).unlink()
    # Remove directories left empty (deepest first), keeping caches out of the way.
    for directory in sorted((p for p in target.rglob("*") if p.is_dir()), reverse=True):
        if directory.name in IGNORED_DIR_NAMES:
            continue
        remaining = [p for p in directory.iterdir() if p.name not in IGNORED_DIR_NAMES]
        if not remaining:
            shutil.rmtree(directory)
    return changes


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument(
        "--check",
        action="store_true",
        help="generate into a temporary directory and fail if gen/ differs",
    )
    options = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix="proto-gen-") as tmp:
        out_dir = Path(tmp)
        run_protoc(out_dir)
        fresh = snapshot(out_dir)

    if options.check:
        problems = differences(fresh, snapshot(GEN_ROOT))
        for line in problems:
            print(line)
        if problems:
            print(
                f"gen/ is out of date ({len(problems)} file(s)); run: .venv/bin/python protos/generate.py",
                file=sys.stderr,
            )
            return 1
        print(f"gen/ is up to date ({len(fresh)} files)")
        return 0

    GEN_ROOT.mkdir(exist_ok=True)
    changes = sync(fresh, GEN_ROOT)
    for line in changes:
        print(
            line.replace("missing:", "written:").replace("stale:", "updated:").replace("extra:", "removed:")
        )
    print(f"gen/ holds {len(fresh)} generated files ({len(changes)} changed)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
