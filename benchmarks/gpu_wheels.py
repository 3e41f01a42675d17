"""The wheels a bare GPU machine needs to run this repository (issue #24, part 2).

The lent GPU machine (and many GPU boxes) has Python 3.12 with torch,
torchvision, pandas, pyarrow, typer, rich, pyyaml and ~190 other packages
installed, but not Ray, Optuna, MLflow or pydantic, and it cannot reach a
package index. This script computes what must be brought along, downloads it
here as cp312 manylinux wheels, checks the set is complete, and packs it:

 1. The closure, computed rather than guessed: start from this repository's
    runtime requirements (pyproject.toml's [project] dependencies, with the
    extras it names, e.g. ray[tune,default]); every requirement whose name is
    in the preinstalled list (benchmarks/gpu_preinstalled.txt, from the device
    notes' KINDS.md) is left to the machine, every other one becomes a wheel,
    whose own Requires-Dist (markers evaluated for CPython 3.12 on x86-64
    Linux, `extra == ...` only for the extras asked of it) is followed in turn.
 2. Versions: the ones installed in the Python running this script (run it
    with the repository's .venv, so the wheels are the versions the tests
    pass with: ray 2.60.0, optuna 5.1.0, mlflow 3.17.2, pydantic 2.14.4, ...);
    a package that Python lacks gets the newest wheel its requirements allow,
    and the script says so. One version of each package.
 3. The check: every Requires-Dist of every wheel is satisfied by a wheel of
    the set (its version inside the specifier) or by the preinstalled list
    (its version where the list gives one; the others are printed as
    "unverified here" and benchmarks/gpu_check.py re-checks them against the
    machine's real versions). Anything unmet: exit 1, one line per problem.
 4. The packing. A device call carries at most 64 MiB (this repository's
    tracked files take ~5.5 MiB of that) and the Ray wheel alone is 75.6 MiB.
    The wheels are installed into a staging folder here (`pip install
    --no-index --no-deps --target`, with the cp312 / manylinux tags: nothing
    is built), Ray's Java jar (ray/jars, 33 MB of already compressed bytes;
    only Java workers load it) is left out, and the folder is written as one
    xz tar, split into parts of at most --part-mib MiB:
    `.gpu-wheels/carry/site.tar.xz.00`, `.01`, ... plus a manifest with each
    part's SHA-256. xz because the machine's Python reads it (tarfile + lzma,
    standard library) without a zstd binary or package. One part means one
    device call; docs/cluster/gpu-check.md gives the measured sizes.

    .venv/bin/python benchmarks/gpu_wheels.py            # or: make gpu-wheels
    .venv/bin/python benchmarks/gpu_wheels.py --check-only  # closure + check from the wheels already there

Outputs, all under --dest (default .gpu-wheels/, git-ignored): wheels/ (the
wheel set), carry/ (the packed parts, the manifest and gpu_check.sh's
install instructions read it), closure.json (every package, its version, why
it is needed, and the unverified requirements).
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import lzma
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
import zipfile
from dataclasses import dataclass, field
from email.parser import Parser
from importlib import metadata
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PREINSTALLED = REPO / "benchmarks" / "gpu_preinstalled.txt"
DEST = REPO / ".gpu-wheels"
# The target machine: CPython 3.12.3 on x86-64 Linux (KINDS.md). Markers are evaluated in this environment.
PYTHON_VERSION = "3.12"
PYTHON_FULL_VERSION = "3.12.3"
TARGET_ENV = {
    "implementation_name": "cpython", "implementation_version": PYTHON_FULL_VERSION, "os_name": "posix",
    "platform_machine": "x86_64", "platform_python_implementation": "CPython", "platform_release": "",
    "platform_system": "Linux", "platform_version": "", "python_full_version": PYTHON_FULL_VERSION,
    "python_version": PYTHON_VERSION, "sys_platform": "linux",
}
# manylinux tags up to glibc 2.28 (pip matches each tag exactly, so each is named).
PLATFORMS = [f"manylinux_2_{n}_x86_64" for n in range(28, 16, -1)] + ["manylinux2014_x86_64", "manylinux1_x86_64"]
# Left out of the packed site: Ray's Java worker jar (only a Java worker or a cross-language call loads it).
DROP_FROM_SITE = ("ray/jars",)
CARRY_LIMIT_MIB = 64  # what one device call carries, repository included
PART_MIB = 50  # default part size: leaves ~14 MiB for the repository's tracked files (~5.5 MiB) in the same call
MANIFEST = "manifest.json"
SITE_TAR = "site.tar.xz"


class ClosureError(RuntimeError):
    """The wheel set cannot be completed or is inconsistent (one line per problem in `lines`)."""

    def __init__(self, lines: list[str]) -> None:
        super().__init__("; ".join(lines))
        self.lines = lines


@dataclass
class Wheel:
    """One wheel of the set: its file, version, the extras asked of it and who asked."""

    name: str
    version: str
    path: Path
    extras: set[str] = field(default_factory=set)
    needed_by: set[str] = field(default_factory=set)

    def requires(self) -> list[Requirement]:
        """The wheel's Requires-Dist entries, unevaluated."""
        return wheel_requires(self.path)


