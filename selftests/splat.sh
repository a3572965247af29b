# shellcheck shell=bash
# The kernel log's reports that fail a test (an extended regex for grep
# -E): WARN, BUG, Oops, KASAN, general protection faults, lockdep,
# hung tasks, RCU stalls, kmemleak, UBSAN, panics, lockdep meeting a
# lock whose key is not static (a corrupted or uninitialised lock), and
# page poisoning's "pagealloc: memory corruption" and "Bad page".
# Sourced by selftests/run (after each test) and selftests/soak-batch
# (after each run).
SPLAT='WARNING:|BUG:|Oops|KASAN|kernel BUG|general protection fault|unreferenced object|possible recursive locking|circular locking dependency|inconsistent lock state|suspicious RCU usage|blocked for more than|rcu_sched self-detected stall|UBSAN|Kernel panic|scheduling while atomic|sleeping function called from invalid context|pagealloc: memory corruption|Bad page|trying to register non-static key'
