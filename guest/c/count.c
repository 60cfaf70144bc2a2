/*
 * Step `count`: measures the greeting of the upstream step `greet`.
 *
 * Input:  the output of the upstream named `greet`, e.g. {"greeting": "Hello, Ada!"}
 * Output: {"length": 11}, the byte length of the greeting in UTF-8.
 *
 * How a step works:
 *
 * - The host calls `exports_step_run(invocation, err)` once per invocation.
 *   Return true for `ok`; to fail the step, fill `*err` with a step-error
 *   and return false.
 * - The step owns `*invocation` and frees it (step_invocation_free). Strings
 *   put into `*err` are freed by the bindings after the host has read them,
 *   so they must be heap-allocated (step_string_dup) or come from a store call.
 * - Store calls (worldinterface_contextstore_store_*) return true on success;
 *   on failure they return false and fill their last argument with the
 *   store's error: `tag` says which (WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_*)
 *   and `val` holds its text. Whatever a call returns is yours to free.
 * - `step.h` is generated from the WIT by build.sh (wit-bindgen c).
 */
#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "json.h"
#include "step.h"

typedef worldinterface_contextstore_store_error_t store_error_t;
typedef worldinterface_contextstore_store_option_json_t option_json_t;

/* Fails the step with `failed("<prefix><detail>")`. */
static bool fail(step_step_error_t *err, const char *prefix, const char *detail) {
    size_t a = strlen(prefix), b = strlen(detail);
    char *text = malloc(a + b + 1);
    if (text == NULL)
        abort();
    memcpy(text, prefix, a);
    memcpy(text + a, detail, b + 1);
    err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_FAILED;
    err->val.failed = (step_string_t){(uint8_t *)text, a + b};
    return false;
}

/* Fails the step with `store(<error>)`; the error (and its text) moves into *err. */
static bool fail_store(step_step_error_t *err, store_error_t error) {
    err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_STORE;
    err->val.store = error;
    return false;
}

/*
 * Reads the output of the upstream named `name` into *out (JSON text, to be
 * freed with step_string_free). Fails with `failed("missing upstream <name>")`
 * when the flow gives no such upstream or it has no output yet.
 */
static bool read_upstream(const step_invocation_t *invocation, const char *name,
                          step_string_t *out, step_step_error_t *err) {
    size_t name_len = strlen(name);
    for (size_t i = 0; i < invocation->upstream.len; i++) {
        worldinterface_contextstore_types_upstream_t *up = &invocation->upstream.ptr[i];
        if (up->name.len != name_len || memcmp(up->name.ptr, name, name_len) != 0)
            continue;

        option_json_t value;
        store_error_t error;
        if (!worldinterface_contextstore_store_get(
                (step_string_t *)&invocation->flow_run_id, &up->node_id, &value, &error))
            return fail_store(err, error);
        if (!value.is_some) /* the upstream has not written an output */
            break;
        *out = value.val;
        return true;
    }
    return fail(err, "missing upstream ", name);
}

/* Writes `{"length": N}` into buf (at least 32 bytes); returns its length. */
static size_t format_output(char *buf, size_t n) {
    char digits[24];
    size_t d = 0;
    do {
        digits[d++] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);

    size_t len = 0;
    const char *head = "{\"length\": ";
    memcpy(buf, head, strlen(head));
    len += strlen(head);
    while (d > 0)
        buf[len++] = digits[--d];
    buf[len++] = '}';
    return len;
}

static bool count(step_invocation_t *invocation, step_step_error_t *err) {
    /* This step takes no parameters; invocation->params is JSON text
     * ("null" when the flow gives none). */
    step_string_t greet;
    if (!read_upstream(invocation, "greet", &greet, err))
        return false;

    json_string_t greeting;
    json_status_t status = json_find_string(greet.ptr, greet.len, "greeting", &greeting);
    step_string_free(&greet);
    if (status != JSON_FOUND)
        return fail(err, "upstream greet has no string \"greeting\"", "");

    char text[32];
    step_string_t output = {(uint8_t *)text, format_output(text, greeting.len)};

    store_error_t error;
    if (!worldinterface_contextstore_store_put(&invocation->flow_run_id, &invocation->node_id,
                                               &output, &error)) {
        if (error.tag == WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_ALREADY_EXISTS)
            return true; /* our output is already stored: a retry; the step is done */
        return fail_store(err, error);
    }
    return true;
}

bool exports_step_run(step_invocation_t *invocation, step_step_error_t *err) {
    bool ok = count(invocation, err);
    step_invocation_free(invocation);
    return ok;
}
