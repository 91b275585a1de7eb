/* Consistent Overhead Byte Stuffing (Cheshire & Baker), without the trailing delimiter. */
#ifndef COBS_H
#define COBS_H
#include <stddef.h>
#include <stdint.h>

/* Encodes len bytes of src into dst (room for len + len/254 + 1 bytes needed).
 * Returns the encoded length, or 0 if it would not fit in dst_cap. */
size_t cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_cap);

/* Decodes len bytes (no 0x00 allowed) into dst. Returns the decoded length,
 * or -1 for malformed input (a zero byte, a code running past the end) or no room. */
int cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t dst_cap);

#endif
