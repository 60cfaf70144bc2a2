"""Step `words`: splits the greeting of the upstream step `greet` into words.

Input:  the output of the upstream named `greet`, e.g. {"greeting": "Hello, Ada!"}
Output: {"words": ["Hello,", "Ada!"]}

Built on the SDK in `contextstore_step.py`: the step is a function of a
`Context`; exceptions reach the host as the WIT `step-error`.
"""

from contextstore_step import Context, Failed, export


def words(ctx: Context) -> None:
    greeting = ctx.upstream("greet")  # MissingUpstream when there is none
    if not isinstance(greeting, dict) or not isinstance(greeting.get("greeting"), str):
        raise Failed('upstream greet has no string "greeting"')
    ctx.output({"words": greeting["greeting"].split()})


WitWorld = export(words)  # componentize-py exports the class named WitWorld
