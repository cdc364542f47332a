"""The H200 measurement's scripts (benches/gpu/) on the CPU, so its three-command reproduction
cannot rot between GPU sessions.

What runs here is what runs there, on a small model: ``gen_gguf.py`` writes a GGUF with the
vocabulary padded to Llama 3.1's 128,256 entries, and ``sweep.py --small`` serves it through
optbench's orchestrator with the embedded (CPU) llama-server and writes the report, the CSV and
the plots. ``probe_sampling.py`` does the same for its three server variants. The CUDA build
(step1.sh) is the one part only the GPU machine can check."""

from __future__ import annotations

import csv
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
GPU = ROOT / "benches" / "gpu"
pytestmark = [pytest.mark.llama, pytest.mark.slow]


def run(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


@pytest.fixture(scope="module")
def llama_binary() -> str:
    if os.environ.get("OPTBENCH_SKIP_LLAMA") == "1":
        pytest.skip("OPTBENCH_SKIP_LLAMA=1")
    from optbench.servers.llama_cpp import find_llama_server

    return str(find_llama_server(None))


@pytest.fixture(scope="module")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """2 blocks, hidden 256, SmolLM2's real tokenizer padded to 128,256 tokens (as on the GPU)."""
    d = tmp_path_factory.mktemp("gpu-model")
    run([str(GPU / "gen_gguf.py"), "--extract-vocab", str(d / "vocab.gguf")], timeout=120)
    run(
        [
            str(GPU / "gen_gguf.py"),
            "--tiny",
            "--vocab",
            "128256",
            "--vocab-from",
            str(d / "vocab.gguf"),
            "--out",
            str(d / "tiny.gguf"),
        ],
        timeout=120,
    )
    return d / "tiny.gguf"


def test_the_gguf_plan_has_llama_3_1_8b_shapes() -> None:
    proc = run([str(GPU / "gen_gguf.py"), "--dry-run"], timeout=60)
    out = proc.stderr + proc.stdout
    # Meta's published parameter count for Llama 3.1 8B, and its tensor shapes.
    assert "292 tensors, 8,030,261,312 parameters" in out, out
    assert re.search(r"blk\.0\.attn_k\.weight\s+\(1024, 4096\)\s+f16", out), out
    assert re.search(r"blk\.0\.ffn_gate\.weight\s+\(14336, 4096\)\s+f16", out), out
    assert re.search(r"output\.weight\s+\(128256, 4096\)\s+f16", out), out


@pytest.mark.timeout(600)
def test_sweep_serves_through_optbench_and_reports_without_quality(
    tiny_model: Path, llama_binary: str, tmp_path: Path
) -> None:
    out = tmp_path / "out"
    run(
        [
            str(GPU / "sweep.py"),
            "--small",
            "--model",
            str(tiny_model),
            "--binary",
            llama_binary,
            "--out",
            str(out),
            "--deadline-s",
            "400",
        ],
        timeout=560,
    )
    names = {p.name for p in out.iterdir() if not p.name.startswith(".")}
    assert {
        "GPU_RESULTS.md",
        "summary.csv",
        "requests.parquet",
        "extras.tar.gz",
        "throughput_vs_concurrency.png",
        "latency_percentiles.png",
        "latency_cdfs.png",
    } <= names, names
    assert len(names) <= 7  # the device returns 8 files from $OUT; step2.sh adds its log

    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [int(r["concurrency"]) for r in rows] == [1, 2]
    for r in rows:
        assert int(r["num_succeeded"]) == int(r["num_requests"]) == 4, r
        assert float(r["client_cpu_share"]) > 0 and float(r["server_cpu_share"]) > 0, r
    assert len({r["prompt_seed"] for r in rows}) == len(rows)  # each run its own prompts

    report = (out / "GPU_RESULTS.md").read_text()
    assert "quality was not evaluated" in report
    assert not re.search(r"\b(f1|exact_match|pass@1|accuracy)\b", report, re.I)  # and no scores anyway
    assert re.search(r"^\| 1 \| 4 / 4 \|", report, re.M) and re.search(r"^\| 2 \| 4 / 4 \|", report, re.M), report
    assert "](throughput_vs_concurrency.png)" in report  # links relative to the run's own folder

    # No request may find its prompt already in a slot: the server's log shows every prompt
    # evaluated in full (a prefix-cache hit evaluates 1 token). The seed per run is what keeps
    # the second run from reusing the first run's prompts.
    with tarfile.open(out / "extras.tar.gz") as tar:
        log = next(tar.extractfile(m).read().decode() for m in tar.getmembers() if m.name.endswith(".log"))
    evaluated = [int(n) for n in re.findall(r"prompt eval time =\s+[\d.]+ ms /\s+(\d+) tokens", log)]
    assert len(evaluated) == 4 + 1 + 4, evaluated  # c=1: 4 + 1 warm-up; c=2: 4
    assert min(evaluated) >= 60, evaluated  # 64-token prompts, at most a BOS-sized common prefix


@pytest.mark.timeout(300)
def test_sampling_probe_runs_its_three_variants(tiny_model: Path, llama_binary: str, tmp_path: Path) -> None:
    run(
        [
            str(GPU / "probe_sampling.py"),
            "--model",
            str(tiny_model),
            "--binary",
            llama_binary,
            "--out",
            str(tmp_path),
            "--input-tokens",
            "64",
            "--output-tokens",
            "32",
            "--concurrency",
            "1,2",
            "--parallel",
            "2",
        ],
        timeout=280,
    )
    rows = list(csv.DictReader((tmp_path / "probe_sampling.csv").open()))
    assert [(r["variant"], int(r["concurrency"])) for r in rows] == [
        (v, c) for v in ("default", "backend-sampling", "top-k 1") for c in (1, 2)
    ]
    for r in rows:
        assert int(r["succeeded"]) == int(r["concurrency"]) and float(r["tpot_ms_p50"]) > 0, r
    with tarfile.open(tmp_path / "probe_sampling_logs.tar.gz") as tar:
        assert sorted(m.name for m in tar.getmembers()) == [
            "probe_backend_sampling.log",
            "probe_default.log",
            "probe_top_k_1.log",
        ]
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "PROBE_SAMPLING.md",
        "probe_sampling.csv",
        "probe_sampling_logs.tar.gz",
    ]


