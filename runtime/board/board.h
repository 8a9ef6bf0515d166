/* board.h -- what the MPS2 startup code offers the board's main program. */
#ifndef SPIDE_BOARD_H
#define SPIDE_BOARD_H
#include <stdint.h>

/** SysTick ticks since reset (24-bit counter and its wraps). */
uint64_t spide_board_ticks(void);
/** Instructions per SysTick tick, measured on a loop of known length (40 under QEMU -icount 0). */
double spide_board_calibrate(void);
/** End the run now through semihosting with an exit code. */
void spide_board_exit(int code);
#endif
