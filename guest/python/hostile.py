"""Hostile test step: makes one call the host must refuse, and reports it.

Params: {"mode": "...", "target": "<uuid>"} with the modes

* `ungranted-global`: `put-global("secret/key", "1")` without a grant for it;
* `write-other-node`: `put` into this flow run under the node id `target`;
* `invalid-json`:     `put` of the text `{not json` as this node's output;
* `loop`:             spins forever (the host must interrupt it).

The store's error is returned unchanged as `step-error.store(<error>)`, so the
host sees the same typed error from every language. If the call is allowed,
the step fails with `failed("<mode>: bad call was allowed")`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import store
from wit_world.imports.types import (
    Invocation,
    StepError_Failed,
    StepError_InvalidParams,
    StepError_Store,
)


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
        else:
            raise Err(StepError_InvalidParams(f"unknown mode {json.dumps(mode)}"))

        try:
            bad_call()
        except Err as e:
            raise Err(StepError_Store(e.value))  # the store's error, unchanged
        raise Err(StepError_Failed(f"{mode}: bad call was allowed"))