# --- vLLM and SGLang on the H200 (issue 12, part 3): the CPU-side pieces -------------------------


def _hf_model(tmp: Path, vocab_gguf: Path) -> Path:
    run(
        [str(GPU / "hf_model.py"), "--tiny", "--vocab", "128256", "--vocab-from", str(vocab_gguf), "--out", str(tmp)],
        timeout=120,
    )
    return tmp


def _byte_decoder() -> dict[str, int]:
    """GPT-2's byte-level alphabet, reversed (the same table as tokenizers' ByteLevel)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs)}


@pytest.mark.timeout(300)
def test_hf_tokenizer_covers_the_vocabulary_and_tokenizes_as_the_gguf(
    tiny_model: Path, llama_binary: str, tmp_path: Path
) -> None:
    """The folder vLLM and SGLang serve (hf_model.py) has a tokenizer covering all 128,256 ids of
    the model (else every response is empty text) and splits prompts exactly as llama.cpp splits
    them with the GGUF's tokenizer, so every engine sees the same prompts token for token."""
    import json
    import urllib.request

    import optbench
    from optbench._core import count_tokens
    from optbench.config import parse_config
    from optbench.prompts import synthetic_prompts

    model = _hf_model(tmp_path / "hf", tiny_model.parent / "vocab.gguf")
    tok = json.loads((model / "tokenizer.json").read_text())
    cfg = json.loads((model / "config.json").read_text())
    ids = sorted(tok["model"]["vocab"].values())
    assert ids == list(range(128256)) and cfg["vocab_size"] == 128256
    assert cfg["architectures"] == ["LlamaForCausalLM"] and cfg["torch_dtype"] == "bfloat16"
    assert tok["model"]["vocab"]["<|optbench_pad_128255|>"] == 128255  # NORMAL vocabulary entries ...
    assert not any(a["content"].startswith("<|optbench_pad") for a in tok["added_tokens"])  # ... not added tokens
    tok_cfg = json.loads((model / "tokenizer_config.json").read_text())
    assert tok_cfg["add_bos_token"] is False and "chat_template" in tok_cfg

    config = parse_config(
        {
            "name": "tiny",
            "engine": "llama_cpp",
            "model": "tiny",
            "ready_timeout_s": 120,
            "server": {"model_path": str(tiny_model), "binary": llama_binary, "parallel": 1, "ctx_size": 4096},
        },
        "<test>",
    )
    vocab = {i: s for s, i in tok["model"]["vocab"].items()}
    dec = _byte_decoder()
    texts = [
        "Hello world! The year 2024 cost $12,345.67 -- ok?",
        "  leading spaces, tabs\tand\nnew lines\n\n",
        "naïve café: 東京 🤖 done.",
        "def f(x):\n    return x**2  # 3 digits 987",
    ]
    with optbench.serve(config) as server:
        prompts = synthetic_prompts(server.base_url, server.model, 2, 300, seed=7)
        assert prompts.source == "server"
        for text in texts + list(prompts.texts):
            req = urllib.request.Request(
                f"{server.base_url}/tokenize",
                data=json.dumps({"content": text}).encode(),
                headers={"Content-Type": "application/json"},
            )
            llama_ids = json.loads(urllib.request.urlopen(req, timeout=30).read())["tokens"]
            # llama.cpp's ids are a segmentation of the text in this tokenizer's vocabulary ...
            pieces = "".join(vocab[i] for i in llama_ids)
            assert bytes(dec[c] for c in pieces).decode() == text
            # ... of the length this tokenizer.json gives (the Rust tokenizers crate, as optbench uses it)
            assert count_tokens(str(model / "tokenizer.json"), text, add_special=True) == len(llama_ids), text[:60]
            try:
                from tokenizers import Tokenizer
            except ImportError:
                continue
            assert Tokenizer.from_file(str(model / "tokenizer.json")).encode(text).ids == llama_ids, text[:60]


