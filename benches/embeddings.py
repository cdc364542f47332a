"""Peer benchmark: optbench's ``Embedder`` against ONNX Runtime's Python API and
sentence-transformers, all on the CPU with all-MiniLM-L6-v2.

- optbench: ``optbench.embeddings.Embedder(model_dir, threads=n)`` (Rust tokenizers + ONNX
  Runtime through the ``ort`` crate, pooling in Rust), in the project's venv;
- onnxruntime-Python: the same ``model.onnx`` through ``onnxruntime.InferenceSession``
  (intra-op threads n, inter-op 1, spinning off as optbench sets it), the same tokenizer.json
  through the ``tokenizers`` package (truncation at 256, batches padded to their longest text,
  texts sorted by token length as optbench sorts them), mean pooling over the attention mask
  and L2 normalisation in numpy;
- sentence-transformers: ``SentenceTransformer.encode`` with PyTorch (``torch.set_num_threads(n)``).
  The shared model folder holds only the ONNX export (no PyTorch weights), so the bench builds
  a plain PyTorch sentence-transformers folder in a temporary directory: ``BertModel`` weights
  taken from the ONNX initializers (MatMul weights transposed back into ``nn.Linear`` form),
  beside the folder's own config, tokenizer and pooling files. Its output is checked against
  ``reference_embeddings.npy`` (made by the real sentence-transformers model).

The two references run in the reference venv (``benches/setup_reference.sh``) as one worker
subprocess; texts go in through a temporary JSON file and embeddings come back as ``.npy``.
Rounds are interleaved (optbench, ORT, ST, optbench, ...) so that load from other processes
hits all three alike. Each measurement: a warm-up pass over 64 texts, then ``repeats`` timed passes of
``encode`` over all texts; best and median reported, ratios from the best.

    .venv/bin/python benches/embeddings.py [--small] --out results/bench_embeddings.json
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import platform
import shlex
import statistics
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import BENCHES, ROOT, SHARED, fmt, setup_reference, write_section  # noqa: E402,F401

MODEL_DIR = SHARED / "models" / "all-MiniLM-L6-v2"
HH_RLHF = SHARED / "datasets" / "hh_rlhf_harmless_base_test.jsonl.gz"

ORT_TARGET = 1.2
ST_TARGET = 3.0
MAX_LENGTH = 256
WARMUP_TEXTS = 64

# The reference worker, run by the reference venv's python: reads one JSON command per line on
# stdin, answers one line starting with "@@" on stdout (libraries may print other lines).
WORKER = r'''
import json, os, sys, time, traceback
from pathlib import Path
import numpy as np

MODEL_DIR = Path(sys.argv[1])
WORK = Path(sys.argv[2])
MAX_LENGTH = int(sys.argv[3])

def reply(obj):
    sys.stdout.write("@@" + json.dumps(obj) + "\n")
    sys.stdout.flush()

def build_torch_folder(folder):
    """A sentence-transformers folder with PyTorch BertModel weights taken from model.onnx."""
    import shutil
    import onnx
    from onnx import numpy_helper
    import torch
    from safetensors.torch import save_file
    model = onnx.load(str(MODEL_DIR / "model.onnx"))
    inits = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    consumers = {}
    for node in model.graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    state = {}
    for name, value in inits.items():
        if not name.startswith("onnx::"):
            state[name[2:] if name.startswith("m.") else name] = value
    for node in model.graph.node:
        if node.op_type != "MatMul":
            continue
        weight = [n for n in node.input if n in inits]
        if not weight:
            continue
        adds = [n for n in consumers.get(node.output[0], []) if n.op_type == "Add"]
        bias = [b for a in adds for b in a.input if b in inits and b.endswith(".bias")]
        if len(bias) != 1:
            raise RuntimeError(f"cannot name the MatMul weight {weight[0]}: consumers {adds}")
        key = bias[0][2:] if bias[0].startswith("m.") else bias[0]
        state[key[: -len(".bias")] + ".weight"] = inits[weight[0]].T
    tensors = {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in state.items()}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(folder / "model.safetensors"))
    for name in ("config.json", "sentence_bert_config.json", "modules.json", "tokenizer.json", "vocab.txt",
                 "tokenizer_config.json", "special_tokens_map.json"):
        shutil.copy(MODEL_DIR / name, folder / name)
    shutil.copytree(MODEL_DIR / "1_Pooling", folder / "1_Pooling", dirs_exist_ok=True)
    (folder / "2_Normalize").mkdir(exist_ok=True)
    return len(tensors)

def main():
    import importlib.metadata as md
    versions = {}
    for n in ("sentence-transformers", "torch", "transformers", "tokenizers", "onnxruntime", "onnx", "numpy",
              "safetensors"):
        try:
            versions[n] = md.version(n)
        except md.PackageNotFoundError:
            pass
    info = {"versions": versions}
    st_model = None
    try:
        import torch
        from sentence_transformers import SentenceTransformer
        t0 = time.perf_counter()
        n = build_torch_folder(WORK / "st-model")
        st_model = SentenceTransformer(str(WORK / "st-model"), device="cpu")
        st_model.eval()
        info["st_build_s"] = time.perf_counter() - t0
        info["st_tensors"] = n
        info["st_max_seq_length"] = st_model.max_seq_length
        info["st_modules"] = [type(m).__name__ for m in st_model]
        # The converted model against the real sentence-transformers output.
        rows = [json.loads(l) for l in (MODEL_DIR / "reference_texts.jsonl").read_text().splitlines()]
        ref = np.load(MODEL_DIR / "reference_embeddings.npy")
        got = st_model.encode([r["text"] for r in rows], batch_size=32, convert_to_numpy=True)
        cos = (got * ref).sum(1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(ref, axis=1))
        info["st_vs_reference_min_cos"] = float(cos.min())
        info["st_vs_reference_max_abs"] = float(np.abs(got - ref).max())
    except Exception:
        info["st_error"] = traceback.format_exc()
    ort_sessions = {}
    tokenizer = None
    try:
        import onnxruntime as ort
        from tokenizers import Tokenizer
        tokenizer = Tokenizer.from_file(str(MODEL_DIR / "tokenizer.json"))
        tokenizer.no_padding()
        tokenizer.enable_truncation(max_length=MAX_LENGTH)
        info["ort_library"] = ort.__file__
    except Exception:
        info["ort_error"] = traceback.format_exc()
    reply({"ready": info})

    def ort_session(threads):
        import onnxruntime as ort
        if threads not in ort_sessions:
            so = ort.SessionOptions()
            so.intra_op_num_threads = threads
            so.inter_op_num_threads = 1
            so.add_session_config_entry("session.intra_op.allow_spinning", "0")
            ort_sessions[threads] = ort.InferenceSession(str(MODEL_DIR / "model.onnx"), so,
                                                         providers=["CPUExecutionProvider"])
        return ort_sessions[threads]

    def ort_encode(texts, threads, batch_size):
        session = ort_session(threads)
        names = {i.name for i in session.get_inputs()}
        encodings = tokenizer.encode_batch(texts)
        order = sorted(range(len(texts)), key=lambda i: -len(encodings[i].ids))  # stable, longest first
        out = np.zeros((len(texts), 384), dtype=np.float32)
        for start in range(0, len(order), batch_size):
            chunk = order[start:start + batch_size]
            seq = max(len(encodings[i].ids) for i in chunk)
            ids = np.zeros((len(chunk), seq), dtype=np.int64)
            mask = np.zeros((len(chunk), seq), dtype=np.int64)
            types = np.zeros((len(chunk), seq), dtype=np.int64)
            for r, i in enumerate(chunk):
                e = encodings[i]
                n = len(e.ids)
                ids[r, :n] = e.ids
                mask[r, :n] = e.attention_mask
                types[r, :n] = e.type_ids
            feeds = {"input_ids": ids, "attention_mask": mask, "token_type_ids": types}
            hidden = session.run(["last_hidden_state"], {k: v for k, v in feeds.items() if k in names})[0]
            m = mask[:, :, None].astype(np.float32)
            pooled = (hidden * m).sum(axis=1) / np.clip(m.sum(axis=1), 1e-9, None)
            norms = np.linalg.norm(pooled, axis=1, keepdims=True)
            out[chunk] = pooled / np.clip(norms, 1e-12, None)
        return out

    for line in sys.stdin:
        try:
            cmd = json.loads(line)
            texts = json.loads(Path(cmd["texts"]).read_text())
            threads, batch_size = cmd["threads"], cmd["batch_size"]
            if cmd["impl"] == "st":
                if st_model is None:
                    raise RuntimeError("sentence-transformers is not available: " + info.get("st_error", "?"))
                import torch
                torch.set_num_threads(threads)
                t0 = time.perf_counter()
                emb = st_model.encode(texts, batch_size=batch_size, convert_to_numpy=True)
                took = time.perf_counter() - t0
            else:
                if tokenizer is None:
                    raise RuntimeError("onnxruntime is not available: " + info.get("ort_error", "?"))
                ort_session(threads)  # session creation is not part of the timing
                t0 = time.perf_counter()
                emb = ort_encode(texts, threads, batch_size)
                took = time.perf_counter() - t0
            if cmd.get("out"):
                np.save(cmd["out"], np.asarray(emb, dtype=np.float32))
            reply({"s": took})
        except Exception:
            reply({"error": traceback.format_exc()})

main()
'''


class Worker:
    """The reference worker subprocess (reference venv)."""

    def __init__(self, python: str, work: Path) -> None:
        script = work / "reference_worker.py"
        script.write_text(WORKER)
        self.work = work
        self.stderr = open(work / "worker.stderr", "w+")
        env = dict(os.environ)
        env.setdefault("TOKENIZERS_PARALLELISM", "true")
        self.proc = subprocess.Popen(
            [python, str(script), str(MODEL_DIR), str(work), str(MAX_LENGTH)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self.stderr,
            text=True,
            env=env,
            cwd=work,
        )
        self.info = self._read()["ready"]

    def _read(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            if line.startswith("@@"):
                return json.loads(line[2:])
        self.stderr.seek(0)
        raise RuntimeError(f"the reference worker exited {self.proc.wait()}: {self.stderr.read()[-3000:]}")

    def run(self, impl: str, texts_path: Path, threads: int, batch_size: int, out: Path | None) -> float:
        assert self.proc.stdin is not None
        cmd = {
            "impl": impl,
            "texts": str(texts_path),
            "threads": threads,
            "batch_size": batch_size,
            "out": None if out is None else str(out),
        }
        self.proc.stdin.write(json.dumps(cmd) + "\n")
        self.proc.stdin.flush()
        answer = self._read()
        if "error" in answer:
            raise RuntimeError(answer["error"])
        return float(answer["s"])

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        self.stderr.close()


def load_texts(n: int) -> list[str]:
    """The last assistant reply of each ``chosen`` transcript, first ``n`` rows in file order."""
    texts = []
    with gzip.open(HH_RLHF, "rt", encoding="utf-8") as f:
        for line in f:
            chosen = json.loads(line)["chosen"]
            texts.append(chosen.rsplit("\n\nAssistant:", 1)[-1].strip())
            if len(texts) == n:
                break
    return texts


def agreement(a: np.ndarray, b: np.ndarray) -> dict[str, float]:
    a64, b64 = a.astype(np.float64), b.astype(np.float64)
    cos = (a64 * b64).sum(1) / np.maximum(np.linalg.norm(a64, axis=1) * np.linalg.norm(b64, axis=1), 1e-300)
    return {"min_cosine": float(cos.min()), "max_abs_diff": float(np.abs(a64 - b64).max())}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="quick CI smoke setting (64 texts, 1 repeat)")
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--texts", type=int, default=None, help="number of texts (default 1000, --small 64)")
    parser.add_argument("--repeats", type=int, default=None, help="timed passes after the warm-up (default 3)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--threads", default=None, help="comma-separated intra-op thread counts (default 1,<cores>; --small: <cores>)"
    )
    args = parser.parse_args()

    import optbench
    from optbench.embeddings import Embedder, find_onnxruntime_library

    cores = os.cpu_count() or 1
    n_texts = args.texts or (64 if args.small else 1000)
    repeats = args.repeats or (1 if args.small else 3)
    threads_list = (
        [int(t) for t in args.threads.split(",")] if args.threads else ([cores] if args.small else sorted({1, cores}))
    )
    batch_size = args.batch_size
    texts = load_texts(n_texts)

    command = " ".join(shlex.quote(a) for a in [".venv/bin/python", "benches/embeddings.py", *sys.argv[1:]])
    versions: dict[str, str] = {
        "optbench": getattr(optbench, "__version__", "?"),
        "optbench build": str(getattr(optbench._core, "build_profile", "?")),
        "python": platform.python_version(),
        "numpy (project venv)": np.__version__,
        "onnxruntime library (optbench)": find_onnxruntime_library().name,
    }
    ratios: list[dict[str, Any]] = []
    if versions["optbench build"] != "release":
        print(
            f"WARNING: optbench's extension is a {versions['optbench build']} build; the ratios are meaningless",
            file=sys.stderr,
        )
    errors: dict[str, str] = {}

    python, setup_error, setup_s = setup_reference()
    tmp = tempfile.TemporaryDirectory(prefix="optbench-bench-emb-")
    work = Path(tmp.name)
    texts_path = work / "texts.json"
    texts_path.write_text(json.dumps(texts))
    warm_path = work / "warmup.json"
    warm_path.write_text(json.dumps(texts[:WARMUP_TEXTS]))
    worker: Worker | None = None
    info: dict[str, Any] = {}
    if python is None:
        errors["reference venv"] = str(setup_error)
    else:
        try:
            worker = Worker(python, work)
            info = worker.info
            versions.update(info.get("versions", {}))
            if "st_error" in info:
                errors["sentence-transformers"] = info["st_error"].strip()
            if "ort_error" in info:
                errors["onnxruntime-Python"] = info["ort_error"].strip()
        except Exception:
            errors["reference worker"] = traceback.format_exc().strip()
            worker = None

    impls = ["optbench"]
    if worker is not None and "onnxruntime-Python" not in errors:
        impls.append("ort")
    if worker is not None and "sentence-transformers" not in errors:
        impls.append("st")
    labels = {"optbench": "optbench `Embedder`", "ort": "onnxruntime-Python", "st": "sentence-transformers (PyTorch)"}

    results: dict[int, dict[str, Any]] = {}
    for threads in threads_list:
        embedder = Embedder(MODEL_DIR, threads=threads, batch_size=batch_size)
        times: dict[str, list[float]] = {k: [] for k in impls}
        emb: dict[str, np.ndarray] = {}

        def run(impl: str, save: bool, subset: list[str] | None = None) -> float:
            if impl == "optbench":
                t0 = time.perf_counter()
                e = embedder.encode(texts if subset is None else subset)  # noqa: F821 (called before the del below)
                took = time.perf_counter() - t0
                if save:
                    emb[impl] = e
                return took
            assert worker is not None
            out = work / f"{impl}-{threads}.npy" if save else None
            took = worker.run(impl, texts_path if subset is None else warm_path, threads, batch_size, out)
            if out is not None:
                emb[impl] = np.load(out)
            return took

        for impl in list(impls):  # warm-up on the first texts
            try:
                run(impl, save=False, subset=texts[:WARMUP_TEXTS])
            except Exception:
                errors[labels[impl]] = traceback.format_exc().strip()
                impls.remove(impl)
                times.pop(impl, None)
        for repeat in range(repeats):  # the first pass's embeddings are the ones compared
            for impl in impls:
                times[impl].append(run(impl, save=repeat == 0))
        rate = {k: n_texts / min(v) for k, v in times.items()}
        agree = {k: agreement(emb["optbench"], emb[k]) for k in emb if k != "optbench"}
        results[threads] = {
            "times_s": times,
            "best_per_s": rate,
            "median_per_s": {k: n_texts / statistics.median(v) for k, v in times.items()},
            "agreement": agree,
        }
        line = ", ".join(f"{labels[k]} {v:,.1f}/s" for k, v in rate.items())
        print(f"threads={threads}: {line}")
        del embedder
    if worker is not None:
        worker.close()
    tmp.cleanup()

    for threads, r in results.items():
        for impl, target in (("ort", ORT_TARGET), ("st", ST_TARGET)):
            name = f"Embedder vs {labels[impl].split(' (')[0]} (sentences/s, {threads} thread{'s' * (threads > 1)})"
            entry: dict[str, Any] = {"name": name, "target": target, "direction": ">=", "unit": "x"}
            if impl in r["best_per_s"]:
                entry["value"] = round(r["best_per_s"]["optbench"] / r["best_per_s"][impl], 2)
            else:
                entry["value"] = None
                err = (
                    errors.get(labels[impl])
                    or errors.get(labels[impl].split(" (")[0])
                    or errors.get("reference worker")
                    or errors.get("reference venv")
                    or "not run"
                )
                entry["error"] = err.splitlines()[-1]
            ratios.append(entry)

    # Markdown.
    md = [
        f"Machine: {cores} cores, {platform.platform()}; timings on a shared machine are noisy, the ratios are "
        "measured side by side in one run.",
        "",
        "Reference venv (`benches/setup_reference.sh`): "
        + (
            f"`setup_reference.sh` took {setup_s:.1f} s (a no-op when its stamp is current)."
            if python
            else f"**not available**: `{setup_error}`"
        ),
        "",
        f"all-MiniLM-L6-v2 (`{MODEL_DIR.name}`: the shared ONNX export, fp32) on the CPU, {n_texts} texts: the last "
        f"assistant reply of each of the first {n_texts} `chosen` transcripts of HH-RLHF harmless-base test "
        f"(mean {statistics.fmean(len(t) for t in texts):.0f} characters). Batch size {batch_size}, truncation at "
        f"{MAX_LENGTH} tokens, mean pooling and L2 normalisation on every side; equal intra-op thread counts "
        "(optbench `Embedder(threads=n)`, ONNX Runtime `intra_op_num_threads=n` with inter-op 1 and spinning off "
        "as optbench sets it, `torch.set_num_threads(n)`). The onnxruntime-Python baseline tokenizes with the "
        "`tokenizers` package from the same tokenizer.json and sorts texts by token length like optbench; "
        "sentence-transformers sorts by character length (its own `encode`). "
        f"A warm-up pass over the first {WARMUP_TEXTS} texts, then {repeats} timed pass(es) of the whole list, "
        "interleaved across the three (the first pass's embeddings are compared); "
        "sentences/s from the best pass (median in brackets).",
        "",
    ]
    if "st_build_s" in info:
        md += [
            "sentence-transformers model: the shared folder has no PyTorch weights, so the bench writes a plain "
            f"sentence-transformers folder to a temporary directory with `BertModel` weights ({info['st_tensors']} "
            "tensors) taken from model.onnx's initializers (MatMul weights transposed back to `nn.Linear`), loaded by "
            f'`SentenceTransformer(folder, device="cpu")` ({" -> ".join(info["st_modules"])}, max_seq_length '
            f"{info['st_max_seq_length']}). Check against `reference_embeddings.npy` (the real "
            f"sentence-transformers output, 200 texts): min cosine {info['st_vs_reference_min_cos']:.9f}, max abs "
            f"diff {info['st_vs_reference_max_abs']:.2e}.",
            "",
        ]
    header = (
        "| threads | implementation | sentences/s | vs optbench | min cosine vs optbench | max abs diff vs optbench |"
    )
    md += [header, "| ---: | --- | ---: | ---: | ---: | ---: |"]
    for threads, r in results.items():
        for impl in r["best_per_s"]:
            rate, med = r["best_per_s"][impl], r["median_per_s"][impl]
            a = r["agreement"].get(impl)
            rel = r["best_per_s"]["optbench"] / rate
            md.append(
                f"| {threads} | {labels[impl]} | {rate:,.1f} ({med:,.1f}) | "
                + ("" if impl == "optbench" else f"{rel:.2f}x")
                + " | "
                + (f"{a['min_cosine']:.9f} | {a['max_abs_diff']:.2e} |" if a else " | |")
            )
    md.append("")
    md.append("Ratios (optbench sentences/s over the baseline's; targets from the issue):")
    md.append("")
    for r in ratios:
        status = "n/a" if r["value"] is None else ("met" if r["value"] >= r["target"] else "**missed**")
        md.append(f"- {r['name']}: **{fmt(r['value'])}x** (target >= {r['target']:g}x) {status}")
    md.append("")
    for what, err in errors.items():
        md += [f"{what} could not run:", "", "```", err, "```", ""]

    report = {
        "section": "Embeddings",
        "markdown": "\n".join(md),
        "commands": ["benches/setup_reference.sh", command],
        "versions": versions,
        "ratios": ratios,
        "details": {str(k): v for k, v in results.items()}
        | {"reference": {k: v for k, v in info.items() if k not in ("versions",)}, "setup_s": setup_s},
    }
    write_section(Path(args.out), report)
    return 0


if __name__ == "__main__":
    sys.exit(main())
