"""Unit tests of contextstore_step against the real generated bindings, with
the store imports replaced by an in-memory fake.

Run with guest/python/test.sh (it generates the bindings first).
"""

import json
import unittest

from componentize_py_types import Err
from wit_world.imports import store
from wit_world.imports.types import (
    Invocation,
    StepError_Failed,
    StepError_InvalidParams,
    StepError_Store,
    Upstream,
)

import contextstore_step as cs

RUN = "00000000-0000-4000-8000-000000000001"
ME = "00000000-0000-4000-8000-000000000002"
GREET = "00000000-0000-4000-8000-000000000003"


class FakeStore:
    """The six store imports over dicts; `fail` makes every call raise that error."""

    def __init__(self):
        self.outputs = {}
        self.globals = {}
        self.fail = None

    def install(self, test):
        for name in ["put", "get", "list_keys", "put_global", "upsert_global", "get_global"]:
            original = getattr(store, name)
            setattr(store, name, getattr(self, name))
            test.addCleanup(setattr, store, name, original)

    def _check(self):
        if self.fail is not None:
            raise Err(self.fail)

    def put(self, run, node, text):
        self._check()
        json.loads(text)  # the host refuses invalid JSON
        if (run, node) in self.outputs:
            raise Err(store.Error_AlreadyExists())
        self.outputs[(run, node)] = text

    def get(self, run, node):
        self._check()
        return self.outputs.get((run, node))

    def list_keys(self, run):
        self._check()
        return [n for (r, n) in self.outputs if r == run]

    def put_global(self, key, text):
        self._check()
        if key in self.globals:
            raise Err(store.Error_GlobalAlreadyExists())
        self.globals[key] = text

    def upsert_global(self, key, text):
        self._check()
        self.globals[key] = text

    def get_global(self, key):
        self._check()
        return self.globals.get(key)


def invocation(params="null", upstream=(("greet", GREET),)):
    return Invocation(RUN, ME, params, [Upstream(n, i) for n, i in upstream])


def run_step(step, inv):
    """Runs `step` as the host would; returns the WIT step-error or None."""
    try:
        cs.export(step)().run(inv)
    except Err as e:
        return e.value
    return None


