"""Step `words`: splits the greeting of the upstream step `greet` into words.

Input:  the output of the upstream named `greet`, e.g. {"greeting": "Hello, Ada!"}
Output: {"words": ["Hello,", "Ada!"]}

How a step works:

* The host calls `WitWorld.run` once per invocation. `componentize-py`
  finds the class by its name, so keep it called `WitWorld`.
* `invocation.upstream` lists the upstream nodes by the names the flow gives
  them; read an upstream's output with `store.get(flow_run_id, node_id)`.
* Write this step's own output, once, with
  `store.put(flow_run_id, node_id, json_text)`.
* A store call that fails raises `componentize_py_types.Err` whose `.value`
  is one of the `store.Error_*` dataclasses. To fail the step, raise `Err`
  with one of the `StepError_*` dataclasses; returning normally means `ok`.
"""

import json

import wit_world
from componentize_py_types import Err
from wit_world.imports import store
from wit_world.imports.types import (
    Invocation,
    StepError_Failed,
    StepError_Store,
)


def read_upstream(invocation: Invocation, name: str):
    """Returns the parsed output of the upstream named `name`.

    Fails the step with `failed("missing upstream <name>")` when the flow gives
    no such upstream or it has no output yet, and with `store(<error>)` when
    the store refuses the read.
    """
    for upstream in invocation.upstream:
        if upstream.name != name:
            continue
        try:
            text = store.get(invocation.flow_run_id, upstream.node_id)
        except Err as e:
            # e.value is the store's error (e.g. store.Error_AccessDenied):
            # hand it to the host unchanged.
            raise Err(StepError_Store(e.value))
        if text is None:  # `none`: the upstream has not written an output
            break
        return json.loads(text)  # the store only holds valid JSON
    raise Err(StepError_Failed(f"missing upstream {name}"))


class WitWorld(wit_world.WitWorld):
    def run(self, invocation: Invocation) -> None:
        # This step takes no parameters; `invocation.params` is JSON text
        # ("null" when the flow gives none).
        greet = read_upstream(invocation, "greet")
        greeting = greet.get("greeting") if isinstance(greet, dict) else None
        if not isinstance(greeting, str):
            raise Err(StepError_Failed('upstream greet has no string "greeting"'))

        output = {"words": greeting.split()}

        try:
            store.put(invocation.flow_run_id, invocation.node_id, json.dumps(output))
        except Err as e:
            match e.value:
                case store.Error_AlreadyExists():
                    # Our output is already stored: a retry of a run that
                    # got this far. The step is done.
                    return
                case _:
                    raise Err(StepError_Store(e.value))
