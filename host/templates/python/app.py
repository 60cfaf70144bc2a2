"""Step `{{name}}`: greets the text of its upstream `input`.

Params: {"greeting": "Hi"} (optional; "Hello" when omitted)
Input:  the output of the upstream named `input`, e.g. {"text": "Ada"}
Output: {"message": "Hi, Ada!"}

The SDK is contextstore_step.py, beside this file.
"""

from contextstore_step import Context, Failed, InvalidParams, export


def step(ctx: Context) -> None:
    params = ctx.params({})
    if not isinstance(params, dict):
        raise InvalidParams("params must be a JSON object")
    greeting = params.get("greeting", "Hello")
    text = ctx.upstream("input").get("text")  # none: MissingUpstream
    if not isinstance(text, str):
        raise Failed('upstream input has no string "text"')
    ctx.output({"message": f"{greeting}, {text}!"})


WitWorld = export(step)  # componentize-py exports the class named WitWorld
