/*
 * The contextstore step SDK for C: the Rust SDK's shape over the bindings
 * that `wit-bindgen c` generates from the `step` world (`step.h`).
 *
 * A step defines one function, and the SDK exports it as the component's
 * `run`:
 *
 *     #include "contextstore_step.h"
 *
 *     bool cs_step_run(cs_context_t *ctx) {
 *         cs_string_t greet;
 *         if (!cs_upstream(ctx, "greet", &greet))  // the upstream named `greet`
 *             return false;                       // (the step error is set)
 *         bool ok = cs_outputf(ctx, "{\"bytes\": %zu}", greet.len);
 *         cs_string_free(&greet);
 *         return ok;
 *     }
 *
 * Return true for `ok` (the host then checks that the output is stored) and
 * false for a failed step. Every SDK helper that returns false has already
 * set the step error the host gets:
 *
 *   - cs_upstream: `failed("missing-upstream: …")` when there is no upstream
 *     of that name or it has no output yet; `store(<error>)` when the store
 *     refuses the read;
 *   - cs_output, cs_outputf: `store(<error>)` (`already-exists` means a
 *     retried invocation already stored this node's output: returning false
 *     then is right, the host reports the node done);
 *   - cs_fail, cs_invalid_params, cs_fail_store: what their names say.
 *
 * If several failures are set, the last one wins.
 *
 * Values are JSON text (cs_string_t: UTF-8, NOT NUL-terminated). The SDK does
 * not parse JSON; json.h has a small scanner for string members.
 *
 * OWNERSHIP
 *
 *   - Borrowed from the SDK, valid until cs_step_run returns, never freed by
 *     you: the context, cs_params(), cs_flow_run_id(), cs_node_id(),
 *     cs_upstream_id() and cs_upstream_name().
 *   - Arguments you pass to any SDK function are borrowed: the SDK neither
 *     keeps nor frees them.
 *   - Strings the SDK fills in through an `out` parameter (cs_upstream,
 *     cs_get, cs_get_global) are yours: free them with cs_string_free. Lists
 *     from cs_list_keys: free with cs_string_list_free.
 *   - A store error a raw call fills in is yours: free it with
 *     cs_store_error_free, or hand it to cs_fail_store, which takes it.
 *   - Out-of-memory in the SDK aborts the step (a trap).
 */
#ifndef CONTEXTSTORE_STEP_H
#define CONTEXTSTORE_STEP_H

#include <stdbool.h>
#include <stddef.h>

#include "step.h"

/* UTF-8 text: `ptr` and `len`, not NUL-terminated. */
typedef step_string_t cs_string_t;
/* A list of strings (`ptr`, `len`). */
typedef step_list_string_t cs_string_list_t;
/* A store error: `tag` is WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_*. */
typedef worldinterface_contextstore_store_error_t cs_store_error_t;

/* One run of one step. Opaque: use the functions below. */
typedef struct cs_context cs_context_t;

/* The step. Defined by you; exported by the SDK as the component's `run`. */
bool cs_step_run(cs_context_t *ctx);

/* ---------------------------------------------------------------- context */

/* The flow run this step belongs to (hyphenated UUID). Borrowed. */
const cs_string_t *cs_flow_run_id(const cs_context_t *ctx);
/* This step's node id: the one key it may put. Borrowed. */
const cs_string_t *cs_node_id(const cs_context_t *ctx);
/* The node's parameters as JSON text (`null` when the flow gives none). Borrowed. */
const cs_string_t *cs_params(const cs_context_t *ctx);
/* The number of upstream nodes, and the name of the i-th. Borrowed. */
size_t cs_upstream_count(const cs_context_t *ctx);
const cs_string_t *cs_upstream_name(const cs_context_t *ctx, size_t i);
/* The node id of the upstream named `name`, or NULL. Borrowed. */
const cs_string_t *cs_upstream_id(const cs_context_t *ctx, const char *name);

/*
 * Reads the output of the upstream named `name` into *out (JSON text; yours,
 * free with cs_string_free). On false the step error is set (see above) and
 * *out is untouched.
 */
bool cs_upstream(cs_context_t *ctx, const char *name, cs_string_t *out);

/* Writes this node's output, the JSON text json[0..len), once. */
bool cs_output(cs_context_t *ctx, const char *json, size_t len);
/* cs_output of printf-formatted text, e.g. cs_outputf(ctx, "{\"n\": %d}", n). */
bool cs_outputf(cs_context_t *ctx, const char *format, ...)
    __attribute__((format(printf, 2, 3)));

/*
 * The format strings of cs_outputf, cs_fail and cs_invalid_params take %s,
 * %.*s, %c, %d, %i and %u (with the length modifiers l, ll and z) and %%;
 * any other conversion aborts. (libc's printf family would make the
 * component import WASI's stdio and filesystem.) Format floats yourself.
 */

/* Fails the step with `failed(<printf-formatted text>)`; returns false. */
bool cs_fail(cs_context_t *ctx, const char *format, ...) __attribute__((format(printf, 2, 3)));
/* Fails the step with `invalid-params(<printf-formatted text>)`; returns false. */
bool cs_invalid_params(cs_context_t *ctx, const char *format, ...)
    __attribute__((format(printf, 2, 3)));
/* Fails the step with `store(*error)`, taking the error; returns false. */
bool cs_fail_store(cs_context_t *ctx, cs_store_error_t *error);

/* ---------------------------------------------------------------- strings */

/* A borrowed cs_string_t over a NUL-terminated C string. */
cs_string_t cs_str(const char *s);
/* Whether `s` holds exactly the C string `c`. */
bool cs_string_eq(const cs_string_t *s, const char *c);
/* A NUL-terminated heap copy of `s` (yours: free()). */
char *cs_string_cstr(const cs_string_t *s);
/* Frees a string the SDK gave you; sets it to {NULL, 0}. */
void cs_string_free(cs_string_t *s);
/* Frees a list from cs_list_keys. */
void cs_string_list_free(cs_string_list_t *list);

/* ---------------------------------------------------------------- store errors */

/*
 * The WIT name of the error's case: "already-exists",
 * "global-already-exists", "invalid-id", "invalid-json", "access-denied",
 * "quota-exceeded" or "storage".
 */
const char *cs_store_error_kind(const cs_store_error_t *error);
/* The host's text (empty for the two cases without one). Borrowed from `error`. */
cs_string_t cs_store_error_message(const cs_store_error_t *error);
/* Frees a store error you did not hand to cs_fail_store. */
void cs_store_error_free(cs_store_error_t *error);

/*
 * ---------------------------------------------------------------- raw store calls
 *
 * The six WIT store calls. True on success; false with *error filled in
 * (yours). They do not touch the step error: pass the error on with
 * cs_fail_store, or handle it.
 */
bool cs_put(const cs_string_t *flow_run_id, const cs_string_t *node_id, const cs_string_t *json,
            cs_store_error_t *error);
/* *out is the stored JSON text (yours), or {NULL, 0} when nothing is stored. */
bool cs_get(const cs_string_t *flow_run_id, const cs_string_t *node_id, cs_string_t *out,
            cs_store_error_t *error);
bool cs_list_keys(const cs_string_t *flow_run_id, cs_string_list_t *out, cs_store_error_t *error);
bool cs_put_global(const cs_string_t *key, const cs_string_t *json, cs_store_error_t *error);
bool cs_upsert_global(const cs_string_t *key, const cs_string_t *json, cs_store_error_t *error);
/* *out is the stored JSON text (yours), or {NULL, 0} when nothing is stored. */
bool cs_get_global(const cs_string_t *key, cs_string_t *out, cs_store_error_t *error);

#endif
