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
# passed as plain data (a pickle restricted to builtin types), and writes the end marker only
# when `check` returned. The child never holds the control descriptor, the test's text, or
# access to this process (no ptrace, not dumpable).
import os, sys
_end, _mark = os.write, b'\0optbench-sandbox-end\0'
_mode, _fd = sys.argv[1], int(sys.argv[3])
_f = open(int(sys.argv[2]), 'rb', buffering=0)
del sys.argv[1:]


def _take(n):
    b = b''
    while len(b) < n:
        c = _f.read(n - len(b))
        if not c:
            raise EOFError('the task is truncated')
        b += c
    return b.decode('utf-8')


if _mode == 'program':
    _code = compile(_take(int(_f.readline())), 'program.py', 'exec')
    _f.close()
    exec(_code, {})
    _end(_fd, _mark)
else:
    import builtins, ctypes, io, pickle, struct, traceback
    _n = [int(x) for x in _f.readline().split()]
    _prompt, _completion, _entry = _take(_n[0]), _take(_n[1]), _take(_n[2])
    # Same uid as the candidate: keep it out of this process's memory and descriptors.
    ctypes.CDLL(None).prctl(4, 0, 0, 0, 0)  # PR_SET_DUMPABLE 0

    def _send(fd, obj):
        data = pickle.dumps(obj, protocol=5)
        view = memoryview(struct.pack('<Q', len(data)) + data)
        while view:
            view = view[os.write(fd, view):]

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
        n = struct.unpack('<Q', head)[0]
        if n > limit:
            raise ValueError(f'an answer of {n} bytes from the program (the limit is {limit})')
        return exactly(n)

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
                _send(_answers_w, ('raised', 'TypeError', f'the result cannot be passed on as plain data: {e}'))

        def _serve(source, entry):
            g = {}
            try:
                exec(compile(source, 'program.py', 'exec'), g)
                fn = g[entry]
            except BaseException as e:
                traceback.print_exc()
                sys.stderr.flush()
                _answer(('raised', type(e).__name__, str(e)))
                os._exit(1)
            _answer(('ready',))
            while True:
                call = _recv(_calls_r, 1 << 62)
                if call is None:
                    os._exit(0)
                args, kwargs = pickle.loads(call)
                try:
                    result = ('returned', fn(*args, **kwargs))
                except BaseException as e:
                    result = ('raised', type(e).__name__, str(e))
                _answer(result)

        _serve(_prompt + _completion, _entry)
        os._exit(0)
    os.close(_calls_r)
    os.close(_answers_w)
    _test = _take(_n[3])
    _f.close()
    _PLAIN = {'complex', 'bytearray', 'range', 'slice', 'set', 'frozenset'}

    class _PlainData(pickle.Unpickler):
        def find_class(self, module, name):
            if module == 'builtins' and name in _PLAIN:
                return getattr(builtins, name)
            raise pickle.UnpicklingError(f'the program answered with a {module}.{name}, which is not plain data')

    def _how(status):
        if os.WIFSIGNALED(status):
            return f'killed by signal {os.WTERMSIG(status)}'
        return f'exit code {os.waitstatus_to_exitcode(status)}'

    def _answer_of_program():
        data = _recv(_answers_r, 1 << 26)
        if data is None:
            _, status = os.waitpid(_child, 0)
            raise RuntimeError(f'the program ended ({_how(status)}) before the test did')
        msg = _PlainData(io.BytesIO(data)).load()
        if type(msg) is not tuple or not msg or msg[0] not in ('ready', 'returned', 'raised'):
            raise RuntimeError('a malformed answer from the program')
        if msg[0] == 'raised':
            name, text = (msg[1], msg[2]) if len(msg) == 3 else ('?', '?')
            cls = getattr(builtins, name, None) if type(name) is str else None
            if isinstance(cls, type) and issubclass(cls, Exception):
                try:
                    error = cls(str(text))
                except Exception:
                    error = RuntimeError(f'{name}: {text}')
                raise error
            raise RuntimeError(f'{name}: {text}')
        return msg

    def candidate(*args, **kwargs):
        _send(_calls_w, (args, kwargs))
        return _answer_of_program()[1]

    candidate.__name__ = candidate.__qualname__ = _entry
    _answer_of_program()
    _t = {}
    exec(compile(_prompt, 'prompt.py', 'exec'), _t)
    # The test sees the function under test by its name too (some compare against it), as in
    # the reference, where the completion's definition replaces the prompt's stub.
    _t[_entry] = candidate
    exec(compile(_test, 'test.py', 'exec'), _t)
    _t['check'](candidate)
    sys.stdout.flush()
    _end(_fd, _mark)
