/*
 * Test step for the C SDK (tests/tests/sdks.rs): one SDK behaviour per mode.
 *
 * Params: {"mode": "..."} with the modes
 *
 *   echo              writes the output of upstream `in`, byte for byte
 *   missing-upstream  reads upstream `nope`, which the flow does not give
 *   upstream          reads upstream `in` and writes it (fails if it has no output)
 *   twice             writes its output twice: the second is already-exists
 *   pass-store-error  passes the error of an ungranted put-global on
 *   kinds             makes three bad calls and writes the kinds and messages it got
 *   invalid-params    fails with invalid-params("bad mode 7")
 *   handled           sets a failure, then writes its output and returns true
 *   false             returns false without setting an error
 *   globals           upserts global `sdk/g`, reads it back and lists the keys
 *   stderr            writes a line to stderr, then `"said"` as its output
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "contextstore_step.h"
#include "json.h"

static bool is(const json_string_t *mode, const char *name) {
    return mode->raw_len == strlen(name) && memcmp(mode->raw, name, mode->raw_len) == 0;
}

/* Makes a bad call; appends `"<kind>"` (and whether the message is empty) to buf. */
static void record(bool ok, cs_store_error_t *error, char *buf, size_t size) {
    size_t used = strlen(buf);
    if (ok) {
        snprintf(buf + used, size - used, "%s\"allowed\"", used > 1 ? "," : "");
        return;
    }
    cs_string_t message = cs_store_error_message(error);
    snprintf(buf + used, size - used, "%s[\"%s\",%s]", used > 1 ? "," : "",
             cs_store_error_kind(error), message.len > 0 ? "true" : "false");
    cs_store_error_free(error);
}

bool cs_step_run(cs_context_t *ctx) {
    const cs_string_t *params = cs_params(ctx);
    json_string_t mode;
    if (json_find_string(params->ptr, params->len, "mode", &mode) != JSON_FOUND)
        return cs_invalid_params(ctx, "params need a string \"mode\"");

    if (is(&mode, "echo") || is(&mode, "upstream")) {
        cs_string_t in;
        if (!cs_upstream(ctx, "in", &in))
            return false;
        bool ok = cs_output(ctx, (const char *)in.ptr, in.len);
        cs_string_free(&in);
        return ok;
    }
    if (is(&mode, "missing-upstream")) {
        cs_string_t nope;
        return cs_upstream(ctx, "nope", &nope);
    }
    if (is(&mode, "twice"))
        return cs_outputf(ctx, "%d", 1) && cs_outputf(ctx, "%d", 2);
    if (is(&mode, "pass-store-error")) {
        cs_string_t key = cs_str("secret/key"), value = cs_str("1");
        cs_store_error_t error;
        if (!cs_put_global(&key, &value, &error))
            return cs_fail_store(ctx, &error);
        return cs_fail(ctx, "the ungranted put-global was allowed");
    }
    if (is(&mode, "kinds")) {
        char buf[512] = "[";
        cs_store_error_t error;
        cs_string_t key = cs_str("secret/key"), one = cs_str("1"), bad_id = cs_str("not-a-uuid"),
                    bad_json = cs_str("{not json"), out;
        record(cs_put_global(&key, &one, &error), &error, buf, sizeof buf);
        bool got = cs_get(cs_flow_run_id(ctx), &bad_id, &out, &error);
        if (got)
            cs_string_free(&out);
        record(got, &error, buf, sizeof buf);
        record(cs_put(cs_flow_run_id(ctx), cs_node_id(ctx), &bad_json, &error), &error, buf,
               sizeof buf);
        strncat(buf, "]", sizeof buf - strlen(buf) - 1);
        return cs_output(ctx, buf, strlen(buf));
    }
    if (is(&mode, "invalid-params"))
        return cs_invalid_params(ctx, "bad mode %d", 7);
    if (is(&mode, "handled")) {
        cs_fail(ctx, "a failure the step then handles");
        return cs_output(ctx, "\"recovered\"", strlen("\"recovered\""));
    }
    if (is(&mode, "false"))
        return false;
    if (is(&mode, "globals")) {
        cs_string_t key = cs_str("sdk/g"), value = cs_str("{\"g\": [1, 2.5]}"), back;
        cs_string_list_t keys;
        cs_store_error_t error;
        if (!cs_upsert_global(&key, &value, &error) || !cs_get_global(&key, &back, &error))
            return cs_fail_store(ctx, &error);
        if (!cs_list_keys(cs_flow_run_id(ctx), &keys, &error)) {
            cs_string_free(&back);
            return cs_fail_store(ctx, &error);
        }
        bool ok = cs_outputf(ctx, "{\"global\": %.*s, \"keys\": %zu}", (int)back.len,
                             (const char *)back.ptr, keys.len);
        cs_string_free(&back);
        cs_string_list_free(&keys);
        return ok;
    }
    if (is(&mode, "stderr")) {
        fputs("hello from the C step\n", stderr);
        return cs_output(ctx, "\"said\"", strlen("\"said\""));
    }
    return cs_invalid_params(ctx, "unknown mode %.*s", (int)mode.raw_len, (const char *)mode.raw);
}
