"""The contextstore step SDK for Python: the Rust SDK's shape over the
componentize-py bindings of the `step` world (`wit/store.wit`).

A step is a function of a `Context`::

    from contextstore_step import Context, export

    def shout(ctx: Context) -> None:
        greeting = ctx.upstream("greet")["greeting"]  # the upstream named `greet`
        ctx.output({"shout": greeting.upper()})        # this node's one output

    WitWorld = export(shout)  # componentize-py looks for a class named WitWorld

Values go in and out as Python objects (`json.loads` / `json.dumps`).

Errors are exceptions:

* a store call that fails raises a `StoreError`, one subclass per case of the
  WIT `error` variant (`AlreadyExists`, `GlobalAlreadyExists`, `InvalidId`,
  `InvalidJson`, `AccessDenied`, `QuotaExceeded`, `Storage`);
* a step fails by raising `InvalidParams` or `Failed` (`MissingUpstream` and
  `EncodeError` are `Failed`).

When an exception leaves the step, `export` answers the host with the WIT
`step-error`: a `StoreError` as `store(<error>)` unchanged, `InvalidParams` as
`invalid-params`, `Failed` as `failed`, and any other exception as
`failed("<Type>: <message>")` (Python's stderr is stubbed out, so a trap
would lose the message). Returning normally means `ok`: the host then checks
that the output is stored.

`AlreadyExists` from `ctx.output` means a retried invocation already stored
this node's output; letting it leave the step is right: the host reports the
node done.

The raw store calls are module functions (`put`, `get`, `list_keys`,
`put_global`, `upsert_global`, `get_global`) over Python values, with
`*_text` variants over JSON text as written.
"""

import json
from typing import Any, Callable, Dict, List, Optional

import wit_world
from componentize_py_types import Err
from wit_world.imports import store as _store
from wit_world.imports import types as _types

__all__ = [
    "Context",
    "export",
    "StepError",
    "InvalidParams",
    "Failed",
    "MissingUpstream",
    "EncodeError",
    "StoreError",
    "AlreadyExists",
    "GlobalAlreadyExists",
    "InvalidId",
    "InvalidJson",
    "AccessDenied",
    "QuotaExceeded",
    "Storage",
    "put",
    "get",
    "list_keys",
    "put_global",
    "upsert_global",
    "get_global",
    "put_text",
    "get_text",
    "put_global_text",
    "upsert_global_text",
    "get_global_text",
]


# ---------------------------------------------------------------- errors


class StoreError(Exception):
    """A store call failed: one subclass per case of the WIT `error` variant.

    `kind` is the WIT name (`"access-denied"`, …), `message` the host's text
    (empty for the two cases without one), `wit` the binding's value, passed
    back unchanged when the error leaves the step.
    """

    kind = "store"

    def __init__(self, message: str = "", wit: Any = None):
        super().__init__(f"{self.kind}: {message}" if message else self.kind)
        self.message = message
        self.wit = wit


class AlreadyExists(StoreError):
    """`already-exists`: this node's output is already stored (a retry: done)."""

    kind = "already-exists"


class GlobalAlreadyExists(StoreError):
    """`global-already-exists`: `put_global` found the key written."""

    kind = "global-already-exists"


class InvalidId(StoreError):
    """`invalid-id`: an id is not a hyphenated UUID."""

    kind = "invalid-id"


class InvalidJson(StoreError):
    """`invalid-json`: a value is not JSON, or nests too deep."""

    kind = "invalid-json"


class AccessDenied(StoreError):
    """`access-denied`: the invocation's grant does not allow the call."""

    kind = "access-denied"


class QuotaExceeded(StoreError):
    """`quota-exceeded`: a per-invocation limit (value size, writes) was reached."""

    kind = "quota-exceeded"


class Storage(StoreError):
    """`storage`: the storage backend failed."""

    kind = "storage"


# The binding's error class for each StoreError subclass.
_STORE_ERRORS = {
    _store.Error_AlreadyExists: AlreadyExists,
    _store.Error_GlobalAlreadyExists: GlobalAlreadyExists,
    _store.Error_InvalidId: InvalidId,
    _store.Error_InvalidJson: InvalidJson,
    _store.Error_AccessDenied: AccessDenied,
    _store.Error_QuotaExceeded: QuotaExceeded,
    _store.Error_Storage: Storage,
}


class StepError(Exception):
    """The step failed: raise `InvalidParams` or `Failed` (or a subclass)."""


class InvalidParams(StepError):
    """The step's parameters are not what it needs: `invalid-params`."""


class Failed(StepError):
    """Any other failure, described for a person: `failed`."""


class MissingUpstream(Failed):
    """No upstream of that name, or it has no output yet."""

    def __init__(self, message: str):
        super().__init__(f"missing-upstream: {message}")


class EncodeError(Failed):
    """A value has no JSON form (NaN, a set, …)."""

    def __init__(self, message: str):
        super().__init__(f"encode: {message}")


