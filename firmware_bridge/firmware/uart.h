/* USART0 at 115200 8N1 with RX and TX ring buffers: interrupt-driven receive, transmit
 * drained by the main loop (uart_pump) (AVR only). */
#ifndef UART_H
#define UART_H
#include <stdint.h>

#define UART_RX_SIZE 128u /* power of two */
#define UART_TX_SIZE 128u /* power of two */

void uart_init(void);
/* Next received byte, or -1 when the ring is empty. */
int16_t uart_getc(void);
/* True when a received byte is waiting. */
uint8_t uart_rx_ready(void);
/* True while queued bytes wait for the USART. */
uint8_t uart_tx_pending(void);
/* Queues bytes for sending; pumps (and waits) while the ring is full. */
void uart_write(const uint8_t *data, uint8_t len);
/* Moves queued bytes to the USART while it can take them. Cheap when nothing is queued. */
void uart_pump(void);
/* Bytes lost to a full RX ring since the last call (and resets the count). */
uint16_t uart_take_overflow(void);

#endif
