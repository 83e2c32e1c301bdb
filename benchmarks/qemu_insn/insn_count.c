/*
 * Guest instruction counter for QEMU user mode (TCG plugin API v1, QEMU 7.2).
 *
 * Counts, per guest thread (vCPU), the instructions of every translated block it executes.
 * The guest marks the span to measure with a syscall whose first argument is a marker
 * (`mark=N`: N starts a window, N+1 ends it; the guest calls close(N), which fails with EBADF
 * and has no other effect). At each window's end one line goes to QEMU's log (-d plugin):
 *
 *     window <thread instructions> <all threads' instructions>
 *
 * then at exit `total <instructions of the whole run>`. The thread column counts the thread
 * that opened the window; the second adds every thread, so work a runtime hands to helper
 * threads shows as a difference between the two.
 *
 * A per-block callback, not an inline add: inline adds to one shared counter race between
 * guest threads, which QEMU user mode runs in parallel.
 *
 * With `profile=1`, each translated block also counts the instructions it executed inside
 * windows (on the window's thread), and at exit one line per block that ran in one:
 *
 *     block <guest address, hex> <instructions in windows>
 *
 * which the host maps to functions through the guest's /proc/self/maps and the libraries'
 * symbols (a block translated twice prints twice: the host adds them up).
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <qemu-plugin.h>

QEMU_PLUGIN_EXPORT int qemu_plugin_version = QEMU_PLUGIN_VERSION;

/* Threads get increasing vCPU indices in user mode; more threads than this are refused. */
#define MAX_VCPUS 1024

static uint64_t counts[MAX_VCPUS];
static uint64_t window_start_thread, window_start_all;
static unsigned int window_vcpu;
static int window_open;
static uint64_t mark;
static int profile;

/* A translated block, kept for the whole run when profiling (blocks are never freed). */
struct block {
    uint64_t vaddr;
    uint64_t n_insns;
    uint64_t in_windows;
    struct block *next;
};
static struct block *blocks;

static uint64_t all_threads(void)
{
    uint64_t sum = 0;
    for (int i = 0; i < MAX_VCPUS; i++) {
        sum += counts[i];
    }
    return sum;
}

static void tb_exec(unsigned int vcpu, void *n_insns)
{
    if (vcpu < MAX_VCPUS) {
        counts[vcpu] += (uintptr_t)n_insns;
    }
}

static void tb_exec_profiled(unsigned int vcpu, void *data)
{
    struct block *b = data;

    if (vcpu < MAX_VCPUS) {
        counts[vcpu] += b->n_insns;
    }
    if (window_open && vcpu == window_vcpu) {
        b->in_windows += b->n_insns;
    }
}

static void tb_trans(qemu_plugin_id_t id, struct qemu_plugin_tb *tb)
{
    uintptr_t n = qemu_plugin_tb_n_insns(tb);
    struct block *b;

    if (!profile) {
        qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec, QEMU_PLUGIN_CB_NO_REGS, (void *)n);
        return;
    }
    b = calloc(1, sizeof *b);
    if (b == NULL) {
        abort();
    }
    b->vaddr = qemu_plugin_tb_vaddr(tb);
    b->n_insns = n;
    b->next = __atomic_exchange_n(&blocks, b, __ATOMIC_SEQ_CST);
    qemu_plugin_register_vcpu_tb_exec_cb(tb, tb_exec_profiled, QEMU_PLUGIN_CB_NO_REGS, b);
}

static void on_syscall(qemu_plugin_id_t id, unsigned int vcpu, int64_t num, uint64_t a1,
                       uint64_t a2, uint64_t a3, uint64_t a4, uint64_t a5, uint64_t a6,
                       uint64_t a7, uint64_t a8)
{
    char line[96];

    if (vcpu >= MAX_VCPUS || (uint32_t)a1 < mark || (uint32_t)a1 > mark + 1) {
        return;
    }
    if ((uint32_t)a1 == mark) {
        window_open = 1;
        window_vcpu = vcpu;
        window_start_thread = counts[vcpu];
        window_start_all = all_threads();
    } else if (window_open && vcpu == window_vcpu) {
        window_open = 0;
        snprintf(line, sizeof line, "window %" PRIu64 " %" PRIu64 "\n",
                 counts[vcpu] - window_start_thread, all_threads() - window_start_all);
        qemu_plugin_outs(line);
    }
}

static void at_exit(qemu_plugin_id_t id, void *unused)
{
    char line[64];

    snprintf(line, sizeof line, "total %" PRIu64 "\n", all_threads());
    qemu_plugin_outs(line);
    for (struct block *b = blocks; b != NULL; b = b->next) {
        if (b->in_windows) {
            snprintf(line, sizeof line, "block %" PRIx64 " %" PRIu64 "\n", b->vaddr, b->in_windows);
            qemu_plugin_outs(line);
        }
    }
}

QEMU_PLUGIN_EXPORT int qemu_plugin_install(qemu_plugin_id_t id, const qemu_info_t *info,
                                           int argc, char **argv)
{
    for (int i = 0; i < argc; i++) {
        if (strncmp(argv[i], "mark=", 5) == 0) {
            mark = strtoull(argv[i] + 5, NULL, 0);
        } else if (strcmp(argv[i], "profile=1") == 0) {
            profile = 1;
        } else {
            fprintf(stderr, "insn_count: unknown argument %s (takes mark=N, profile=1)\n", argv[i]);
            return -1;
        }
    }
    if (mark == 0) {
        fprintf(stderr, "insn_count: mark=N is required\n");
        return -1;
    }
    qemu_plugin_register_vcpu_tb_trans_cb(id, tb_trans);
    qemu_plugin_register_vcpu_syscall_cb(id, on_syscall);
    qemu_plugin_register_atexit_cb(id, at_exit, NULL);
    return 0;
}
