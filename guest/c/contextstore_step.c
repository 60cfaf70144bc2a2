/*
 * The contextstore step SDK for C; see contextstore_step.h for the API and
 * its ownership rules.
 */
#include "contextstore_step.h"

#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

struct cs_context {
    step_invocation_t *invocation;
    step_step_error_t *err;
    /* Whether *err holds a step error (owned, to be freed if replaced). */
    bool failed;
};

/* ---------------------------------------------------------------- strings */

cs_string_t cs_str(const char *s) {
    return (cs_string_t){(uint8_t *)s, strlen(s)};
}

bool cs_string_eq(const cs_string_t *s, const char *c) {
    size_t n = strlen(c);
    return s->len == n && (n == 0 || memcmp(s->ptr, c, n) == 0);
}

static void *checked(void *p) {
    if (p == NULL)
        abort();
    return p;
}

char *cs_string_cstr(const cs_string_t *s) {
    char *c = checked(malloc(s->len + 1));
    if (s->len > 0)
        memcpy(c, s->ptr, s->len);
    c[s->len] = '\0';
    return c;
}

void cs_string_free(cs_string_t *s) {
    step_string_free(s);
}

void cs_string_list_free(cs_string_list_t *list) {
    step_list_string_free(list);
}

/*
 * A growing heap buffer for the formatter below.
 */
typedef struct {
    char *ptr;
    size_t len, cap;
} buffer_t;

static void put_bytes(buffer_t *b, const char *bytes, size_t n) {
    if (b->len + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 64;
        while (cap < b->len + n + 1)
            cap *= 2;
        b->ptr = checked(realloc(b->ptr, cap));
        b->cap = cap;
    }
    if (n > 0)
        memcpy(b->ptr + b->len, bytes, n);
    b->len += n;
    b->ptr[b->len] = '\0';
}

static void put_unsigned(buffer_t *b, unsigned long long n, bool negative) {
    char digits[24];
    size_t d = sizeof digits;
    do {
        digits[--d] = (char)('0' + n % 10);
        n /= 10;
    } while (n > 0);
    if (negative)
        digits[--d] = '-';
    put_bytes(b, digits + d, sizeof digits - d);
}

static void put_signed(buffer_t *b, long long n) {
    put_unsigned(b, n < 0 ? 0ULL - (unsigned long long)n : (unsigned long long)n, n < 0);
}

/*
 * printf into a fresh heap string (len > 0, or {NULL, 0} when empty). A
 * small formatter of its own: libc's printf family would make the component
 * import WASI's stdio and filesystem. Conversions: %s, %.*s, %c, %d, %i,
 * %u with the length modifiers l, ll, z, and %%; anything else aborts.
 */
static cs_string_t vformat(const char *format, va_list args) {
    buffer_t b = {NULL, 0, 0};
    for (const char *p = format; *p != '\0'; p++) {
        if (*p != '%') {
            const char *end = strchr(p, '%');
            size_t n = end ? (size_t)(end - p) : strlen(p);
            put_bytes(&b, p, n);
            p += n - 1;
            continue;
        }
        p++;
        if (*p == '%') {
            put_bytes(&b, "%", 1);
        } else if (p[0] == '.' && p[1] == '*' && p[2] == 's') {
            int n = va_arg(args, int);
            const char *s = va_arg(args, const char *);
            put_bytes(&b, s, n > 0 ? (size_t)n : 0);
            p += 2;
        } else if (*p == 's') {
            const char *s = va_arg(args, const char *);
            put_bytes(&b, s, strlen(s));
        } else if (*p == 'c') {
            char c = (char)va_arg(args, int);
            put_bytes(&b, &c, 1);
        } else {
            int longs = 0;
            bool size = false;
            for (; *p == 'l'; p++)
                longs++;
            if (*p == 'z') {
                size = true;
                p++;
            }
            if (*p == 'd' || *p == 'i') {
                long long n = size        ? (long long)va_arg(args, ptrdiff_t)
                              : longs == 0 ? va_arg(args, int)
                              : longs == 1 ? va_arg(args, long)
                                           : va_arg(args, long long);
                put_signed(&b, n);
            } else if (*p == 'u') {
                unsigned long long n = size        ? va_arg(args, size_t)
                                       : longs == 0 ? va_arg(args, unsigned)
                                       : longs == 1 ? va_arg(args, unsigned long)
                                                    : va_arg(args, unsigned long long);
                put_unsigned(&b, n, false);
            } else {
                abort(); /* a conversion this formatter does not know */
            }
        }
    }
    if (b.len == 0) {
        free(b.ptr);
        return (cs_string_t){NULL, 0};
    }
    return (cs_string_t){(uint8_t *)b.ptr, b.len};
}

