/* Arduino Uno pinout: gate outputs, belt stop, status LED, quadrature encoder (AVR). */
#ifndef BOARD_H
#define BOARD_H
#include <stdint.h>

#ifndef HAS_ENCODER
#define HAS_ENCODER 0 /* build with `make ENCODER=1` where a belt encoder is fitted */
#endif

#define BOARD_GATES 12u

void board_init(void);
void board_gate(uint8_t gate, uint8_t on);
void board_belt_run(uint8_t on);
void board_led(uint8_t on);
/* Encoder ticks (0 without an encoder). */
int32_t board_position(void);

#endif