def read_preinstalled(path: Path) -> dict[str, str | None]:
    """{normalised name: version or None} from the preinstalled list (`name` or `name==version` per line)."""
    if not path.is_file():
        raise ClosureError([f"{path}: the preinstalled package list is missing (--preinstalled)"])
    out: dict[str, str | None] = {}
    for n, line in enumerate(path.read_text().splitlines(), 1):
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        m = re.fullmatch(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:==(\S+))?", line)
        if not m:
            raise ClosureError([f"{path}:{n}: expected NAME or NAME==VERSION, got {line!r}"])
        out[canonicalize_name(m[1])] = m[2]
    return out


def project_requirements(pyproject: Path) -> list[Requirement]:
    """The [project] dependencies of pyproject.toml (runtime only: no optional extras)."""
    return [Requirement(r) for r in tomllib.loads(pyproject.read_text())["project"]["dependencies"]]


def applies(req: Requirement, extras: set[str]) -> bool:
    """Whether `req` is needed on the target machine when its owner was asked for `extras`."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**TARGET_ENV, "extra": e}) for e in (extras or {""}))


def wheel_metadata(path: Path) -> dict[str, list[str] | str]:
    """Name, Version and Requires-Dist of a wheel, read from its .dist-info/METADATA."""
    with zipfile.ZipFile(path) as z:
        meta = next(n for n in z.namelist() if re.fullmatch(r"[^/]+\.dist-info/METADATA", n))
        msg = Parser().parsestr(z.read(meta).decode())
    return {"name": msg["Name"], "version": msg["Version"], "requires": msg.get_all("Requires-Dist") or []}


def wheel_requires(path: Path) -> list[Requirement]:
    return [Requirement(r) for r in wheel_metadata(path)["requires"]]  # type: ignore[union-attr]


def local_pins() -> dict[str, str]:
    """{normalised name: version} of every distribution installed in the Python running this script."""
    return {canonicalize_name(d.metadata["Name"]): d.version for d in metadata.distributions() if d.metadata["Name"]}


def pip_download(specs: list[str], dest: Path) -> None:
    """Download cp312 manylinux wheels (no sdists, no dependencies) for `specs` into `dest`."""
    cmd = [sys.executable, "-m", "pip", "download", "--quiet", "--no-deps", "--only-binary=:all:",
           "--python-version", PYTHON_VERSION, "--implementation", "cp", "-d", str(dest)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    proc = subprocess.run(cmd + specs, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClosureError([f"pip download {' '.join(specs)} failed: {proc.stderr.strip().splitlines()[-1:]}"])


def find_wheel(folder: Path, name: str, version: str | None = None) -> Path | None:
    """The wheel of `name` (and `version`, if given) in `folder`, or None."""
    for p in sorted(folder.glob("*.whl")):
        dist, ver = p.name.split("-")[:2]
        if canonicalize_name(dist) == name and (version is None or Version(ver) == Version(version)):
            return p
    return None


def resolve(roots: list[Requirement], preinstalled: dict[str, str | None], wheels_dir: Path, pins: dict[str, str],
            download: bool = True, log=print) -> tuple[dict[str, Wheel], list[str]]:
    """Walk the requirements from `roots`: ({name: Wheel} to carry, notes). Downloads what is missing
    into `wheels_dir` (download=False: only wheels already there are used)."""
    wheels: dict[str, Wheel] = {}
    notes: list[str] = []
    pending: list[tuple[Requirement, str, set[str]]] = [(r, "pyproject.toml", set()) for r in roots]
    while pending:
        batch, pending = pending, []
        to_fetch: dict[str, str] = {}
        wanted: list[tuple[str, Requirement, str]] = []
        for req, parent, parent_extras in batch:
            if not applies(req, parent_extras):
                continue
            name = canonicalize_name(req.name)
            if name in preinstalled:
                continue  # checked in `check`, with every other requirement
            wanted.append((name, req, parent))
            if name in wheels or name in to_fetch:
                continue
            pin = pins.get(name)
            if pin is not None and req.specifier.contains(pin, prereleases=True):
                spec = f"{name}=={pin}"
            else:
                spec = f"{name}{req.specifier}"
                notes.append(f"{name}: not installed here in a version {req.specifier or 'any'} allows "
                             f"(here: {pin}); the newest wheel {req.specifier or ''} was taken")
            to_fetch[name] = spec
        missing = [spec for name, spec in to_fetch.items()
                   if find_wheel(wheels_dir, name, spec.split("==")[1] if "==" in spec else None) is None]
        if missing:
            if not download:
                raise ClosureError([f"{wheels_dir}: no wheel for {spec} (run without --check-only to download it)"
                                    for spec in missing])
            log(f"downloading {len(missing)} wheel(s): {' '.join(missing)}")
            pip_download(missing, wheels_dir)
        for name, spec in to_fetch.items():
            path = find_wheel(wheels_dir, name, spec.split("==")[1] if "==" in spec else None)
            if path is None:
                raise ClosureError([f"{wheels_dir}: pip reported success but no wheel of {spec} is there"])
            meta = wheel_metadata(path)
            wheels[name] = Wheel(name, str(meta["version"]), path)
        for name, req, parent in wanted:
            w = wheels[name]
            w.needed_by.add(parent)
            new = set(req.extras) - w.extras
            if new or name in to_fetch:  # first visit, or extras it was not yet asked for: follow its requirements
                w.extras |= set(req.extras)
                pending += [(r, f"{name}=={w.version}", w.extras) for r in w.requires()]
    return wheels, notes


def check(roots: list[Requirement], wheels: dict[str, Wheel], preinstalled: dict[str, str | None]) -> tuple[list[str], list[str]]:
    """(problems, unverified): every applicable requirement of the roots and of every wheel is met by a
    wheel of the set or by the preinstalled list; `unverified` names those met by a preinstalled package
    whose version this list does not know."""
    problems: list[str] = []
    unverified: list[str] = []
    owners: list[tuple[str, set[str], list[Requirement]]] = [("pyproject.toml", set(), roots)]
    owners += [(f"{w.name}=={w.version}", w.extras, w.requires()) for w in wheels.values()]
    for owner, extras, reqs in owners:
        for req in reqs:
            if not applies(req, extras):
                continue
            name = canonicalize_name(req.name)
            if name in wheels:
                have = wheels[name]
                if not req.specifier.contains(have.version, prereleases=True):
                    problems.append(f"{owner} needs {req.name}{req.specifier}, the set has {have.version}")
                if set(req.extras) - have.extras:
                    problems.append(f"{owner} needs {req.name}[{','.join(sorted(req.extras))}], followed only for "
                                    f"[{','.join(sorted(have.extras))}]")
            elif name in preinstalled:
                version = preinstalled[name]
                if version is None:
                    if req.specifier:
                        unverified.append(f"{owner} needs {req.name}{req.specifier} (preinstalled, version unknown here)")
                elif not req.specifier.contains(version, prereleases=True):
                    problems.append(f"{owner} needs {req.name}{req.specifier}, the machine has {version} "
                                    f"(carry a wheel: take {name} off {PREINSTALLED.name})")
            else:
                problems.append(f"{owner} needs {req.name}{req.specifier}: neither a wheel of the set nor preinstalled")
    versions: dict[str, set[str]] = {}
    for w in wheels.values():
        versions.setdefault(w.name, set()).add(w.version)
    problems += [f"{n}: {len(v)} versions in the set ({', '.join(sorted(v))})" for n, v in versions.items() if len(v) > 1]
    return problems, sorted(set(unverified))


def stage_site(wheels: dict[str, Wheel], site: Path) -> None:
    """Install the wheels into the empty folder `site` as pip would on the machine (no index, no
    dependencies, no .pyc, the target's tags), then drop DROP_FROM_SITE."""
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--no-index", "--no-deps", "--no-compile",
           "--only-binary=:all:", "--python-version", PYTHON_VERSION, "--implementation", "cp", "--target", str(site)]
    for p in PLATFORMS:
        cmd += ["--platform", p]
    proc = subprocess.run(cmd + [str(w.path) for w in wheels.values()], capture_output=True, text=True)
    if proc.returncode != 0:
        raise ClosureError([f"pip install --target {site} failed: {proc.stderr.strip()[-500:]}"])
    for rel in DROP_FROM_SITE:
        shutil.rmtree(site / rel, ignore_errors=True)


