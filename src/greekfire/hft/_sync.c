/* Sequence counters of the shared-memory rings (greekfire.hft.ring): acquire/release loads and stores,
 * the producer's commit (wakes blocked consumers) and the consumers' wait loops (busy, yield, block).
 *
 * Layout of the ring header (byte offsets from the start of the segment; each written field has its own
 * 128-byte block so two cores never write one cache line or one adjacent-line prefetch pair):
 *   0    meta (written once at create)
 *   128  head: records published (the producer's cursor), then the count of publishes refused when full
 *   256  futex word (u32, bumped by the producer when someone waits), waiters (u32, consumers that block)
 *   384  + 128 * i: tail of consumer i (records it has released)
 * Built at first use with the system C compiler through cffi and cached; see ring.py.
 */
#include <stdint.h>
#include <time.h>
#include <sched.h>
#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#endif

#define GF_HEAD 128
#define GF_FUTEX 256
#define GF_WAITERS 260
#define GF_TAIL0 384
#define GF_STRIDE 128

static inline uint64_t gf_ld(uintptr_t p) { return __atomic_load_n((uint64_t *)p, __ATOMIC_ACQUIRE); }

static inline void gf_pause(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t gf_now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000LL + ts.tv_nsec;
}

uint64_t gf_load(uintptr_t p) { return gf_ld(p); }

void gf_store(uintptr_t p, uint64_t v) { __atomic_store_n((uint64_t *)p, v, __ATOMIC_RELEASE); }

/* The slowest consumer's cursor; a retired consumer (cursor >= 2^63) holds nothing back. UINT64_MAX when
 * every consumer is retired. */
uint64_t gf_min_tail(uintptr_t base, uint32_t consumers) {
    uint64_t m = UINT64_MAX;
    for (uint32_t i = 0; i < consumers; i++) {
        uint64_t t = gf_ld(base + GF_TAIL0 + (uintptr_t)i * GF_STRIDE);
        if (t < m) m = t;
    }
    return m;
}

/* Publish: the head store is sequentially consistent so that it and the consumers' "I am waiting" mark
 * cannot both be missed (Dekker); a wake-up system call only when a consumer blocks. */
void gf_commit(uintptr_t base, uint64_t head) {
    __atomic_store_n((uint64_t *)(base + GF_HEAD), head, __ATOMIC_SEQ_CST);
    if (__atomic_load_n((uint32_t *)(base + GF_WAITERS), __ATOMIC_SEQ_CST)) {
        __atomic_add_fetch((uint32_t *)(base + GF_FUTEX), 1, __ATOMIC_SEQ_CST);
#ifdef __linux__
        syscall(SYS_futex, (uint32_t *)(base + GF_FUTEX), FUTEX_WAKE, 0x7fffffff, NULL, NULL, 0);
#endif
    }
}

/* Wait until head - tail >= n or timeout_ns passes (timeout_ns < 0: no limit). mode 0 busy-poll (with
 * the CPU's spin hint), 1 sched_yield between polls, 2 block on the futex word. Returns head - tail. */
int64_t gf_wait(uintptr_t base, uint64_t tail, uint64_t n, int64_t timeout_ns, int mode) {
    uint64_t avail = gf_ld(base + GF_HEAD) - tail;
    if (avail >= n) return (int64_t)avail;
    int64_t deadline = timeout_ns < 0 ? INT64_MAX : gf_now_ns() + timeout_ns;
    uint32_t *fw = (uint32_t *)(base + GF_FUTEX);
    uint32_t *waiters = (uint32_t *)(base + GF_WAITERS);
    for (uint64_t spins = 1;; spins++) {
        if (mode == 2) {
#ifdef __linux__
            uint32_t seq = __atomic_load_n(fw, __ATOMIC_SEQ_CST);
            __atomic_add_fetch(waiters, 1, __ATOMIC_SEQ_CST);
            avail = __atomic_load_n((uint64_t *)(base + GF_HEAD), __ATOMIC_SEQ_CST) - tail;
            if (avail < n) {
                int64_t left = deadline - gf_now_ns();
                if (left > 0) {
                    struct timespec ts = {left / 1000000000LL, left % 1000000000LL};
                    syscall(SYS_futex, fw, FUTEX_WAIT, seq, timeout_ns < 0 ? NULL : &ts, NULL, 0);
                }
            }
            __atomic_sub_fetch(waiters, 1, __ATOMIC_SEQ_CST);
#else
            sched_yield();
#endif
        } else if (mode == 1) {
            sched_yield();
        } else {
            gf_pause();
        }
        avail = gf_ld(base + GF_HEAD) - tail;
        if (avail >= n) return (int64_t)avail;
        if ((mode != 0 || (spins & 255) == 0) && gf_now_ns() >= deadline) return (int64_t)avail;
    }
}
