/* A belt encoder the firmware generates itself, for emulator tests: TEST builds only
 * (`make TEST_ENCODER=1|2`), never the shipped image. qemu-system-avr cannot drive the
 * encoder pins (D2/D3, INT0) from outside, so a TEST_ENCODER build reads its belt position
 * from a built-in speed profile of its own Timer1 clock instead (board.c). Portable C:
 * the host harness uses the same code with any profile.
 *
 * A profile is a list of segments, repeated forever: each lasts `len` units of 16 us and
 * the belt's speed goes linearly from r0 to r1 (encoder ticks per second) over it. The
 * position is the integral, in whole ticks, exact in integer arithmetic (the tests
 * compute the same numbers): within a segment P + (r0 e + (r1 - r0) floor(e^2 / 2 len)) /
 * 62500 for e units into it. Limits: a ramp (r0 != r1) lasts at most 65535 units (1.05 s),
 * r * len < 2^31. */
#ifndef TEST_ENCODER_H
#define TEST_ENCODER_H
#include <stdint.h>

#define ENC_UNIT_US 16u       /* profile time unit */
#define ENC_UNITS_PER_S 62500UL
#define ENC_MAX_SEGS 8u

typedef struct {
    uint32_t len; /* units of 16 us */
    uint16_t r0;  /* ticks/s at the start */
    uint16_t r1;  /* ticks/s at the end */
} enc_seg_t;

typedef struct {
    enc_seg_t seg[ENC_MAX_SEGS];
    uint8_t n;
    uint32_t period;        /* sum of len */
    int32_t period_ticks;   /* ticks per period */
} enc_profile_t;

/* Copies segs (at most ENC_MAX_SEGS) into p. 0, or 1 if a segment breaks a limit. */
uint8_t enc_profile_set(enc_profile_t *p, const enc_seg_t *segs, uint8_t n);
/* Belt position (ticks) at time t (us since the profile's start). */
int32_t enc_profile_position(const enc_profile_t *p, uint32_t t_us);
/* The built-in profiles: 1 constant 2000 ticks/s; 2 the same with a slow-down of 20% and
 * back every 10 s (3 s at 2000, 1 s ramp to 1600, 3 s at 1600, 1 s ramp to 2000, 2 s at
 * 2000). Returns 0 and fills p, or 1 for an unknown id. */
uint8_t enc_builtin_profile(enc_profile_t *p, uint8_t id);

#endif