def test_derived_engine_configs_keep_every_committed_flag(tmp_path: Path) -> None:
    sys.path.insert(0, str(GPU))
    import engine_configs

    from optbench.config import load_config
    from optbench.servers.engines import engine_for

    for name in engine_configs.NAMES:
        path = engine_configs.write(
            name, tmp_path, "/w/hf-model", "/w/site-x", ready_timeout_s=300, load_test_time_limit_s=150
        )
        assert engine_configs.check_keeps_committed_flags(name, path) == [], name
        cfg = load_config(path)
        cmd = engine_for(cfg).command(8000)
        assert cmd[cmd.index("--load-format") + 1] == "dummy"
        assert "/w/hf-model" in cmd and cmd[cmd.index("--served-model-name") + 1] == cfg.model
        assert cfg.env["PYTHONPATH"] == "/w/site-x" and cfg.env["HF_HUB_OFFLINE"] == "1"
        assert cfg.load_test["ignore_eos"] is True and cfg.ready_timeout_s == 300
        assert cfg.port is None  # optbench picks a free port: a fixed one is refused while in TIME_WAIT
        if cfg.engine == "sglang":  # SGLang 0.5.12 refuses port + 10000 > 65535 unless this is set
            assert 1 <= int(cfg.env["SGLANG_GRPC_PORT"]) <= 65535
        if name == "vllm_fp8_quantization":
            assert cmd[cmd.index("--quantization") + 1] == "fp8"
        if name == "sglang_torch_compile":
            assert "--enable-torch-compile" in cmd


def test_engine_wheel_locks_and_pieces(tmp_path: Path) -> None:
    """The committed wheel locks carry nothing the H200 image has (apart from SGLang's own
    transformers / tokenizers) and nothing excluded; pieces verify, and a missing or damaged one
    is named."""
    sys.path.insert(0, str(GPU))
    import engine_wheels

    image = engine_wheels.image_packages()
    assert image["torch"] == "2.11.0" and image["transformers"] == "5.17.0"
    for engine, spec in engine_wheels.ENGINES.items():
        rows = engine_wheels.read_lock(engine)
        names = {r["name"] for r in rows}
        assert engine in names
        forced = {engine_wheels.Requirement(r).name for r in spec["force"]}
        assert not (names & set(image)) - forced, (engine, names & set(image))
        assert not names & spec["exclude"]
        assert all(len(r["sha256"]) == 64 and r["file"].endswith(".whl") for r in rows)
    assert {r["name"]: r["version"] for r in engine_wheels.read_lock("sglang")}["transformers"] == "5.6.0"
    assert sum(r["size"] for r in engine_wheels.read_lock("vllm")) < 420 * 2**20  # ~7 device commands

    blob = tmp_path / "x.bin"
    blob.write_bytes(os.urandom(2_500_000))
    digest, n = engine_wheels.split(blob, tmp_path, "t", 1_000_000)
    assert n == 3 and engine_wheels.verify(tmp_path, "t", tmp_path / "re.bin") == 0
    assert (tmp_path / "re.bin").read_bytes() == blob.read_bytes()
    (tmp_path / "t.tar.01").unlink()
    assert engine_wheels.verify(tmp_path, "t", None) == 3
    (tmp_path / "t.tar.01").write_bytes(b"damaged")
    assert engine_wheels.verify(tmp_path, "t", None) == 4


@pytest.mark.timeout(400)
def test_sweep_serves_any_configuration_file(tiny_model: Path, llama_binary: str, tmp_path: Path) -> None:
    """sweep.py --config: the path the vLLM and SGLang sweeps take (here with a llama.cpp file)."""
    cfg = tmp_path / "tiny.toml"
    cfg.write_text(
        f'name = "tiny_cfg"\nengine = "llama_cpp"\nmodel = "tiny"\nready_timeout_s = 120\n\n[server]\n'
        f'model_path = "{tiny_model}"\nbinary = "{llama_binary}"\nparallel = 2\nctx_size = 1024\n'
    )
    out = tmp_path / "out"
    run(
        [
            str(GPU / "sweep.py"),
            "--small",
            "--config",
            str(cfg),
            "--out",
            str(out),
            "--concurrency",
            "1",
            "--requests",
            "1=2",
            "--deadline-s",
            "300",
        ],
        timeout=360,
    )
    rows = list(csv.DictReader((out / "summary.csv").open()))
    assert [(int(r["concurrency"]), int(r["num_succeeded"])) for r in rows] == [(1, 2)]
    assert float(rows[0]["tpot_p50_ms"]) > 0 and float(rows[0]["server_cpu_share"]) > 0
    report = (out / "GPU_RESULTS.md").read_text()
    assert 'name = "tiny_cfg"' in report and "decode step" in report