def _call(fn: Callable, *args):
    """Calls a store binding; its `Err` becomes the matching `StoreError`."""
    try:
        return fn(*args)
    except Err as e:
        cls = _STORE_ERRORS.get(type(e.value))
        if cls is None:  # not a store error: leave it alone
            raise
        message = getattr(e.value, "value", "")
        raise cls(message if isinstance(message, str) else "", e.value) from None


# `json.loads` and `json.dumps` straight on the json module's C scanner and
# encoder, which those functions end in: the same results and the same
# errors, without the Python layers in between. A step starts from the
# build's snapshot every time, so every function and object a run touches
# costs it memory pages faulted in again; these layers were a good part of
# the pages the SDK touched.
_WHITESPACE = json.decoder.WHITESPACE_STR
_scan_once = json.JSONDecoder().scan_once
_encode_string = json.encoder.encode_basestring
_encode_default = json.JSONEncoder().default
_make_encoder = json.encoder.c_make_encoder


def _json_loads(text: str) -> Any:
    """`json.loads(text)` for a `str`."""
    if text.startswith("\ufeff"):
        raise json.JSONDecodeError("Unexpected UTF-8 BOM (decode using utf-8-sig)", text, 0)
    try:
        value, end = _scan_once(text, len(text) - len(text.lstrip(_WHITESPACE)))
    except StopIteration as e:
        raise json.JSONDecodeError("Expecting value", text, e.value) from None
    if end != len(text):
        end = len(text) - len(text[end:].lstrip(_WHITESPACE))
        if end != len(text):
            raise json.JSONDecodeError("Extra data", text, end)
    return value


