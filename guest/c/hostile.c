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
 * Built on the SDK in contextstore_step.h. The bad calls are its raw store
 * calls (cs_put, cs_put_global), and a refused call's error goes to
 * cs_fail_store, which returns it unchanged as `step-error.store(<error>)`:
 * the host sees the same typed error from every language. If the call is
 * allowed, the step fails with `failed("<mode>: bad call was allowed")`.
 * String values are taken as written (escapes are not decoded).
 *
 * Unlike the SDK, this step uses libc's stdio (fputs to stderr) and WASI's
 * clocks on purpose: those are what its modes test.
 */
/* clock_nanosleep and sleep. */
#define _POSIX_C_SOURCE 200809L

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "contextstore_step.h"
#include "json.h"

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

__attribute__((noreturn)) static void chatter_then_trap(void) {
    for (int i = 0; i < 16384; i++)
        fputs("chatter chatter chatter chatter chatter chatter chatter chatter\n", stderr);
    fputs("chatty-stderr: the panic after the chatter\n", stderr);
    fflush(stderr);
    __builtin_trap();
}

static bool round_trip(cs_context_t *ctx) {
    cs_string_t text = cs_str(ROUND_TRIP), back;
    cs_store_error_t error;
    if (!cs_put(cs_flow_run_id(ctx), cs_node_id(ctx), &text, &error) ||
        !cs_get(cs_flow_run_id(ctx), cs_node_id(ctx), &back, &error))
        return cs_fail_store(ctx, &error);
    bool same = cs_string_eq(&back, ROUND_TRIP);
    cs_string_free(&back);
    return same ? true : cs_fail(ctx, "round-trip: the output came back changed");
}

static bool is(const json_string_t *s, const char *text) {
    return s->raw_len == strlen(text) && memcmp(s->raw, text, s->raw_len) == 0;
}

bool cs_step_run(cs_context_t *ctx) {
    const cs_string_t *params = cs_params(ctx);
    json_string_t mode, target;
    switch (json_find_string(params->ptr, params->len, "mode", &mode)) {
    case JSON_NOT_OBJECT:
        return cs_invalid_params(ctx, "params must be a JSON object");
    case JSON_NOT_FOUND:
        return cs_invalid_params(ctx, "unknown mode null");
    case JSON_FOUND:
        break;
    }

    cs_string_t one = cs_str("1");
    cs_store_error_t error;
    bool allowed;
    if (is(&mode, "ungranted-global")) {
        cs_string_t secret_key = cs_str("secret/key");
        allowed = cs_put_global(&secret_key, &one, &error);
    } else if (is(&mode, "write-other-node")) {
        if (json_find_string(params->ptr, params->len, "target", &target) != JSON_FOUND)
            return cs_invalid_params(ctx, "\"target\" must be a string");
        cs_string_t node_id = {(uint8_t *)target.raw, target.raw_len};
        allowed = cs_put(cs_flow_run_id(ctx), &node_id, &one, &error);
    } else if (is(&mode, "invalid-json")) {
        cs_string_t not_json = cs_str("{not json");
        allowed = cs_put(cs_flow_run_id(ctx), cs_node_id(ctx), &not_json, &error);
    } else if (is(&mode, "loop")) {
        spin();
    } else if (is(&mode, "sleep")) {
        sleep(3600);
        return cs_fail(ctx, "sleep: woke up after an hour");
    } else if (is(&mode, "block-forever")) {
        struct timespec never = {.tv_sec = INT64_MAX / 1000000000, .tv_nsec = 0};
        clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &never, NULL);
        return cs_fail(ctx, "block-forever: the instant came");
    } else if (is(&mode, "huge-key")) {
        size_t bytes = 1 << 20;
        uint8_t *key = malloc(bytes);
        if (key == NULL)
            abort();
        memset(key, 'k', bytes);
        memcpy(key, "hostile/", 8);
        cs_string_t huge = {key, bytes};
        allowed = cs_put_global(&huge, &one, &error);
        free(key);
    } else if (is(&mode, "chatty-stderr")) {
        chatter_then_trap();
    } else if (is(&mode, "round-trip")) {
        return round_trip(ctx);
    } else {
        return cs_invalid_params(ctx, "unknown mode \"%.*s\"", (int)mode.raw_len,
                                 (const char *)mode.raw);
    }

    if (!allowed)
        return cs_fail_store(ctx, &error); /* the store's error, unchanged */
    return cs_fail(ctx, "%.*s: bad call was allowed", (int)mode.raw_len, (const char *)mode.raw);
}
