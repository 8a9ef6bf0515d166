/* startup.c -- reset, vector table, fault exit and an instruction counter for the MPS2 boards
 * (QEMU mps2-an386: Cortex-M4F, mps2-an385: Cortex-M3) running with semihosting.
 *
 * Reset_Handler copies .data from flash, enables the FPU where there is one, starts SysTick and
 * calls newlib's _start (which zeroes .bss, sets up semihosting stdio and argv, calls main and
 * exits with main's return value). A fault ends the run through semihosting with exit code 3
 * instead of hanging. Under `qemu-system-arm -icount shift=0` SysTick counts instructions
 * deterministically; spide_board_calibrate() measures how many per tick.
 */
#include <stdint.h>

#include "board.h"

extern uint32_t _sidata, _sdata, _edata, _estack;
extern void _start(void);

static volatile uint32_t systick_wraps;

#define SYST_CSR (*(volatile uint32_t *)0xE000E010u)
#define SYST_RVR (*(volatile uint32_t *)0xE000E014u)
#define SYST_CVR (*(volatile uint32_t *)0xE000E018u)
#define CPACR (*(volatile uint32_t *)0xE000ED88u)

static int semihost(int op, void *arg) {
    register int r0 __asm__("r0") = op;
    register void *r1 __asm__("r1") = arg;
    __asm__ volatile("bkpt 0xAB" : "+r"(r0) : "r"(r1) : "memory");
    return r0;
}

void spide_board_exit(int code) {
    uint32_t block[2] = {0x20026u, (uint32_t)code}; /* ADP_Stopped_ApplicationExit, exit code */
    semihost(0x20, block);                           /* SYS_EXIT_EXTENDED */
    for (;;) {
    }
}

void Reset_Handler(void) {
    for (uint32_t *src = &_sidata, *dst = &_sdata; dst < &_edata;) *dst++ = *src++;
#if defined(__ARM_FP)
    CPACR |= 0xFu << 20; /* CP10, CP11: full access to the FPU */
    __asm__ volatile("dsb\n\tisb");
#endif
    SYST_RVR = 0x00FFFFFFu;
    SYST_CVR = 0;
    SYST_CSR = 7u; /* processor clock, interrupt on wrap, enable */
    _start();
    spide_board_exit(0);
}

void SysTick_Handler(void) { systick_wraps++; }

uint64_t spide_board_ticks(void) {
    uint32_t w, v;
    do {
        w = systick_wraps;
        v = SYST_CVR;
    } while (w != systick_wraps);
    return ((uint64_t)w << 24) + (0x00FFFFFFu - v);
}

double spide_board_calibrate(void) {
    uint32_t n = 1000000u; /* 2 instructions per iteration */
    uint64_t t0 = spide_board_ticks();
    __asm__ volatile("1: subs %0, %0, #1\n\tbne 1b" : "+r"(n) : : "cc");
    uint64_t t1 = spide_board_ticks();
    return t1 > t0 ? 2.0e6 / (double)(t1 - t0) : 0.0;
}

static void fault(const char *what) {
    semihost(0x04, (void *)what); /* SYS_WRITE0 */
    spide_board_exit(3);
}
void HardFault_Handler(void) { fault("error: hard fault\n"); }
void MemManage_Handler(void) { fault("error: memory management fault\n"); }
void BusFault_Handler(void) { fault("error: bus fault\n"); }
void UsageFault_Handler(void) { fault("error: usage fault\n"); }
void Default_Handler(void) { fault("error: unexpected interrupt\n"); }

__attribute__((section(".isr_vector"), used)) static void (*const vectors[16])(void) = {
    (void (*)(void))&_estack, Reset_Handler, Default_Handler, HardFault_Handler, MemManage_Handler,
    BusFault_Handler, UsageFault_Handler, 0, 0, 0, 0, Default_Handler, Default_Handler, 0, Default_Handler,
    SysTick_Handler,
};
