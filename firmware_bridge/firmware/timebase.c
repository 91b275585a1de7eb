#include "timebase.h"

#include <avr/interrupt.h>
#include <avr/io.h>
#include <util/atomic.h>

#include "wake.h"

/* On an ATmega328P, TOV1 is cleared by hardware when the overflow interrupt runs and by
 * writing a 1 to it. QEMU 7.2's Timer1 flags are plain storage: never cleared by the
 * interrupt, written as is (a written 1 sets the flag). timebase_init() tells the two
 * apart, and the overflow interrupt clears TOV1 itself on QEMU so that time_now_us()'s
 * "overflow pending" check stays right there too. */

static volatile uint16_t overflows; /* Timer1 overflows since reset (wraps with time) */
static volatile uint8_t tick;       /* set by the compare interrupt */
static volatile uint8_t guard;      /* ticks paused around the counter wrap */
static uint8_t plain_flags;         /* 1: flags behave like QEMU's (see above) */
static uint32_t last_us;            /* for the monotonic clamp */

static void clear_tov1(void)
{
    TIFR1 = (uint8_t)(1u << TOV1); /* clears it on hardware */
    TIFR1 = 0;                     /* clears it on QEMU; no effect on hardware */
}

void timebase_init(void)
{
    TCCR1A = 0;
    TCNT1 = 0;
    TIFR1 = (uint8_t)(1u << TOV1);
    plain_flags = (TIFR1 & (1u << TOV1)) ? 1u : 0u; /* a written 1 that reads back */
    clear_tov1();
    OCR1A = TICK_COUNTS;
    TIMSK1 = (uint8_t)((1u << TOIE1) | (1u << OCIE1A));
    TCCR1B = (uint8_t)TIMER1_CS; /* normal mode */
}

ISR(TIMER1_OVF_vect)
{
    wake_flag = 1;
    overflows++;
    if (plain_flags) {
        clear_tov1();
    }
}

ISR(TIMER1_COMPA_vect)
{
    /* The tick: advance the compare point. Normal mode, so the counter is not reset and
     * time stays exact. Near the end of the count the next compare is put after the
     * wrap, so that no register write happens between the wrap and QEMU's overflow
     * event (its model would miss the overflow); the tick pauses for <= TICK_GUARD. */
    wake_flag = 1;
    uint16_t count = TCNT1;
    uint16_t next = (uint16_t)(OCR1A + TICK_COUNTS);
    if (count < (uint16_t)(OCR1A - TICK_COUNTS) && count < 0x8000u) {
        return; /* the count wrapped before we got here: leave the registers alone */
    }
    if (count >= (uint16_t)(0xFFFFu - TICK_GUARD) || next >= (uint16_t)(0xFFFFu - TICK_GUARD)) {
        next = TICK_COUNTS; /* first tick after the wrap */
        guard = 1;
    } else {
        guard = 0;
        if ((int16_t)(next - count) < 2) {
            next = (uint16_t)(count + TICK_COUNTS); /* we were held up: restart from now */
        }
    }
    OCR1A = next;
    tick = 1;
}

uint8_t time_tick_ready(void)
{
    return tick || guard;
}

uint8_t time_take_tick(void)
{
    if (guard) {
        return 1; /* no ticks around the wrap: poll continuously meanwhile */
    }
    if (!tick) {
        return 0;
    }
    tick = 0;
    return 1;
}

uint32_t time_now_us(void)
{
    uint16_t ovf;
    uint16_t count;
    uint32_t us;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        ovf = overflows;
        count = TCNT1;
        /* An overflow not yet counted: the counter has wrapped but `overflows` has not. */
        if ((TIFR1 & (1u << TOV1)) && count < 0x8000u) {
            ovf++;
        }
        us = ((uint32_t)ovf << US_PER_OVERFLOW_SHIFT) + (uint32_t)count * US_PER_COUNT;
        /* Never go backwards (QEMU resets its counter when its overflow event runs,
         * which can be a little late; a read in between sees the wrapped count). */
        if ((int32_t)(us - last_us) < 0) {
            us = last_us;
        }
        last_us = us;
    }
    return us;
}
