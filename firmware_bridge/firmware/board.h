/* Arduino Uno pinout: gate outputs, belt stop, status LED, quadrature encoder (AVR). */
#ifndef BOARD_H
#define BOARD_H
#include <stdint.h>

#ifndef HAS_ENCODER
#define HAS_ENCODER 0 /* build with `make ENCODER=1` where a belt encoder is fitted */
#endif

#ifndef TEST_ENCODER
#define TEST_ENCODER 0 /* a TEST build (`make TEST_ENCODER=1|2`): see test_encoder.h */
#endif
#if TEST_ENCODER && !HAS_ENCODER
#error "a TEST_ENCODER build reports an encoder: build it with HAS_ENCODER=1"
#endif

#define BOARD_GATES 12u

void board_init(void);
void board_gate(uint8_t gate, uint8_t on);
void board_belt_run(uint8_t on);
void board_led(uint8_t on);
/* Encoder ticks (0 without an encoder). */
int32_t board_position(void);

#endif
