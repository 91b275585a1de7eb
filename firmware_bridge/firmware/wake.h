/* Set to 1 by every interrupt handler; read by the main loop's idle (AVR only). */
#ifndef WAKE_H
#define WAKE_H
#include <stdint.h>

extern volatile uint8_t wake_flag;

#endif
