/*
 * Hostile test step: makes one call the host must refuse, and reports it.
 *
 * Params: {"mode": "...", "target": "<uuid>"} with the modes
 *   ungranted-global  put-global("secret/key", "1") without a grant for it
 *   write-other-node  put into this flow run under the node id `target`
 *   invalid-json      put of the text `{not json` as this node's output
 *   loop              spins forever (the host must interrupt it)
 *   sleep             sleep(3600): a WASI clock subscription and a poll
 *   block-forever     clock_nanosleep to a monotonic instant that never comes
 *   huge-key          put-global("hostile/kkk…", "1") with a 1 MiB key
 *   chatty-stderr     1 MiB of stderr lines, then the last line
 *                     "chatty-stderr: the panic after the chatter" and a trap
 *   round-trip        put ROUND_TRIP as this node's output, get it back, and
 *                     fail unless it is byte for byte the same (then `ok`)
 *
 * The store's error is returned unchanged as `step-error.store(<error>)`, so
 * the host sees the same typed error from every language. If the call is
 * allowed, the step fails with `failed("<mode>: bad call was allowed")`.
 * String values are taken as written (escapes are not decoded).
 */
/* clock_nanosleep and sleep. */
#define _POSIX_C_SOURCE 200809L

#include <stdbool.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "json.h"
#include "step.h"

typedef worldinterface_contextstore_store_error_t store_error_t;

/* Returns a heap copy of a + b[0..b_len) + c, as the bindings free it later. */
static step_string_t concat(const char *a, const uint8_t *b, size_t b_len, const char *c) {
    size_t a_len = strlen(a), c_len = strlen(c);
    uint8_t *text = malloc(a_len + b_len + c_len + 1);
    if (text == NULL)
        abort();
    memcpy(text, a, a_len);
    if (b_len > 0)
        memcpy(text + a_len, b, b_len);
    memcpy(text + a_len + b_len, c, c_len);
    return (step_string_t){text, a_len + b_len + c_len};
}

static bool invalid_params(step_step_error_t *err, step_string_t text) {
    err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_INVALID_PARAMS;
    err->val.invalid_params = text;
    return false;
}

static bool is(const json_string_t *s, const char *text) {
    return s->raw_len == strlen(text) && memcmp(s->raw, text, s->raw_len) == 0;
}

/* Every iteration stores to a volatile, so the loop cannot be removed. */
static volatile uint64_t spins;

__attribute__((noreturn)) static void spin(void) {
    for (;;)
        spins++;
}

/* Big integers, -0, a duplicate key and \u escapes: text that a parse and
 * re-serialize would change. */
static const char ROUND_TRIP[] =
    "[123456789012345678901234567890,18446744073709551616,-0,{\"a\":1,\"a\":2},"
    "\"\\u00e9\\ud83d\\ude00\"]";

static bool failed(step_step_error_t *err, const char *text) {
    err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_FAILED;
    err->val.failed = concat(text, NULL, 0, "");
    return false;
}

__attribute__((noreturn)) static void chatter_then_trap(void) {
    for (int i = 0; i < 16384; i++)
        fputs("chatter chatter chatter chatter chatter chatter chatter chatter\n", stderr);
    fputs("chatty-stderr: the panic after the chatter\n", stderr);
    fflush(stderr);
    __builtin_trap();
}

static bool round_trip(step_invocation_t *invocation, step_step_error_t *err) {
    step_string_t text;
    step_string_set(&text, ROUND_TRIP);
    store_error_t error;
    if (!worldinterface_contextstore_store_put(&invocation->flow_run_id, &invocation->node_id,
                                               &text, &error)) {
        err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_STORE;
        err->val.store = error;
        return false;
    }
    worldinterface_contextstore_store_option_json_t back;
    if (!worldinterface_contextstore_store_get(&invocation->flow_run_id, &invocation->node_id,
                                               &back, &error)) {
        err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_STORE;
        err->val.store = error;
        return false;
    }
    bool same = back.is_some && back.val.len == strlen(ROUND_TRIP) &&
                memcmp(back.val.ptr, ROUND_TRIP, back.val.len) == 0;
    worldinterface_contextstore_store_option_json_free(&back);
    return same ? true : failed(err, "round-trip: the output came back changed");
}

static bool hostile(step_invocation_t *invocation, step_step_error_t *err) {
    const uint8_t *params = invocation->params.ptr;
    size_t params_len = invocation->params.len;
    json_string_t mode, target;
    switch (json_find_string(params, params_len, "mode", &mode)) {
    case JSON_NOT_OBJECT:
        return invalid_params(err, concat("params must be a JSON object", NULL, 0, ""));
    case JSON_NOT_FOUND:
        return invalid_params(err, concat("unknown mode null", NULL, 0, ""));
    case JSON_FOUND:
        break;
    }

    step_string_t one, secret_key, not_json;
    step_string_set(&one, "1");
    step_string_set(&secret_key, "secret/key");
    step_string_set(&not_json, "{not json");
    store_error_t error;
    bool allowed;
    if (is(&mode, "ungranted-global")) {
        allowed = worldinterface_contextstore_store_put_global(&secret_key, &one, &error);
    } else if (is(&mode, "write-other-node")) {
        if (json_find_string(params, params_len, "target", &target) != JSON_FOUND)
            return invalid_params(err, concat("\"target\" must be a string", NULL, 0, ""));
        step_string_t node_id = {(uint8_t *)target.raw, target.raw_len};
        allowed = worldinterface_contextstore_store_put(&invocation->flow_run_id, &node_id, &one,
                                                        &error);
    } else if (is(&mode, "invalid-json")) {
        allowed = worldinterface_contextstore_store_put(&invocation->flow_run_id,
                                                        &invocation->node_id, &not_json, &error);
    } else if (is(&mode, "loop")) {
        spin();
    } else if (is(&mode, "sleep")) {
        sleep(3600);
        return failed(err, "sleep: woke up after an hour");
    } else if (is(&mode, "block-forever")) {
        struct timespec never = {.tv_sec = INT64_MAX / 1000000000, .tv_nsec = 0};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &never, NULL);
        return failed(err, "block-forever: the instant came");
    } else if (is(&mode, "huge-key")) {
        size_t bytes = 1 << 20;
        uint8_t *key = malloc(bytes);
        if (key == NULL)
            abort();
        memset(key, 'k', bytes);
        memcpy(key, "hostile/", 8);
        step_string_t huge = {key, bytes};
        allowed = worldinterface_contextstore_store_put_global(&huge, &one, &error);
        free(key);
    } else if (is(&mode, "chatty-stderr")) {
        chatter_then_trap();
    } else if (is(&mode, "round-trip")) {
        return round_trip(invocation, err);
    } else {
        return invalid_params(err, concat("unknown mode \"", mode.raw, mode.raw_len, "\""));
    }

    if (!allowed) {
        /* The store's error, unchanged: it and its text move into *err. */
        err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_STORE;
        err->val.store = error;
        return false;
    }
    err->tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_FAILED;
    err->val.failed = concat("", mode.raw, mode.raw_len, ": bad call was allowed");
    return false;
}

bool exports_step_run(step_invocation_t *invocation, step_step_error_t *err) {
    bool ok = hostile(invocation, err);
    step_invocation_free(invocation);
    return ok;
}
