#include "uart.h"

#include <avr/interrupt.h>
#include <avr/io.h>
#include <avr/wdt.h>
#include <util/atomic.h>

#include "wake.h"

#define UBRR_115200_U2X 16u /* 16 MHz / (8 * (16 + 1)) = 117647 baud, +2.1% */

static volatile uint8_t rx_buf[UART_RX_SIZE];
static volatile uint8_t rx_head; /* written by the ISR */
static volatile uint8_t rx_tail; /* written by the main loop */
static volatile uint16_t rx_lost;
static volatile uint8_t rx_throttled; /* RX interrupt off while the ring is full */
/* Transmit is drained by the main loop (uart_pump) whenever the data register is
 * empty, not by the UDRE interrupt: under QEMU 7.2 the interrupt-driven transmit
 * stalled for good after the host closed and reopened the serial socket (seen in
 * tests; the polled version does not), and at 115200 baud the main loop, which
 * pumps on every pass, keeps the line just as busy. */
static uint8_t tx_buf[UART_TX_SIZE];
static uint8_t tx_head;
static uint8_t tx_tail;

void uart_init(void)
{
    UBRR0H = (uint8_t)(UBRR_115200_U2X >> 8);
    UBRR0L = (uint8_t)UBRR_115200_U2X;
    UCSR0A = (uint8_t)(1u << U2X0);
    UCSR0C = (uint8_t)((1u << UCSZ01) | (1u << UCSZ00)); /* 8N1 */
    UCSR0B = (uint8_t)((1u << RXEN0) | (1u << TXEN0) | (1u << RXCIE0));
}

ISR(USART_RX_vect)
{
    wake_flag = 1;
    uint8_t next = (uint8_t)((rx_head + 1u) & (UART_RX_SIZE - 1u));
    if (next == rx_tail) {
        /* Ring full: leave the byte in the USART and stop taking more until the main
         * loop has made room (uart_getc). On the chip this cannot happen at 115200 baud
         * unless the main loop stalls, and further bytes overrun (counted via DOR0);
         * under QEMU, which delivers bytes as fast as they are read, it is flow
         * control: QEMU holds the rest in its socket buffer. */
        UCSR0B &= (uint8_t)~(1u << RXCIE0);
        rx_throttled = 1;
        return;
    }
    if ((UCSR0A & (1u << DOR0)) && rx_lost != 0xFFFFu) {
        rx_lost++; /* the USART overwrote a byte nobody read in time */
    }
    uint8_t byte = UDR0;
    rx_buf[rx_head] = byte;
    rx_head = next;
}

int16_t uart_getc(void)
{
    if (rx_tail == rx_head) {
        return -1;
    }
    uint8_t byte = rx_buf[rx_tail];
    rx_tail = (uint8_t)((rx_tail + 1u) & (UART_RX_SIZE - 1u));
    if (rx_throttled) {
        ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
        {
            rx_throttled = 0;
            UCSR0B |= (uint8_t)(1u << RXCIE0); /* the waiting byte interrupts again */
        }
    }
    return byte;
}

void uart_pump(void)
{
    while (tx_tail != tx_head && (UCSR0A & (1u << UDRE0))) {
        UDR0 = tx_buf[tx_tail];
        tx_tail = (uint8_t)((tx_tail + 1u) & (UART_TX_SIZE - 1u));
    }
}

void uart_write(const uint8_t *data, uint8_t len)
{
    for (uint8_t i = 0; i < len; i++) {
        uint8_t next = (uint8_t)((tx_head + 1u) & (UART_TX_SIZE - 1u));
        while (next == tx_tail) {
            wdt_reset();
            uart_pump();
        }
        tx_buf[tx_head] = data[i];
        tx_head = next;
    }
    uart_pump();
}

uint8_t uart_tx_pending(void)
{
    return tx_tail != tx_head;
}

uint8_t uart_rx_ready(void)
{
    return rx_tail != rx_head;
}

uint16_t uart_take_overflow(void)
{
    uint16_t lost;
    ATOMIC_BLOCK(ATOMIC_RESTORESTATE)
    {
        lost = rx_lost;
        rx_lost = 0;
    }
    return lost;
}
