#!/usr/bin/env python3
"""The vLLM and SGLang configurations that run on the H200, derived from the committed ones
(configs/vllm.toml, vllm_fp8_quantization.toml, sglang.toml, sglang_torch_compile.toml): every
committed key and flag is kept as it is; only what the GPU machine needs is added on top.

Added (``overrides``):
- ``server.model_path``: the folder ``hf_model.py`` writes (Llama-3.1-8B's config.json, the GGUF's
  tokenizer, no weights), and ``server.load_format = "dummy"`` (random weights, no download); the
  tokenizer (``tokenizer`` / ``tokenizer_path``) is that folder too. Requests still name the
  committed ``model`` (optbench passes it as the served model name).
- ``env``: ``PYTHONPATH`` = the ``pip install --target`` folder of the engine's carried wheels
  (SGLang's holds its own transformers 5.6.0, so vLLM keeps the image's 5.17.0), offline hub flags
  (and SGLang's ``SGLANG_GRPC_PORT``, see ``derive``).
- no ``port``: optbench picks a free one (a fixed port fails for a minute after the previous
  server on it stopped; see ``derive``).
- ``ready_timeout_s`` and ``[load_test]`` ``ignore_eos = true`` + ``time_limit_s`` (+ the folder's
  tokenizer.json as the fallback where a server lacks /tokenize): the reference load test is the
  reference load test (optbench run's defaults) with exactly 1024 output tokens, time-capped.

    engine_configs.py --model-dir DIR --site vllm=DIR --site sglang=DIR --out DIR [NAME ...]

``check_keeps_committed_flags`` is what tests/test_gpu_scripts.py asserts for every derived file.
"""

from __future__ import annotations

import argparse
import sys
import tomllib
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
CONFIGS = ROOT / "configs"
NAMES = ("vllm", "vllm_fp8_quantization", "sglang", "sglang_torch_compile")
TOKENIZER_KEY = {"vllm": "tokenizer", "sglang": "tokenizer_path"}
#: Seconds each configuration may take to become ready on the H200 (vLLM 0.26.0 served dummy 8B
#: weights after ~170 s; torch.compile adds minutes).
READY_TIMEOUT_S = {"vllm": 420, "vllm_fp8_quantization": 420, "sglang": 420, "sglang_torch_compile": 900}
ENV = {
    "HF_HUB_OFFLINE": "1",
    "TRANSFORMERS_OFFLINE": "1",
    "HF_DATASETS_OFFLINE": "1",
    "VLLM_NO_USAGE_STATS": "1",
    "DO_NOT_TRACK": "1",
    "TOKENIZERS_PARALLELISM": "false",
}


def committed(name: str) -> dict[str, Any]:
    return tomllib.loads((CONFIGS / f"{name}.toml").read_text())


def derive(
    name: str,
    model_dir: str,
    site: str | None,
    *,
    python: str | None = None,
    ready_timeout_s: float | None = None,
    load_test_time_limit_s: float = 240.0,
) -> dict[str, Any]:
    """The committed configuration ``name`` with the GPU machine's additions (module docs)."""
    data = committed(name)
    engine = data["engine"]
    if engine not in TOKENIZER_KEY:
        raise SystemExit(f"engine_configs: {name} is a {engine} configuration, not vLLM or SGLang")
    data.setdefault("name", name)
    # No fixed port: optbench's free-port check binds without SO_REUSEADDR, so the TIME_WAIT
    # sockets the previous server on 8000 leaves behind make it refuse the port for a minute
    # (seen on the H200); optbench picks a free port instead.
    data.pop("port", None)
    server = dict(data.get("server", {}))
    server.update(model_path=model_dir, load_format="dummy")
    server[TOKENIZER_KEY[engine]] = model_dir
    if python:
        server["python"] = python
    data["server"] = server
    env = dict(data.get("env", {}))
    env.update(ENV)
    if engine == "sglang":
        # SGLang 0.5.12 derives a gRPC port (off by default) as port + 10000 and refuses to start
        # when that passes 65535, as a free port above 55535 makes it (seen on the H200).
        env["SGLANG_GRPC_PORT"] = "50051"
    if site:
        env["PYTHONPATH"] = site
    data["env"] = env
    data["ready_timeout_s"] = ready_timeout_s or READY_TIMEOUT_S.get(name, 600)
    lt = dict(data.get("load_test", {}))
    # the server's /tokenize measures the prompts; this tokenizer.json (the same tokenizer) is the
    # fallback optbench uses where a server has no /tokenize
    lt.update(ignore_eos=True, time_limit_s=load_test_time_limit_s, tokenizer=f"{model_dir}/tokenizer.json")
    data["load_test"] = lt
    return data


