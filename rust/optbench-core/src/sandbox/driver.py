# The driver of a sandboxed run (optbench's sandbox passes it to `python3 -I -B -c`), with
# three arguments: the mode, the descriptor of the task and the control descriptor.
#
# "program": the program is compiled and exec'uted in fresh globals, as HumanEval's reference
# harness does; when exec returns, the end marker is written on the control descriptor. The
# program runs in this process, so it can write the marker itself: a verdict it could forge.
#
# "test": a HumanEval-style test. The completion runs in a child process forked before the
# program's code exists; this process (the first of the run's PID namespace) runs the test's
# `check` against a stand-in that calls the candidate in the child, with arguments and results
# passed as plain data (builtin types only, decoded without running
# any of the sender's code), and writes the end marker only
# when `check` returned. The child never holds the control descriptor, the test's text, or
# access to this process (no ptrace, not dumpable).
import os
import sys

_end, _mark = os.write, b"\0optbench-sandbox-end\0"
_mode, _fd = sys.argv[1], int(sys.argv[3])
_f = open(int(sys.argv[2]), "rb", buffering=0)
del sys.argv[1:]


def _take(n):
    b = b""
    while len(b) < n:
        c = _f.read(n - len(b))
        if not c:
            raise EOFError("the task is truncated")
        b += c
    return b.decode("utf-8")


if _mode == "program":
    _code = compile(_take(int(_f.readline())), "program.py", "exec")
    _f.close()
    exec(_code, {})
    _end(_fd, _mark)
