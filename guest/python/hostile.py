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

Built on the SDK in `contextstore_step.py`. The bad calls go through its
raw text calls (`put_text`, `put_global_text`), so the text reaches the host
as written; the `StoreError` they raise leaves the step, and the SDK passes
the store's error back unchanged as `step-error.store(<error>)`: the host
sees the same typed error from every language. If the call is allowed, the
step fails with `failed("<mode>: bad call was allowed")`.
"""

import json
import sys
import time

from contextstore_step import (
    Context,
    Failed,
    InvalidParams,
    export,
    get_text,
    put_global_text,
    put_text,
)

# Big integers, -0, a duplicate key and \u escapes: text that a parse and
# re-serialize would change.
ROUND_TRIP = (
    '[123456789012345678901234567890,18446744073709551616,-0,{"a":1,"a":2},'
    '"\\u00e9\\ud83d\\ude00"]'
)


def sleep_an_hour() -> None:
    time.sleep(3600)
    raise Failed("sleep: woke up after an hour")


def chatter_then_raise() -> None:
    line = "chatter " * 8
    for _ in range(16384):
        print(line, file=sys.stderr)
    raise RuntimeError("chatty-stderr: the panic after the chatter")


def round_trip(ctx: Context) -> None:
    put_text(ctx.flow_run_id, ctx.node_id, ROUND_TRIP)
    back = get_text(ctx.flow_run_id, ctx.node_id)
    if back != ROUND_TRIP:
        raise Failed(f"round-trip: the output came back as {back!r}")


def spin() -> None:
    # CPython interprets every iteration; nothing removes this loop.
    n = 0
    while True:
        n += 1


def hostile(ctx: Context) -> None:
    params = ctx.params()  # InvalidParams when not JSON
    if not isinstance(params, dict):
        raise InvalidParams("params must be a JSON object")

    mode = params.get("mode")
    run_id, node_id = ctx.flow_run_id, ctx.node_id
    if mode == "ungranted-global":
        bad_call = lambda: put_global_text("secret/key", "1")
    elif mode == "write-other-node":
        target = params.get("target")
        if not isinstance(target, str):
            raise InvalidParams('"target" must be a string')
        bad_call = lambda: put_text(run_id, target, "1")
    elif mode == "invalid-json":
        bad_call = lambda: put_text(run_id, node_id, "{not json")
    elif mode == "loop":
        bad_call = spin
    elif mode == "sleep":
        bad_call = sleep_an_hour
    elif mode == "huge-key":
        key = "hostile/" + "k" * ((1 << 20) - len("hostile/"))
        bad_call = lambda: put_global_text(key, "1")
    elif mode == "chatty-stderr":
        bad_call = chatter_then_raise
    elif mode == "round-trip":
        return round_trip(ctx)
    else:
        raise InvalidParams(f"unknown mode {json.dumps(mode)}")

    bad_call()  # a refused call raises a StoreError: the store's error, unchanged
    raise Failed(f"{mode}: bad call was allowed")


WitWorld = export(hostile)  # componentize-py exports the class named WitWorld
