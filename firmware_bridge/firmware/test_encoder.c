#include "test_encoder.h"

/* Ticks within one segment, e units (16 us) into it (e <= s->len). */
static int32_t seg_ticks(const enc_seg_t *s, uint32_t e)
{
    int32_t num = (int32_t)s->r0 * (int32_t)e;
    if (s->r1 != s->r0) {
        uint32_t q = (e * e) / (2u * s->len);
        num += ((int32_t)s->r1 - (int32_t)s->r0) * (int32_t)q;
    }
    return num / (int32_t)ENC_UNITS_PER_S;
}

uint8_t enc_profile_set(enc_profile_t *p, const enc_seg_t *segs, uint8_t n)
{
    p->n = 0;
    p->period = 0;
    p->period_ticks = 0;
    if (n == 0 || n > ENC_MAX_SEGS) {
        return 1;
    }
    for (uint8_t i = 0; i < n; i++) {
        const enc_seg_t *s = &segs[i];
        uint16_t top = s->r0 > s->r1 ? s->r0 : s->r1;
        if (s->len == 0 || (s->r0 != s->r1 && s->len > 0xFFFFu) ||
            (uint32_t)top * s->len >= 0x80000000UL) {
            return 1;
        }
        p->seg[i] = *s;
        p->period += s->len;
        p->period_ticks += seg_ticks(s, s->len);
    }
    p->n = n;
    return 0;
}

int32_t enc_profile_position(const enc_profile_t *p, uint32_t t_us)
{
    if (p->n == 0) {
        return 0;
    }
    uint32_t t = t_us / ENC_UNIT_US;
    uint32_t rounds = t / p->period;
    uint32_t e = t - rounds * p->period;
    uint32_t pos = rounds * (uint32_t)p->period_ticks; /* wraps like a real i32 count */
    for (uint8_t i = 0; i < p->n; i++) {
        const enc_seg_t *s = &p->seg[i];
        if (e <= s->len) {
            return (int32_t)(pos + (uint32_t)seg_ticks(s, e));
        }
        pos += (uint32_t)seg_ticks(s, s->len);
        e -= s->len;
    }
    return (int32_t)pos;
}

uint8_t enc_builtin_profile(enc_profile_t *p, uint8_t id)
{
    static const enc_seg_t constant[] = {{ENC_UNITS_PER_S, 2000u, 2000u}};
    static const enc_seg_t slow_down[] = {
        {3u * ENC_UNITS_PER_S, 2000u, 2000u},
        {ENC_UNITS_PER_S, 2000u, 1600u},
        {3u * ENC_UNITS_PER_S, 1600u, 1600u},
        {ENC_UNITS_PER_S, 1600u, 2000u},
        {2u * ENC_UNITS_PER_S, 2000u, 2000u},
    };
    if (id == 1u) {
        return enc_profile_set(p, constant, 1u);
    }
    if (id == 2u) {
        return enc_profile_set(p, slow_down, (uint8_t)(sizeof slow_down / sizeof slow_down[0]));
    }
    return 1;
}