else:
    import builtins
    import ctypes

    _n = [int(x) for x in _f.readline().split()]
    _prompt, _completion, _entry = _take(_n[0]), _take(_n[1]), _take(_n[2])
    # Same uid as the candidate: keep it out of this process's memory and descriptors.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0

    # Plain data between the two processes: None, bools, ints, floats, complex numbers,
    # strings, bytes, bytearrays, lists, tuples, dicts, sets and frozensets, nothing else
    # (decoding runs no code of the sender's). Tags: a letter, then a length or a value.
    def _encode(x, out):
        t = type(x)
        if x is None or t is bool:
            out.append({None: b"N", True: b"T", False: b"F"}[x])
        elif isinstance(x, int):
            out.append(b"i%x;" % int(x) if x >= 0 else b"j%x;" % -int(x))
        elif isinstance(x, float):
            out.append(b"f" + float(x).hex().encode() + b";")
        elif isinstance(x, complex):
            out.append(b"c" + x.real.hex().encode() + b"," + x.imag.hex().encode() + b";")
        elif isinstance(x, (str, bytes, bytearray)):
            data = str(x).encode("utf-8", "surrogatepass") if isinstance(x, str) else bytes(x)
            tag = b"s" if isinstance(x, str) else b"b" if isinstance(x, bytes) else b"y"
            out.append(tag + b"%x:" % len(data) + data)
        elif isinstance(x, (list, tuple, set, frozenset, dict)):
            tag = (
                b"d"
                if isinstance(x, dict)
                else b"l"
                if isinstance(x, list)
                else b"t"
                if isinstance(x, tuple)
                else b"S"
                if isinstance(x, set)
                else b"Z"
            )
            items = list(x.items()) if isinstance(x, dict) else list(x)
            out.append(tag + b"%x:" % len(items))
            for item in items:
                if isinstance(x, dict):
                    _encode(item[0], out)
                    _encode(item[1], out)
                else:
                    _encode(item, out)
        else:
            raise TypeError(f"not plain data: {t.__module__}.{t.__qualname__}")

    def _decode(b, i):
        tag = b[i : i + 1]
        i += 1
        if tag in (b"N", b"T", b"F"):
            return {b"N": None, b"T": True, b"F": False}[tag], i
        if tag in (b"i", b"j", b"f", b"c"):
            end = b.index(b";", i)
            text = b[i:end].decode("ascii")
            if tag == b"c":
                re, im = text.split(",")
                return complex(float.fromhex(re), float.fromhex(im)), end + 1
            if tag == b"f":
                return float.fromhex(text), end + 1
            return (int(text, 16) if tag == b"i" else -int(text, 16)), end + 1
        colon = b.index(b":", i)
        n = int(b[i:colon].decode("ascii"), 16)
        i = colon + 1
        if tag in (b"s", b"b", b"y"):
            if i + n > len(b):
                raise ValueError("truncated")
            data = b[i : i + n]
            return (
                data.decode("utf-8", "surrogatepass") if tag == b"s" else data if tag == b"b" else bytearray(data)
            ), i + n
        if tag not in (b"l", b"t", b"S", b"Z", b"d") or n > len(b):
            raise ValueError(f"not plain data: tag {tag!r}")
        items = []
        for _ in range(2 * n if tag == b"d" else n):
            item, i = _decode(b, i)
            items.append(item)
        if tag == b"d":
            return dict(zip(items[::2], items[1::2])), i
        return {b"l": list, b"t": tuple, b"S": set, b"Z": frozenset}[tag](items), i

    def _send(fd, obj):
        out = []
        _encode(obj, out)
        data = b"".join(out)
        view = memoryview(len(data).to_bytes(8, "little") + data)
        while view:
            view = view[os.write(fd, view) :]

    def _recv(fd, limit):
        def exactly(n):
            b = bytearray()
            while len(b) < n:
                c = os.read(fd, min(n - len(b), 1 << 20))
                if not c:
                    return None
                b += c
            return bytes(b)

        head = exactly(8)
        if head is None:
            return None
        n = int.from_bytes(head, "little")
        if n > limit:
            raise ValueError(f"a message of {n} bytes from the other process (the limit is {limit})")
        data = exactly(n)
        if data is None:
            return None
        obj, end = _decode(data, 0)
        if end != len(data):
            raise ValueError("trailing bytes in a message")
        return (obj,)

    _calls_r, _calls_w = os.pipe()
    _answers_r, _answers_w = os.pipe()
    _child = os.fork()
    if _child == 0:
        _f.close()
        os.close(_fd)
        os.close(_calls_w)
        os.close(_answers_r)
        del _fd

        def _answer(msg):
            try:
                _send(_answers_w, msg)
            except Exception as e:
                _send(_answers_w, ("raised", "TypeError", f"the result cannot be passed on as plain data: {e}"))

        def _serve(source, entry):
            g = {}
            try:
                exec(compile(source, "program.py", "exec"), g)
                fn = g[entry]
            except BaseException as e:
                sys.__excepthook__(type(e), e, e.__traceback__)
                sys.stderr.flush()
                _answer(("raised", type(e).__name__, str(e)))
                os._exit(1)
            _answer(("ready",))
            while True:
                call = _recv(_calls_r, 1 << 62)
                if call is None:
                    os._exit(0)
                args, kwargs = call[0]
                try:
                    result = ("returned", fn(*args, **kwargs))
                except BaseException as e:
                    result = ("raised", type(e).__name__, str(e))
                _answer(result)

        _serve(_prompt + _completion, _entry)
        os._exit(0)
    os.close(_calls_r)
    os.close(_answers_w)
    _test = _take(_n[3])
    _f.close()

    def _how(status):
        if os.WIFSIGNALED(status):
            return f"killed by signal {os.WTERMSIG(status)}"
        return f"exit code {os.waitstatus_to_exitcode(status)}"

    def _answer_of_program():
        answer = _recv(_answers_r, 1 << 26)
        if answer is None:
            _, status = os.waitpid(_child, 0)
            raise RuntimeError(f"the program ended ({_how(status)}) before the test did")
        msg = answer[0]
        if type(msg) is not tuple or not msg or msg[0] not in ("ready", "returned", "raised"):
            raise RuntimeError("a malformed answer from the program")
        if msg[0] == "raised":
            name, text = (msg[1], msg[2]) if len(msg) == 3 else ("?", "?")
            cls = getattr(builtins, name, None) if type(name) is str else None
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    error = cls(str(text))
                except Exception:
                    error = RuntimeError(f"{name}: {text}")
                raise error
            raise RuntimeError(f"{name}: {text}")
        return msg

    def candidate(*args, **kwargs):
        _send(_calls_w, (args, kwargs))
        return _answer_of_program()[1]

    candidate.__name__ = candidate.__qualname__ = _entry
    _answer_of_program()
    _t = {}
    # The prompt's helpers (some tests use them); a prompt whose last function has no body
    # yet (no docstring) gets one.
    for _tail in ("", "    pass\n", "\n    pass\n"):
        try:
            _code = compile(_prompt + _tail, "prompt.py", "exec")
        except SyntaxError:
            continue
        exec(_code, _t)
        break
    # The test sees the function under test by its name too (some compare against it), as in
    # the reference, where the completion's definition replaces the prompt's stub.
    _t[_entry] = candidate
    exec(compile(_test, "test.py", "exec"), _t)
    _t["check"](candidate)
    sys.stdout.flush()
    _end(_fd, _mark)
