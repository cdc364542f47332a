"""SGLang (https://docs.sglang.ai): ``python -m sglang.launch_server``.

The module entry point works in every SGLang version checked (0.5.12, 0.5.23; newer ones also
have ``sglang serve``) and in every packaging, through the interpreter named by
``server.python``. ``--enable-metrics`` is always passed: optbench reads the server's
Prometheus ``/metrics`` during a load test (``optbench.server_metrics``).
"""

from __future__ import annotations

from optbench.servers.base import EXTRA_ARGS, Key, PythonModuleEngine


class SglangEngine(PythonModuleEngine):
    name = "sglang"
    label = "SGLang"
    module = "sglang.launch_server"
    package = "sglang"
    distributions = ("sglang",)
    model_flag = "--model-path"
    # SGLang 0.5 opens a gRPC port at its port + 10000 and refuses to start past 65535.
    highest_port = 55535
    keys = {
        "python": Key(str, None, "the interpreter that has SGLang (default: the one running optbench)"),
        "model_path": Key(str, None, "the weights: a local folder or a hub id (default: `model`)"),
        "context_length": Key(int, "--context-length", "context per request, prompt + output", (1, None)),
        "mem_fraction_static": Key(
            float, "--mem-fraction-static", "share of GPU memory for weights + KV cache pool", (0, 1), low_open=True
        ),
        "max_running_requests": Key(int, "--max-running-requests", "maximum requests batched at once", (1, None)),
        "enable_torch_compile": Key(bool, "--enable-torch-compile", "compile small-batch decode with torch.compile"),
        "quantization": Key(str, "--quantization", "weight quantization method, e.g. fp8"),
        "dtype": Key(str, "--dtype", "weight and activation dtype (auto, bfloat16, float16)"),
        "tp_size": Key(int, "--tp-size", "GPUs the model is split over (tensor parallel)", (1, None)),
        "load_format": Key(str, "--load-format", "how weights load; `dummy` = random weights, no download"),
        "tokenizer_path": Key(str, "--tokenizer-path", "a tokenizer folder or hub id other than the model's"),
        "extra_args": EXTRA_ARGS,
    }

    def command(self, port: int, python: str | None = None) -> list[str]:
        return super().command(port, python) + ["--enable-metrics"]
