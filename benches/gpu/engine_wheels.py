#!/usr/bin/env python3
"""The wheels that vLLM 0.26.0 and SGLang 0.5.12 need on the H200 machine, which cannot download:
resolved and fetched here (the CPU machine), packed and split into pieces that one device command
each can carry, and checked there before anything is installed.

    engine_wheels.py resolve vllm        # BFS over Requires-Dist, pip download --no-deps; writes engines/vllm.lock
    engine_wheels.py fetch vllm          # download exactly what engines/vllm.lock names (sha256 checked)
    engine_wheels.py pack vllm --add F   # carry/pieces/vllm.tar.NN (+ vllm.sha256); F: more files in the tar
    engine_wheels.py verify DIR vllm     # on the GPU machine: every piece and the whole tar against vllm.sha256
    engine_wheels.py check vllm          # CPU proof: the lock's wheels satisfy each other + the image (metadata)

Why a resolver of its own rather than pip's: the image already holds torch 2.11.0+cu130, triton,
numpy, numba, transformers and ~200 more (engines/image_packages.txt, from the device docs). pip
would resolve torch's CUDA wheels again (gigabytes) and cannot be told "this is installed on another
machine". So: start from the engine's declared dependencies for CPython 3.12 / Linux x86_64,
follow every requirement whose name the image lacks, skip the image's and an explicit list of
packages the serving path does not import (measured on the H200 for vLLM: see EXCLUDE), and keep
one version per name. The image's versions win where a pin disagrees (numba 0.68 for vLLM's
==0.65.0, for example): ``check`` lists every such disagreement.

Everything big lives under benches/gpu/carry/ (git-ignored); the lock files are committed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import time
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name, parse_wheel_filename
    from packaging.version import Version
except ImportError:  # pip vendors it
    from pip._vendor.packaging.requirements import Requirement  # type: ignore[no-redef]
    from pip._vendor.packaging.utils import canonicalize_name, parse_wheel_filename  # type: ignore[no-redef]
    from pip._vendor.packaging.version import Version  # type: ignore[no-redef]

HERE = Path(__file__).resolve().parent
ENGINES_DIR = HERE / "engines"
CARRY = HERE / "carry"
WHEELS = CARRY / "wheels"
PIECES = CARRY / "pieces"
PIECE_MIB = 60  # + the working tree (~1.5 MiB) stays under the device's 64 MiB per command

#: The H200 image: Python 3.12.3 on Ubuntu 24.04 (glibc 2.39), x86_64.
TARGET_ENV = {
    "python_version": "3.12",
    "python_full_version": "3.12.3",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "platform_release": "",
    "platform_version": "",
    "implementation_version": "3.12.3",
}
PIP_TARGET = [
    "--only-binary=:all:",
    "--python-version",
    "3.12",
    "--implementation",
    "cp",
    "--abi",
    "cp312",
    "--abi",
    "abi3",
    "--abi",
    "none",
]
for _n in (5, 12, 17, 24, 27, 28, 31, 34, 35, 38, 39):
    PIP_TARGET += ["--platform", f"manylinux_2_{_n}_x86_64"]
PIP_TARGET += [
    "--platform",
    "manylinux2014_x86_64",
    "--platform",
    "manylinux2010_x86_64",
    "--platform",
    "manylinux1_x86_64",
    "--platform",
    "linux_x86_64",
    "--platform",
    "any",
]

# Not carried, per engine: what the serving path of a text model does not import, and what would
# pull compilers or video stacks. For vLLM this is the set with which 0.26.0 served on the H200
# when issue 12 was written (~380 MiB in all).
_COMMON_EXCLUDE = {
    "tokenspeed-triton",
    "nvidia-cutlass-dsl-libs-cu12",
    "nvidia-cutlass-dsl-libs-cu13",
    "nvidia-nvvm",
    "nvidia-cuda-nvcc",
    "tilelang",
    "z3-solver",
    "pynvvideocodec",
    "torchcodec",
}
ENGINES: dict[str, dict] = {
    "vllm": {
        "root": ["vllm==0.26.0"],
        "exclude": set(_COMMON_EXCLUDE),
        "force": [],  # carried although the image has the name (another version)
    },
    "sglang": {
        "root": ["sglang==0.5.12"],
        # decord2/av: video (Arm only anyway); the rest as for vLLM.
        "exclude": set(_COMMON_EXCLUDE) | {"decord2", "av"},
        # SGLang 0.5.12 pins transformers==5.6.0; the image has 5.17.0, which vLLM keeps: SGLang's
        # wheels go to a --target of their own, first on its PYTHONPATH. transformers 5.6.0 checks
        # at import that tokenizers is <=0.23.0 (the image has 0.23.2), so tokenizers comes too.
        "force": ["transformers==5.6.0", "tokenizers<=0.23.0"],
    },
}


def log(msg: str) -> None:
    print(f"[engine_wheels {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def image_packages() -> dict[str, str | None]:
    out: dict[str, str | None] = {}
    for line in (ENGINES_DIR / "image_packages.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            parts = line.split()
            out[canonicalize_name(parts[0])] = parts[1] if len(parts) > 1 else None
    return out


def wheel_requirements(whl: Path, extras: set[str]) -> list[Requirement]:
    """The wheel's Requires-Dist that apply on the target for the given extras."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA") and n.count("/") == 1)
        text = z.read(meta).decode("utf-8", "replace")
    reqs = []
    for line in text.splitlines():
        if not line.startswith("Requires-Dist:"):
            continue
        r = Requirement(line.split(":", 1)[1].strip())
        if r.marker is None:
            reqs.append(r)
            continue
        for extra in {""} | extras:
            if r.marker.evaluate({**TARGET_ENV, "extra": extra}):
                reqs.append(r)
                break
    return reqs


