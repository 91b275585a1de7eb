#include "frame.h"

#include "cobs.h"
#include "crc16.h"

void deframer_init(deframer_t *d)
{
    d->len = 0;
    d->overflow = 0;
    d->frame.len = 0;
}

enum deframe_result frame_decode(const uint8_t *enc, size_t len, frame_t *out)
{
    uint8_t body[MAX_BODY];
    if (len == 0 || len > MAX_FRAME - 1u) {
        return DEFRAME_FRAME_ERROR;
    }
    int n = cobs_decode(enc, len, body, sizeof body);
    if (n < (int)MIN_BODY) {
        return DEFRAME_FRAME_ERROR;
    }
    uint16_t want = (uint16_t)(body[n - 2] | ((uint16_t)body[n - 1] << 8));
    if (crc16_ccitt(body, (size_t)(n - 2)) != want) {
        return DEFRAME_CRC_ERROR;
    }
    out->ver = body[0];
    out->type = body[1];
    out->seq = (uint16_t)(body[2] | ((uint16_t)body[3] << 8));
    out->len = (uint8_t)(n - (int)MIN_BODY);
    for (uint8_t i = 0; i < out->len; i++) {
        out->payload[i] = body[4 + i];
    }
    return DEFRAME_FRAME;
}

enum deframe_result deframer_push(deframer_t *d, uint8_t byte)
{
    if (byte != 0) {
        if (d->overflow) {
            return DEFRAME_NONE;
        }
        if (d->len >= sizeof d->buf) {
            d->overflow = 1;
            d->len = 0;
            return DEFRAME_NONE;
        }
        d->buf[d->len++] = byte;
        return DEFRAME_NONE;
    }
    if (d->overflow) {
        d->overflow = 0;
        return DEFRAME_FRAME_ERROR;
    }
    if (d->len == 0) {
        return DEFRAME_NONE;
    }
    uint8_t len = d->len;
    d->len = 0;
    return frame_decode(d->buf, len, &d->frame);
}

uint8_t frame_build(uint8_t type, uint16_t seq, const uint8_t *payload, uint8_t len,
                    uint8_t *out)
{
    uint8_t body[MAX_BODY];
    if (len > MAX_PAYLOAD) {
        return 0;
    }
    body[0] = PROTO_VERSION;
    body[1] = type;
    body[2] = (uint8_t)(seq & 0xFFu);
    body[3] = (uint8_t)(seq >> 8);
    for (uint8_t i = 0; i < len; i++) {
        body[4 + i] = payload[i];
    }
    uint16_t crc = crc16_ccitt(body, (size_t)len + 4u);
    body[4 + len] = (uint8_t)(crc & 0xFFu);
    body[5 + len] = (uint8_t)(crc >> 8);
    size_t n = cobs_encode(body, (size_t)len + MIN_BODY, out, MAX_FRAME - 1u);
    out[n] = 0;
    return (uint8_t)(n + 1u);
}
