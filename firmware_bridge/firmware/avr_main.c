/* ATmega328P gate controller: wires the portable core to the UART, Timer1 and the pins. */
#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>

#include "board.h"
#include "core.h"
#include "timebase.h"
#include "uart.h"
#include "wake.h"

#define RX_BATCH 64u /* received bytes handled between two core_poll() calls */

volatile uint8_t wake_flag;
static core_t core;
static uint8_t led_state;
static uint8_t reset_cause __attribute__((section(".noinit")));

/* Runs before main: keep the reset cause, and stop a watchdog left running by a
 * watchdog reset (it would otherwise reset us again during start-up). */
void early_init(void) __attribute__((naked, used, section(".init3")));
void early_init(void)
{
    reset_cause = MCUSR;
    MCUSR = 0;
    wdt_disable();
}

static void hal_send(void *user, const uint8_t *wire, uint8_t len)
{
    (void)user;
    uart_write(wire, len);
}

static void hal_gate(void *user, uint8_t gate, uint8_t on)
{
    (void)user;
    board_gate(gate, on);
}

static void hal_belt_run(void *user, uint8_t on)
{
    (void)user;
    board_belt_run(on);
}

static const core_hal_t hal = {hal_send, hal_gate, hal_belt_run, 0};

/* Sleeps (idle mode) until an interrupt has run, unless there is work (a received byte,
 * bytes still to send, a tick). Every ISR sets `wake_flag`.
 *
 * Written so that it also works under QEMU 7.2, whose SLEEP does not save the program
 * counter: after the wake-up interrupt the CPU resumes at the start of the translation
 * block holding the SLEEP, not after it. The block starts at label 1 (a jump target),
 * re-reads the flag there and skips the SLEEP once an interrupt has set it. On the chip
 * an interrupt arriving between SEI+SBRS and SLEEP delays the wake-up to the next
 * interrupt (at most one Timer1 tick). */
static void idle_until_interrupt(void)
{
    cli();
    if (uart_rx_ready() || uart_tx_pending() || time_tick_ready()) {
        sei();
        return;
    }
    wake_flag = 0;
    SMCR = (uint8_t)(1u << SE); /* idle mode, sleep enabled */
    __asm__ __volatile__("rjmp 1f\n"
                         "1: lds __tmp_reg__, wake_flag\n"
                         "sei\n"
                         "sbrs __tmp_reg__, 0\n"
                         "sleep\n" ::
                             : "memory");
    SMCR = 0;
}

int main(void)
{
    uint8_t boot_fault = (reset_cause & (1u << WDRF)) ? FAULT_WATCHDOG_RESET : 0;
    board_init();
    uart_init();
    timebase_init();
    sei();
    core_init(&core, &hal, BOARD_GATES, HAS_ENCODER, time_now_us(), boot_fault);
    wdt_enable(WDTO_250MS);

    /* The loop handles each received byte as it arrives and runs core_poll() on every
     * tick (1 ms); in between it sleeps (idle_until_interrupt), except while a command
     * comes due within the next tick: then it polls the clock without sleeping, so the
     * command fires within a few tens of microseconds of its target. */
    uint8_t hot = 0;
    for (;;) {
        wdt_reset();
        uart_pump();
        int16_t byte = uart_getc();
        if (byte < 0 && !time_take_tick() && !hot) {
            idle_until_interrupt();
            continue;
        }
        if (byte >= 0) {
            /* Take what has arrived in one go (QEMU delivers bytes far faster than
             * 115200 baud), with one clock read: they arrived together. */
            uint32_t at = time_now_us();
            int32_t position = board_position();
            uint8_t n = 0;
            do {
                core_rx_byte(&core, (uint8_t)byte, at, position);
            } while (++n < RX_BATCH && (byte = uart_getc()) >= 0);
        }
        uint16_t lost = uart_take_overflow();
        if (lost != 0) {
            core_fault(&core, FAULT_RX_OVERFLOW, lost);
        }
        uint32_t now = time_now_us();
        core_poll(&core, now, board_position());
        hot = core_due_soon(&core, now, 2u * TICK_US);
        /* LED: steady when running, blinking (4 Hz) in the safe state. */
        uint8_t led = core.safe ? (uint8_t)((now >> 17) & 1u) : core.configured;
        if (led != led_state) {
            led_state = led;
            board_led(led);
        }
    }
}