def pip_download(specs: list[str], dest: Path) -> None:
    dest.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *PIP_TARGET, "-d", str(dest), *specs]
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"pip download failed for {specs}:\n{r.stderr[-3000:]}")


def wheels_in(dest: Path) -> dict[str, Path]:
    out = {}
    for w in dest.glob("*.whl"):
        name, _ver, _b, _tags = parse_wheel_filename(w.name)
        out[canonicalize_name(name)] = w
    return out


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def stub_environment(python: str, venv: Path, image: dict[str, str | None], force: set[str]) -> Path:
    """A Python 3.12 venv whose site-packages holds metadata-only stubs of the image's packages
    whose version is known (torch 2.11.0, numpy 2.5.2, transformers 5.17.0, ...), so that pip's
    resolver treats them as installed and does not fetch torch's CUDA stack again."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([python, "-m", "venv", str(venv)], check=True)
        subprocess.run([str(venv / "bin" / "python"), "-m", "pip", "install", "-q", "-U", "pip"], check=True)
    site = Path(
        subprocess.run(
            [str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    )
    for d in site.glob("*.dist-info"):
        if (d / "INSTALLER").is_file() and (d / "INSTALLER").read_text().strip() == "optbench-stub":
            for f in d.iterdir():
                f.unlink()
            d.rmdir()
    for name, version in image.items():
        if version and name not in force:
            d = site / f"{name.replace('-', '_')}-{version}.dist-info"
            d.mkdir(exist_ok=True)
            (d / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
            (d / "INSTALLER").write_text("optbench-stub\n")
            (d / "RECORD").write_text("")
    return venv / "bin" / "python"


def resolve(engine: str, python: str) -> int:
    """pip's own resolver (``install --dry-run --report``) in a Python 3.12 venv holding stubs of
    the image's packages; then everything it would install, minus the image's and EXCLUDE, is
    downloaded and locked."""
    spec = ENGINES[engine]
    image = image_packages()
    dest = WHEELS / engine
    exclude = {canonicalize_name(n) for n in spec["exclude"]}
    force = {canonicalize_name(Requirement(r).name) for r in spec["force"]}
    t0 = time.monotonic()
    vpy = stub_environment(python, CARRY / "resolve-venv", image, force)
    report = CARRY / f"{engine}-pip-report.json"
    plat = [
        a
        for a in PIP_TARGET
        if a not in ("--python-version", "3.12", "--implementation", "cp", "--abi", "cp312", "abi3", "none")
    ]
    cmd = [
        str(vpy),
        "-m",
        "pip",
        "install",
        "-q",
        "--dry-run",
        "--report",
        str(report),
        *plat,
        *spec["root"],
        *spec["force"],
    ]
    log("resolving: " + " ".join(cmd[3:]))
    r = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if r.returncode != 0:
        raise SystemExit(f"pip could not resolve {engine}:\n{r.stderr[-3000:]}")
    planned = {}
    for item in json.loads(report.read_text())["install"]:
        name = canonicalize_name(item["metadata"]["name"])
        planned[name] = (item["metadata"]["version"], item["download_info"]["url"].rsplit("/", 1)[1])
    carried = {n: v for n, v in planned.items() if n not in exclude and (n not in image or n in force)}
    from_image = sorted(
        f"{n}(pip wanted {v[0]}, image {image[n] or '?'})" if image[n] != v[0] else n
        for n, v in planned.items()
        if n in image and n not in force
    )
    dest.mkdir(parents=True, exist_ok=True)
    files = {v[1] for v in carried.values()}
    for w in dest.glob("*.whl"):  # other versions, or names no longer needed
        if w.name not in files:
            w.unlink()
    need = [f"{n}=={v[0]}" for n, v in carried.items() if not (dest / v[1]).is_file()]
    if need:
        log(f"downloading {len(need)} wheels")
        pip_download(need, dest)
    have = {n: dest / v[1] for n, v in carried.items()}
    missing = [p.name for p in have.values() if not p.is_file()]
    if missing:
        raise SystemExit(f"pip download did not fetch the files the resolver chose: {missing}")
    lines = [
        f"# {engine}: wheels carried to the H200 (CPython 3.12, manylinux x86_64); written by "
        "benches/gpu/engine_wheels.py resolve. name version file bytes sha256"
    ]
    total = 0
    for name in sorted(carried):
        w = have[name]
        size = w.stat().st_size
        total += size
        lines.append(f"{name} {carried[name][0]} {w.name} {size} {sha256(w)}")
    lines.append(f"# {len(carried)} wheels, {total} bytes ({total / 2**20:.1f} MiB)")
    lines.append("# from the image, not carried: " + " ".join(from_image))
    lines.append(
        "# excluded (not imported when serving a text model): "
        + " ".join(sorted(f"{n}=={v[0]}" for n, v in planned.items() if n in exclude))
    )
    lock = ENGINES_DIR / f"{engine}.lock"
    lock.write_text("\n".join(lines) + "\n")
    log(f"{engine}: {len(carried)} wheels, {total / 2**20:.1f} MiB in {time.monotonic() - t0:.0f} s; wrote {lock}")
    return 0


def read_lock(engine: str) -> list[dict]:
    rows = []
    for line in (ENGINES_DIR / f"{engine}.lock").read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        name, version, file, size, digest = line.split()
        rows.append(dict(name=name, version=version, file=file, size=int(size), sha256=digest))
    return rows


def fetch(engine: str) -> int:
    """Downloads what the lock names (pinned by version), checks every sha256."""
    dest = WHEELS / engine
    rows = read_lock(engine)
    have = wheels_in(dest) if dest.exists() else {}
    missing = [r for r in rows if r["name"] not in have or have[r["name"]].name != r["file"]]
    if missing:
        log(f"downloading {len(missing)} wheels")
        pip_download([f"{r['name']}=={r['version']}" for r in missing], dest)
    have = wheels_in(dest)
    bad = [r["file"] for r in rows if r["name"] not in have or sha256(have[r["name"]]) != r["sha256"]]
    if bad:
        raise SystemExit(f"sha256 mismatch or missing: {bad}")
    log(f"{engine}: {len(rows)} wheels present, sha256 as in the lock")
    return 0


def pack(engine: str, add: list[Path], piece_mib: int) -> int:
    """carry/pieces/<engine>.tar.NN and <engine>.sha256 (the pieces' and the whole tar's sha256)."""
    rows = read_lock(engine)
    PIECES.mkdir(parents=True, exist_ok=True)
    for old in PIECES.glob(f"{engine}.tar*"):
        old.unlink()
    tar_path = PIECES / f"{engine}.tar"
    with tarfile.open(tar_path, "w") as tar:  # wheels are zip files already: no compression
        for r in rows:
            tar.add(WHEELS / engine / r["file"], arcname=f"wheels/{r['file']}")
        for f in add:
            tar.add(f, arcname=f"extra/{f.name}")
    size = tar_path.stat().st_size
    whole, i = split(tar_path, PIECES, engine, piece_mib * 2**20)
    tar_path.unlink()
    log(f"{engine}: {size / 2**20:.1f} MiB in {i} pieces under {PIECES}")
    print(json.dumps({"engine": engine, "bytes": size, "pieces": i, "sha256": whole}))
    return 0


def split(path: Path, dest: Path, name: str, piece_bytes: int) -> tuple[str, int]:
    """``path`` cut into ``dest/<name>.tar.NN`` of ``piece_bytes`` at most, and ``dest/<name>.sha256``:
    a comment, the whole file's sha256, then one line per piece. Returns (sha256, pieces)."""
    whole = sha256(path)
    size = path.stat().st_size
    lines = [
        f"# {name}.tar: {size} bytes, {-(-size // piece_bytes)} pieces of at most {piece_bytes} bytes",
        f"{whole}  {name}.tar",
    ]
    i = 0
    with path.open("rb") as f:
        while block := f.read(piece_bytes):
            p = dest / f"{name}.tar.{i:02d}"
            p.write_bytes(block)
            lines.append(f"{hashlib.sha256(block).hexdigest()}  {p.name}")
            i += 1
    (dest / f"{name}.sha256").write_text("\n".join(lines) + "\n")
    return whole, i