def pack(site: Path, carry: Path, part_mib: float, preset: int = 9 | lzma.PRESET_EXTREME) -> list[dict[str, object]]:
    """Write `site` as one xz tar split into parts of at most part_mib MiB under `carry`; the parts'
    names, sizes and SHA-256 (also of the whole)."""
    whole = carry / SITE_TAR
    with lzma.open(whole, "wb", preset=preset) as xz, tarfile.open(fileobj=xz, mode="w") as tar:
        for p in sorted(site.iterdir()):
            tar.add(p, arcname=p.name)
    limit = int(part_mib * 2**20)
    parts = []
    with whole.open("rb") as f:
        for i in range(1000):
            chunk = f.read(limit)
            if not chunk:
                break
            part = carry / f"{SITE_TAR}.{i:02d}"
            part.write_bytes(chunk)
            parts.append({"file": part.name, "bytes": len(chunk), "sha256": hashlib.sha256(chunk).hexdigest()})
    whole.unlink()
    return parts


def unpack(site: Path, sources: list[Path]) -> dict[str, object]:
    """Install the packed site on the target machine: find the manifest and its parts in `sources` (the
    carried folder, and a stage folder an earlier device call filled), check each part's SHA-256, and
    extract the concatenated xz tar into `site` (made empty first). Standard library only."""
    manifests = [d / MANIFEST for d in sources if (d / MANIFEST).is_file()]
    if not manifests:
        raise ClosureError([f"no {MANIFEST} in {', '.join(map(str, sources))}: run benchmarks/gpu_wheels.py here and carry "
                            f".gpu-wheels/carry (or stage it with benchmarks/gpu_check.sh stage)"])
    manifest = json.loads(manifests[0].read_text())
    paths = []
    for part in manifest["parts"]:
        found = [d / part["file"] for d in sources if (d / part["file"]).is_file()]
        if not found:
            raise ClosureError([f"{part['file']}: not in {', '.join(map(str, sources))}: stage it first "
                                f"(benchmarks/gpu_check.sh stage; the machine keeps it only while warm)"])
        if file_sha256(found[0]) != part["sha256"]:
            raise ClosureError([f"{found[0]}: SHA-256 differs from {manifests[0]}: a part of another packing or a broken copy"])
        paths.append(found[0])
    shutil.rmtree(site, ignore_errors=True)
    site.mkdir(parents=True)

    class Joined(io.RawIOBase):
        """The parts read one after the other, as one stream."""

        def __init__(self) -> None:
            self.files = [p.open("rb") for p in paths]

        def readable(self) -> bool:
            return True

        def readinto(self, buf) -> int:  # type: ignore[no-untyped-def]
            while self.files:
                n = self.files[0].readinto(buf)
                if n:
                    return n
                self.files.pop(0).close()
            return 0

    with lzma.open(io.BufferedReader(Joined(), 1 << 20)) as xz, tarfile.open(fileobj=xz, mode="r|") as tar:
        tar.extractall(site, filter="data")
    return manifest


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def tracked_bytes() -> int | None:
    """The size of this repository's tracked files (what every device call sends besides the carry), or None."""
    try:
        names = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout.split(b"\0")
    except (OSError, subprocess.CalledProcessError):
        return None
    return sum((REPO / n.decode()).stat().st_size for n in names if n and (REPO / n.decode()).is_file())


