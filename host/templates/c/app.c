/*
 * Step `{{name}}`: greets the text of its upstream `input`.
 *
 * Params: {"greeting": "Hi"} (optional; "Hello" when omitted)
 * Input:  the output of the upstream named `input`, e.g. {"text": "Ada"}
 * Output: {"message": "Hi, Ada!"}
 *
 * The SDK is contextstore_step.h (+ .c), beside this file; json.h finds
 * string members of JSON objects.
 */
#include "contextstore_step.h"
#include "json.h"

bool cs_step_run(cs_context_t *ctx) {
    const cs_string_t *params = cs_params(ctx); /* borrowed */
    json_string_t greeting = {(const uint8_t *)"Hello", 5, 5}, given;
    json_status_t found = json_find_string(params->ptr, params->len, "greeting", &given);
    if (found == JSON_FOUND)
        greeting = given;
    else if (found == JSON_NOT_OBJECT && !cs_string_eq(params, "null"))
        return cs_invalid_params(ctx, "params must be a JSON object");

    cs_string_t input; /* yours: free it */
    if (!cs_upstream(ctx, "input", &input)) /* none: failed("missing-upstream: ...") */
        return false;
    json_string_t text;
    bool ok;
    if (json_find_string(input.ptr, input.len, "text", &text) != JSON_FOUND)
        ok = cs_fail(ctx, "upstream input has no string \"text\"");
    else /* the raw (still escaped) JSON string bodies go back into JSON as they are */
        ok = cs_outputf(ctx, "{\"message\":\"%.*s, %.*s!\"}", (int)greeting.raw_len,
                        (const char *)greeting.raw, (int)text.raw_len, (const char *)text.raw);
    cs_string_free(&input);
    return ok;
}
