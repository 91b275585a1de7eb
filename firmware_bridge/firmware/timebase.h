/* Timer1 time base: a free-running microsecond counter (AVR). */
#ifndef TIMEBASE_H
#define TIMEBASE_H
#include <stdint.h>

/* Timer1 runs in normal mode at F_CPU/TIMER1_PRESCALER (default 1024: 64 us per count,
 * an overflow every 4.19 s); its overflow interrupt extends the 16-bit count to 32 bits
 * of microseconds. Two QEMU 7.2 quirks shape this file:
 *  - its timer model recomputes the next event on every Timer1 register write from a
 *    possibly stale count, and misses the overflow if OCR1A is written between the wrap
 *    and the overflow event: the tick never writes OCR1A near the wrap;
 *  - it restarts the count when its overflow event runs, not when it was due, so an
 *    emulator stalled by a busy host loses that much controller time. A long overflow
 *    period makes this rare; the host's periodic SYNC absorbs it. Real chips do neither.
 */
#ifndef TIMER1_PRESCALER
#define TIMER1_PRESCALER 1024u
#endif
#if TIMER1_PRESCALER == 256u
#define US_PER_COUNT 16u
#define US_PER_OVERFLOW_SHIFT 20 /* 2^16 counts * 16 us */
#define TIMER1_CS (1u << CS12)
#elif TIMER1_PRESCALER == 1024u
#define US_PER_COUNT 64u
#define US_PER_OVERFLOW_SHIFT 22
#define TIMER1_CS ((1u << CS12) | (1u << CS10))
#elif TIMER1_PRESCALER == 64u
#define US_PER_COUNT 4u
#define US_PER_OVERFLOW_SHIFT 18
#define TIMER1_CS ((1u << CS11) | (1u << CS10))
#else
#error "TIMER1_PRESCALER must be 64, 256 or 1024"
#endif

/* A compare interrupt every TICK_COUNTS counts (1.024 ms) raises a tick that paces the
 * main loop's housekeeping (pulse ends, heartbeat, STATUS); commands coming due within
 * a tick are polled for without sleeping (avr_main.c). */
#define TICK_COUNTS 16u
#define TICK_US (TICK_COUNTS * US_PER_COUNT)
#define TICK_GUARD 64u /* counts before the wrap without a tick (4 ms) */

void timebase_init(void);
/* True (once) when a tick has passed since the last call (always, while ticks pause
 * around the wrap). Reads RAM only. */
uint8_t time_take_tick(void);
/* Like time_take_tick() but leaves the tick pending. */
uint8_t time_tick_ready(void);
/* Microseconds since reset, wrapping at 2^32; never goes backwards between calls. */
uint32_t time_now_us(void);
#endif