def verify(folder: Path, engine: str, assemble: Path | None) -> int:
    """On the GPU machine: each piece against <engine>.sha256; with --assemble, the whole tar too.
    Prints which pieces are still missing (exit 3) or wrong (exit 4)."""
    lines = [x for x in (folder / f"{engine}.sha256").read_text().splitlines() if x and not x.startswith("#")]
    whole_digest, _ = lines[0].split()
    pieces = [x.split() for x in lines[1:]]
    missing, bad = [], []
    for digest, name in pieces:
        p = folder / name
        if not p.is_file():
            missing.append(name)
        elif sha256(p) != digest:
            bad.append(name)
    if bad:
        log(f"{engine}: WRONG sha256: {' '.join(bad)} (carry them again)")
        return 4
    if missing:
        log(f"{engine}: {len(pieces) - len(missing)}/{len(pieces)} pieces here; missing {' '.join(missing)}")
        return 3
    log(f"{engine}: all {len(pieces)} pieces verified")
    if assemble:
        with assemble.open("wb") as out:
            for _d, name in pieces:
                out.write((folder / name).read_bytes())
        if sha256(assemble) != whole_digest:
            log(f"{engine}: the assembled tar's sha256 is wrong")
            return 4
        log(f"{engine}: assembled {assemble} ({assemble.stat().st_size / 2**20:.1f} MiB), sha256 ok")
    return 0