class SdkTest(unittest.TestCase):
    def setUp(self):
        self.store = FakeStore()
        self.store.install(self)

    def test_values_round_trip(self):
        values = [None, 0, -1, 2**70, 1.5, 1e-300, "", "ünï\u2028", [1, [2, [3]]], {"a": {"b": None}}, True]
        for i, value in enumerate(values):
            key = f"k{i}"
            cs.put_global(key, value)
            self.assertEqual(cs.get_global(key), value)
            self.assertEqual(type(cs.get_global(key)), type(value))
        ctx = cs.Context(invocation())
        ctx.output({"x": [1, 2.25, "three"]})
        self.assertEqual(cs.get(RUN, ME), {"x": [1, 2.25, "three"]})
        self.assertEqual(cs.list_keys(RUN), [ME])

    def test_text_calls_are_exact(self):
        cs.upsert_global_text("t", '{ "a" : 1 }')
        self.assertEqual(cs.get_global_text("t"), '{ "a" : 1 }')
        self.assertIsNone(cs.get_global_text("missing"))
        self.assertIsNone(cs.get_text(RUN, GREET))

    def test_every_store_error_maps_to_its_class(self):
        cases = [
            (store.Error_AlreadyExists(), cs.AlreadyExists, ""),
            (store.Error_GlobalAlreadyExists(), cs.GlobalAlreadyExists, ""),
            (store.Error_InvalidId("bad id"), cs.InvalidId, "bad id"),
            (store.Error_InvalidJson("bad json"), cs.InvalidJson, "bad json"),
            (store.Error_AccessDenied("no"), cs.AccessDenied, "no"),
            (store.Error_QuotaExceeded("big"), cs.QuotaExceeded, "big"),
            (store.Error_Storage("disk"), cs.Storage, "disk"),
        ]
        for wit, cls, message in cases:
            self.store.fail = wit
            with self.assertRaises(cls) as caught:
                cs.get(RUN, ME)
            self.assertIsInstance(caught.exception, cs.StoreError)
            self.assertEqual(caught.exception.message, message)
            self.assertIs(caught.exception.wit, wit)
            self.assertTrue(str(caught.exception).startswith(cls.kind))
            # Leaving the step, it reaches the host unchanged as store(<error>).
            self.assertEqual(run_step(lambda ctx: ctx.output(1), invocation()), StepError_Store(wit))

    def test_write_once_errors(self):
        cs.put(RUN, ME, 1)
        with self.assertRaises(cs.AlreadyExists):
            cs.put(RUN, ME, 2)
        cs.upsert_global("g", 1)
        with self.assertRaises(cs.GlobalAlreadyExists):
            cs.put_global("g", 2)
        self.assertEqual(cs.get(RUN, ME), 1)

    def test_upstream_by_name(self):
        self.store.outputs[(RUN, GREET)] = '{"greeting": "Hello"}'
        ctx = cs.Context(invocation())
        self.assertEqual(ctx.upstream("greet"), {"greeting": "Hello"})
        self.assertEqual(ctx.upstream_id("greet"), GREET)
        self.assertIsNone(ctx.upstream_id("nope"))

    def test_a_missing_upstream_is_a_clear_error(self):
        ctx = cs.Context(invocation())
        with self.assertRaises(cs.MissingUpstream) as caught:
            ctx.upstream("nope")
        self.assertEqual(str(caught.exception), "missing-upstream: no upstream named `nope`")
        with self.assertRaises(cs.MissingUpstream) as caught:
            ctx.upstream("greet")  # named, but no output yet
        self.assertIn("has no output yet", str(caught.exception))
        error = run_step(lambda ctx: ctx.upstream("nope"), invocation())
        self.assertEqual(error, StepError_Failed("missing-upstream: no upstream named `nope`"))

    def test_params(self):
        self.assertIsNone(cs.Context(invocation("null")).params())
        self.assertEqual(cs.Context(invocation("null")).params({}), {})
        self.assertEqual(cs.Context(invocation('{"n": 3}')).params(), {"n": 3})
        error = run_step(lambda ctx: ctx.params(), invocation("{nope"))
        self.assertIsInstance(error, StepError_InvalidParams)

    def test_step_errors_reach_the_host(self):
        def raises(exc):
            def step(ctx):
                raise exc
            return step

        self.assertEqual(run_step(raises(cs.InvalidParams("need n")), invocation()), StepError_InvalidParams("need n"))
        self.assertEqual(run_step(raises(cs.Failed("broke")), invocation()), StepError_Failed("broke"))
        self.assertEqual(run_step(raises(KeyError("k")), invocation()), StepError_Failed("KeyError: 'k'"))
        self.assertIsNone(run_step(lambda ctx: ctx.output(1), invocation()))

    def test_a_raw_binding_error_leaving_the_step_is_passed_on(self):
        def step(ctx):
            store.put_global("k", "1")
            store.put_global("k", "2")  # the binding itself: Err(GlobalAlreadyExists)

        self.assertEqual(run_step(step, invocation()), StepError_Store(store.Error_GlobalAlreadyExists()))

        def raises_a_wit_step_error(ctx):
            raise Err(StepError_Failed("mine"))

        self.assertEqual(run_step(raises_a_wit_step_error, invocation()), StepError_Failed("mine"))

    def test_the_first_upstream_of_a_name_wins(self):
        ctx = cs.Context(invocation(upstream=(("a", GREET), ("a", ME))))
        self.assertEqual(ctx.upstream_id("a"), GREET)

    def test_values_without_json_form_fail_the_step(self):
        ctx = cs.Context(invocation())
        for bad in [float("nan"), {1, 2}, object()]:
            with self.assertRaises(cs.EncodeError):
                ctx.output(bad)
        self.assertEqual(self.store.outputs, {})
        error = run_step(lambda ctx: ctx.output(float("inf")), invocation())
        self.assertIsInstance(error, StepError_Failed)
        self.assertTrue(error.value.startswith("encode: "), error.value)

    def test_export_makes_the_world_class(self):
        import wit_world

        cls = cs.export(lambda ctx: None)
        self.assertEqual(cls.__name__, "WitWorld")
        self.assertIn(wit_world.WitWorld, cls.__mro__)

    def test_the_warm_up_touches_no_store(self):
        originals = [getattr(store, name) for name in ["put", "get", "list_keys", "put_global", "upsert_global", "get_global"]]
        self.store.outputs[(RUN, GREET)] = '{"greeting": "Hello"}'
        cs.export(lambda ctx: None)  # warms up
        self.assertEqual(self.store.outputs, {(RUN, GREET): '{"greeting": "Hello"}'})
        self.assertEqual(self.store.globals, {})
        after = [getattr(store, name) for name in ["put", "get", "list_keys", "put_global", "upsert_global", "get_global"]]
        self.assertEqual(after, originals)


def outcome(f, *args, **kwargs):
    """What `f(*args, **kwargs)` returns, or the type, text and position of what it raises."""
    try:
        return ("ok", f(*args, **kwargs))
    except Exception as e:
        return (type(e), str(e), getattr(e, "pos", None))


class JsonTest(unittest.TestCase):
    """The SDK's JSON calls answer as `json.loads` and `json.dumps` do."""

    def test_loads(self):
        texts = [
            "{}", "null", "0", "-0", "1e400", "2.5e-3", "123456789012345678901234567890",
            ' [1, 2.5, "x\\u00e9\\ud83d\\ude00", null, true, false] ', '\t\n\r {"a": {"b": [ ]}} \r\n',
            '{"a": 1, "a": 2}', "[NaN, Infinity, -Infinity]", '"\u2028"',
            "", " ", "\ufeff{}", "{", "[1,]", '{"a" 1}', "1 2", "[] x", "nul", '"\\x"', '"open', "\u00a0 1", "1 \u00a0",
            '{"a": 1} \n ]', "[" * 10 + "]" * 10,
        ]
        for text in texts:
            self.assertEqual(outcome(cs._json_loads, text), outcome(json.loads, text), repr(text))

    def test_dumps(self):
        cycle = []
        cycle.append(cycle)

        class Number(int):
            def __repr__(self):
                return "not used"

        values = [
            None, True, False, 0, -1, 2**70, 1.5, -0.0, 1e-300, 1e300, "", "ünï\u2028\x00\"\\", [1, [2, (3, 4)]],
            {"a": {"b": None}}, {1: 2, 2.5: 3, None: 4, True: 5, "k": "v"}, Number(7), {Number(8): Number(9)},
            float("nan"), float("inf"), -float("inf"), {(1, 2): 3}, {1, 2}, object(), cycle, b"bytes",
        ]
        for value in values:
            expected = outcome(json.dumps, value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
            self.assertEqual(outcome(cs._json_dumps, value), expected, repr(value))


if __name__ == "__main__":
    unittest.main()
