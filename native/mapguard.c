/* Read-only file mappings that survive the file shrinking under them
 * (mapguard.h).  The approach is systemd's sigbus.c: on a fault inside a
 * mapping we made, map anonymous zeros over the page, note it and return,
 * so that the faulting instruction runs again and reads zeros; the reader
 * checks mg_faulted() once it is done with the mapping. */
#define _GNU_SOURCE
#include "mapguard.h"

#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdatomic.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

typedef struct {
    atomic_int used;
    atomic_int faulted;
    _Atomic uintptr_t start;        /* 0: not registered (yet) */
    _Atomic uintptr_t end;
} mg_slot;

static mg_slot slots[MG_SLOTS];
static struct sigaction previous;   /* the handler before ours */
static uintptr_t page_size;
static pthread_mutex_t install_lock = PTHREAD_MUTEX_INITIALIZER;

static void on_sigbus(int sig, siginfo_t *si, void *context)
{
    (void)context;
    int saved = errno;
    if (si->si_code > 0) {          /* a fault, not a signal someone sent */
        uintptr_t a = (uintptr_t)si->si_addr;
        for (int i = 0; i < MG_SLOTS; i++) {
            uintptr_t s = atomic_load_explicit(&slots[i].start, memory_order_acquire);
            if (s && a >= s && a < atomic_load_explicit(&slots[i].end, memory_order_relaxed)) {
                void *page = (void *)(a & ~(page_size - 1));
                if (mmap(page, page_size, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED,
                         -1, 0) != MAP_FAILED) {
                    atomic_store_explicit(&slots[i].faulted, 1, memory_order_release);
                    errno = saved;
                    return;
                }
                break;
            }
        }
    }
    /* Not ours: put the previous handler back and let it take the fault
     * when the instruction runs again (a sent signal is sent again). */
    sigaction(SIGBUS, &previous, NULL);
    if (si->si_code <= 0)
        raise(sig);
    errno = saved;
}

/* (Re)install the handler: someone may have replaced it since, or it may
 * have handed a fault that was not ours back to the one before it. */
static int install(void)
{
    struct sigaction current, ours;
    int err = 0;
    pthread_mutex_lock(&install_lock);
    if (!page_size)
        page_size = (uintptr_t)sysconf(_SC_PAGESIZE);
    if (sigaction(SIGBUS, NULL, &current) != 0) {
        err = errno;
    } else if (!((current.sa_flags & SA_SIGINFO) && current.sa_sigaction == on_sigbus)) {
        memset(&ours, 0, sizeof ours);
        ours.sa_sigaction = on_sigbus;
        ours.sa_flags = SA_SIGINFO | SA_ONSTACK;
        sigemptyset(&ours.sa_mask);
        previous = current;
        if (sigaction(SIGBUS, &ours, NULL) != 0)
            err = errno;
    }
    pthread_mutex_unlock(&install_lock);
    return err;
}

int mg_map(int fd, uint64_t offset, size_t length, int populate, void **addr, int *slot)
{
    if (!length)
        return EINVAL;
    int err = install();
    if (err)
        return err;
    if (offset % page_size)
        return EINVAL;
    int i;
    for (i = 0; i < MG_SLOTS; i++) {
        int expected = 0;
        if (atomic_compare_exchange_strong(&slots[i].used, &expected, 1))
            break;
    }
    if (i == MG_SLOTS)
        return EBUSY;
    int flags = MAP_SHARED;
#ifdef MAP_POPULATE
    if (populate)
        flags |= MAP_POPULATE;
#endif
#ifdef POSIX_FADV_WILLNEED
    /* Populating faults missing pages in one read-around at a time; asking
     * for the whole range first has them read in large requests, in
     * parallel (a window with every 16th KiB paged out: 7-25 ms -> 7-10;
     * ~0.1 ms per 8 MiB when all of it is cached).  Only advice: errors
     * are ignored. */
    if (populate)
        posix_fadvise(fd, (off_t)offset, (off_t)length, POSIX_FADV_WILLNEED);
#endif
    /* MAP_POPULATE skips pages past the end of the file without a fault;
     * every other access comes after the slot is filled in below. */
    void *p = mmap(NULL, length, PROT_READ, flags, fd, (off_t)offset);
    if (p == MAP_FAILED) {
        err = errno;
        atomic_store(&slots[i].used, 0);
        return err;
    }
    atomic_store_explicit(&slots[i].faulted, 0, memory_order_relaxed);
    atomic_store_explicit(&slots[i].end, (uintptr_t)p + length, memory_order_relaxed);
    atomic_store_explicit(&slots[i].start, (uintptr_t)p, memory_order_release);
    *addr = p;
    *slot = i;
    return 0;
}

int mg_faulted(int slot)
{
    return atomic_load_explicit(&slots[slot].faulted, memory_order_acquire);
}

void mg_unmap(void *addr, size_t length, int slot)
{
    munmap(addr, length);
    atomic_store_explicit(&slots[slot].start, 0, memory_order_release);
    atomic_store_explicit(&slots[slot].end, 0, memory_order_relaxed);
    atomic_store(&slots[slot].used, 0);
}
