#include "json.h"

#include <stdbool.h>
#include <string.h>

typedef struct {
    const uint8_t *p;
    const uint8_t *end;
} cursor_t;

static void skip_ws(cursor_t *c) {
    while (c->p < c->end && (*c->p == ' ' || *c->p == '\t' || *c->p == '\n' || *c->p == '\r'))
        c->p++;
}

/* Reads the four hex digits of a `\uXXXX` escape. */
static bool read_hex4(cursor_t *c, unsigned *out) {
    if (c->end - c->p < 4)
        return false;
    unsigned v = 0;
    for (int i = 0; i < 4; i++) {
        uint8_t ch = *c->p++;
        v <<= 4;
        if (ch >= '0' && ch <= '9')
            v |= ch - '0';
        else if (ch >= 'a' && ch <= 'f')
            v |= ch - 'a' + 10;
        else if (ch >= 'A' && ch <= 'F')
            v |= ch - 'A' + 10;
        else
            return false;
    }
    *out = v;
    return true;
}

/*
 * Scans the string that starts at the cursor (on its opening quote) and
 * leaves the cursor after the closing quote. Counts the UTF-8 length of the
 * decoded text: `\"`, `\\` and the other one-letter escapes are one byte,
 * `\uXXXX` is the length of its code point (a surrogate pair is four bytes).
 */
static bool scan_string(cursor_t *c, json_string_t *out) {
    if (c->p >= c->end || *c->p != '"')
        return false;
    const uint8_t *start = ++c->p;
    size_t len = 0;
    while (c->p < c->end) {
        uint8_t ch = *c->p++;
        if (ch == '"') {
            out->raw = start;
            out->raw_len = (size_t)(c->p - 1 - start);
            out->len = len;
            return true;
        }
        if (ch < 0x20)
            return false; /* control characters must be escaped */
        if (ch != '\\') {
            len++; /* one byte of UTF-8 text, copied as is */
            continue;
        }
        if (c->p >= c->end)
            return false;
        switch (*c->p++) {
        case '"': case '\\': case '/': case 'b': case 'f': case 'n': case 'r': case 't':
            len++;
            break;
        case 'u': {
            unsigned cp, low;
            if (!read_hex4(c, &cp))
                return false;
            if (cp >= 0xD800 && cp <= 0xDBFF && c->end - c->p >= 6 && c->p[0] == '\\' &&
                c->p[1] == 'u') {
                cursor_t next = {c->p + 2, c->end};
                if (read_hex4(&next, &low) && low >= 0xDC00 && low <= 0xDFFF) {
                    c->p = next.p;
                    len += 4;
                    break;
                }
            }
            len += cp < 0x80 ? 1 : cp < 0x800 ? 2 : 3;
            break;
        }
        default:
            return false;
        }
    }
    return false; /* no closing quote */
}

static bool is_delimiter(uint8_t ch) {
    return ch == ',' || ch == ':' || ch == '[' || ch == ']' || ch == '{' || ch == '}' ||
           ch == '"' || ch == ' ' || ch == '\t' || ch == '\n' || ch == '\r';
}

/* Skips one value of any kind; brackets inside strings do not count. */
static bool skip_value(cursor_t *c) {
    size_t depth = 0;
    do {
        skip_ws(c);
        if (c->p >= c->end)
            return false;
        json_string_t ignored;
        switch (*c->p) {
        case '"':
            if (!scan_string(c, &ignored))
                return false;
            break;
        case '{': case '[':
            depth++;
            c->p++;
            break;
        case '}': case ']':
            if (depth == 0)
                return false;
            depth--;
            c->p++;
            break;
        case ',': case ':':
            if (depth == 0)
                return false;
            c->p++;
            break;
        default: /* a number, true, false or null */
            while (c->p < c->end && !is_delimiter(*c->p))
                c->p++;
        }
    } while (depth > 0);
    return true;
}

json_status_t json_find_string(const uint8_t *json, size_t len, const char *key,
                               json_string_t *out) {
    cursor_t c = {json, json + len};
    size_t key_len = strlen(key);

    skip_ws(&c);
    if (c.p >= c.end || *c.p != '{')
        return JSON_NOT_OBJECT;
    c.p++;
    skip_ws(&c);
    if (c.p < c.end && *c.p == '}')
        return JSON_NOT_FOUND; /* {} */

    for (;;) {
        json_string_t name;
        skip_ws(&c);
        if (!scan_string(&c, &name))
            return JSON_NOT_OBJECT;
        skip_ws(&c);
        if (c.p >= c.end || *c.p != ':')
            return JSON_NOT_OBJECT;
        c.p++;
        skip_ws(&c);
        if (name.raw_len == key_len && memcmp(name.raw, key, key_len) == 0)
            return scan_string(&c, out) ? JSON_FOUND : JSON_NOT_FOUND;
        if (!skip_value(&c))
            return JSON_NOT_OBJECT;
        skip_ws(&c);
        if (c.p < c.end && *c.p == ',') {
            c.p++;
            continue;
        }
        return c.p < c.end && *c.p == '}' ? JSON_NOT_FOUND : JSON_NOT_OBJECT;
    }
}
