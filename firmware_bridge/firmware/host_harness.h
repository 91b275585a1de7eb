/* Host-side harness around the portable core: records outputs in memory so tests (C, and
 * Python through ctypes on build/libfwcore.so) can drive the core byte by byte. */
#ifndef HOST_HARNESS_H
#define HOST_HARNESS_H
#include <stddef.h>
#include <stdint.h>

#include "core.h"
#include "test_encoder.h"

#define FWH_OUT_CAP 8192u

typedef struct {
    core_t core;
    core_hal_t hal;
    uint8_t out[FWH_OUT_CAP];
    size_t out_len;
    uint32_t out_dropped;            /* bytes lost because out was full */
    uint8_t gate_level[MAX_GATES];
    uint32_t gate_rises[MAX_GATES];  /* rising edges seen per gate */
    uint8_t belt_run;                /* belt-run permit output */
    enc_profile_t enc;               /* the belt encoder's profile (fwh_encoder) */
} fwh_t;

size_t fwh_sizeof(void);
void fwh_init(fwh_t *h, uint8_t hw_gates, uint8_t encoder, uint32_t now, uint8_t boot_fault);
void fwh_feed(fwh_t *h, const uint8_t *data, size_t len, uint32_t now, int32_t position);
void fwh_poll(fwh_t *h, uint32_t now, int32_t position);
/* Copies out (and forgets) up to cap bytes the core sent; returns how many. */
size_t fwh_take(fwh_t *h, uint8_t *buf, size_t cap);
uint32_t fwh_gate_rises(const fwh_t *h, uint8_t gate);
uint8_t fwh_gate_level(const fwh_t *h, uint8_t gate);
/* The belt is stopped (the run permit is not asserted). */
uint8_t fwh_belt_stop(const fwh_t *h);
uint32_t fwh_out_dropped(const fwh_t *h);
uint8_t fwh_queue_len(const fwh_t *h);

/* The belt encoder: the position follows a speed profile (test_encoder.h) of the time
 * passed in. fwh_encoder: 0, or 1 if a segment breaks a limit (then the position is 0). */
uint8_t fwh_encoder(fwh_t *h, const enc_seg_t *segs, uint8_t n);
/* Uses built-in profile `id` (1, 2: what a TEST_ENCODER=id build runs). 0, or 1 if unknown. */
uint8_t fwh_encoder_builtin(fwh_t *h, uint8_t id);
int32_t fwh_encoder_position(const fwh_t *h, uint32_t now);
/* Feeds bytes received at `now`, the position read from the encoder (as the AVR loop). */
void fwh_feed_enc(fwh_t *h, const uint8_t *data, size_t len, uint32_t now);
/* Polls the core at every `step` us from `from` to `to` (both included), the position
 * read from the encoder each time: the AVR main loop while a command is due. Stops after
 * the first poll that sent something when stop_on_output (returns that time), else
 * returns `to`. */
uint32_t fwh_run(fwh_t *h, uint32_t from, uint32_t to, uint32_t step, uint8_t stop_on_output);

/* Stateless helpers for fuzzing the framing layer. */
/* Feeds a byte stream to a fresh deframer. For each frame that ends, appends one result
 * code to codes (see enum deframe_result) and, for valid frames, appends
 * ver, type, seq lo, seq hi, len, payload... to frames. Returns the number of codes
 * (stops early, returning -1, if codes or frames would overflow). */
int fwh_deframe(const uint8_t *data, size_t len, uint8_t *codes, size_t codes_cap,
                uint8_t *frames, size_t frames_cap);
size_t fwh_cobs_encode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);
int fwh_cobs_decode(const uint8_t *src, size_t len, uint8_t *dst, size_t cap);
uint16_t fwh_crc16(const uint8_t *data, size_t len);
uint8_t fwh_frame_build(uint8_t type, uint16_t seq, const uint8_t *payload, uint8_t len,
                        uint8_t *out);

#endif
