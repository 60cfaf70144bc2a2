/*
 * Step `count`: measures the greeting of the upstream step `greet`.
 *
 * Input:  the output of the upstream named `greet`, e.g. {"greeting": "Hello, Ada!"}
 * Output: {"length": 11}, the byte length of the greeting in UTF-8.
 *
 * Built on the SDK in contextstore_step.h: the SDK exports cs_step_run as the
 * component's `run`; each helper that returns false has set the step error.
 */
#include "contextstore_step.h"
#include "json.h"

bool cs_step_run(cs_context_t *ctx) {
    cs_string_t greet;
    if (!cs_upstream(ctx, "greet", &greet)) /* missing-upstream or a store error */
        return false;
    json_string_t greeting;
    json_status_t status = json_find_string(greet.ptr, greet.len, "greeting", &greeting);
    cs_string_free(&greet);
    if (status != JSON_FOUND)
        return cs_fail(ctx, "upstream greet has no string \"greeting\"");
    return cs_outputf(ctx, "{\"length\": %zu}", greeting.len);
}
