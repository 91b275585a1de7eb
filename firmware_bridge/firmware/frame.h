/* Frames on the wire: COBS(body) 0x00, body = ver type seq(2 LE) payload crc(2 LE). */
#ifndef FRAME_H
#define FRAME_H
#include <stddef.h>
#include <stdint.h>

#include "fw_config.h"

/* What one received byte completed. */
enum deframe_result {
    DEFRAME_NONE = 0,        /* byte stored (or skipped); no frame ended */
    DEFRAME_FRAME = 1,       /* a valid frame: see deframer.frame */
    DEFRAME_FRAME_ERROR = 2, /* too long, bad COBS or too short: dropped */
    DEFRAME_CRC_ERROR = 3    /* good COBS, bad CRC: dropped */
};

typedef struct {
    uint8_t ver;
    uint8_t type;
    uint16_t seq;
    uint8_t len;                   /* payload length, 0..MAX_PAYLOAD */
    uint8_t payload[MAX_PAYLOAD];
} frame_t;

typedef struct {
    uint8_t buf[MAX_FRAME - 1];   /* encoded bytes since the last 0x00 */
    uint8_t len;
    uint8_t overflow;             /* discarding until the next 0x00 */
    frame_t frame;                /* the last valid frame */
} deframer_t;

void deframer_init(deframer_t *d);
/* Feeds one byte; an empty frame (0x00 0x00) is ignored and yields DEFRAME_NONE. */
enum deframe_result deframer_push(deframer_t *d, uint8_t byte);
/* Decodes one delimiter-free chunk into out (shared by the deframer and the fuzz tests). */
enum deframe_result frame_decode(const uint8_t *enc, size_t len, frame_t *out);

/* Builds the wire bytes (with the trailing 0x00) into out, which must hold MAX_FRAME bytes.
 * Returns the wire length, or 0 if the payload is too long. */
uint8_t frame_build(uint8_t type, uint16_t seq, const uint8_t *payload, uint8_t len,
                    uint8_t *out);

#endif