def _json_dumps(value: Any) -> str:
    """`json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))`."""
    if _make_encoder is None:  # a Python without the C encoder
        return json.dumps(value, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    if isinstance(value, str):
        return _encode_string(value)
    encode = _make_encoder({}, _encode_default, _encode_string, None, ":", ",", False, False, False)
    return "".join(encode(value, 0))


def _dumps(value: Any) -> str:
    try:
        return _json_dumps(value)
    except (TypeError, ValueError) as e:
        raise EncodeError(str(e)) from None


def _loads(text: Optional[str]) -> Any:
    return None if text is None else _json_loads(text)


# ---------------------------------------------------------------- store calls


def put_text(flow_run_id: str, node_id: str, text: str) -> None:
    """Writes a node's output as JSON text (write-once: `AlreadyExists`)."""
    _call(_store.put, flow_run_id, node_id, text)


def get_text(flow_run_id: str, node_id: str) -> Optional[str]:
    """Reads a node's output as the exact text written; `None` if not written."""
    return _call(_store.get, flow_run_id, node_id)


def list_keys(flow_run_id: str) -> List[str]:
    """The node ids that have an output in `flow_run_id`, in no set order."""
    return list(_call(_store.list_keys, flow_run_id))


def put_global_text(key: str, text: str) -> None:
    """Writes a global as JSON text (write-once: `GlobalAlreadyExists`)."""
    _call(_store.put_global, key, text)


def upsert_global_text(key: str, text: str) -> None:
    """Writes or overwrites a global as JSON text."""
    _call(_store.upsert_global, key, text)


def get_global_text(key: str) -> Optional[str]:
    """Reads a global as the exact text written; `None` if not written."""
    return _call(_store.get_global, key)


def put(flow_run_id: str, node_id: str, value: Any) -> None:
    """Writes a node's output (write-once: `AlreadyExists`)."""
    put_text(flow_run_id, node_id, _dumps(value))


def get(flow_run_id: str, node_id: str) -> Any:
    """Reads a node's output; `None` if not written (or if it is `null`)."""
    return _loads(get_text(flow_run_id, node_id))


def put_global(key: str, value: Any) -> None:
    """Writes a global (write-once: `GlobalAlreadyExists`)."""
    put_global_text(key, _dumps(value))


def upsert_global(key: str, value: Any) -> None:
    """Writes or overwrites a global."""
    upsert_global_text(key, _dumps(value))


def get_global(key: str) -> Any:
    """Reads a global; `None` if not written (or if it is `null`)."""
    return _loads(get_global_text(key))


# ---------------------------------------------------------------- context


class Context:
    """One run of one step: its ids, parameters and named upstream nodes."""

    def __init__(self, invocation: Any):
        #: The flow run this step belongs to (hyphenated UUID).
        self.flow_run_id: str = invocation.flow_run_id
        #: This step's node id: the one key it may `put`.
        self.node_id: str = invocation.node_id
        #: The parameters as JSON text, as the host passed them (`null` when none).
        self.params_json: str = invocation.params
        #: The upstream nodes, name to node id, in the host's order.
        self.upstreams: Dict[str, str] = {}
        for u in invocation.upstream:
            self.upstreams.setdefault(u.name, u.node_id)  # the first of a name wins

    def params(self, default: Any = None) -> Any:
        """The parameters as a Python object; `default` when they are `null`."""
        try:
            value = _json_loads(self.params_json)
        except ValueError as e:
            raise InvalidParams(f"params are not JSON: {e}") from None
        return default if value is None else value

    def upstream_id(self, name: str) -> Optional[str]:
        """The node id of the upstream named `name`, or `None`."""
        return self.upstreams.get(name)

    def upstream(self, name: str) -> Any:
        """The output of the upstream named `name`, as a Python object.

        `MissingUpstream` if there is no upstream of that name or it has no
        output yet; a `StoreError` if the store refuses the read.
        """
        node_id = self.upstreams.get(name)
        if node_id is None:
            raise MissingUpstream(f"no upstream named `{name}`")
        text = get_text(self.flow_run_id, node_id)
        if text is None:
            raise MissingUpstream(f"upstream `{name}` ({node_id}) has no output yet")
        return _json_loads(text)

    def output(self, value: Any) -> None:
        """Writes this node's output, once (`AlreadyExists` the second time)."""
        put(self.flow_run_id, self.node_id, value)


# ---------------------------------------------------------------- export


def to_step_error(error: BaseException) -> Any:
    """The WIT `step-error` value the host gets for an exception."""
    if isinstance(error, StoreError):
        return _types.StepError_Store(error.wit)
    if isinstance(error, InvalidParams):
        return _types.StepError_InvalidParams(str(error))
    if isinstance(error, Failed):
        return _types.StepError_Failed(str(error))
    return _types.StepError_Failed(f"{type(error).__name__}: {error}")


def export(step: Callable[[Context], None]) -> type:
    """Makes the `WitWorld` class componentize-py exports from a step function.

    Use as `WitWorld = export(my_step)` (or as a decorator on a function
    named `WitWorld`). The function gets a `Context`; see the module's
    docs for how its exceptions reach the host.
    """
    exported = _exported(step)
    _warm_up()
    return exported


def _exported(step: Callable[[Context], None]) -> type:
    """The `WitWorld` class running `step`."""

    class Exported(wit_world.WitWorld):
        def run(self, invocation: Any) -> None:
            try:
                step(Context(invocation))
            except Err as e:
                if type(e.value) in _STORE_ERRORS:  # a raw binding's store error
                    raise Err(_types.StepError_Store(e.value)) from None
                raise  # already a WIT step-error
            except Exception as e:
                raise Err(to_step_error(e)) from None

    Exported.__name__ = Exported.__qualname__ = "WitWorld"
    Exported.__doc__ = step.__doc__
    return Exported


def _warm_up() -> None:
    """Runs the SDK once, over a faked store, as the step module loads.

    In a component the module loads when componentize-py builds it, and the
    interpreter is snapshotted after; every run starts from that snapshot.
    Run here, the SDK's code is specialized by the interpreter and its
    lookups cached in the snapshot instead of redone (and their memory pages
    written) by every run. The store is faked below the generated bindings
    (componentize-py's import call; outside a component, where there is none,
    the bindings' functions): first every call succeeds, then every call
    fails with `storage`. No store call is made and the step is not run.
    """
    uuid = "00000000-0000-4000-8000-000000000000"
    text = '{"warm":[1,2.5,"up",true,null],"up":{"a":"b"}}'
    invocation = _types.Invocation(
        flow_run_id=uuid, node_id=uuid, params=text, upstream=[_types.Upstream(name="up", node_id=uuid)]
    )

    def attempt(f: Callable, *args: Any) -> Any:
        try:
            return f(*args)
        except Exception as e:
            return to_step_error(e)

    def step(ctx: Context) -> None:
        value = ctx.params({})
        name = next(iter(ctx.upstreams))
        ctx.upstream_id(name)
        attempt(ctx.upstream, "")  # no such upstream
        attempt(ctx.output, float("nan"))  # no JSON form
        ctx.upstream(name)  # failing: the StoreError leaves the step
        get(ctx.flow_run_id, ctx.node_id)
        list_keys(ctx.flow_run_id)
        get_global(name)
        put_global(name, value)
        upsert_global(name, value)
        ctx.output({**value, "name": name, "text": f"{ctx.node_id}: {_dumps(value)}"})

    try:
        import componentize_py_runtime as runtime  # only inside a component
    except ImportError:
        runtime = None
    from componentize_py_types import Ok

    failing = False

    def result(*args: Any) -> Any:  # componentize-py's import call
        return Err(_store.Error_Storage("warm-up")) if failing else Ok(text)

    def call(*args: Any) -> Any:  # a bindings function
        answer = result()
        if isinstance(answer, Err):
            raise answer
        return answer.value

    names = ["put", "get", "list_keys", "put_global", "upsert_global", "get_global"]
    saved = runtime.call_import if runtime else {name: getattr(_store, name) for name in names}
    try:
        if runtime:
            runtime.call_import = result
        else:
            for name in names:
                setattr(_store, name, call)
        for failing in (False, True):
            attempt(_exported(step)().run, invocation)
    finally:
        if runtime:
            runtime.call_import = saved
        else:
            for name, original in saved.items():
                setattr(_store, name, original)