/* ---------------------------------------------------------------- store errors */

const char *cs_store_error_kind(const cs_store_error_t *error) {
    switch (error->tag) {
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_ALREADY_EXISTS:
        return "already-exists";
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_GLOBAL_ALREADY_EXISTS:
        return "global-already-exists";
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_INVALID_ID:
        return "invalid-id";
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_INVALID_JSON:
        return "invalid-json";
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_ACCESS_DENIED:
        return "access-denied";
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_QUOTA_EXCEEDED:
        return "quota-exceeded";
    default:
        return "storage";
    }
}

cs_string_t cs_store_error_message(const cs_store_error_t *error) {
    switch (error->tag) {
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_ALREADY_EXISTS:
    case WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_GLOBAL_ALREADY_EXISTS:
        return (cs_string_t){NULL, 0};
    default:
        /* Every other case holds one string, at the same place. */
        return error->val.storage;
    }
}

void cs_store_error_free(cs_store_error_t *error) {
    worldinterface_contextstore_store_error_free(error);
}

/* ---------------------------------------------------------------- raw store calls */

bool cs_put(const cs_string_t *flow_run_id, const cs_string_t *node_id, const cs_string_t *json,
            cs_store_error_t *error) {
    return worldinterface_contextstore_store_put((cs_string_t *)flow_run_id,
                                                 (cs_string_t *)node_id, (cs_string_t *)json,
                                                 error);
}

static void take_option(worldinterface_contextstore_store_option_json_t *value, cs_string_t *out) {
    *out = value->is_some ? value->val : (cs_string_t){NULL, 0};
}

bool cs_get(const cs_string_t *flow_run_id, const cs_string_t *node_id, cs_string_t *out,
            cs_store_error_t *error) {
    worldinterface_contextstore_store_option_json_t value;
    if (!worldinterface_contextstore_store_get((cs_string_t *)flow_run_id, (cs_string_t *)node_id,
                                               &value, error))
        return false;
    take_option(&value, out);
    return true;
}

bool cs_list_keys(const cs_string_t *flow_run_id, cs_string_list_t *out, cs_store_error_t *error) {
    return worldinterface_contextstore_store_list_keys((cs_string_t *)flow_run_id, out, error);
}

bool cs_put_global(const cs_string_t *key, const cs_string_t *json, cs_store_error_t *error) {
    return worldinterface_contextstore_store_put_global((cs_string_t *)key, (cs_string_t *)json,
                                                        error);
}

bool cs_upsert_global(const cs_string_t *key, const cs_string_t *json, cs_store_error_t *error) {
    return worldinterface_contextstore_store_upsert_global((cs_string_t *)key,
                                                           (cs_string_t *)json, error);
}

bool cs_get_global(const cs_string_t *key, cs_string_t *out, cs_store_error_t *error) {
    worldinterface_contextstore_store_option_json_t value;
    if (!worldinterface_contextstore_store_get_global((cs_string_t *)key, &value, error))
        return false;
    take_option(&value, out);
    return true;
}

/* ---------------------------------------------------------------- step errors */

/* Replaces the step error (freeing an earlier one); returns false. */
static bool set_error(cs_context_t *ctx, step_step_error_t error) {
    if (ctx->failed)
        step_step_error_free(ctx->err);
    *ctx->err = error;
    ctx->failed = true;
    return false;
}

static bool set_text_error(cs_context_t *ctx, uint8_t tag, cs_string_t text) {
    step_step_error_t error = {.tag = tag};
    /* invalid-params and failed hold their string at the same place. */
    error.val.failed = text;
    return set_error(ctx, error);
}

