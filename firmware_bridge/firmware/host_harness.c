#include "host_harness.h"

#include "cobs.h"
#include "crc16.h"

static void h_send(void *user, const uint8_t *wire, uint8_t len)
{
    fwh_t *h = (fwh_t *)user;
    for (uint8_t i = 0; i < len; i++) {
        if (h->out_len < FWH_OUT_CAP) {
            h->out[h->out_len++] = wire[i];
        } else {
            h->out_dropped++;
        }
    }
}

static void h_gate(void *user, uint8_t gate, uint8_t on)
{
    fwh_t *h = (fwh_t *)user;
    if (gate >= MAX_GATES) {
        return;
    }
    if (on && !h->gate_level[gate]) {
        h->gate_rises[gate]++;
    }
    h->gate_level[gate] = on ? 1 : 0;
}

static void h_belt_run(void *user, uint8_t on)
{
    ((fwh_t *)user)->belt_run = on ? 1 : 0;
}

size_t fwh_sizeof(void)
{
    return sizeof(fwh_t);
}

void fwh_init(fwh_t *h, uint8_t hw_gates, uint8_t encoder, uint32_t now, uint8_t boot_fault)
{
    h->hal.send = h_send;
    h->hal.gate = h_gate;
    h->hal.belt_run = h_belt_run;
    h->hal.user = h;
    h->out_len = 0;
    h->out_dropped = 0;
    h->belt_run = 0;
    for (uint8_t g = 0; g < MAX_GATES; g++) {
        h->gate_level[g] = 0;
        h->gate_rises[g] = 0;
    }
    h->enc.n = 0;
    h->enc.period = 0;
    h->enc.period_ticks = 0;
    core_init(&h->core, &h->hal, hw_gates, encoder, now, boot_fault);
}

void fwh_feed(fwh_t *h, const uint8_t *data, size_t len, uint32_t now, int32_t position)
{
    for (size_t i = 0; i < len; i++) {
        core_rx_byte(&h->core, data[i], now, position);
    }
}

void fwh_poll(fwh_t *h, uint32_t now, int32_t position)
{
    core_poll(&h->core, now, position);
}

size_t fwh_take(fwh_t *h, uint8_t *buf, size_t cap)
{
    size_t n = h->out_len < cap ? h->out_len : cap;
    for (size_t i = 0; i < n; i++) {
        buf[i] = h->out[i];
    }
    for (size_t i = n; i < h->out_len; i++) {
        h->out[i - n] = h->out[i];
    }
    h->out_len -= n;
    return n;
}

uint32_t fwh_gate_rises(const fwh_t *h, uint8_t gate)
{
    return gate < MAX_GATES ? h->gate_rises[gate] : 0;
}

uint8_t fwh_gate_level(const fwh_t *h, uint8_t gate)
{
    return gate < MAX_GATES ? h->gate_level[gate] : 0;
}

uint8_t fwh_belt_stop(const fwh_t *h)
{
    return (uint8_t)(h->belt_run ? 0u : 1u);
}

uint32_t fwh_out_dropped(const fwh_t *h)
{
    return h->out_dropped;
}

uint8_t fwh_queue_len(const fwh_t *h)
{
    return h->core.queue_len;
}

uint8_t fwh_encoder(fwh_t *h, const enc_seg_t *segs, uint8_t n)
{
    return enc_profile_set(&h->enc, segs, n);
}

uint8_t fwh_encoder_builtin(fwh_t *h, uint8_t id)
{
    return enc_builtin_profile(&h->enc, id);
}

int32_t fwh_encoder_position(const fwh_t *h, uint32_t now)
{
    return enc_profile_position(&h->enc, now);
}

void fwh_feed_enc(fwh_t *h, const uint8_t *data, size_t len, uint32_t now)
{
    fwh_feed(h, data, len, now, enc_profile_position(&h->enc, now));
}

uint32_t fwh_run(fwh_t *h, uint32_t from, uint32_t to, uint32_t step, uint8_t stop_on_output)
{
    uint32_t t = from;
    if (step == 0) {
        step = 1;
    }
    for (;;) {
        size_t before = h->out_len;
        core_poll(&h->core, t, enc_profile_position(&h->enc, t));
        if (stop_on_output && h->out_len != before) {
            return t;
        }
        if ((int32_t)(to - t) <= 0) {
            return to;
        }
        t = (int32_t)(to - t) < (int32_t)step ? to : t + step;
    }
}

int fwh_deframe(const uint8_t *data, size_t len, uint8_t *codes, size_t codes_cap,
                uint8_t *frames, size_t frames_cap)
{
    deframer_t d;
    size_t n_codes = 0;
    size_t n_frames = 0;
    deframer_init(&d);
    for (size_t i = 0; i < len; i++) {
        enum deframe_result r = deframer_push(&d, data[i]);
        if (r == DEFRAME_NONE) {
            continue;
        }
        if (n_codes >= codes_cap) {
            return -1;
        }
        codes[n_codes++] = (uint8_t)r;
        if (r == DEFRAME_FRAME) {
            if (n_frames + 5u + d.frame.len > frames_cap) {
                return -1;
            }
            frames[n_frames++] = d.frame.ver;
            frames[n_frames++] = d.frame.type;
            frames[n_frames++] = (uint8_t)(d.frame.seq & 0xFFu);
            frames[n_frames++] = (uint8_t)(d.frame.seq >> 8);
            frames[n_frames++] = d.frame.len;
            for (uint8_t k = 0; k < d.frame.len; k++) {
                frames[n_frames++] = d.frame.payload[k];
            }
        }
    }
    return (int)n_codes;
}

size_t fwh_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap)
{
    return cobs_encode(src, len, dst, cap);
}

int fwh_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap)
{
    return cobs_decode(src, len, dst, cap);
}

uint16_t fwh_crc16(const uint8_t *data, size_t len)
{
    return crc16_ccitt(data, len);
}

uint8_t fwh_frame_build(uint8_t type, uint16_t seq, const uint8_t *payload, uint8_t len,
                        uint8_t *out)
{
    return frame_build(type, seq, payload, len, out);
}
