#include "board.h"

#include <avr/interrupt.h>
#include <avr/io.h>
#include <util/atomic.h>
#if TEST_ENCODER
#include "test_encoder.h"
#include "timebase.h"
#endif

/* Gate g -> (port, bit):
 *   0..3  D4..D7   PD4..PD7
 *   4..8  D8..D12  PB0..PB4
 *   9..11 A0..A2   PC0..PC2
 * Belt-run permit: A3 (PC3), high = the belt may run; low (also when the chip is in reset,
 * unpowered or in its bootloader: the pin floats and the external pull-down holds it low)
 * stops it. Fail-safe: wire the belt contactor to run only while the permit is high.
 * Status LED: D13 (PB5).
 * Encoder: A on D2 (INT0, any edge), B on D3 (PD3). */

#if TEST_ENCODER
/* TEST build (test_encoder.h): no encoder pins; the position follows built-in profile
 * TEST_ENCODER on the Timer1 clock. */
static enc_profile_t profile;
#else
static volatile int32_t position;
#endif

void board_init(void)
{
    PORTD &= (uint8_t)~0xF0u;
    DDRD |= 0xF0u;
    PORTB &= (uint8_t)~0x3Fu;
    DDRB |= 0x3Fu;
    PORTC &= (uint8_t)~0x0Fu;
    DDRC |= 0x0Fu;
#if TEST_ENCODER
    enc_builtin_profile(&profile, TEST_ENCODER);
#elif HAS_ENCODER
    DDRD &= (uint8_t)~((1u << PD2) | (1u << PD3));
    PORTD |= (uint8_t)((1u << PD2) | (1u << PD3)); /* pull-ups for open-collector encoders */
    EICRA = (uint8_t)(1u << ISC00);                 /* INT0 on any edge of A */
    EIMSK = (uint8_t)(1u << INT0);
#endif
}

#if HAS_ENCODER && !TEST_ENCODER
ISR(INT0_vect)
{
    uint8_t pins = PIND;
    uint8_t a = (uint8_t)((pins >> PD2) & 1u);
    uint8_t b = (uint8_t)((pins >> PD3) & 1u);
    /* x2 decoding: A leads B going forward. */
    if (a != b) {
        position++;
    } else {
        position--;
    }
}
#endif

void board_gate(uint8_t gate, uint8_t on)
{
    volatile uint8_t *port;
    uint8_t bit;
    if (gate < 4u) {
        port = &PORTD;
        bit = (uint8_t)(4u + gate);
    } else if (gate < 9u) {
        port = &PORTB;
        bit = (uint8_t)(gate - 4u);
    } else if (gate < BOARD_GATES) {
        port = &PORTC;
        bit = (uint8_t)(gate - 9u);
    } else {
        return;
    }
    if (on) {
        *port |= (uint8_t)(1u << bit);
    } else {
        *port &= (uint8_t)~(1u << bit);
    }
}

void board_belt_run(uint8_t on)
{
    if (on) {
        PORTC |= (uint8_t)(1u << PC3);
    } else {
        PORTC &= (uint8_t)~(1u << PC3);
    }
}

void board_led(uint8_t on)
{
    if (on) {
        PORTB |= (uint8_t)(1u << PB5);
    } else {
        PORTB &= (uint8_t)~(1u << PB5);
    }
}

int32_t board_position(void)
{
#if TEST_ENCODER
    return enc_profile_position(&profile, time_now_us());
#else
    int32_t p;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        p = position;
    }
    return p;
#endif
}