def _toml_value(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, (int, float)):
        return repr(v)
    if isinstance(v, str):
        return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(v, list):
        return "[" + ", ".join(_toml_value(x) for x in v) + "]"
    if isinstance(v, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(x)}" for k, x in v.items()) + " }"
    raise TypeError(f"no TOML for {v!r}")


def to_toml(data: dict[str, Any], header: str = "") -> str:
    lines = [f"# {x}" for x in header.splitlines()] if header else []
    tables = {k: v for k, v in data.items() if isinstance(v, dict) and k != "env"}
    for k, v in data.items():
        if k not in tables:
            lines.append(f"{k} = {_toml_value(v)}")
    for k, v in tables.items():
        lines += ["", f"[{k}]"] + [f"{kk} = {_toml_value(vv)}" for kk, vv in v.items()]
    return "\n".join(lines) + "\n"


def write(name: str, out: Path, model_dir: str, site: str | None, **kw: Any) -> Path:
    data = derive(name, model_dir, site, **kw)
    path = out / f"{name}.toml"
    out.mkdir(parents=True, exist_ok=True)
    path.write_text(
        to_toml(
            data,
            f"configs/{name}.toml with the GPU machine's additions (benches/gpu/engine_configs.py):\n"
            "dummy weights from the model folder, the carried engine on PYTHONPATH, ignore_eos.",
        )
    )
    assert tomllib.loads(path.read_text()) == data, "TOML round trip"
    return path


def check_keeps_committed_flags(name: str, derived_path: Path) -> list[str]:
    """Problems (none = fine): the derived configuration must validate with optbench, keep every
    committed top-level value, [server] key and flag, and emit every argument of the committed
    configuration's command (apart from the weights' path) in the same order."""
    from optbench.config import load_config
    from optbench.servers.engines import engine_for

    problems = []
    base = committed(name)
    der = tomllib.loads(derived_path.read_text())
    for k, v in base.items():
        if k in ("server", "env", "load_test", "ready_timeout_s", "port"):
            continue
        if der.get(k) != v:
            problems.append(f"top-level {k}: committed {v!r}, derived {der.get(k)!r}")
    for k, v in base.get("server", {}).items():
        if der["server"].get(k) != v:
            problems.append(f"server.{k}: committed {v!r}, derived {der['server'].get(k)!r}")
    cfg_c = load_config(CONFIGS / f"{name}.toml")
    cfg_d = load_config(derived_path)
    cmd_c = engine_for(cfg_c).command(8000)[1:]  # without the interpreter
    cmd_d = engine_for(cfg_d).command(8000)[1:]
    # the committed command, weights path aside, must be a subsequence of the derived one
    model_flag = engine_for(cfg_c).model_flag
    skip = {cmd_c.index(model_flag) + 1} if model_flag in cmd_c else set()
    it = iter(cmd_d)
    for i, a in enumerate(cmd_c):
        if i in skip:
            continue
        if not any(a == b for b in it):
            problems.append(f"argument {a!r} of the committed command is missing or out of order in {cmd_d}")
            break
    if cfg_d.model != cfg_c.model or "--served-model-name" not in cmd_d:
        problems.append("requests must keep naming the committed model")
    for flag in ("--load-format", "dummy"):
        if flag not in cmd_d:
            problems.append(f"{flag} missing from {cmd_d}")
    return problems


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("names", nargs="*", default=list(NAMES), help=f"configurations (default: {' '.join(NAMES)})")
    p.add_argument("--model-dir", required=True, help="the folder hf_model.py wrote")
    p.add_argument("--site", action="append", default=[], help="ENGINE=DIR: the engine's --target install (PYTHONPATH)")
    p.add_argument("--python", help="server.python (default: the interpreter running optbench)")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--load-test-time-limit-s", type=float, default=240.0)
    p.add_argument(
        "--check", action="store_true", help="also check each file against the committed one (needs optbench)"
    )
    a = p.parse_args(argv)
    sites = dict(s.split("=", 1) for s in a.site)
    rc = 0
    for name in a.names:
        engine = committed(name)["engine"]
        path = write(
            name,
            a.out,
            a.model_dir,
            sites.get(engine),
            python=a.python,
            load_test_time_limit_s=a.load_test_time_limit_s,
        )
        print(path)
        if a.check:
            for problem in check_keeps_committed_flags(name, path):
                print(f"  PROBLEM {problem}", file=sys.stderr)
                rc = 1
    return rc


if __name__ == "__main__":
    sys.exit(main())
