"""The harness that runs a ``code`` verifier's assert tests inside the sandbox (the program's ``main.py``).

Not imported by the verifier: :mod:`rewards.code` reads this file and runs its source as the sandboxed
program (``python -S -s -B main.py``), so it imports only built-in / standard-library modules. Everything it
needs (solution, tests, a random per-run token) arrives on stdin as a ``marshal`` dict; only the lines it
writes to fd 3 tagged with the token count. It reports ``start``, then ``pass I`` / ``fail I WHY`` per test
and ``done``, or ``load_error WHY`` / ``tampered WHERE``; :func:`rewards.code._parse_channel` reads them.
Exiting early (``sys.exit``, ``os._exit``, a signal) only leaves tests unreported, which count as failed.

String formatting stays printf-style, as reviewed: it calls ``str()`` on values a hostile solution may
control exactly as before.
"""

# ruff: noqa: UP031

import builtins
import marshal
import operator
import os
import sys


def _rlvr_main(
    # Everything used after the solution has run is bound here, before it runs: a solution that replaces
    # builtins.exec, builtins.BaseException, os.write or operator.eq changes nothing for the harness.
    write=os.write, exec=exec, compile=compile, dict=dict, enumerate=enumerate, str=str, type=type,
    isinstance=isinstance, getattr=getattr, any=any, all=all, BaseException=BaseException, vars=vars,
    len=len, object=object, __import__=__import__,
    AssertionError=AssertionError, staticmethod=staticmethod, classmethod=classmethod,
    eq=operator.eq, ne=operator.ne, lt=operator.lt, le=operator.le, gt=operator.gt, ge=operator.ge,
    is_=operator.is_, is_not=operator.is_not, contains=operator.contains,
):  # fmt: skip
    data = marshal.loads(sys.stdin.buffer.read())
    tag = data.pop("token").encode() + b" "

    def report(*parts):
        text = " ".join(parts).replace("\n", " ")[:600]
        try:
            write(3, tag + text.encode("utf-8", "replace") + b"\n")
        except BaseException:
            pass

    SOLUTION = "<solution>"
    plain_scalars = (int, float, complex, str, bytes, bool, type(None))
    containers = (list, tuple, set, frozenset, dict)
    cmp_dunders = ("__eq__", "__ne__", "__lt__", "__le__", "__gt__", "__ge__", "__contains__", "__hash__")
    truth_dunders = ("__bool__", "__len__")

    def from_solution(obj):
        for kind in (staticmethod, classmethod):
            if isinstance(obj, kind):
                obj = obj.__func__
        obj = getattr(obj, "func", obj)  # functools.partial(method)
        code = getattr(obj, "__code__", None)
        return code is not None and getattr(code, "co_filename", "") == SOLUTION

    def values(x):
        stack, seen = [x], 0
        while stack and seen < 10000:
            v = stack.pop()
            seen += 1
            yield v
            t = type(v)
            if t is dict:
                stack.extend(v.keys())
                stack.extend(v.values())
            elif t in containers:
                stack.extend(v)

    def rigged(x, dunders):
        for v in values(x):
            for cls in type(v).__mro__:
                d = cls.__dict__
                if any(name in d and from_solution(d[name]) for name in dunders):
                    return True
        return False

    def plain(x):
        return all(type(v) in plain_scalars or type(v) in containers for v in values(x))

    ops = {
        "Eq": eq,
        "NotEq": ne,
        "Lt": lt,
        "LtE": le,
        "Gt": gt,
        "GtE": ge,
        "Is": is_,
        "IsNot": is_not,
        "In": lambda a, b: contains(b, a),
        "NotIn": lambda a, b: not contains(b, a),
    }

    def cmp(op, a, b):
        if op not in ("Is", "IsNot") and (
            (plain(b) and rigged(a, cmp_dunders)) or (plain(a) and rigged(b, cmp_dunders))
        ):
            raise AssertionError("operand of a solution-defined class overrides comparison")
        return ops[op](a, b)

    def truth(x):
        if rigged(x, truth_dunders):
            raise AssertionError("truth value from a solution-defined class")
        return x

    # Modules the tests use (imported now, before the solution runs) and builtins: a solution that patches
    # them (math.isclose = lambda *a: True) or swaps them in sys.modules is caught, and every test fails.
    modules = sys.modules
    for name in data["watch"]:
        try:
            __import__(name)
        except BaseException:
            pass
    guarded = [builtins, operator] + [modules.get(name) for name in data["watch"]]
    watched = [(m, dict(vars(m))) for m in guarded if m is not None]
    in_sys = {name: modules.get(name) for name in data["watch"]}
    missing = object()

    def tampered():
        for module, snapshot in watched:
            current = vars(module)
            if len(current) != len(snapshot):
                return module.__name__
            for key, value in snapshot.items():
                if current.get(key, missing) is not value:
                    return "%s.%s" % (module.__name__, key)
        for name, module in in_sys.items():
            if modules.get(name) is not module:
                return "sys.modules[%r]" % name
        return None

    helpers = {"__rlvr_cmp__": cmp, "__rlvr_truth__": truth}
    ns = {"__name__": "__solution__", "__builtins__": builtins}
    try:
        code = compile(data["solution"], SOLUTION, "exec")
    except BaseException as e:
        report("load_error", "%s: %s" % (type(e).__name__, e))
        return
    report("start")
    try:
        exec(code, ns)
        # The tests get their own globals (a copy): the solution cannot reach them through its globals.
        tns = dict(ns)
        tns.update(helpers)
        for src in data["setup"]:
            exec(compile(src, "<test setup>", "exec"), tns)
    except BaseException as e:  # SystemExit too: exiting does not skip the tests, it fails them
        report("load_error", "%s: %s" % (type(e).__name__, e))
        return
    tns.update(helpers)
    entry = data["entry_point"]
    if entry is not None:
        if entry not in ns:
            report("load_error", "NameError: %r is not defined by the program" % entry)
            return
        tns[data["candidate"]] = ns[entry]
    for i, src in enumerate(data["tests"]):
        where = tampered()
        if where is not None:
            report("tampered", where)
            return
        try:
            exec(compile(src, "<test %d>" % i, "exec"), tns)
        except BaseException as e:
            try:
                why = "%s: %s" % (type(e).__name__, e)
            except BaseException:
                why = type(e).__name__
            report("fail", str(i), why)
            if data["stop_on_fail"]:
                break
            continue
        where = tampered()
        if where is not None:
            report("tampered", where)
            return
        report("pass", str(i))
    report("done")


if __name__ == "__main__":
    _rlvr_main()
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(0)