bool cs_fail(cs_context_t *ctx, const char *format, ...) {
    va_list args;
    va_start(args, format);
    cs_string_t text = vformat(format, args);
    va_end(args);
    return set_text_error(ctx, WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_FAILED, text);
}

bool cs_invalid_params(cs_context_t *ctx, const char *format, ...) {
    va_list args;
    va_start(args, format);
    cs_string_t text = vformat(format, args);
    va_end(args);
    return set_text_error(ctx, WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_INVALID_PARAMS, text);
}

bool cs_fail_store(cs_context_t *ctx, cs_store_error_t *error) {
    step_step_error_t step_error = {.tag = WORLDINTERFACE_CONTEXTSTORE_TYPES_STEP_ERROR_STORE};
    step_error.val.store = *error;
    *error = (cs_store_error_t){.tag = WORLDINTERFACE_CONTEXTSTORE_STORE_ERROR_ALREADY_EXISTS};
    return set_error(ctx, step_error);
}

/* ---------------------------------------------------------------- context */

const cs_string_t *cs_flow_run_id(const cs_context_t *ctx) {
    return &ctx->invocation->flow_run_id;
}

const cs_string_t *cs_node_id(const cs_context_t *ctx) {
    return &ctx->invocation->node_id;
}

const cs_string_t *cs_params(const cs_context_t *ctx) {
    return &ctx->invocation->params;
}

size_t cs_upstream_count(const cs_context_t *ctx) {
    return ctx->invocation->upstream.len;
}

const cs_string_t *cs_upstream_name(const cs_context_t *ctx, size_t i) {
    return i < ctx->invocation->upstream.len ? &ctx->invocation->upstream.ptr[i].name : NULL;
}

const cs_string_t *cs_upstream_id(const cs_context_t *ctx, const char *name) {
    for (size_t i = 0; i < ctx->invocation->upstream.len; i++) {
        worldinterface_contextstore_types_upstream_t *up = &ctx->invocation->upstream.ptr[i];
        if (cs_string_eq(&up->name, name))
            return &up->node_id;
    }
    return NULL;
}

bool cs_upstream(cs_context_t *ctx, const char *name, cs_string_t *out) {
    const cs_string_t *id = cs_upstream_id(ctx, name);
    if (id == NULL)
        return cs_fail(ctx, "missing-upstream: no upstream named `%s`", name);
    cs_string_t text;
    cs_store_error_t error;
    if (!cs_get(cs_flow_run_id(ctx), id, &text, &error))
        return cs_fail_store(ctx, &error);
    if (text.ptr == NULL)
        return cs_fail(ctx, "missing-upstream: upstream `%s` (%.*s) has no output yet", name,
                       (int)id->len, (const char *)id->ptr);
    *out = text;
    return true;
}

bool cs_output(cs_context_t *ctx, const char *json, size_t len) {
    cs_string_t value = {(uint8_t *)json, len};
    cs_store_error_t error;
    if (!cs_put(cs_flow_run_id(ctx), cs_node_id(ctx), &value, &error))
        return cs_fail_store(ctx, &error);
    return true;
}

bool cs_outputf(cs_context_t *ctx, const char *format, ...) {
    va_list args;
    va_start(args, format);
    cs_string_t text = vformat(format, args);
    va_end(args);
    bool ok = cs_output(ctx, (const char *)text.ptr, text.len);
    cs_string_free(&text);
    return ok;
}

/* ---------------------------------------------------------------- export */

bool exports_step_run(step_invocation_t *invocation, step_step_error_t *err) {
    cs_context_t ctx = {.invocation = invocation, .err = err, .failed = false};
    bool ok = cs_step_run(&ctx);
    if (ok && ctx.failed) {
        /* The step handled a failure and went on: `ok` wins. */
        step_step_error_free(err);
    } else if (!ok && !ctx.failed) {
        cs_fail(&ctx, "the step returned false without setting an error");
    }
    step_invocation_free(invocation);
    return ok;
}
