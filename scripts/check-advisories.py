#!/usr/bin/env python3
"""Checks Cargo.lock against the RustSec advisory database.

Fails (exit 1) when a locked wasmtime, wasmtime-* or cranelift-* crate has a published advisory
its version is not patched for or unaffected by; advisories for other crates are printed as
warnings. The database is cloned (or updated) into ~/.cache/wasmq/advisory-db, or read from the
directory given as the first argument. When it cannot be reached the check says so and passes:
check by hand then with `cargo install cargo-audit && cargo audit`, or by reading
https://github.com/bytecodealliance/wasmtime/security/advisories.

Usage: scripts/check-advisories.py [ADVISORY_DB_DIR]
"""

import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DB_URL = "https://github.com/rustsec/advisory-db"
GUARDED = re.compile(r"^(wasmtime|wasmtime-.*|cranelift-.*)$")


def database() -> Path | None:
    if len(sys.argv) > 1:
        return Path(sys.argv[1])
    cache = Path(os.environ.get("WASMQ_ADVISORY_DB", Path.home() / ".cache/wasmq/advisory-db"))
    try:
        if (cache / ".git").exists():
            subprocess.run(["git", "-C", str(cache), "pull", "--quiet", "--ff-only"],
                           check=True, timeout=60, capture_output=True)
        else:
            subprocess.run(["git", "clone", "--quiet", "--depth", "1", DB_URL, str(cache)],
                           check=True, timeout=60, capture_output=True)
    except (subprocess.SubprocessError, OSError) as e:
        if (cache / "crates").is_dir():
            print(f"advisories: could not update {cache} ({e}); using the copy there")
            return cache
        return None
    return cache


def version(text: str) -> tuple[int, ...]:
    core = text.split("-")[0].split("+")[0]
    return tuple(int(p) for p in core.split("."))


def matches(ver: tuple[int, ...], requirement: str) -> bool:
    """Whether `ver` satisfies a comma-separated semver requirement such as `>= 46.0.2, < 47`."""
    for part in requirement.split(","):
        # A pre-release suffix on a bound (`< 1.0.0-0`) only excludes pre-releases: ignored here.
        m = re.fullmatch(r"\s*(>=|<=|>|<|=|\^|~)?\s*([0-9][0-9.]*)(-[0-9A-Za-z.]+)?\s*", part)
        if not m:
            raise ValueError(f"unsupported version requirement {requirement!r}")
        op, bound = m.group(1) or "^", m.group(2)
        b = version(bound)
        width = len(b)
        b = b + (0,) * (3 - len(b))
        if op == ">=" and not ver >= b:
            return False
        if op == ">" and not ver > b:
            return False
        if op == "<=" and not ver <= b:
            return False
        if op == "<" and not ver < b:
            return False
        if op == "=" and ver[:width] != b[:width]:
            return False
        if op == "^":
            first = next((i for i, x in enumerate(b) if x != 0), width - 1)
            if not (ver >= b and ver[: first + 1] == b[: first + 1]):
                return False
        if op == "~" and not (ver >= b and ver[: min(width, 2)] == b[: min(width, 2)]):
            return False
    return True


def advisories(db: Path, crate: str):
    for path in sorted((db / "crates" / crate).glob("RUSTSEC-*.md")):
        text = path.read_text()
        front = re.search(r"```toml\n(.*?)\n```", text, re.S)
        if not front:
            continue
        data = tomllib.loads(front.group(1))
        adv = data.get("advisory", {})
        if adv.get("withdrawn") or adv.get("informational"):
            continue
        yield adv, data.get("versions", {})


def main() -> int:
    db = database()
    if db is None:
        print(f"advisories: the RustSec database ({DB_URL}) cannot be reached from here; "
              "nothing was checked. Check by hand: `cargo install cargo-audit && cargo audit`, or "
              "compare Cargo.lock's wasmtime with "
              "https://github.com/bytecodealliance/wasmtime/security/advisories")
        return 0
    lock = tomllib.loads((ROOT / "Cargo.lock").read_text())
    failed = False
    checked = 0
    for package in lock.get("package", []):
        name, ver_text = package["name"], package["version"]
        if not (db / "crates" / name).is_dir():
            continue
        ver = version(ver_text)
        for adv, versions in advisories(db, name):
            checked += 1
            safe = versions.get("patched", []) + versions.get("unaffected", [])
            if any(matches(ver, req) for req in safe):
                continue
            guarded = bool(GUARDED.match(name))
            failed |= guarded
            level = "VULNERABLE" if guarded else "warning"
            print(f"advisories: {level}: {name} {ver_text} is affected by {adv.get('id')} "
                  f"({adv.get('url', '')}); patched: {versions.get('patched', [])}")
    head = subprocess.run(["git", "-C", str(db), "log", "-1", "--format=%cs"],
                          capture_output=True, text=True).stdout.strip()
    print(f"advisories: {checked} advisories for locked crates checked against the database "
          f"of {head or 'unknown date'}; "
          + ("a wasmtime crate is vulnerable" if failed else "no wasmtime crate is affected"))
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