def mib(n: float) -> str:
    return f"{n / 2**20:.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dest", type=Path, default=DEST, help="output folder (default .gpu-wheels/, git-ignored)")
    parser.add_argument("--preinstalled", type=Path, default=PREINSTALLED, help="the machine's preinstalled packages")
    parser.add_argument("--pyproject", type=Path, default=REPO / "pyproject.toml")
    parser.add_argument("--part-mib", type=float, default=PART_MIB,
                        help=f"largest part of the packed site, MiB (default {PART_MIB}: one device call carries "
                             f"{CARRY_LIMIT_MIB} MiB with the repository)")
    parser.add_argument("--unpack", type=Path, metavar="SITE", help="on the target machine: install the packed site into "
                        "SITE (emptied first) from the parts in --parts-from, and exit")
    parser.add_argument("--parts-from", type=Path, nargs="+", default=[DEST / "carry"], metavar="DIR",
                        help="with --unpack: folders holding the manifest and the parts (default .gpu-wheels/carry)")
    parser.add_argument("--check-only", action="store_true", help="compute and check the closure from the wheels already "
                                                                  "in DEST/wheels (no download, no packing)")
    args = parser.parse_args()
    t0 = time.perf_counter()
    if args.unpack is not None:
        try:
            manifest = unpack(args.unpack, args.parts_from)
        except (ClosureError, OSError, tarfile.TarError, lzma.LZMAError) as exc:
            print(f"gpu_wheels: --unpack {args.unpack}: {exc}", file=sys.stderr)
            sys.exit(1)
        print(f"installed {len(manifest['wheels'])} packages into {args.unpack} from {len(manifest['parts'])} part(s) "
              f"in {time.perf_counter() - t0:.0f} s")
        return
    try:
        if not args.pyproject.is_file():
            raise ClosureError([f"{args.pyproject}: not found (--pyproject)"])
        preinstalled = read_preinstalled(args.preinstalled)
        roots = project_requirements(args.pyproject)
        wheels_dir = args.dest / "wheels"
        if args.check_only and not wheels_dir.is_dir():
            raise ClosureError([f"{wheels_dir}: no wheel folder; run benchmarks/gpu_wheels.py without --check-only first"])
        wheels_dir.mkdir(parents=True, exist_ok=True)
        wheels, notes = resolve(roots, preinstalled, wheels_dir, local_pins(), download=not args.check_only)
        problems, unverified = check(roots, wheels, preinstalled)
        if problems:
            raise ClosureError(problems)
    except ClosureError as exc:
        for line in exc.lines:
            print(f"gpu_wheels: {line}", file=sys.stderr)
        sys.exit(1)
    keep = {w.path.name for w in wheels.values()}
    stale = [p for p in wheels_dir.glob("*.whl") if p.name not in keep]
    for p in stale:  # an earlier run's other versions: one version of each package
        p.unlink()
    total = sum(w.path.stat().st_size for w in wheels.values())
    print(f"{len(wheels)} wheels to carry ({mib(total)}), {len(preinstalled)} packages left to the machine "
          f"({args.preinstalled.name}); every requirement met" + (f"; {len(stale)} stale wheel(s) removed" if stale else ""))
    for w in sorted(wheels.values(), key=lambda w: -w.path.stat().st_size):
        extras = f"[{','.join(sorted(w.extras))}]" if w.extras else ""
        print(f"  {w.name}{extras}=={w.version}  {mib(w.path.stat().st_size)}  <- {', '.join(sorted(w.needed_by))}")
    for note in notes:
        print(f"note: {note}")
    if unverified:
        print(f"unverified here ({len(unverified)}; gpu_check.py checks them against the machine's versions):")
        for line in unverified:
            print(f"  {line}")
    closure = {"python": PYTHON_FULL_VERSION, "platforms": PLATFORMS, "preinstalled_list": str(args.preinstalled.name),
               "wheels": {w.name: {"version": w.version, "file": w.path.name, "bytes": w.path.stat().st_size,
                                   "extras": sorted(w.extras), "needed_by": sorted(w.needed_by)} for w in wheels.values()},
               "unverified": unverified, "notes": notes}
    (args.dest / "closure.json").write_text(json.dumps(closure, indent=1) + "\n")
    if args.check_only:
        return
    carry = args.dest / "carry"
    shutil.rmtree(carry, ignore_errors=True)
    carry.mkdir(parents=True)
    with tempfile.TemporaryDirectory(prefix="gpu-site-") as tmp:
        site = Path(tmp) / "site"
        site.mkdir()
        stage_site(wheels, site)
        unpacked = sum(p.stat().st_size for p in site.rglob("*") if p.is_file())
        print(f"staged site: {mib(unpacked)} unpacked (without {', '.join(DROP_FROM_SITE)}); packing (xz -9e, ~2 min on 2 cores)")
        parts = pack(site, carry, args.part_mib)
    manifest = {"format": "xz tar of a `pip install --target` folder, split; cat the parts in order",
                "site_tar": SITE_TAR, "parts": parts, "dropped": list(DROP_FROM_SITE), "unpacked_bytes": unpacked,
                "wheels": {w.name: w.version for w in sorted(wheels.values(), key=lambda w: w.name)}}
    (carry / MANIFEST).write_text(json.dumps(manifest, indent=1) + "\n")
    repo = tracked_bytes()
    print(f"carry: {carry} ({len(parts)} part(s): {', '.join(mib(int(p['bytes'])) for p in parts)}); "
          f"repository's tracked files {mib(repo) if repo is not None else 'unknown'}; "
          f"{time.perf_counter() - t0:.0f} s")
    biggest = max(int(p["bytes"]) for p in parts)
    if repo is not None and biggest + repo > CARRY_LIMIT_MIB * 2**20:
        print(f"gpu_wheels: a part of {mib(biggest)} and the repository ({mib(repo)}) exceed one device call's "
              f"{CARRY_LIMIT_MIB} MiB: lower --part-mib", file=sys.stderr)
        sys.exit(1)
    print("device calls: " + ("one (bash benchmarks/gpu_check.sh run)" if len(parts) == 1 else
                              f"{len(parts)} (gpu_check.sh stage for all but the last part; docs/cluster/gpu-check.md)"))


if __name__ == "__main__":
    main()
