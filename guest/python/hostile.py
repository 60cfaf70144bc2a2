"""Hostile test step: makes one call the host must refuse, and reports it.

Params: {"mode": "...", "target": "<uuid>"} with the modes

* `ungranted-global`: `put-global("secret/key", "1")` without a grant for it;
* `write-other-node`: `put` into this flow run under the node id `target`;
* `invalid-json`:     `put` of the text `{not json` as this node's output;
* `loop`:             spins forever (the host must interrupt it);
* `sleep`:            `time.sleep(3600)`;
* `huge-key`:         `put-global("hostile/kkk…", "1")` with a 1 MiB key;
* `chatty-stderr`:    1 MiB of stderr lines, then raises
                      `RuntimeError("chatty-stderr: the panic after the chatter")`;
* `round-trip`:       puts `ROUND_TRIP` as this node's output, gets it back,
                      and fails unless it is the same text (then returns).

The store's error is returned unchanged as `step-error.store(<error>)`, so the
host sees the same typed error from every language. If the call is allowed,
the step fails with `failed("<mode>: bad call was allowed")`.
"""

import json
import sys
import time

import wit_world
from componentize_py_types import Err
from wit_world.imports import store
from wit_world.imports.types import (
    Invocation,
    StepError_Failed,
    StepError_InvalidParams,
    StepError_Store,
)


# Big integers, -0, a duplicate key and \u escapes: text that a parse and
# re-serialize would change.
ROUND_TRIP = (
    '[123456789012345678901234567890,18446744073709551616,-0,{"a":1,"a":2},'
    '"\\u00e9\\ud83d\\ude00"]'
)


def sleep_an_hour() -> None:
    time.sleep(3600)
    raise Err(StepError_Failed("sleep: woke up after an hour"))


def chatter_then_raise() -> None:
    line = "chatter " * 8
    for _ in range(16384):
        print(line, file=sys.stderr)
    raise RuntimeError("chatty-stderr: the panic after the chatter")


def round_trip(run_id: str, node_id: str) -> None:
    try:
        store.put(run_id, node_id, ROUND_TRIP)
        back = store.get(run_id, node_id)
    except Err as e:
        raise Err(StepError_Store(e.value))
    if back != ROUND_TRIP:
        raise Err(StepError_Failed(f"round-trip: the output came back as {back!r}"))


def spin() -> None:
    # CPython interprets every iteration; nothing removes this loop.
    n = 0
    while True:
        n += 1


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: Invocation) -> None:
        try:
            params = json.loads(invocation.params)
        except ValueError as e:
            raise Err(StepError_InvalidParams(f"params are not JSON: {e}"))
        if not isinstance(params, dict):
            raise Err(StepError_InvalidParams("params must be a JSON object"))

        mode = params.get("mode")
        run_id, node_id = invocation.flow_run_id, invocation.node_id
        if mode == "ungranted-global":
            bad_call = lambda: store.put_global("secret/key", "1")
        elif mode == "write-other-node":
            target = params.get("target")
            if not isinstance(target, str):
                raise Err(StepError_InvalidParams('"target" must be a string'))
            bad_call = lambda: store.put(run_id, target, "1")
        elif mode == "invalid-json":
            bad_call = lambda: store.put(run_id, node_id, "{not json")
        elif mode == "loop":
            bad_call = spin
        elif mode == "sleep":
            bad_call = sleep_an_hour
        elif mode == "huge-key":
            key = "hostile/" + "k" * ((1 << 20) - len("hostile/"))
            bad_call = lambda: store.put_global(key, "1")
        elif mode == "chatty-stderr":
            bad_call = chatter_then_raise
        elif mode == "round-trip":
            return round_trip(run_id, node_id)
        else:
            raise Err(StepError_InvalidParams(f"unknown mode {json.dumps(mode)}"))

        try:
            bad_call()
        except Err as e:
            raise Err(StepError_Store(e.value))  # the store's error, unchanged
        raise Err(StepError_Failed(f"{mode}: bad call was allowed"))