def check(engine: str) -> int:
    """Every requirement of every locked wheel is met by another locked wheel or by the image (its
    version where known); lists what is met only by name (image version unknown) and what the
    image's version contradicts. Exit 1 on a requirement met by nothing."""
    spec = ENGINES[engine]
    rows = read_lock(engine)
    image = image_packages()
    exclude = {canonicalize_name(n) for n in spec["exclude"]}
    locked = {r["name"]: r for r in rows}
    unmet, contradicted = [], []
    for r in rows:
        w = WHEELS / engine / r["file"]
        for req in wheel_requirements(w, set()) if w.exists() else []:
            n = canonicalize_name(req.name)
            if n in locked:
                if not req.specifier.contains(Version(locked[n]["version"]), prereleases=True):
                    contradicted.append(f"{r['name']} wants {req}, carried {locked[n]['version']}")
            elif n in image:
                v = image[n]
                if v and not req.specifier.contains(Version(v), prereleases=True):
                    contradicted.append(f"{r['name']} wants {req}, the image has {v}")
            elif n not in exclude:
                unmet.append(f"{r['name']} needs {req}")
    print(
        json.dumps(
            {
                "engine": engine,
                "wheels": len(rows),
                "bytes": sum(r["size"] for r in rows),
                "unmet": unmet,
                "version_disagreements": contradicted,
            },
            indent=1,
        )
    )
    return 1 if unmet else 0


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    for c in ("resolve", "fetch", "check"):
        s = sub.add_parser(c)
        s.add_argument("engine", choices=sorted(ENGINES))
        if c == "resolve":
            s.add_argument("--python", default="python3.12", help="a CPython 3.12 for the resolver's venv")
    s = sub.add_parser("pack")
    s.add_argument("engine", choices=sorted(ENGINES))
    s.add_argument("--add", type=Path, action="append", default=[], help="more files into the tar (extra/NAME)")
    s.add_argument("--piece-mib", type=int, default=PIECE_MIB)
    s = sub.add_parser("verify")
    s.add_argument("folder", type=Path)
    s.add_argument("engine")
    s.add_argument("--assemble", type=Path, help="write the whole tar here after the pieces verify")
    a = p.parse_args(argv)
    if a.cmd == "resolve":
        return resolve(a.engine, a.python)
    if a.cmd == "fetch":
        return fetch(a.engine)
    if a.cmd == "check":
        return check(a.engine)
    if a.cmd == "pack":
        return pack(a.engine, a.add, a.piece_mib)
    return verify(a.folder, a.engine, a.assemble)


if __name__ == "__main__":
    sys.exit(main())
