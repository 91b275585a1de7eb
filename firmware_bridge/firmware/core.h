/* The gate controller's protocol core: portable C, no AVR headers, no allocation.
 *
 * Time (microseconds, free-running u32) and belt position are passed in by the caller;
 * outputs (wire bytes, gate pins, belt stop) go through the small HAL below. The AVR
 * build (avr_main.c) and the host tests (host_harness.c) supply the HAL. Single-threaded:
 * call core_rx_byte and core_poll from one context (the AVR main loop).
 */
#ifndef CORE_H
#define CORE_H
#include <stdint.h>

#include "frame.h"
#include "fw_config.h"

typedef struct {
    void (*send)(void *user, const uint8_t *wire, uint8_t len); /* queue bytes for the UART */
    void (*gate)(void *user, uint8_t gate, uint8_t on);         /* drive one gate output */
    void (*belt_run)(void *user, uint8_t on);   /* belt-run permit: 1 may run, 0 stop */
    void *user;
} core_hal_t;

typedef struct {
    uint32_t item;
    uint32_t target;   /* time (us) or position (ticks) */
    uint16_t window;   /* us or ticks after target still allowed */
    uint16_t epoch;    /* link epoch the item belongs to */
    uint8_t gate;
    uint8_t mode;
} pending_t;

typedef struct {
    uint32_t item;
    uint32_t time;
    uint16_t epoch;
    uint8_t fate;
} fate_t;

typedef struct {
    uint32_t time;     /* when it was answered: entries expire after DEDUP_TTL_MS */
    uint16_t seq;
    uint8_t type;
    uint8_t nak;       /* 0: answered ACK; else the NAK reason given */
} dedup_t;

typedef struct {
    const core_hal_t *hal;
    deframer_t rx;
    uint16_t tx_seq;
    uint32_t now;            /* time of the byte/poll being processed */
    int32_t position;        /* belt position (ticks) as last given */

    uint8_t hw_gates;        /* outputs this board has */
    uint8_t has_encoder;
    uint8_t configured;
    uint8_t safe;
    uint8_t run;             /* belt-run permit asserted (RESUMEd, configured, not safe) */
    uint16_t epoch;          /* link epoch of the last HELLO (0 before any) */
    uint8_t safe_renotify;   /* re-send SAFE_STATE(entered) on the next valid frame */
    uint8_t safe_reason;
    uint8_t safe_dropped;
    uint8_t n_gates;
    uint8_t pulse_ms[MAX_GATES];
    uint16_t heartbeat_ms;
    uint16_t status_ms;
    uint16_t max_lead_ms;
    uint32_t last_rx;        /* time of the last valid frame */
    uint32_t last_status;
    uint8_t gate_on[MAX_GATES];
    uint32_t gate_off_at[MAX_GATES];

    pending_t queue[QUEUE_SIZE];
    uint8_t queue_len;
    fate_t fates[FATES_SIZE];
    uint8_t fates_next;
    uint8_t fates_count;
    dedup_t dedup[DEDUP_SIZE];
    uint8_t dedup_next;
    uint8_t dedup_count;

    uint16_t crc_errors;
    uint16_t frame_errors;
    uint16_t fired;
    uint16_t late;
    uint16_t frames_ok;
} core_t;

/* boot_fault: a FAULT code to report once at start (e.g. FAULT_WATCHDOG_RESET), or 0.
 * After a fault boot the controller starts in the safe state (reason FAULT). */
void core_init(core_t *c, const core_hal_t *hal, uint8_t hw_gates, uint8_t has_encoder,
               uint32_t now, uint8_t boot_fault);
void core_rx_byte(core_t *c, uint8_t byte, uint32_t now, int32_t position);
/* Fires due commands, ends pulses, supervises the heartbeat, sends STATUS. Call often
 * (at least once a millisecond). */
void core_poll(core_t *c, uint32_t now, int32_t position);
/* True when a pending command may come due within `horizon_us` of `now` (TIME targets
 * that close, any POSITION command): the caller should then poll without sleeping. */
uint8_t core_due_soon(const core_t *c, uint32_t now, uint32_t horizon_us);
/* Reports a fault (e.g. FAULT_RX_OVERFLOW from the UART driver). */
void core_fault(core_t *c, uint8_t code, uint16_t detail);
/* Enters the safe state now (gates low, belt-run permit off, queue dropped). */
void core_enter_safe(core_t *c, uint8_t reason);

#endif
