/*
 * Just enough JSON for the C steps: finds a string member of a top-level
 * JSON object. The store hands steps only valid JSON, so this scans rather
 * than validates; no third-party code, no allocation.
 */
#ifndef CONTEXTSTORE_JSON_H
#define CONTEXTSTORE_JSON_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
    /* The bytes between the quotes, escapes not decoded. */
    const uint8_t *raw;
    size_t raw_len;
    /* The byte length of the decoded value in UTF-8. */
    size_t len;
} json_string_t;

typedef enum {
    /* The object has the member and its value is a string. */
    JSON_FOUND,
    /* The object has no such member, or its value is not a string. */
    JSON_NOT_FOUND,
    /* The text is not a JSON object. */
    JSON_NOT_OBJECT,
} json_status_t;

/*
 * Looks up the member `key` of the JSON object in `json[0..len)`. Keys are
 * compared byte for byte as written, so a key spelled with escapes does not
 * match. On JSON_FOUND, `*out` describes the value.
 */
json_status_t json_find_string(const uint8_t *json, size_t len, const char *key,
                               json_string_t *out);

#endif
